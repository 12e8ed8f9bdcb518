package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/service"
	"github.com/notifyd/notifyd/sinks"
	"github.com/notifyd/notifyd/topology"
)

// benchProvider accepts instantly and notes when each notification reached it.
type benchProvider struct {
	mu   sync.Mutex
	lat  []time.Duration // accept → provider call
	high []time.Duration // the same, of high-priority notifications only
	// lowAtHigh: how many other notifications had reached the provider
	// when the latest high-priority one did.
	lowAtHigh int64
	count     atomic.Int64
	last      atomic.Int64 // unix nanos of the latest call
	// The outage phase: while down every call fails (transiently) and is
	// counted in refused; seen holds the notifications accepted, when set.
	down    atomic.Bool
	refused atomic.Int64
	seen    map[string]struct{}
}

func (b *benchProvider) Name() string { return "bench" }

func (b *benchProvider) Send(_ context.Context, n *schemas.Notification) (string, error) {
	if b.down.Load() {
		b.refused.Add(1)
		return "", errBenchOutage
	}
	now := time.Now()
	b.mu.Lock()
	if b.seen != nil {
		b.seen[n.ID] = struct{}{}
	}
	b.lat = append(b.lat, now.Sub(time.UnixMilli(n.AcceptedAt)))
	if n.Priority == "high" {
		b.high = append(b.high, now.Sub(time.UnixMilli(n.AcceptedAt)))
		b.lowAtHigh = b.count.Load() - int64(len(b.high)-1)
	}
	b.mu.Unlock()
	b.count.Add(1)
	b.last.Store(now.UnixNano())
	return "", nil
}

func (b *benchProvider) reset() []time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.lat
	b.lat, b.high, b.lowAtHigh = nil, nil, 0
	b.count.Store(0)
	return out
}

