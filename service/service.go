// Package service assembles notifyd's components into the roles of the single
// binary: all-in-one, api, process and sink.
package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/lovoo/goka"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/notifyd/notifyd/analytics"
	"github.com/notifyd/notifyd/api"
	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/crypt"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks"
	"github.com/notifyd/notifyd/topology"
	"github.com/notifyd/notifyd/tracking"
)

// Roles say which components a process runs.
type Roles struct {
	API     bool
	Process bool
	// Sinks lists the channels whose sinks run; nil with AllSinks runs every configured one.
	Sinks    []string
	AllSinks bool
	// Analytics runs the ClickHouse sink (in all-in-one only when
	// analytics.enabled; with no analytics.addr it starts a local server).
	Analytics bool
	// LocalClickHouse allows starting clickhouse-server when no address is set.
	LocalClickHouse bool
}

// AllInOne is every role.
var AllInOne = Roles{API: true, Process: true, AllSinks: true, Analytics: true, LocalClickHouse: true}

// Service is one notifyd process.
type Service struct {
	Cfg   config.Config
	Roles Roles
	Log   *slog.Logger
	// Providers replaces the configured providers of a channel (tests, bench).
	Providers map[string][]sinks.Provider
	// InMemoryState keeps goka tables in memory instead of under the data dir.
	InMemoryState bool
	Now           func() time.Time

	mu       sync.Mutex
	brokers  []string
	httpAddr string
	// apiRoutes are the API's route patterns (APIRoutes).
	apiRoutes []string
	ready     chan struct{}
	readyErr  error
	views     []*goka.View
	procs     []*goka.Processor
	// statusProc is the status group's processor when this process runs it.
	statusProc *goka.Processor
	// inboxProc is the inbox group's processor when this process runs it.
	inboxProc *goka.Processor
	sinks     []*sinks.Sink
	retrier   *sinks.Retrier
	chAddr    string
	chConn    driver.Conn
	// watch knows what every group and sink of this process has in work (readiness).
	watch *topology.Watchdog
	// keys seals and opens personal data (crypt.Keyring).
	keys *crypt.Keyring
	// priority is this process's topology.PriorityGate (nil: off).
	priority *topology.PriorityGate
	// tracker signs and verifies email tracking links (nil: off).
	tracker *tracking.Signer
	// tables are the group-table partitions this process's groups own.
	tables *topology.Tables
	// cancels is this process's view of notify.cancels.
	cancels *goka.View
}

// AnalyticsAddr is the ClickHouse address the analytics sink writes to ("" if none).
func (s *Service) AnalyticsAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.chAddr
}

func (s *Service) init() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ready == nil {
		s.ready = make(chan struct{})
	}
}

// Ready is closed once every component of the process serves.
func (s *Service) Ready() <-chan struct{} {
	s.init()
	return s.ready
}

// Brokers are the Kafka addresses in use (the embedded broker's when it runs).
func (s *Service) Brokers() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.brokers
}

// HTTPAddr is the API's listening address.
func (s *Service) HTTPAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.httpAddr
}

// APIRoutes are the route patterns of this process's API (none before it
// listens, or when it runs no API).
func (s *Service) APIRoutes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.apiRoutes)
}

// Processor is the goka processor of group in this process (nil if it runs none).
func (s *Service) Processor(group goka.Group) *goka.Processor {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.procs {
		if p.Graph().Group() == group {
			return p
		}
	}
	return nil
}

// SetKafkaClientLogger sends the Kafka client library's log to l at debug
// level. It is a process-wide setting: call it once, before any Service runs.
func SetKafkaClientLogger(l *slog.Logger) {
	goka.SetSaramaLogger(slog.NewLogLogger(l.Handler(), slog.LevelDebug))
}

// StartBroker runs the embedded kfake broker with its data under dataDir.
func StartBroker(dataDir string, port int) (*kfake.Cluster, error) {
	// The log holds notify.ingest in clear: the owner's alone (kfake itself
	// creates 0755 directories and 0644 files; the notifyd binary's umask
	// narrows those).
	if err := os.MkdirAll(filepath.Join(dataDir, "kafka"), 0o700); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.DataDir(filepath.Join(dataDir, "kafka")),
		kfake.ClusterID("notifyd-embedded"),
	)
	if err != nil {
		return nil, fmt.Errorf("embedded broker on 127.0.0.1:%d: %w", port, err)
	}
	return c, nil
}

