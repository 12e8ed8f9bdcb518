package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/analytics"
	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/service"
	"github.com/notifyd/notifyd/topology"
)

// campaignBench is `notifyd bench -campaign N`: N users with profiles, a
// marketing campaign to the segment `attributes.plan = "pro"` (three users
// in four), one user in ten opted out of marketing email; the campaign is
// created by one key and approved by another, then fans out at -campaign-rate.
// It checks that every eligible user got exactly one message and every other
// user none, that the campaign's progress says so (and ClickHouse's, with
// -analytics), and reports notifications/s and the heap while it ran.
type campaignBench struct {
	users      int
	rate       int
	partitions int
	memState   bool
	analytics  bool
	external   bool         // the broker in a child process: the heap is notifyd's alone
	memProfile string       // a heap profile written once the campaign settled
	cpuProfile string       // a CPU profile from the approval to the last delivery
	ceiling    *ceiling     // nil: not measured
	report     *benchReport // receives the campaign's figures
}

// campaignFigures are the campaign's figures in the bench's -json report:
// Count notifications delivered from the approval to the last provider call.
type campaignFigures struct {
	phaseFigures
	Users           int     `json:"users"`
	RateLimit       int     `json:"rate_limit"`
	ProfilesMS      float64 `json:"profiles_ms"`
	HeapBeforeBytes uint64  `json:"heap_before_bytes"`
	HeapPeakBytes   uint64  `json:"heap_peak_bytes"`
	RSSBeforeBytes  uint64  `json:"rss_before_bytes"`
	RSSPeakBytes    uint64  `json:"rss_peak_bytes"`
	ProgressReadMS  float64 `json:"progress_read_ms"`
}

// campaignUser is the bench's user i; campaignUserIndex its inverse.
func campaignUser(i int) string { return fmt.Sprintf("cu%07d", i) }

func campaignUserIndex(id string) int {
	i, err := strconv.Atoi(strings.TrimPrefix(id, "cu"))
	if err != nil || !strings.HasPrefix(id, "cu") {
		return -1
	}
	return i
}

func inSegment(i int) bool { return i%4 != 3 }
func optedOut(i int) bool  { return i%10 == 0 }

// countingProvider counts what it accepted per bench user.
type countingProvider struct {
	per   []atomic.Int32
	total atomic.Int64
	other atomic.Int64 // notifications to anyone else
	last  atomic.Int64 // unix nanos of the latest call
}

func (c *countingProvider) Name() string { return "bench" }

func (c *countingProvider) Send(_ context.Context, n *schemas.Notification) (string, error) {
	if i := campaignUserIndex(n.UserID); i >= 0 && i < len(c.per) {
		c.per[i].Add(1)
	} else {
		c.other.Add(1)
	}
	c.total.Add(1)
	c.last.Store(time.Now().UnixNano())
	return "", nil
}

// heapSampler notes the live heap (marked live by the last GC) and the process's
// resident memory while the campaign runs.
type heapSampler struct {
	mu            sync.Mutex
	peakHeap      uint64
	peakRSS       uint64
	stop, stopped chan struct{}
}