func (b *benchProvider) wait(ctx context.Context, n int64, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for b.count.Load() < n {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d notifications delivered after %v", b.count.Load(), n, limit)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// benchReport is every figure of a bench run, for `-json FILE`: the field
// names are documented in docs/PERFORMANCE.md and stay stable, so runs of
// different builds compare with jq or a script.
type benchReport struct {
	Build   benchBuild        `json:"build"`
	Started time.Time         `json:"started"`
	Flags   map[string]string `json:"flags"`
	Ceiling *ceiling          `json:"ceiling,omitempty"`
	Phases  benchPhases       `json:"phases"`
}

type benchBuild struct {
	Commit     string `json:"commit,omitempty"` // vcs.revision, when the binary was built from a checkout
	CommitTime string `json:"commit_time,omitempty"`
	Modified   bool   `json:"modified,omitempty"` // vcs.modified: built with uncommitted changes
	GoVersion  string `json:"go_version"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	NumCPU     int    `json:"num_cpu"`
}

type benchPhases struct {
	Bulk     *phaseFigures    `json:"bulk,omitempty"`
	Paced    *phaseFigures    `json:"paced,omitempty"`
	API      *phaseFigures    `json:"api,omitempty"`
	Campaign *campaignFigures `json:"campaign,omitempty"`
	Priority *priorityFigures `json:"priority,omitempty"`
	Outage   *outageFigures   `json:"outage,omitempty"`
}

// phaseFigures: Count notifications delivered in Duration (the phase's first
// produce or request → the last provider call), Rate = Count / Duration.
type phaseFigures struct {
	Count      int      `json:"count"`
	DurationMS float64  `json:"duration_ms"`
	Rate       float64  `json:"rate"`
	RatioToHop *float64 `json:"ratio_to_hop,omitempty"`
	// Latency is accept (ingest or API) → provider call.
	Latency *latencyFigures `json:"latency_ms,omitempty"`
	// RequestLatency is the API's, from the time each request was due.
	RequestLatency *latencyFigures `json:"request_latency_ms,omitempty"`
	Errors         int             `json:"errors"`
	TargetRate     int             `json:"target_rate,omitempty"` // paced and api
	ProducedMS     float64         `json:"produced_ms,omitempty"` // bulk: producing all n
	// SettledMS (bulk) is first produce → the status group recorded every
	// event of the phase.
	SettledMS float64           `json:"settled_ms,omitempty"`
	Analytics *analyticsFigures `json:"analytics,omitempty"`
}

type latencyFigures struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

type analyticsFigures struct {
	Events              int64    `json:"events"`
	DurationMS          float64  `json:"duration_ms"`
	Rate                float64  `json:"rate"`
	RatioToHop          *float64 `json:"ratio_to_hop,omitempty"`
	AfterLastDeliveryMS float64  `json:"after_last_delivery_ms"`
	LagSamples          int      `json:"lag_samples"`
	LagP50              int64    `json:"lag_p50"`
	LagP99              int64    `json:"lag_p99"`
	LagMax              int64    `json:"lag_max"`
	LagAtLastDelivery   int64    `json:"lag_at_last_delivery"`
}

func newBenchReport(fs *flag.FlagSet) *benchReport {
	r := &benchReport{Started: time.Now().UTC().Truncate(time.Second), Flags: map[string]string{},
		Build: benchBuild{GoVersion: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0), NumCPU: runtime.NumCPU()}}
	if bi, ok := debug.ReadBuildInfo(); ok {
		r.Build.GoVersion = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				r.Build.Commit = s.Value
			case "vcs.time":
				r.Build.CommitTime = s.Value
			case "vcs.modified":
				r.Build.Modified = s.Value == "true"
			}
		}
	}
	fs.VisitAll(func(f *flag.Flag) { r.Flags[f.Name] = f.Value.String() })
	return r
}

func newPhase(count int, d time.Duration, ceil *ceiling, lat []time.Duration) *phaseFigures {
	p := &phaseFigures{Count: count, DurationMS: msec(d), Rate: float64(count) / d.Seconds(), Latency: latencies(lat)}
	p.RatioToHop = ceil.ratio(p.Rate)
	return p
}

func latencies(d []time.Duration) *latencyFigures {
	if len(d) == 0 {
		return nil
	}
	s := slices.Clone(d)
	slices.Sort(s)
	at := func(p float64) float64 { return msec(s[int(float64(len(s)-1)*p)]) }
	return &latencyFigures{P50: at(.5), P90: at(.9), P99: at(.99), Max: at(1)}
}

// write writes the report to path as JSON ("" writes nothing).
func (r *benchReport) write(path string) error { return writeJSON(path, r) }

// writeJSON writes a report to path as indented JSON ("" writes nothing).
func writeJSON(path string, r any) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("bench -json: %w", err)
	}
	fmt.Printf("\nfigures written to %s\n", path)
	return nil
}

func runBench(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	n := fs.Int("n", 20000, "notifications in the bulk phase")
	paced := fs.Int("paced-rate", 2000, "notifications/s of the paced phase (end-to-end latency at a steady rate)")
	rate := fs.Int("rate", 2000, "API requests/s of the API phase")
	dur := fs.Duration("duration", 10*time.Second, "length of the paced and API phases")
	partitions := fs.Int("partitions", 4, "partitions per topic")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the bulk phase (with -campaign: approval → last delivery) to this file")
	apiProfile := fs.String("cpuprofile-api", "", "write a CPU profile of the API phase to this file")
	pacedProfile := fs.String("cpuprofile-paced", "", "write a CPU profile of the paced phase to this file")
	memState := fs.Bool("memory-state", false, "keep goka tables in memory instead of on disk")
	users := fs.Int("users", 0, "send to this many users in turn (0: a new user per notification, each needing its own data key: the worst case)")
	withAnalytics := fs.Bool("analytics", false, "also stream events into a local clickhouse-server and report the sink's rate and lag")
	campaign := fs.Int("campaign", 0, "instead of the three phases: a campaign to a segment of this many users (see docs/PERFORMANCE.md)")
	campaignRate := fs.Int("campaign-rate", 100_000, "the campaign's rate limit, recipients/s")
	memProfile := fs.String("memprofile", "", "write a heap profile to this file: with -campaign once the campaign settled, otherwise at the end of the bulk phase (its allocations: go tool pprof -sample_index=alloc_space)")
	externalBroker := fs.Bool("external-broker", false, "with -campaign: run the broker in a child process, so the heap figures are notifyd's alone")
	withCeiling := fs.Bool("ceiling", true, "first measure the raw broker and a bare goka stateful hop, and report every rate as a share of the hop")
	ceilingN := fs.Int("ceiling-n", 200_000, "records of the ceiling's raw broker pass-through")
	ceilingHopN := fs.Int("ceiling-hop-n", 100_000, "messages of the ceiling's bare goka hop")
	jsonOut := fs.String("json", "", "write every figure as one JSON object to this file (docs/PERFORMANCE.md)")
	backlog := fs.Int("priority-backlog", 0, "after the API phase: queue this many low-priority requests, then send -priority-high high-priority ones through the API while they drain (0: no priority phase)")
	backlogBatch := fs.Int("priority-batch-bytes", topology.IngestBatchBytes, "the record batches the backlog is produced in: as the API writes them by default; 1048576 shows a foreign producer's default batches")
	highs := fs.Int("priority-high", 50, "high-priority requests of the priority phase")
	roles := fs.Bool("roles", false, "instead of the phases in-process: the broker, 2 process, 2 sink and api as separate processes, bulk and API phases, CPU per process (docs/PERFORMANCE.md)")
	rolesBin := fs.String("roles-bin", "", "with -roles: the notifyd binary the processes run (default: this one)")
	outage := fs.Duration("outage", 0, "after the other phases: the provider goes down for this long while -outage-n notifications are sent at -outage-rate, and the bench reports how long after its return the parked ones arrived (0: no outage phase)")
	outageN := fs.Int("outage-n", 3000, "notifications of the outage phase")
	outageRate := fs.Int("outage-rate", 50, "notifications/s of the outage phase")
	outageWait := fs.Duration("outage-wait", 12*time.Minute, "how long after the provider's return the outage phase waits for every notification")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// Checked before anything starts, not when the priority phase comes.
	if *backlogBatch < 1<<10 || *backlogBatch > 16<<20 {
		return fmt.Errorf("bench: -priority-batch-bytes must be between 1024 and 16777216, got %d", *backlogBatch)
	}
	if *outage < 0 || *outage > 0 && (*outageN < 5 || *outageRate < 1) {
		return fmt.Errorf("bench: -outage needs a duration ≥ 0, -outage-n ≥ 5 and -outage-rate ≥ 1")
	}
	// The phase profiles' files are created now: a path that cannot be
	// written is refused before the bulk runs, not after.
	pacedProf, err := openProfile(*pacedProfile)
	if err != nil {
		return err
	}
	defer pacedProf.stop()
	apiProf, err := openProfile(*apiProfile)
	if err != nil {
		return err
	}
	defer apiProf.stop()
	report := newBenchReport(fs)
	var ceil *ceiling
	if *withCeiling {
		var err error
		if ceil, err = measureCeiling(ctx, benchConfig("", *partitions, new(bool)).Kafka, *memState, *ceilingN, *ceilingHopN); err != nil {
			return err
		}
		report.Ceiling = ceil
		ceil.print(os.Stdout)
	}
	if *campaign > 0 {
		err := campaignBench{users: *campaign, rate: *campaignRate, partitions: *partitions, memState: *memState,
			analytics: *withAnalytics, external: *externalBroker, memProfile: *memProfile, cpuProfile: *cpuProfile,
			ceiling: ceil, report: report}.run(ctx)
		if err != nil {
			return err
		}
		return report.write(*jsonOut)
	}
	if *roles {
		return rolesBench{bin: *rolesBin, n: *n, rate: *rate, dur: *dur, partitions: *partitions, users: *users,
			ceiling: ceil, report: report, jsonOut: *jsonOut}.run(ctx)
	}
	dir, err := os.MkdirTemp("", "notifyd-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	cfg := benchConfig(dir, *partitions, withAnalytics)
	bp := &benchProvider{}
	svc, stop, err := startBenchService(ctx, cfg, *memState, bp)
	if err != nil {
		return err
	}
	defer stop()
	base := "http://" + svc.HTTPAddr()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 512, MaxConnsPerHost: 512}}
	tmpl := `{"category":"transactional","channels":{"email":{"subject":"Order {{.orderId}}","text":"Order {{.orderId}} shipped","html":"<p>Order <b>{{.orderId}}</b> shipped</p>"}}}`
	if err := call(ctx, client, "PUT", base+"/v1/templates/bench", tmpl, http.StatusOK); err != nil {
		return err
	}
	producer, err := topology.NewProducer(svc.Brokers())
	if err != nil {
		return err
	}
	defer producer.Close()
	fmt.Printf("notifyd bench: %d partitions, goka state %s, GOMAXPROCS from %d CPUs\n\n", *partitions,
		map[bool]string{true: "in memory", false: "on disk"}[*memState], runtime.NumCPU())

	// Warm-up: first records pay for group joins and connection set-up.
	if err := ingest(ctx, producer, "warm", 500, 0, *users); err != nil {
		return err
	}
	if err := bp.wait(ctx, 500, time.Minute); err != nil {
		return err
	}
	bp.reset()

	var eventsBefore int64
	if *withAnalytics {
		for svc.AnalyticsAddr() == "" { // the local clickhouse-server is starting
			if ctx.Err() != nil {
				return ctx.Err()
			}
			time.Sleep(50 * time.Millisecond)
		}
		if _, err := waitAnalyticsCaughtUp(ctx, producer, time.Minute); err != nil {
			return err
		}
		eventsBefore = eventsEnd(ctx, producer)
	}

	// Phase 1: bulk, everything produced at once.
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	start := time.Now()
	lags := sampleLag(ctx, producer, *withAnalytics)
	if err := ingest(ctx, producer, "bulk", *n, 0, *users); err != nil {
		return err
	}
	produced := time.Since(start)
	if err := bp.wait(ctx, int64(*n), 10*time.Minute); err != nil {
		return err
	}
	elapsed := time.Unix(0, bp.last.Load()).Sub(start)
	// The status group records what the sinks did after the providers had
	// it: the bulk's work is done when it caught up (the profile covers
	// that), and the paced phase starts then, not while it still drains
	// the bulk's events.
	settled, err := waitStatusCaughtUp(ctx, svc.Brokers(), producer, client, base, 10*time.Minute)
	if err != nil {
		return err
	}
	if *cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	if *memProfile != "" {
		if err := writeHeapProfile(*memProfile); err != nil {
			return err
		}
	}
	lat := bp.reset()
	bulk := newPhase(*n, elapsed, ceil, lat)
	bulk.ProducedMS = msec(produced)
	report.Phases.Bulk = bulk
	fmt.Printf("bulk: %d notifications produced to notify.ingest in %v, all delivered in %v\n", *n, produced.Round(time.Millisecond), elapsed.Round(time.Millisecond))
	fmt.Printf("  throughput end to end: %.0f notifications/s%s\n", bulk.Rate, ceil.inParens(bulk.Rate))
	fmt.Printf("  ingest → provider (includes queueing behind the backlog): p50 %s  p99 %s\n", ms(percentile(lat, .5)), ms(percentile(lat, .99)))
	bulk.SettledMS = msec(settled.Sub(start))
	fmt.Printf("  status group caught up %v after the first produce: %.0f notifications/s\n\n",
		settled.Sub(start).Round(time.Millisecond), float64(*n)/settled.Sub(start).Seconds())
	if *withAnalytics {
		if bulk.Analytics, err = reportAnalytics(ctx, producer, "bulk", lags, start, &eventsBefore, ceil); err != nil {
			return err
		}
	}

	// Phase 2: paced, a steady rate below saturation.
	if err := pacedProf.start(); err != nil {
		return err
	}
	total := int(float64(*paced) * dur.Seconds())
	start = time.Now()
	lags = sampleLag(ctx, producer, *withAnalytics)
	if err := ingest(ctx, producer, "paced", total, *paced, *users); err != nil {
		return err
	}
	if err := bp.wait(ctx, int64(total), 5*time.Minute); err != nil {
		return err
	}
	pacedProf.stop()
	lat = bp.reset()
	pacedPhase := newPhase(total, time.Unix(0, bp.last.Load()).Sub(start), ceil, lat)
	pacedPhase.TargetRate = *paced
	report.Phases.Paced = pacedPhase
	fmt.Printf("paced: %d notifications at %d/s\n", total, *paced)
	fmt.Printf("  achieved, first produce → last delivery: %.0f notifications/s%s\n", pacedPhase.Rate, ceil.inParens(pacedPhase.Rate))
	fmt.Printf("  ingest → provider: p50 %s  p99 %s\n\n", ms(percentile(lat, .5)), ms(percentile(lat, .99)))
	if *withAnalytics {
		if pacedPhase.Analytics, err = reportAnalytics(ctx, producer, "paced", lags, start, &eventsBefore, ceil); err != nil {
			return err
		}
	}

	// Phase 3: the API under an open-loop request rate.
	if err := apiProf.start(); err != nil {
		return err
	}
	start = time.Now()
	apiLat, errs, err := apiLoad(ctx, client, base, *rate, *dur)
	apiProf.stop()
	if err != nil {
		return err
	}
	if err := bp.wait(ctx, int64(len(apiLat)), 5*time.Minute); err != nil {
		return err
	}
	lat = bp.reset()
	api := newPhase(len(apiLat), time.Unix(0, bp.last.Load()).Sub(start), ceil, lat)
	api.TargetRate, api.Errors, api.RequestLatency = *rate, errs, latencies(apiLat)
	report.Phases.API = api
	fmt.Printf("api: %d POST /v1/notifications at %d/s (%d errors)\n", len(apiLat), *rate, errs)
	fmt.Printf("  achieved, first request → last delivery: %.0f notifications/s%s\n", api.Rate, ceil.inParens(api.Rate))
	fmt.Printf("  request latency: p50 %s  p99 %s  max %s\n", ms(percentile(apiLat, .5)), ms(percentile(apiLat, .99)), ms(percentile(apiLat, 1)))
	fmt.Printf("  API accept → provider: p50 %s  p99 %s\n", ms(percentile(lat, .5)), ms(percentile(lat, .99)))
	if *backlog > 0 {
		if report.Phases.Priority, err = priorityPhase(ctx, svc.Brokers(), *backlogBatch, client, base, bp, *backlog, *highs); err != nil {
			return err
		}
	}
	if *outage > 0 {
		if report.Phases.Outage, err = outagePhase(ctx, producer, bp, *outageN, *outageRate, *outage, *outageWait); err != nil {
			return err
		}
	}
	return report.write(*jsonOut)
}

// benchConfig is the all-in-one configuration of a bench run: loopback, any
// free port, no daily caps, the bench key, channels only from the bench's
// provider.
func benchConfig(dir string, partitions int, withAnalytics *bool) config.Config {
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Kafka.EmbeddedPort = 0
	cfg.Kafka.Partitions = partitions
	cfg.Limits.DefaultPerDay = 0
	cfg.Analytics.Enabled = withAnalytics
	cfg.Channels = map[string][]config.Provider{}
	cfg.APIKeys = []config.APIKey{{Name: "bench", Key: "bench-key-0001"}}
	return cfg
}

// startBenchService runs an all-in-one notifyd of cfg whose email goes to
// provider, until stop (which waits for it to end).
func startBenchService(ctx context.Context, cfg config.Config, memState bool, provider sinks.Provider) (*service.Service, func(), error) {
	svc := &service.Service{Cfg: cfg, Roles: service.AllInOne, InMemoryState: memState,
		Log:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Providers: map[string][]sinks.Provider{"email": {provider}}}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- svc.Run(sctx) }()
	select {
	case <-svc.Ready():
	case err := <-done:
		cancel()
		return nil, nil, err
	}
	return svc, func() { cancel(); <-done }, nil
}

// ingest produces count single-recipient requests; rate 0 means as fast as
// possible; users > 0 cycles over that many users instead of one per request.
func ingest(ctx context.Context, cl *kgo.Client, prefix string, count, rate, users int) error {
	var interval time.Duration
	if rate > 0 {
		interval = time.Second / time.Duration(rate)
	}
	start := time.Now()
	var firstErr atomic.Value
	for i := 0; i < count; i++ {
		if interval > 0 {
			if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
				time.Sleep(d)
			}
		}
		id := fmt.Sprintf("%s-%d", prefix, i)
		user := "user-" + id
		if users > 0 {
			user = fmt.Sprintf("user-%d", i%users)
		}
		req := &schemas.SendRequest{EventID: id, Template: "bench", AcceptedAt: time.Now().UnixMilli(), Source: "bench",
			Recipients: []schemas.Recipient{{UserID: user, Email: user + "@example.com"}},
			Data:       `{"orderId":"` + id + `"}`}
		v, err := schemas.SendRequestCodec.Encode(req)
		if err != nil {
			return err
		}
		cl.Produce(ctx, &kgo.Record{Topic: string(topology.Ingest), Key: []byte(id), Value: v}, func(_ *kgo.Record, err error) {
			if err != nil {
				firstErr.CompareAndSwap(nil, err)
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	if err, _ := firstErr.Load().(error); err != nil {
		return err
	}
	return nil
}

// apiLoad sends requests on a fixed schedule (open loop): latency counts from
// the time a request was due, so a slow server cannot hide its queueing.
func apiLoad(ctx context.Context, client *http.Client, base string, rate int, dur time.Duration) ([]time.Duration, int, error) {
	total := int(float64(rate) * dur.Seconds())
	interval := time.Second / time.Duration(rate)
	lat := make([]time.Duration, total)
	var errs atomic.Int32
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < total; i++ {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func(i int, due time.Time) {
			defer wg.Done()
			body := fmt.Sprintf(`{"template":"bench","data":{"orderId":"api-%d"},"recipients":[{"userId":"api-user-%d","email":"api-%d@example.com"}]}`, i, i, i)
			if err := call(ctx, client, "POST", base+"/v1/notifications", body, http.StatusAccepted); err != nil {
				errs.Add(1)
			}
			lat[i] = time.Since(due)
		}(i, due)
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, 0, ctx.Err()
	}
	return lat, int(errs.Load()), nil
}

func call(ctx context.Context, client *http.Client, method, url, body string, want int) error {
	return callAs(ctx, client, "bench-key-0001", method, url, body, want)
}

func callAs(ctx context.Context, client *http.Client, key, method, url, body string, want int) error {
	return callAsInto(ctx, client, key, method, url, body, want, nil)
}

// callAsInto is callAs that decodes a JSON answer into out (nil: ignored).
func callAsInto(ctx context.Context, client *http.Client, key, method, url, body string, want int, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewBufferString(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != want {
		return errors.New(resp.Status + ": " + string(b))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// analyticsLag is how many events on notify.events the analytics group has not
// committed, from the group's committed offsets and the partitions' end
// offsets. (kadm's Lag, called first on this client, reported every commit as
// -1 — the whole topic as lag — while FetchOffsets on the same client and
// broker returned the commits; OffsetFetch v10 names topics by ID only.)
func analyticsLag(ctx context.Context, cl *kgo.Client) (int64, error) {
	return eventsLag(ctx, cl, sinks.AnalyticsGroup)
}

// eventsLag is how many events on notify.events group has not committed.
func eventsLag(ctx context.Context, cl *kgo.Client, group string) (int64, error) {
	adm := kadm.NewClient(cl)
	committed, err := adm.FetchOffsets(ctx, group)
	if err != nil {
		return 0, err
	}
	ends, err := adm.ListEndOffsets(ctx, string(topology.Events))
	if err != nil {
		return 0, err
	}
	var lag int64
	var perr error
	ends.Each(func(end kadm.ListedOffset) {
		if end.Err != nil {
			perr = end.Err
			return
		}
		at := int64(0)
		if c, ok := committed.Lookup(end.Topic, end.Partition); ok && c.Err == nil && c.At > 0 {
			at = c.At
		}
		lag += end.Offset - at
	})
	return lag, perr
}

// waitStatusCaughtUp waits until the status group has recorded the last
// event of every partition of notify.events, and returns when it saw that:
// the pipeline's work for what was delivered is done only then. It reads
// each partition's last event and asks the API for that notification's
// history until the event is in it (the group takes a partition's events in
// order), and again while new events came meanwhile.
func waitStatusCaughtUp(ctx context.Context, brokers []string, cl *kgo.Client, client *http.Client, base string, limit time.Duration) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	adm := kadm.NewClient(cl)
	for {
		ends, err := adm.ListEndOffsets(ctx, string(topology.Events))
		if err != nil {
			return time.Time{}, fmt.Errorf("the status group's progress: %w", err)
		}
		last := map[string]map[int32]kgo.Offset{string(topology.Events): {}}
		ends.Each(func(o kadm.ListedOffset) {
			if o.Err == nil && o.Offset > 0 {
				last[string(topology.Events)][o.Partition] = kgo.NewOffset().At(o.Offset - 1)
			}
		})
		events, err := lastRecords(ctx, brokers, last)
		if err != nil {
			return time.Time{}, fmt.Errorf("the status group's progress: %w", err)
		}
		recorded := true
		for _, r := range events {
			ev, err := schemas.StatusEventCodec.Decode(r.Value)
			if err != nil {
				continue // not an event: the status group dead-letters it
			}
			var st struct {
				History []historyJSON `json:"history"`
			}
			if err := callAsInto(ctx, client, "bench-key-0001", "GET", base+"/v1/notifications/"+ev.NotificationID, "", http.StatusOK, &st); err != nil {
				recorded = false
				break
			}
			at := time.UnixMilli(ev.At).UTC().Format("2006-01-02T15:04:05.000Z07:00")
			if !slices.ContainsFunc(st.History, func(h historyJSON) bool {
				return h.Status == ev.Status && h.At == at
			}) {
				recorded = false
				break
			}
		}
		if recorded {
			now := time.Now()
			after, err := adm.ListEndOffsets(ctx, string(topology.Events))
			if err == nil && offsetsTotal(after) == offsetsTotal(ends) {
				return now, nil
			}
		}
		if ctx.Err() != nil {
			return time.Time{}, fmt.Errorf("the status group did not catch up within %v", limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func offsetsTotal(o kadm.ListedOffsets) int64 {
	var n int64
	o.Each(func(l kadm.ListedOffset) { n += l.Offset })
	return n
}

// lastRecords reads one record at each of the given offsets.
func lastRecords(ctx context.Context, brokers []string, at map[string]map[int32]kgo.Offset) ([]*kgo.Record, error) {
	want := 0
	for _, ps := range at {
		want += len(ps)
	}
	if want == 0 {
		return nil, nil
	}
	cl, err := kgo.NewClient(append(topology.ClientOpts(brokers...), kgo.ConsumePartitions(at))...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	seen := map[int32]*kgo.Record{}
	for len(seen) < want {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		fs.EachRecord(func(r *kgo.Record) {
			if _, ok := seen[r.Partition]; !ok {
				seen[r.Partition] = r
			}
		})
	}
	out := make([]*kgo.Record, 0, len(seen))
	for _, r := range seen {
		out = append(out, r)
	}
	return out, nil
}

// waitAnalyticsCaughtUp waits until the analytics group has committed every
// event on notify.events and returns when it saw that.
func waitAnalyticsCaughtUp(ctx context.Context, cl *kgo.Client, limit time.Duration) (time.Time, error) {
	deadline := time.Now().Add(limit)
	for {
		if l, err := analyticsLag(ctx, cl); err == nil && l == 0 && eventsEnd(ctx, cl) > 0 {
			return time.Now(), nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return time.Time{}, fmt.Errorf("analytics did not catch up within %v", limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lagSampler records the analytics group's lag every 250 ms until finish.
type lagSampler struct {
	stop, done chan struct{}
	samples    []int64
}

func sampleLag(ctx context.Context, cl *kgo.Client, on bool) *lagSampler {
	s := &lagSampler{stop: make(chan struct{}), done: make(chan struct{})}
	if !on {
		close(s.done)
		return s
	}
	go func() {
		defer close(s.done)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			if l, err := analyticsLag(ctx, cl); err == nil {
				s.samples = append(s.samples, l)
			}
			select {
			case <-s.stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *lagSampler) finish() []int64 {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	return s.samples
}

// reportAnalytics prints how the analytics sink kept up with a phase that
// began at start: the group's lag while the pipeline delivered, its lag when
// the last notification was delivered, and when ClickHouse had every event.
func reportAnalytics(ctx context.Context, cl *kgo.Client, phase string, lags *lagSampler, start time.Time, eventsBefore *int64, ceil *ceiling) (*analyticsFigures, error) {
	delivered := time.Now()
	endLag, err := analyticsLag(ctx, cl)
	if err != nil {
		return nil, err
	}
	samples := lags.finish()
	caughtUp, err := waitAnalyticsCaughtUp(ctx, cl, 5*time.Minute)
	if err != nil {
		return nil, err
	}
	total := eventsEnd(ctx, cl)
	events := total - *eventsBefore
	*eventsBefore = total
	took := caughtUp.Sub(start)
	a := &analyticsFigures{Events: events, DurationMS: msec(took), Rate: float64(events) / took.Seconds(),
		AfterLastDeliveryMS: msec(caughtUp.Sub(delivered)), LagSamples: len(samples), LagP50: percentileInt(samples, .5),
		LagP99: percentileInt(samples, .99), LagMax: percentileInt(samples, 1), LagAtLastDelivery: endLag}
	a.RatioToHop = ceil.ratio(a.Rate)
	share := ""
	if s := ceil.share(a.Rate); s != "" {
		share = ", " + s
	}
	fmt.Printf("  analytics: %d status events in ClickHouse %v after the phase began (%.0f events/s%s), %v after the last delivery\n",
		events, took.Round(time.Millisecond), a.Rate, share, caughtUp.Sub(delivered).Round(time.Millisecond))
	fmt.Printf("  analytics group lag while the pipeline ran (every 250 ms, %d samples): p50 %d, p99 %d, max %d events; %d at the last delivery\n\n",
		len(samples), a.LagP50, a.LagP99, a.LagMax, endLag)
	return a, nil
}

// eventsEnd is the number of records notify.events holds.
func eventsEnd(ctx context.Context, cl *kgo.Client) int64 {
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, string(topology.Events))
	if err != nil {
		return 0
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n
}

func percentileInt(v []int64, p float64) int64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p)]
}

// phaseProfile is a CPU profile of one phase, written to a file created
// before the bench starts; a nil one (no path) does nothing.
type phaseProfile struct {
	f       *os.File
	running bool
}

func openProfile(path string) (*phaseProfile, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("bench: CPU profile: %w", err)
	}
	return &phaseProfile{f: f}, nil
}

func (p *phaseProfile) start() error {
	if p == nil {
		return nil
	}
	if err := pprof.StartCPUProfile(p.f); err != nil {
		return err
	}
	p.running = true
	return nil
}

// stop ends the profile and closes its file; calling it again does nothing.
func (p *phaseProfile) stop() {
	if p == nil || p.f == nil {
		return
	}
	if p.running {
		pprof.StopCPUProfile()
	}
	p.f.Close()
	p.f, p.running = nil, false
}

// historyJSON is an entry of a notification's history as the API answers it.
type historyJSON struct {
	Status string `json:"status"`
	At     string `json:"at"`
}