// Run runs the process until ctx ends, then stops every component and returns
// their joined error.
func (s *Service) Run(ctx context.Context) error {
	s.init()
	if s.Log == nil {
		s.Log = slog.Default()
	}
	cfg := s.Cfg
	brokers := cfg.Kafka.Brokers
	if len(brokers) == 0 {
		cluster, err := StartBroker(cfg.DataDir, cfg.Kafka.EmbeddedPort)
		if err != nil {
			return err
		}
		// The broker stops last, after every client of it.
		defer cluster.Close()
		brokers = cluster.ListenAddrs()
		s.Log.Info("embedded Kafka broker listening", "addr", brokers[0], "dataDir", filepath.Join(cfg.DataDir, "kafka"))
	}
	s.mu.Lock()
	s.brokers = brokers
	s.mu.Unlock()

	if len(cfg.Kafka.Brokers) > 0 {
		// A wrong password or CA fails here, naming the setting, rather
		// than as a bare EOF from the first client.
		if err := topology.CheckBrokers(ctx, brokers); err != nil {
			return err
		}
	}
	extraTopics := topology.RetryTopics(cfg.Sink.Retry.Tiers)
	if len(cfg.Kafka.Brokers) > 0 {
		extraTopics = append(extraTopics, topology.DataKeysOnKafka())
	}
	if err := topology.CreateTopics(ctx, brokers, cfg.Kafka.Partitions, cfg.Kafka.Replication, extraTopics...); err != nil {
		return err
	}
	s.watch = topology.NewWatchdog()
	producer, err := topology.NewProducer(brokers)
	if err != nil {
		return err
	}
	defer producer.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	deadLetters := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "notifyd_dead_letters_total",
		Help: "Records this process sent to notify.dlq, by stage."}, []string{"stage"})
	reg.MustRegister(deadLetters)
	lagGroups := []string{string(topology.DedupGroup), string(topology.DeliverGroup), string(topology.SchedulerGroup),
		string(topology.StatusGroup), string(topology.CampaignGroup), string(topology.ScheduleGroup), topology.RetryGroup, sinks.AnalyticsGroup}
	for _, ch := range processors.AllChannels() {
		lagGroups = append(lagGroups, topology.SinkGroup(ch))
	}
	lag := topology.NewLagCollector(brokers, lagGroups, s.Log)
	defer lag.Close() // before the embedded broker closes
	reg.MustRegister(lag)
	if cfg.Priority.On() {
		s.priority = topology.NewPriorityGate(cfg.Priority.Hold, cfg.Priority.MaxHold)
		gate := s.priority
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "notifyd_priority_holds_total",
			Help: "Times this process held its normal and low lanes for high-priority work (docs/TOPICS.md, the priority gate)."},
			func() float64 { return float64(gate.Holds()) }))
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "notifyd_priority_held_seconds_total",
			Help: "How long this process held its normal and low lanes for high-priority work, in all."},
			func() float64 { return gate.HeldFor().Seconds() }))
	}
	kafka := topology.Kafka{Brokers: brokers, Replication: cfg.Kafka.Replication, FlushEvery: cfg.Kafka.FlushEvery,
		SessionTimeout: cfg.Kafka.SessionTimeout, Priority: s.priority}
	if !s.InMemoryState {
		kafka.StorageDir = filepath.Join(cfg.DataDir, "goka")
		if err := os.MkdirAll(kafka.StorageDir, 0o700); err != nil {
			return fmt.Errorf("goka storage: %w", err)
		}
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(runCtx)
	// A component that fails to start stops the ones already running.
	fail := func(err error) error {
		cancel()
		return errors.Join(err, g.Wait())
	}
	var waits []func(context.Context) error
	// Its own client: a new user's key is produced synchronously inside a
	// group's callback, and must not wait behind the sinks' batches. Closed
	// after every component has stopped.
	keysProducer, err := topology.NewProducer(brokers)
	if err != nil {
		return fail(err)
	}
	defer keysProducer.Close()
	keys, keysReady, err := s.startKeyring(gctx, g, kafka, keysProducer)
	if err != nil {
		return fail(err)
	}
	tr, err := tracker(cfg)
	if err != nil {
		return fail(err)
	}
	s.mu.Lock()
	s.keys, s.tracker = keys, tr
	s.mu.Unlock()
	// Nothing consumes before the data keys are readable: a restarted sink
	// or group would otherwise wait on each record for its key to show up in
	// a view that is still loading, with its partitions' work in flight.
	if err := keysReady(gctx); err != nil {
		return fail(fmt.Errorf("data keys: %w", err))
	}
	if s.Roles.Process || s.Roles.API || s.Roles.AllSinks || len(s.Roles.Sinks) > 0 {
		cancels, err := s.startCancels(gctx, g, kafka)
		if err != nil {
			return fail(err)
		}
		s.cancels = cancels
		waits = append(waits, viewReady(cancels))
	}
	if s.Roles.Process {
		w, err := s.startProcess(gctx, g, kafka, producer, func(stage string) { deadLetters.WithLabelValues(stage).Inc() })
		if err != nil {
			return fail(err)
		}
		waits = append(waits, w...)
	}
	if s.Roles.Analytics && (cfg.Analytics.On() || !s.Roles.LocalClickHouse) {
		if err := s.startAnalytics(gctx, g, brokers, reg); err != nil {
			return fail(err)
		}
	}
	if s.Roles.API {
		// Its own client: an API request's produce must not wait behind the
		// sinks' batches of status events in a shared buffer.
		apiProducer, err := topology.NewProducer(brokers)
		if err != nil {
			return fail(err)
		}
		defer apiProducer.Close()
		ingestProducer, err := topology.NewIngestProducer(brokers)
		if err != nil {
			return fail(err)
		}
		defer ingestProducer.Close()
		w, err := s.startAPI(gctx, g, kafka, apiProducer, ingestProducer, reg)
		if err != nil {
			return fail(err)
		}
		waits = append(waits, w...)
	}
	if err := s.startSinks(gctx, g, brokers, producer, reg); err != nil {
		return fail(err)
	}
	if !s.Roles.API && cfg.Health.Addr != "" {
		if err := s.startOps(gctx, g, producer, reg); err != nil {
			return fail(err)
		}
	}
	if s.retrier != nil {
		waits = append(waits, func(ctx context.Context) error {
			select {
			case <-s.retrier.Ready():
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}
	for _, sk := range s.sinks {
		sk := sk
		waits = append(waits, func(ctx context.Context) error {
			select {
			case <-sk.Ready():
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}
	g.Go(func() error {
		for _, w := range waits {
			if err := w(gctx); err != nil {
				return nil // stopping before ready is not an error of its own
			}
		}
		s.Log.Info("notifyd ready", "api", s.HTTPAddr(), "brokers", brokers)
		close(s.ready)
		return nil
	})
	return g.Wait()
}

// startOps serves /healthz, /readyz and /metrics for a role without the API.
func (s *Service) startOps(ctx context.Context, g *errgroup.Group, producer *kgo.Client, reg *prometheus.Registry) error {
	ln, err := net.Listen("tcp", s.Cfg.Health.Addr)
	if err != nil {
		return fmt.Errorf("health listen %s: %w", s.Cfg.Health.Addr, err)
	}
	s.mu.Lock()
	s.httpAddr = ln.Addr().String()
	s.mu.Unlock()
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		rctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		err := producer.Ping(rctx)
		if err == nil {
			select {
			case <-s.Ready():
				err = s.notStuck()
			default:
				err = errors.New("starting")
			}
		}
		if err != nil {
			reply(w, http.StatusServiceUnavailable, map[string]any{"error": map[string]string{"code": "unavailable", "message": err.Error()}})
			return
		}
		reply(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	serveHTTP(ctx, g, "health", &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, ln)
	s.Log.Info("health and metrics listening", "addr", ln.Addr().String())
	return nil
}

// serveHTTP serves hs on ln in g until ctx ends, then shuts it down.
func serveHTTP(ctx context.Context, g *errgroup.Group, name string, hs *http.Server, ln net.Listener) {
	g.Go(func() error {
		if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return hs.Shutdown(sctx)
	})
}

// notStuck fails while a group or sink of this process has had a record in
// work longer than health.stuckAfter.
func (s *Service) notStuck() error {
	if stuck := s.watch.Stuck(s.Cfg.Health.StuckAfter); len(stuck) > 0 {
		return fmt.Errorf("stuck on a record: %s", strings.Join(stuck, ", "))
	}
	return nil
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Service) startProcess(ctx context.Context, g *errgroup.Group, kafka topology.Kafka, producer *kgo.Client, deadLetter func(string)) ([]func(context.Context) error, error) {
	cfg := s.Cfg
	enabled := map[string]bool{}
	for _, ch := range cfg.ChannelNames() {
		enabled[ch] = true
	}
	for ch := range s.Providers {
		enabled[ch] = true
	}
	pipe := &topology.Pipeline{
		DedupWindow:   cfg.Dedup.Window,
		TableWait:     cfg.Limits.TableWait,
		Partitions:    cfg.Kafka.Partitions,
		Now:           s.Now,
		InboxCapacity: cfg.Inbox.MaxMessages,
		Keys:          s.keys,
		Watch:         s.watch,
		DeadLetter:    deadLetter,
		CampaignStep:  cfg.Campaigns.Step,
		CatchUp:       cfg.Campaigns.CatchUp,
		Deliverer: processors.Deliverer{
			Render:  processors.LimitsFromConfig(cfg.Render),
			Limiter: processors.Limiter{ContentWindow: cfg.Limits.ContentDedupWindow, PerDay: cfg.Limits.PerDay},
			Enabled: func(ch string) bool { return enabled[ch] },
		},
	}
	gokaLog := slog.NewLogLogger(s.Log.Handler(), slog.LevelDebug)
	tables := topology.NewTables()
	kafka.Tables = tables
	s.tables = tables
	var waits []func(context.Context) error
	audience, views, err := s.startAudience(ctx, g, kafka, kadm.NewClient(producer))
	if err != nil {
		return nil, err
	}
	pipe.Audience = audience
	for _, v := range views {
		waits = append(waits, viewReady(v))
	}
	for _, graph := range []*goka.GroupGraph{pipe.DedupGraph(), pipe.DeliverGraph(), pipe.SchedulerGraph(), pipe.StatusGraph(), pipe.InboxGraph(),
		pipe.CampaignGraph(), pipe.ScheduleGraph()} {
		opts := append(kafka.ProcessorOptions(graph.Group()), goka.WithLogger(gokaLog))
		p, err := goka.NewProcessor(kafka.Brokers, graph, opts...)
		if err != nil {
			return nil, fmt.Errorf("processor %s: %w", graph.Group(), err)
		}
		s.mu.Lock()
		s.procs = append(s.procs, p)
		s.mu.Unlock()
		switch graph.Group() {
		case topology.StatusGroup:
			s.statusProc = p
		case topology.InboxGroup:
			s.inboxProc = p
		}
		g.Go(func() error { return p.Run(ctx) })
		waits = append(waits, p.WaitForReadyContext)
	}
	// The sweepers walk the table partitions this process owns: each entry is
	// swept once, however many process instances run.
	dedup := topology.DedupSweeper(tables, producer, cfg.Dedup.Window, cfg.Dedup.SweepInterval, s.Now, s.Log)
	scheduler := topology.SchedulerSweeper(tables, producer, cfg.Scheduler.Interval, topology.DefaultReleaseGrace, s.Now, s.Log)
	campaigns := topology.CampaignSweeper(tables, producer, max(cfg.Campaigns.Step/10, 10*time.Millisecond), s.Now, s.Log)
	schedules := topology.ScheduleSweeper(tables, producer, cfg.Scheduler.Interval, s.Now, s.Log)
	g.Go(func() error { return dedup.Run(ctx) })
	g.Go(func() error { return scheduler.Run(ctx) })
	g.Go(func() error { return campaigns.Run(ctx) })
	g.Go(func() error { return schedules.Run(ctx) })
	return waits, nil
}

// startView runs a view of table in g; name keeps its local storage apart.
func (s *Service) startView(ctx context.Context, g *errgroup.Group, kafka topology.Kafka, name string, table goka.Table, codec goka.Codec, extra ...goka.ViewOption) (*goka.View, error) {
	opts := append(kafka.ViewOptions(name), goka.WithViewLogger(slog.NewLogLogger(s.Log.Handler(), slog.LevelDebug)))
	opts = append(opts, extra...)
	v, err := goka.NewView(kafka.Brokers, table, codec, opts...)
	if err != nil {
		return nil, fmt.Errorf("view %s: %w", table, err)
	}
	g.Go(func() error { return v.Run(ctx) })
	return v, nil
}

func viewReady(v *goka.View) func(context.Context) error {
	return func(ctx context.Context) error {
		select {
		case <-v.WaitRunning():
		case <-ctx.Done():
			return ctx.Err()
		}
		for !v.Recovered() {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
		return nil
	}
}

func (s *Service) startAPI(ctx context.Context, g *errgroup.Group, kafka topology.Kafka, producer, ingestProducer *kgo.Client, reg *prometheus.Registry) ([]func(context.Context) error, error) {
	cfg := s.Cfg
	templates, err := s.startView(ctx, g, kafka, "api-templates", topology.Templates, topology.TemplateTableCodec())
	if err != nil {
		return nil, err
	}
	templateVersions, err := s.startView(ctx, g, kafka, "api-template-versions", topology.TemplateVersions, topology.TemplateTableCodec())
	if err != nil {
		return nil, err
	}
	profiles, err := s.startView(ctx, g, kafka, "api-profiles", topology.Profiles, topology.ProfileTableCodec())
	if err != nil {
		return nil, err
	}
	managedKeys, err := s.startView(ctx, g, kafka, "api-keys", topology.APIKeys, schemas.Lenient[schemas.APIKey]{C: schemas.APIKeyCodec})
	if err != nil {
		return nil, err
	}
	configKeys, err := api.LoadKeys(cfg.APIKeys)
	if err != nil {
		return nil, fmt.Errorf("apiKeys: %w", err)
	}
	campaignTable, err := s.startView(ctx, g, kafka, "api-campaigns", goka.GroupTable(topology.CampaignGroup), topology.CampaignTableCodec())
	if err != nil {
		return nil, err
	}
	scheduleTable, err := s.startView(ctx, g, kafka, "api-schedules", goka.GroupTable(topology.ScheduleGroup), topology.ScheduleTableCodec())
	if err != nil {
		return nil, err
	}
	members, err := s.startView(ctx, g, kafka, "api-audiences", topology.Audiences, schemas.Lenient[schemas.AudienceMember]{C: schemas.AudienceMemberCodec})
	if err != nil {
		return nil, err
	}
	views := []*goka.View{templates, templateVersions, profiles, managedKeys, campaignTable, scheduleTable, members}
	adm := kadm.NewClient(producer)
	// In one process with the status group, read its table directly rather
	// than keep a second copy of every lifecycle in a view; a view is started
	// only when another instance turns out to own some of its partitions.
	startStatusView := func() (*goka.View, error) {
		return s.startView(ctx, g, kafka, "api-status", goka.GroupTable(topology.StatusGroup), topology.LifecycleTableCodec())
	}
	status := &statusTable{proc: s.statusProc, start: startStatusView}
	if s.statusProc == nil {
		v, err := status.ensureView()
		if err != nil {
			return nil, err
		}
		views = append(views, v)
	}
	inbox, err := s.startInbox(ctx, g, kafka, producer)
	if err != nil {
		return nil, err
	}
	if v := inbox.view(); v != nil {
		views = append(views, v)
	}
	receipts, err := s.receiptSources(ctx, g, producer)
	if err != nil {
		return nil, err
	}
	srv := &api.Server{Producer: producer, IngestProducer: ingestProducer, Priority: s.priority, Status: status, Inbox: inbox.api, ReceiptProviders: receipts, Crypt: s.keys, Tracker: s.tracker,
		Templates:        &syncedView{View: templates, adm: adm, topic: string(topology.Templates), partitions: cfg.Kafka.Partitions},
		TemplateVersions: &syncedView{View: templateVersions, adm: adm, topic: string(topology.TemplateVersions), partitions: cfg.Kafka.Partitions},
		Profiles:         &syncedView{View: profiles, adm: adm, topic: string(topology.Profiles), partitions: cfg.Kafka.Partitions},
		Keys:             configKeys, ManagedKeys: managedKeys, Log: s.Log, MaxBodyBytes: cfg.HTTP.MaxBodyBytes, MaxBatch: cfg.HTTP.MaxBatch,
		Render:    processors.LimitsFromConfig(cfg.Render),
		WriteWait: 3 * time.Second, Gatherer: reg, Now: s.Now,
		Ready: func(ctx context.Context) error {
			if err := producer.Ping(ctx); err != nil {
				return fmt.Errorf("broker unreachable: %w", err)
			}
			select {
			case <-s.ready:
				// Every view recovered before the process became ready; one
				// that reconnects for a moment since keeps serving.
			default:
				for _, v := range views {
					if !v.Recovered() {
						return fmt.Errorf("tables are still recovering: %s", v.Topic())
					}
				}
			}
			return s.notStuck()
		}}
	membersSync := &topology.ViewAudience{Members: members, Adm: adm}
	srv.Campaigns = &api.Campaigns{Table: campaignTable, Members: members, Cancels: s.cancels, Schedules: scheduleTable,
		SyncMembers: func(ctx context.Context) bool {
			return membersSync.Current(ctx, &schemas.Campaign{AudienceKind: processors.AudienceList})
		},
		Progress: newProgressCache(s.progress(status), time.Now).get, ApprovalAbove: cfg.Campaigns.ApprovalAbove, MaxListBytes: cfg.Campaigns.MaxListBytes}
	srv.NewMetrics(reg)
	srv.Reports = api.Analytics{Conn: s.analyticsConn, DB: cfg.Analytics.Database, Grace: cfg.Analytics.ReceiptGrace}
	if !s.Roles.Analytics && cfg.Analytics.Addr != "" { // an api instance of a scaled-out deployment
		conn, err := analytics.Open(cfg.Analytics.Addr, cfg.Analytics.User, cfg.Analytics.Password)
		if err != nil {
			return nil, fmt.Errorf("analytics: %w", err)
		}
		g.Go(func() error { <-ctx.Done(); return conn.Close() })
		srv.Reports.Conn = func() driver.Conn { return conn }
	}
	ln, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		return nil, fmt.Errorf("api listen %s: %w", cfg.HTTP.Addr, err)
	}
	handler := srv.Handler()
	s.mu.Lock()
	s.httpAddr = ln.Addr().String()
	s.apiRoutes = srv.Routes()
	s.mu.Unlock()
	serveHTTP(ctx, g, "api", &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute}, ln)
	s.Log.Info("API listening", "addr", s.httpAddr)
	var waits []func(context.Context) error
	for _, v := range views {
		waits = append(waits, viewReady(v))
	}
	return waits, nil
}

// receiptSources are the configured providers that take their service's
// callbacks (delivery receipts) at POST /v1/receipts/{provider}.
func (s *Service) receiptSources(ctx context.Context, g *errgroup.Group, producer *kgo.Client) (map[string]api.ReceiptSource, error) {
	out := map[string]api.ReceiptSource{}
	for ch, cfgs := range s.Cfg.Channels {
		providers, injected := s.Providers[ch]
		if !injected {
			var err error
			if providers, err = sinks.BuildProviders(ch, cfgs, sinks.Deps{Log: s.Log, Now: s.Now, Producer: producer, Keys: s.keys, Tracker: s.tracker}); err != nil {
				return nil, err
			}
		}
		for _, p := range providers {
			if rp, ok := p.(sinks.ReceiptProvider); ok {
				out[p.Name()] = api.ReceiptSource{Channel: ch, Provider: rp}
			}
			if c, ok := p.(sinks.Closer); ok && !injected {
				g.Go(func() error { <-ctx.Done(); return c.Close() })
			}
		}
	}
	return out, nil
}

// startAnalytics runs the ClickHouse sink in g. With no analytics.addr it
// starts a local clickhouse-server first, inside the goroutine: the pipeline
// and the API never wait for analytics (after a crash the previous server may
// hold its directory for a while). The server stops when the sink has.
func (s *Service) startAnalytics(ctx context.Context, g *errgroup.Group, brokers []string, reg *prometheus.Registry) error {
	a := s.Cfg.Analytics
	if a.Addr == "" && !s.Roles.LocalClickHouse {
		return errors.New("analytics: analytics.addr (or NOTIFYD_ANALYTICS_ADDR) is required outside `notifyd run`")
	}
	metrics := sinks.NewAnalyticsMetrics(reg)
	g.Go(func() error {
		addr := a.Addr
		if addr == "" {
			local, err := analytics.StartLocal(ctx, filepath.Join(s.Cfg.DataDir, "clickhouse"), a.LocalPort)
			if errors.Is(err, analytics.ErrServerNotInstalled) {
				// The pipeline does not depend on analytics: deliver, and say loudly what is missing.
				s.Log.Error("analytics disabled for this run", "err", err)
				return nil
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("analytics: %w", err)
			}
			defer local.Stop()
			addr = local.Addr
			s.Log.Info("ClickHouse (local) listening", "addr", addr, "dataDir", local.Dir,
				"client", "clickhouse-client --port "+addr[strings.LastIndexByte(addr, ':')+1:])
		}
		conn, err := analytics.Open(addr, a.User, a.Password)
		if err != nil {
			return fmt.Errorf("analytics: %w", err)
		}
		defer conn.Close()
		// ClickHouse may come up after notifyd: migrate with backoff, then stream.
		backoff := 200 * time.Millisecond
		for {
			_, err := analytics.Migrate(ctx, conn, a.Database)
			if err == nil {
				err = analytics.LoadPrices(ctx, conn, a.Database, analytics.PricesFromConfig(a.Prices))
			}
			if err == nil {
				break
			}
			s.Log.Warn("analytics schema not ready; retrying", "addr", addr, "in", backoff, "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			if backoff *= 2; backoff > a.MaxBackoff {
				backoff = a.MaxBackoff
			}
		}
		s.mu.Lock()
		s.chAddr, s.chConn = addr, conn
		s.mu.Unlock()
		sink := &sinks.AnalyticsSink{Brokers: brokers, Conn: conn, DB: a.Database, BatchSize: a.BatchSize, FlushEvery: a.FlushEvery,
			Backoff: 100 * time.Millisecond, MaxBackoff: a.MaxBackoff, Log: s.Log.With("sink", "analytics"), Metrics: metrics}
		return sink.Run(ctx)
	})
	return nil
}

// analyticsConn is the ClickHouse connection once analytics is up (nil before).
func (s *Service) analyticsConn() driver.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.chConn
}

func (s *Service) startSinks(ctx context.Context, g *errgroup.Group, brokers []string, producer *kgo.Client, reg *prometheus.Registry) error {
	channels := s.Roles.Sinks
	if s.Roles.AllSinks {
		channels = s.Cfg.ChannelNames()
		for ch := range s.Providers {
			if len(s.Cfg.Channels[ch]) == 0 {
				channels = append(channels, ch)
			}
		}
	}
	if len(channels) == 0 {
		return nil
	}
	metrics := sinks.NewMetrics(reg)
	o := s.Cfg.Sink
	var alerter sinks.Alerter
	if s.Cfg.Alerts.WebhookURL != "" {
		w := sinks.NewWebhookAlerter(s.Cfg.Alerts.WebhookURL, s.Cfg.Alerts.Timeout, s.Log)
		g.Go(func() error { return w.Run(ctx) })
		alerter = w
	}
	// The retry group: any sink instance moves due retries of any channel back
	// to their queue.
	retrier := &sinks.Retrier{Brokers: brokers, Producer: producer, Log: s.Log, Metrics: metrics, Now: s.Now,
		SessionTimeout: s.Cfg.Kafka.SessionTimeout}
	s.retrier = retrier
	g.Go(func() error { return retrier.Run(ctx) })
	for _, ch := range channels {
		limits := map[string]sinks.ProviderLimits{}
		for _, pc := range s.Cfg.Channels[ch] {
			limits[pc.Name] = sinks.ProviderLimits{RateLimit: pc.RateLimit, Burst: pc.Burst, Concurrency: pc.Concurrency, Priorities: pc.Priorities}
		}
		providers, ok := s.Providers[ch]
		if !ok {
			var err error
			providers, err = sinks.BuildProviders(ch, s.Cfg.Channels[ch], sinks.Deps{Log: s.Log, Now: s.Now, Producer: producer, Keys: s.keys, Tracker: s.tracker})
			if err != nil {
				return err
			}
		}
		if len(providers) == 0 {
			return fmt.Errorf("sink %s: no provider configured for the channel", ch)
		}
		sk := &sinks.Sink{Channel: ch, Brokers: brokers, Providers: providers, Limits: limits, Producer: producer, Log: s.Log, Keys: s.keys,
			Canceled: canceledBy(s.cancels), Priority: s.priority,
			Metrics: metrics, Now: s.Now, Alerter: alerter, Watch: s.watch,
			Opts: sinks.Options{Chunk: o.Chunk, Concurrency: o.Concurrency, Attempts: o.Attempts,
				Backoff: o.Backoff, SendTimeout: o.SendTimeout, LedgerLookback: o.LedgerLookback, DrainTimeout: o.DrainTimeout,
				Retry: o.Retry, Breaker: o.Breaker, Partitions: s.Cfg.Kafka.Partitions, SessionTimeout: s.Cfg.Kafka.SessionTimeout}}
		s.sinks = append(s.sinks, sk)
		g.Go(func() error { return sk.Run(ctx) })
	}
	return nil
}