func sampleHeap(every time.Duration) *heapSampler {
	s := &heapSampler{stop: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(s.stopped)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *heapSampler) sample() (heap, rss uint64) {
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(live)
	heap, rss = live[0].Value.Uint64(), residentBytes()
	s.mu.Lock()
	s.peakHeap, s.peakRSS = max(s.peakHeap, heap), max(s.peakRSS, rss)
	s.mu.Unlock()
	return heap, rss
}

func (s *heapSampler) finish() (peakHeap, peakRSS uint64) {
	close(s.stop)
	<-s.stopped
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peakHeap, s.peakRSS
}

// residentBytes is the process's resident set size (0 where /proc is absent).
func residentBytes() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

func mib(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// startBrokerProcess runs `notifyd broker` (this binary) on a free port and
// returns its address and a stop function that ends it and waits.
func startBrokerProcess(ctx context.Context, dir string, partitions int) (string, func(), error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	exe, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	cmd := exec.CommandContext(ctx, exe, "broker", "--data-dir", dir, "--port", strconv.Itoa(port),
		"--partitions", strconv.Itoa(partitions))
	cmd.Stderr = io.Discard
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}
	lines := bufio.NewScanner(out)
	for lines.Scan() {
		if addr, ok := strings.CutPrefix(lines.Text(), "broker listening on "); ok {
			go func() { _, _ = io.Copy(io.Discard, out) }()
			return addr, stop, nil
		}
	}
	stop()
	return "", nil, errors.New("bench: the broker process did not start")
}

func (b campaignBench) run(ctx context.Context) error {
	if b.users < 1 {
		return errors.New("bench: -campaign must be at least 1")
	}
	dir, err := os.MkdirTemp("", "notifyd-bench-campaign-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := benchConfig(dir, b.partitions, &b.analytics)
	cfg.APIKeys = append(cfg.APIKeys, config.APIKey{Name: "approver", Key: "bench-approver-0001", Scopes: []string{"approve"}})
	if b.external {
		addr, stop, err := startBrokerProcess(ctx, dir+"/broker", b.partitions)
		if err != nil {
			return err
		}
		defer stop()
		cfg.Kafka.Brokers = []string{addr}
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return err
		}
		cfg.Encryption.MasterKeys = "bench:" + base64.StdEncoding.EncodeToString(key)
	}
	cp := &countingProvider{per: make([]atomic.Int32, b.users)}
	svc, stop, err := startBenchService(ctx, cfg, b.memState, cp)
	if err != nil {
		return err
	}
	defer stop()
	base := "http://" + svc.HTTPAddr()
	client := &http.Client{}
	broker := map[bool]string{true: "a separate broker process", false: "the embedded broker"}[b.external]
	fmt.Printf("notifyd bench -campaign: %d users, %d partitions, goka state %s, %s\n\n", b.users, b.partitions,
		map[bool]string{true: "in memory", false: "on disk"}[b.memState], broker)

	producer, err := topology.NewProducer(svc.Brokers())
	if err != nil {
		return err
	}
	defer producer.Close()
	start := time.Now()
	eligible, segment := 0, 0
	for i := 0; i < b.users; i++ {
		u := campaignUser(i)
		p := &schemas.Profile{UserID: u, Email: u + "@example.com", Locale: "de", UpdatedAt: time.Now().UnixMilli(),
			Attributes: map[string]string{"plan": map[bool]string{true: "pro", false: "free"}[inSegment(i)]}}
		if optedOut(i) {
			p.Preferences.Categories = map[string]map[string]bool{"marketing": {"email": false}}
		}
		if inSegment(i) {
			segment++
			if !optedOut(i) {
				eligible++
			}
		}
		v, err := schemas.ProfileCodec.Encode(p)
		if err != nil {
			return err
		}
		producer.Produce(ctx, &kgo.Record{Topic: string(topology.Profiles), Key: []byte(u), Value: v}, nil)
	}
	if err := producer.Flush(ctx); err != nil {
		return err
	}
	profilesTook := time.Since(start)
	fmt.Printf("profiles: %d produced to notify.profiles in %v (%d in the segment, %d of them opted out of marketing email)\n",
		b.users, profilesTook.Round(time.Millisecond), segment, segment-eligible)

	tmpl := `{"category":"marketing","channels":{"email":{"subject":"Spring sale","text":"Hello {{.name}}, 20% off for pro users."}}}`
	if err := call(ctx, client, "PUT", base+"/v1/templates/promo", tmpl, http.StatusOK); err != nil {
		return err
	}
	body := fmt.Sprintf(`{"id":"bench","template":"promo","data":{"name":"there"},"rate":%d,"audience":{"segment":"attributes.plan = \"pro\""}}`, b.rate)
	if err := call(ctx, client, "POST", base+"/v1/campaigns", body, http.StatusAccepted); err != nil {
		return err
	}
	runtime.GC()
	heap := sampleHeap(250 * time.Millisecond)
	baseHeap, baseRSS := heap.sample()
	if b.cpuProfile != "" {
		f, err := os.Create(b.cpuProfile)
		if err != nil {
			heap.finish()
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			heap.finish()
			return err
		}
	}
	approved := time.Now()
	if err := callAs(ctx, client, "bench-approver-0001", "POST", base+"/v1/campaigns/bench/approve", `{"comment":"bench"}`, http.StatusOK); err != nil {
		heap.finish()
		return err
	}
	// Heap at each quarter of the deliveries: flat memory shows as equal figures.
	var quarters []string
	next := 1
	deadline := time.Now().Add(30 * time.Minute)
	for cp.total.Load() < int64(eligible) {
		if ctx.Err() != nil || time.Now().After(deadline) {
			heap.finish()
			return fmt.Errorf("bench: %d of %d campaign notifications delivered", cp.total.Load(), eligible)
		}
		if got := cp.total.Load(); next < 4 && got >= int64(eligible*next/4) {
			h, r := heap.sample()
			quarters = append(quarters, fmt.Sprintf("%d%%: heap %s, RSS %s", 25*next, mib(h), mib(r)))
			next++
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Unix(0, cp.last.Load()).Sub(approved)
	if b.cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	// The campaign settles: every notification targeted and none on its way.
	var c campaignProgress
	var lastRead time.Duration
	for {
		readAt := time.Now()
		c, err = readCampaign(ctx, client, base)
		lastRead = time.Since(readAt)
		if err != nil {
			heap.finish()
			return err
		}
		if c.State == processors.CampaignCompleted && c.Progress.Queued == 0 && c.Progress.Targeted == c.Fanout["targeted"] {
			break
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			heap.finish()
			return fmt.Errorf("bench: the campaign did not settle: %+v", c)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A duplicate would arrive now; and the API's last count of the
	// progress (reused for twice as long as it took) is no longer reused.
	time.Sleep(2*time.Second + 3*lastRead)
	readStart := time.Now()
	if c, err = readCampaign(ctx, client, base); err != nil {
		return err
	}
	progressRead := time.Since(readStart)
	peakHeap, peakRSS := heap.finish()
	if b.memProfile != "" {
		if err := writeHeapProfile(b.memProfile); err != nil {
			return err
		}
	}
	fig := &campaignFigures{phaseFigures: *newPhase(eligible, elapsed, b.ceiling, nil), Users: b.users, RateLimit: b.rate,
		ProfilesMS: msec(profilesTook), HeapBeforeBytes: baseHeap, HeapPeakBytes: peakHeap, RSSBeforeBytes: baseRSS,
		RSSPeakBytes: peakRSS, ProgressReadMS: msec(progressRead)}
	if b.report != nil {
		b.report.Phases.Campaign = fig
	}
	share := ""
	if s := b.ceiling.share(fig.Rate); s != "" {
		share = ", " + s
	}
	fmt.Printf("campaign: approved → %d notifications delivered in %v: %.0f notifications/s (rate limit %d/s)%s\n",
		eligible, elapsed.Round(time.Millisecond), fig.Rate, b.rate, share)
	fmt.Printf("  heap (live, Go) before %s, peak %s; RSS before %s, peak %s\n", mib(baseHeap), mib(peakHeap), mib(baseRSS), mib(peakRSS))
	fmt.Printf("  during the run: %s\n", strings.Join(quarters, "; "))
	fmt.Printf("  progress: targeted %d, queued %d, sent %d, suppressed %d, failed %d (GET /v1/campaigns/bench took %s)\n",
		c.Progress.Targeted, c.Progress.Queued, c.Progress.Sent, c.Progress.Suppressed, c.Progress.Failed, ms(progressRead))

	// Exactly once to every eligible user, nothing to anyone else.
	var twice, missing, wrong int
	for i := range cp.per {
		got := cp.per[i].Load()
		switch want := inSegment(i) && !optedOut(i); {
		case want && got == 0:
			missing++
		case want && got > 1:
			twice++
		case !want && got > 0:
			wrong++
		}
	}
	if twice+missing+wrong > 0 || cp.other.Load() > 0 {
		return fmt.Errorf("bench: %d eligible users got nothing, %d got more than one, %d not eligible got one, %d to unknown users",
			missing, twice, wrong, cp.other.Load())
	}
	want := processors.Progress{Targeted: int64(segment), Sent: int64(eligible), Suppressed: int64(segment - eligible)}
	if c.Progress != want {
		return fmt.Errorf("bench: progress %+v, want %+v", c.Progress, want)
	}
	fmt.Printf("  checked: each of the %d eligible users got exactly one message, no other user any; progress agrees\n", eligible)
	if b.analytics {
		return b.checkClickHouse(ctx, svc, want)
	}
	return nil
}

// checkClickHouse waits until ClickHouse's campaign progress (query 11 of
// docs/ANALYTICS.md) equals want.
func (b campaignBench) checkClickHouse(ctx context.Context, svc *service.Service, want processors.Progress) error {
	for svc.AnalyticsAddr() == "" && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	conn, err := analytics.Open(svc.AnalyticsAddr(), "default", "")
	if err != nil {
		return err
	}
	defer conn.Close()
	wantRow := fmt.Sprint([]any{"bench", want.Targeted, want.Queued, want.Sent, want.Suppressed, want.Failed})
	var got string
	for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(time.Second) {
		t, err := analytics.CampaignProgress(ctx, conn, "notifyd", "", "bench")
		if err != nil {
			return err
		}
		if len(t.Rows) == 1 {
			if got = fmt.Sprint(t.Rows[0]); got == wantRow {
				fmt.Printf("  ClickHouse (query 11): %s — equal\n", got)
				return nil
			}
		}
	}
	return fmt.Errorf("bench: ClickHouse campaign progress %s, want %s", got, wantRow)
}

type campaignProgress struct {
	State    string              `json:"state"`
	Progress processors.Progress `json:"progress"`
	Fanout   map[string]int64    `json:"fanout"`
}

func readCampaign(ctx context.Context, client *http.Client, base string) (campaignProgress, error) {
	var c campaignProgress
	req, err := http.NewRequestWithContext(ctx, "GET", base+"/v1/campaigns/bench", nil)
	if err != nil {
		return c, err
	}
	req.Header.Set("Authorization", "Bearer bench-key-0001")
	resp, err := client.Do(req)
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return c, fmt.Errorf("GET /v1/campaigns/bench: %s: %s", resp.Status, b)
	}
	return c, json.NewDecoder(resp.Body).Decode(&c)
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
