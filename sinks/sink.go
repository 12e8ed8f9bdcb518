package sinks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// Options tune a sink.
type Options struct {
	// Chunk bounds the records of one priority taken and not yet finished
	// (four times as many wait polled); a full priority never holds up another.
	Chunk       int
	Concurrency int           // provider calls in flight per provider with no concurrency limit of its own
	Attempts    int           // quick tries per provider for transient errors before the next provider
	Backoff     time.Duration // between quick tries, doubled each try
	SendTimeout time.Duration
	// LedgerLookback is how far back the ledger is read when a partition is
	// assigned, and how long entries are kept.
	LedgerLookback time.Duration
	// DrainTimeout is how long a stopping sink, or one losing partitions, lets
	// sends in flight finish before it cancels them.
	DrainTimeout time.Duration
	Retry        config.Retry
	Breaker      config.Breaker
	// Partitions of each notify.out topic: an instance's share of the cluster's
	// provider limits is the share of partitions it owns.
	Partitions int
	// SessionTimeout of the consumer group (10s when zero).
	SessionTimeout time.Duration
}

// Sink is the consumer group of one channel.
type Sink struct {
	Channel   string
	Brokers   []string
	Providers []Provider // failover order
	// Limits of providers by name (none = unlimited, every priority).
	Limits   map[string]ProviderLimits
	Producer *kgo.Client // goka-compatible partitioning (topology.NewProducer)
	// Keys opens the sealed personal fields of each notification and seals
	// them again on the way to a retry topic (crypt.Keyring).
	Keys    processors.Sealer
	Opts    Options
	Log     *slog.Logger
	Metrics *Metrics
	Alerter Alerter // told about exhausted notifications; nil = none
	Watch   *topology.Watchdog
	Now     func() time.Time
	// Canceled, when set, tells why a notification may no longer go out
	// ("" when it may): it, or its campaign, was cancelled. It is asked
	// before the ledger claim and again just before each provider call.
	Canceled func(n *schemas.Notification) string
	// Priority is the process's topology.PriorityGate: the sink tells it of
	// high-priority records and starts no normal or low one while it holds.
	Priority *topology.PriorityGate

	ledger       *Ledger
	loader       *ledgerLoader
	ledgerWriter *kgo.Client // writes ledger entries to the partition of their record
	tracker      *tracker
	queues       *queues
	lanes        []*lane
	chanBreaker  *gobreaker.TwoStepCircuitBreaker[string]
	cl           *kgo.Client

	mu       sync.Mutex
	inFlight [3]int
	owned    map[tp]bool
	parts    map[tp]*partition
	wake     chan struct{}
	stopping atomic.Bool
	hard     context.Context // sends run under it; cancelled when the drain ends
	// idle is signalled whenever a job finishes (drains wait on it).
	idle *sync.Cond

	ready chan struct{}
	once  sync.Once
	// skipCommit makes the sink commit nothing (tests: a crash before commit).
	skipCommit atomic.Bool
}

// partition is the context of an owned partition's sends: revoking the
// partition cancels the sends it did not let finish.
type partition struct {
	ctx    context.Context
	cancel context.CancelFunc
	// revoked: its jobs that have not started a send are dropped, not started.
	revoked atomic.Bool
	// active counts its jobs not yet finished or dropped (guarded by Sink.mu).
	active int
}

func (s *Sink) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Ready is closed when the sink has joined its group.
func (s *Sink) Ready() <-chan struct{} {
	s.once.Do(func() { s.ready = make(chan struct{}) })
	return s.ready
}

func (s *Sink) topics() []string {
	out := make([]string, len(processors.Priorities))
	for i, p := range processors.Priorities {
		out[i] = string(topology.Out(s.Channel, p))
	}
	return out
}

func priorityIndex(p string) int {
	for i, q := range processors.Priorities {
		if q == p {
			return i
		}
	}
	return 1
}

func (s *Sink) init() error {
	s.Ready()
	if s.Log == nil {
		s.Log = slog.Default()
	}
	s.Log = s.Log.With("sink", s.Channel)
	if s.Opts.Chunk < 1 {
		s.Opts.Chunk = 256
	}
	if s.Opts.Concurrency < 1 {
		s.Opts.Concurrency = 16
	}
	if s.Opts.Attempts < 1 {
		s.Opts.Attempts = 1
	}
	if s.Opts.DrainTimeout <= 0 {
		s.Opts.DrainTimeout = 10 * time.Second
	}
	if len(s.Opts.Retry.Tiers) == 0 {
		s.Opts.Retry = config.Default().Sink.Retry
	}
	if s.Opts.Breaker.Failures < 1 {
		s.Opts.Breaker = config.Default().Sink.Breaker
	}
	s.ledger = NewLedger(s.Opts.LedgerLookback)
	s.loader = &ledgerLoader{brokers: s.Brokers, channel: s.Channel, lookback: s.Opts.LedgerLookback, ledger: s.ledger,
		now: s.now, loaded: map[tp]bool{}}
	s.tracker = newTracker()
	s.queues = newQueues(s.topics())
	s.mu.Lock()
	s.owned, s.parts = map[tp]bool{}, map[tp]*partition{}
	s.mu.Unlock()
	s.wake = make(chan struct{}, 1)
	s.idle = sync.NewCond(&s.mu)
	for _, p := range s.Providers {
		br := s.providerBreaker(p.Name())
		l := newLane(p, s.Limits[p.Name()], br, s.Opts.Concurrency, s.serve)
		l.setShare(0) // sized again on assignment
		s.lanes = append(s.lanes, l)
	}
	chanName := "channel:" + s.Channel
	s.Metrics.breakerState(s.Channel, chanName, breakerClosed)
	s.chanBreaker = gobreaker.NewTwoStepCircuitBreaker[string](gobreaker.Settings{
		Name: chanName, MaxRequests: uint32(s.Opts.Breaker.Probes), Timeout: s.Opts.Breaker.OpenFor,
		ReadyToTrip:  func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= uint32(s.Opts.Breaker.Failures) },
		IsSuccessful: func(err error) bool { return err == nil || IsPermanent(err) },
		IsExcluded:   IsRefusedTarget, // see refuse
		OnStateChange: func(_ string, from, to gobreaker.State) {
			s.Log.Warn("circuit breaker", "provider", chanName, "from", from.String(), "to", to.String())
			state := map[gobreaker.State]int{gobreaker.StateClosed: breakerClosed, gobreaker.StateHalfOpen: breakerHalfOpen,
				gobreaker.StateOpen: breakerOpen}[to]
			s.Metrics.breakerState(s.Channel, chanName, state)
			s.Metrics.breakerTransition(s.Channel, chanName, to.String())
			if to == gobreaker.StateClosed {
				s.recovered(chanName) // what the channel's outage parked goes out now
			}
		},
	})
	w, err := topology.NewProducer(s.Brokers, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		return err
	}
	s.ledgerWriter = w
	return nil
}

// Run consumes until ctx ends, then drains: sends in flight may finish for
// Opts.DrainTimeout, what finished is committed, the rest is redelivered.
func (s *Sink) Run(ctx context.Context) error {
	if err := s.init(); err != nil {
		return fmt.Errorf("sink %s: %w", s.Channel, err)
	}
	defer s.ledgerWriter.Close()
	hard, hardCancel := context.WithCancel(context.Background())
	defer hardCancel()
	s.hard = hard
	cl, err := topology.NewClient(s.Brokers,
		kgo.ConsumerGroup(topology.SinkGroup(s.Channel)),
		kgo.ConsumeTopics(s.topics()...),
		kgo.DisableAutoCommit(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond),
		// A crashed member holds its partitions until its session expires: keep
		// that short so a restarted or surviving sink takes over quickly.
		kgo.SessionTimeout(topology.SessionTimeout(s.Opts.SessionTimeout)),
		kgo.HeartbeatInterval(topology.SessionTimeout(s.Opts.SessionTimeout)/10),
		// Revoking partitions drains their sends first (see revoked).
		kgo.RebalanceTimeout(s.revokeDrain()+10*time.Second),
		kgo.OnPartitionsAssigned(s.assigned),
		kgo.OnPartitionsRevoked(s.revoked),
		kgo.OnPartitionsLost(s.lost),
	)
	if err != nil {
		return fmt.Errorf("sink %s: %w", s.Channel, err)
	}
	s.cl = cl
	defer func() {
		for _, l := range s.lanes {
			l.close()
			if c, ok := l.p.(Closer); ok {
				_ = c.Close()
			}
		}
	}()
	close(s.ready)

	var bg sync.WaitGroup
	dctx, stopDispatch := context.WithCancel(context.Background())
	bg.Add(2)
	go func() { defer bg.Done(); s.dispatch(dctx) }()
	go func() { defer bg.Done(); s.commitLoop(dctx) }()
	go s.expireLedger(dctx)

	maxQueued := 4 * s.Opts.Chunk
	for {
		fetches := cl.PollRecords(ctx, maxQueued)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			break
		}
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				s.Log.Warn("fetch", "topic", t, "partition", p, "err", err)
			}
		})
		fetches.EachRecord(func(r *kgo.Record) {
			if s.isOwned(r) {
				if topology.IsHighLane(r.Topic) {
					s.Priority.High()
				}
				s.queues.push(r)
			}
		})
		s.queues.throttle(cl, maxQueued)
		s.poke()
	}

	// Stopping: take nothing new, let the sends in flight finish, commit.
	s.stopping.Store(true)
	stopDispatch()
	bg.Wait()
	s.queues.clear()
	for _, l := range s.lanes {
		l.stop()
	}
	s.dropQueued(nil)
	if !s.waitIdle(nil, s.Opts.DrainTimeout) {
		s.Log.Warn("drain timed out; cancelling sends in flight (they are redelivered after the restart)")
	}
	hardCancel()
	s.waitIdle(nil, 5*time.Second)
	s.flush()
	s.commit(context.Background(), nil)
	cl.Close()
	return nil
}

// revokeDrain is how long a revocation lets sends finish: under the
// rebalance timeout, so the member is not thrown out of the group meanwhile.
func (s *Sink) revokeDrain() time.Duration { return s.Opts.DrainTimeout }

func (s *Sink) ownedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.owned)
}

func (s *Sink) isOwned(r *kgo.Record) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.owned[tp{r.Topic, r.Partition}]
}

// tps flattens a rebalance's map of topic → partitions.
func tps(m map[string][]int32) []tp {
	var out []tp
	for topic, ps := range m {
		for _, p := range ps {
			out = append(out, tp{topic, p})
		}
	}
	return out
}

func (s *Sink) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// assigned starts reading the ledger of the new partitions (their records
// wait until it is read) and resizes the provider lanes to the new share.
func (s *Sink) assigned(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	parts := tps(m)
	s.mu.Lock()
	for _, k := range parts {
		s.owned[k] = true
		pctx, cancel := context.WithCancel(s.hard)
		s.parts[k] = &partition{ctx: pctx, cancel: cancel}
	}
	s.mu.Unlock()
	s.resize()
	s.loader.load(s.hard, parts, s.Log, s.poke)
}

// revoked lets the sends of the revoked partitions finish (bounded), cancels
// the rest, and commits what finished before the partitions move.
func (s *Sink) revoked(ctx context.Context, cl *kgo.Client, m map[string][]int32) {
	s.release(m)
	s.dropQueued(m)
	if !s.waitIdle(m, s.revokeDrain()) {
		s.Log.Warn("revoked partitions still had sends in flight; cancelled", "partitions", m)
	}
	s.cancelParts(m)
	s.waitIdle(m, 2*time.Second)
	s.flush()
	s.commit(ctx, m)
	s.forget(m)
}

// lost partitions were taken away without a chance to commit (the session
// expired): their sends are cancelled and nothing of them is committed.
func (s *Sink) lost(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	s.release(m)
	s.dropQueued(m)
	s.cancelParts(m)
	s.forget(m)
}

func (s *Sink) release(m map[string][]int32) {
	s.mu.Lock()
	for _, k := range tps(m) {
		delete(s.owned, k)
	}
	s.mu.Unlock()
	s.queues.drop(m)
}

// dropQueued drops the jobs of partitions m (nil = all) that wait in a lane
// and have not started a send: waiting for them would only delay the
// rebalance (or the stop), and the partition's next owner sends them.
func (s *Sink) dropQueued(m map[string][]int32) {
	s.mu.Lock()
	var parts []*partition
	for _, k := range tps(m) {
		if pc := s.parts[k]; pc != nil {
			pc.revoked.Store(true)
			parts = append(parts, pc)
		}
	}
	s.mu.Unlock()
	match := func(j *job) bool {
		if m == nil {
			return true
		}
		for _, pc := range parts {
			if j.part == pc {
				return true
			}
		}
		return false
	}
	for _, l := range s.lanes {
		for _, j := range l.purge(match) {
			j.drop()
		}
	}
}

func (s *Sink) cancelParts(m map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range tps(m) {
		if pc := s.parts[k]; pc != nil {
			pc.cancel()
		}
	}
}

func (s *Sink) forget(m map[string][]int32) {
	s.tracker.forget(m)
	s.mu.Lock()
	for _, k := range tps(m) {
		delete(s.parts, k)
	}
	s.mu.Unlock()
	s.loader.forget(m)
	s.resize()
}

// resize gives every lane the share of its provider's limits that this
// instance's partitions are of the channel's.
func (s *Sink) resize() {
	s.mu.Lock()
	owned := len(s.owned)
	s.mu.Unlock()
	total := s.Opts.Partitions * len(processors.Priorities)
	share := 1.0
	if total > 0 {
		share = float64(owned) / float64(total)
	}
	for _, l := range s.lanes {
		l.setShare(share)
	}
}

// waitIdle waits until the partitions m (nil = all) have no job in flight, up
// to d; it tells whether they got there.
func (s *Sink) waitIdle(m map[string][]int32, d time.Duration) bool {
	deadline := time.Now().Add(d)
	timer := time.AfterFunc(d, func() {
		s.mu.Lock()
		s.idle.Broadcast()
		s.mu.Unlock()
	})
	defer timer.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		var busy int
		if m == nil {
			busy = s.inFlight[0] + s.inFlight[1] + s.inFlight[2]
		} else {
			for _, k := range tps(m) {
				if pc := s.parts[k]; pc != nil {
					busy += pc.active
				}
			}
		}
		if busy == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		s.idle.Wait()
	}
}

func (s *Sink) flush() {
	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Producer.Flush(fctx); err != nil {
		s.Log.Warn("flush", "err", err)
	}
	if err := s.ledgerWriter.Flush(fctx); err != nil {
		s.Log.Warn("flush ledger", "err", err)
	}
}

// commit commits every partition (of m; nil = all) up to its first unfinished record.
func (s *Sink) commit(ctx context.Context, m map[string][]int32) {
	if s.skipCommit.Load() {
		return
	}
	recs := s.tracker.committable(m)
	if len(recs) == 0 {
		return
	}
	offsets := map[string]map[int32]kgo.EpochOffset{}
	for _, r := range recs {
		if offsets[r.Topic] == nil {
			offsets[r.Topic] = map[int32]kgo.EpochOffset{}
		}
		offsets[r.Topic][r.Partition] = kgo.EpochOffset{Epoch: r.LeaderEpoch, Offset: r.Offset + 1}
	}
	var failed error
	s.cl.CommitOffsetsSync(ctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		failed = commitError(resp, err)
	})
	if failed != nil {
		if ctx.Err() == nil && !s.stopping.Load() {
			s.Log.Warn("commit", "err", failed)
		}
		s.tracker.recommit(recs)
	}
}

// commitError is the first error of a commit, from the request or a partition.
func commitError(resp *kmsg.OffsetCommitResponse, err error) error {
	if err != nil {
		return err
	}
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if e := kerr.ErrorForCode(p.ErrorCode); e != nil {
				return fmt.Errorf("%s/%d: %w", t.Topic, p.Partition, e)
			}
		}
	}
	return nil
}

func (s *Sink) commitLoop(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.commit(ctx, nil)
		}
	}
}

func (s *Sink) expireLedger(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.ledger.Expire(s.now())
		}
	}
}

// dispatch takes polled records, highest priority first, within each
// priority's bound of records in flight, and hands them to their provider's lane.
func (s *Sink) dispatch(ctx context.Context) {
	for {
		took := false
		held := false
		for i := range processors.Priorities {
			if i > 0 && s.Priority.Held() {
				held = true
				break
			}
			s.mu.Lock()
			full := s.inFlight[i] >= s.Opts.Chunk
			s.mu.Unlock()
			if full {
				continue
			}
			r := s.queues.take(i, s.loader.ready)
			if r == nil {
				continue
			}
			s.start(r, i)
			took = true
			break // look at the highest priority again
		}
		if took {
			s.queues.throttle(s.cl, 4*s.Opts.Chunk)
			if ctx.Err() != nil {
				return
			}
			continue
		}
		wait := 50 * time.Millisecond
		if held {
			wait = min(wait, s.Priority.Left())
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-time.After(wait):
		}
		s.queues.throttle(s.cl, 4*s.Opts.Chunk)
	}
}

// job is one record on its way through the providers.
type job struct {
	s     *Sink
	rec   *kgo.Record
	n     *schemas.Notification
	pri   int
	ctx   context.Context
	part  *partition
	track *partTrack
	chain []*lane
	next  int
	// calls counts provider calls in this round; transient says one failed
	// in a way a retry may fix (or a breaker refused it).
	calls     int32
	transient bool
	lastErr   error
	lastProv  string
	chanDone  func(error)
	abandon   bool
	// Targets (push, webpush): those no provider took yet, the ids and
	// providers of those accepted, and those declared invalid.
	remaining   []schemas.Target
	ids         []string
	acceptedBy  []string
	invalid     []schemas.InvalidTarget
	moved       []schemas.MovedTarget
	unsubscribe bool
	// after is the longest Retry-After a provider asked for in this round.
	after     time.Duration
	pending   atomic.Int32 // 1 while in work + produces not yet acknowledged
	watchDone func()
	finished  atomic.Bool
}

func (s *Sink) start(r *kgo.Record, pri int) {
	s.mu.Lock()
	pc := s.parts[tp{r.Topic, r.Partition}]
	if pc == nil || pc.revoked.Load() {
		// Revoked between the poll and now: its next owner takes it.
		s.mu.Unlock()
		return
	}
	s.inFlight[pri]++
	pc.active++
	s.mu.Unlock()
	track := s.tracker.take(r)
	s.Metrics.inFlightAdd(s.Channel, processors.Priorities[pri], 1)
	j := &job{s: s, rec: r, pri: pri, ctx: pc.ctx, part: pc, track: track,
		watchDone: s.Watch.Begin(topology.SinkGroup(s.Channel), r.Partition)}
	j.pending.Store(1)

	n, err := schemas.NotificationCodec.Decode(r.Value)
	if err == nil {
		switch {
		case r.Value == nil:
			err = errors.New("null value: a Notification record is required")
		case !processors.ValidID(n.ID):
			err = errors.New("id: must be 1-200 characters of letters, digits and ._:@/+=-")
		case n.Channel != s.Channel:
			err = fmt.Errorf("notification %q routed to %s is for channel %q", n.ID, r.Topic, processors.Clip(n.Channel, 64))
		}
	} else if r.Value == nil {
		err = errors.New("null value: a Notification record is required")
	}
	if err != nil {
		id := processors.RecordID(r.Topic, r.Partition, r.Offset)
		s.deadLetter(j, "", err)
		s.event(j, &schemas.StatusEvent{ID: processors.StatusEventID(id, processors.StatusRejected, s.Channel, 0),
			NotificationID: id, Channel: s.Channel, Status: processors.StatusRejected,
			Reason: processors.Redact("sink: "+err.Error(), nil, processors.MaxReason), At: s.now().UnixMilli()})
		s.Metrics.outcome(s.Channel, "", processors.StatusRejected)
		j.done()
		return
	}
	if err := processors.OpenNotification(j.ctx, s.Keys, n); err != nil {
		// Its key was erased (the user's data is gone) or cannot be read:
		// nothing can be sent. The dead letter keeps the record for a
		// replay once a missing key is restored.
		s.deadLetter(j, n.ID, err)
		s.event(j, processors.NotificationEvent(n, processors.StatusFailed, s.Channel, "sink: "+err.Error(), s.now()))
		s.Metrics.outcome(s.Channel, "", processors.StatusFailed)
		j.done()
		return
	}
	j.n = n
	j.remaining = n.Targets
	if n.ExpiresAt > 0 && s.now().UnixMilli() >= n.ExpiresAt {
		s.expire(j, "expired at "+time.UnixMilli(n.ExpiresAt).UTC().Format(time.RFC3339)+" before a provider took it")
		return
	}
	if why := s.canceled(n); why != "" {
		s.cancel(j, why)
		return
	}
	if !s.ledger.Claim(n.ID, s.Channel) {
		s.Metrics.skipped(s.Channel)
		if sent, ok := s.ledger.Delivered(n.ID, s.Channel); ok {
			// Handed to a provider before (by this instance or the partition's
			// previous owner). Its sent event may have been lost with a crash
			// that left the ledger entry: state it again, with the same id.
			ev := s.notificationEvent(n, processors.StatusSent, sent.Provider, "", n.Attempts, "")
			ev.At = sent.At
			s.event(j, ev)
		}
		j.done()
		return
	}
	for _, l := range s.lanes {
		if l.limits.serves(n.Priority) {
			j.chain = append(j.chain, l)
		}
	}
	if len(j.chain) == 0 {
		j.lastErr = Permanent(fmt.Errorf("no provider of channel %s serves priority %q", s.Channel, n.Priority))
		s.fail(j, false)
		return
	}
	if !slices.ContainsFunc(j.chain, func(l *lane) bool { _, ok := servesTargets(l.p, n, n.Targets); return ok }) {
		var platforms []string
		for _, t := range n.Targets {
			if !slices.Contains(platforms, t.Platform) {
				platforms = append(platforms, t.Platform)
			}
		}
		j.lastErr = Permanent(fmt.Errorf("no provider of channel %s serves the user's devices (%s)", s.Channel, strings.Join(platforms, ", ")))
		s.fail(j, false)
		return
	}
	done, err := s.chanBreaker.Allow()
	if err != nil {
		// Every provider of the channel has been failing: do not even try.
		j.transient, j.lastErr = true, fmt.Errorf("channel %s: circuit open: %w", s.Channel, err)
		s.exhausted(j)
		return
	}
	j.chanDone = done
	j.chain[0].push(j)
}

// serve runs on a lane's worker: quick tries on this provider, then the next
// provider of the chain, then a delayed retry or a failure.
func (s *Sink) serve(l *lane, j *job) {
	if j.abandon || j.ctx.Err() != nil || j.part.revoked.Load() {
		j.drop()
		return
	}
	name := l.p.Name()
	n, serves := servesTargets(l.p, j.n, j.remaining)
	if !serves {
		s.advance(j) // none of the targets left is on this provider's platforms
		return
	}
	if l.breaker.State() == gobreaker.StateOpen {
		j.transient, j.lastErr, j.lastProv = true, fmt.Errorf("%s: circuit open", name), name
		s.advance(j)
		return
	}
	if l.limiter != nil {
		if err := l.limiter.Wait(j.ctx); err != nil {
			j.drop()
			return
		}
	}
	if why := s.canceled(j.n); why != "" && len(j.ids) == 0 {
		// Cancelled while it waited for a lane: no provider has it yet.
		if j.chanDone != nil {
			j.chanDone(nil)
			j.chanDone = nil
		}
		s.ledger.Release(j.n.ID, s.Channel)
		s.cancel(j, why)
		return
	}
	backoff := s.Opts.Backoff
	for try := 1; try <= s.Opts.Attempts; try++ {
		msgID, err := l.breaker.Execute(func() (string, error) {
			sctx, cancel := context.WithTimeout(j.ctx, s.Opts.SendTimeout)
			defer cancel()
			return l.p.Send(sctx, n)
		})
		if !breakerRefused(err) {
			j.calls++
		}
		var ir *InvalidRecipientError
		if errors.As(err, &ir) {
			j.invalidated(ir)
			if msgID != "" {
				err = nil // delivered to the other targets
			}
		}
		var mv *MovedError
		if errors.As(err, &mv) && msgID != "" {
			j.moved = append(j.moved, schemas.MovedTarget{Platform: mv.Platform, From: mv.From, To: mv.To})
			err = nil // delivered to the new address
		}
		if err == nil {
			j.accepted(name, msgID, n.Targets)
			if len(j.remaining) > 0 {
				s.advance(j) // targets on other platforms are left
				return
			}
			s.succeed(j, strings.Join(j.acceptedBy, "+"), strings.Join(j.ids, ","))
			return
		}
		if j.ctx.Err() != nil {
			j.drop()
			return
		}
		j.lastErr, j.lastProv = err, name
		if breakerRefused(err) {
			j.transient = true
			break
		}
		if IsRefusedTarget(err) {
			s.refuse(j)
			return
		}
		// Debug: an outage would write one line per notification per try; the
		// breaker's transitions and the retry metrics say it at warn level.
		if s.Log.Enabled(j.ctx, slog.LevelDebug) {
			s.Log.Debug("send failed", "id", j.n.ID, "provider", name, "try", try,
				"err", processors.Redact(errString(err), processors.Sensitive(j.n), processors.MaxReason))
		}
		if IsPermanent(err) {
			break
		}
		j.transient = true
		wait := backoff
		if after := retryAfter(err); after > 0 {
			// The provider said when: not sooner. A long wait is the retry
			// topic's job, not a lane worker's.
			j.after = max(j.after, after)
			if after > maxInlineRetryAfter {
				break
			}
			wait = after
		}
		if try == s.Opts.Attempts {
			break
		}
		select {
		case <-time.After(wait):
		case <-j.ctx.Done():
			j.drop()
			return
		}
		backoff *= 2
	}
	s.advance(j)
}

func (s *Sink) advance(j *job) {
	if j.part.revoked.Load() {
		j.drop() // the partition's next owner takes it from here
		return
	}
	j.next++
	if j.next < len(j.chain) {
		j.chain[j.next].push(j)
		return
	}
	s.exhausted(j)
}

// exhausted: every provider of the chain failed or refused. A transient
// failure is retried later through a retry topic; a permanent one fails.
func (s *Sink) exhausted(j *job) {
	if len(j.ids) > 0 {
		// Some targets were delivered; those left failed (or are invalid).
		s.succeed(j, strings.Join(j.acceptedBy, "+"), strings.Join(j.ids, ","))
		return
	}
	if j.chanDone != nil {
		if j.transient {
			j.chanDone(j.lastErr)
		} else {
			j.chanDone(nil) // the providers answered; the request was bad
		}
		j.chanDone = nil
	}
	if j.transient {
		s.retry(j)
		return
	}
	s.fail(j, false)
}

// refuse ends a notification whose target a provider refused to dial (the
// SSRF guard): the notification's own permanent failure, not a provider
// outage. No other provider is tried (the provider is not down, and the
// refusal is about where the notification points), nothing is retried, and
// neither breaker counts it.
func (s *Sink) refuse(j *job) {
	if j.chanDone != nil {
		j.chanDone(j.lastErr) // excluded by the channel's breaker
		j.chanDone = nil
	}
	j.transient = false
	s.exhausted(j)
}

func (s *Sink) succeed(j *job, provider, msgID string) {
	if j.chanDone != nil {
		j.chanDone(nil)
		j.chanDone = nil
	}
	n := j.n
	now := s.now()
	s.ledger.RecordSent(n.ID, s.Channel, Sent{Provider: provider, At: now.UnixMilli()})
	entry, _ := schemas.LedgerEntryCodec.Encode(&schemas.LedgerEntry{NotificationID: n.ID, Channel: s.Channel,
		Provider: provider, Topic: j.rec.Topic, Partition: j.rec.Partition, Offset: j.rec.Offset, At: now.UnixMilli()})
	s.produce(j, s.ledgerWriter, &kgo.Record{Topic: string(topology.Ledger), Partition: j.rec.Partition,
		Key: []byte(n.ID + "/" + s.Channel), Value: entry})
	reason := j.targetsNote()
	if len(j.remaining) > 0 && j.lastErr != nil {
		reason = joinNote(reason, fmt.Sprintf("not delivered to %s: %s", describeTargets(j.remaining), errString(j.lastErr)))
	}
	s.event(j, s.notificationEvent(n, processors.StatusSent, provider, reason, n.Attempts+j.calls, msgID))
	if len(j.invalid) > 0 || len(j.moved) > 0 {
		s.feedback(j, processors.StatusSent)
	}
	s.Metrics.sent(s.Channel, provider, now.Sub(time.UnixMilli(n.AcceptedAt)))
	j.done()
}

// fail ends a notification as failed: dead letter, failed event, and the
// deliver group forgets its content (nothing was sent).
func (s *Sink) fail(j *job, exhausted bool) {
	n := j.n
	s.ledger.Release(n.ID, s.Channel)
	reason := "all providers failed, last: " + errString(j.lastErr)
	if len(j.invalid) > 0 {
		reason = "invalid recipient: " + errString(j.lastErr)
		if note := j.targetsNote(); note != "" {
			reason += "; " + note
		}
	}
	if IsRefusedTarget(j.lastErr) {
		reason = "target refused, not sent: " + errString(j.lastErr)
	}
	if exhausted {
		reason = "retries exhausted after " + fmt.Sprint(n.Retries) + " retries, last: " + errString(j.lastErr)
	}
	reason = processors.Redact(reason, processors.Sensitive(n), processors.MaxReason)
	s.Log.Warn("notification failed", "id", n.ID, "provider", j.lastProv, "reason", reason)
	s.deadLetter(j, n.ID, errors.New(reason))
	s.event(j, s.notificationEvent(n, processors.StatusFailed, j.lastProv, reason, n.Attempts+j.calls, ""))
	s.feedback(j, processors.StatusFailed)
	s.Metrics.outcome(s.Channel, j.lastProv, processors.StatusFailed)
	if exhausted {
		s.Metrics.exhaust(s.Channel)
		if s.Alerter != nil {
			s.Alerter.Alert(Alert{NotificationID: n.ID, EventID: n.EventID, UserID: n.UserID, Template: n.Template,
				Channel: s.Channel, Priority: n.Priority, Provider: j.lastProv, Attempts: n.Attempts + j.calls,
				Reason: reason, At: s.now()})
		}
	}
	j.done()
}

func (s *Sink) canceled(n *schemas.Notification) string {
	if s.Canceled == nil {
		return ""
	}
	return s.Canceled(n)
}

// cancel ends a notification cancelled before a provider took it.
func (s *Sink) cancel(j *job, reason string) {
	ev := s.notificationEvent(j.n, processors.StatusCanceled, "", reason, 0, "")
	s.event(j, ev)
	s.Metrics.outcome(s.Channel, "", processors.StatusCanceled)
	j.done()
}

// expire ends a notification that may no longer be sent.
func (s *Sink) expire(j *job, reason string) {
	s.ledger.Release(j.n.ID, s.Channel)
	s.event(j, s.notificationEvent(j.n, processors.StatusExpired, j.lastProv, reason, j.n.Attempts+j.calls, ""))
	s.feedback(j, processors.StatusExpired)
	s.Metrics.outcome(s.Channel, "", processors.StatusExpired)
	j.done()
}

func errString(err error) string {
	if err == nil {
		return "unknown error"
	}
	return err.Error()
}

func (s *Sink) notificationEvent(n *schemas.Notification, status, provider, reason string, attempt int32, msgID string) *schemas.StatusEvent {
	ev := processors.NotificationEvent(n, status, s.Channel, reason, s.now())
	ev.ID = processors.StatusEventID(n.ID, status, s.Channel, attempt)
	if status == processors.StatusSent {
		// A notification is sent once per channel: one id, whichever attempt
		// sent it, so a sent event stated again (see start) is the same event.
		ev.ID = processors.StatusEventID(n.ID, status, s.Channel, 0)
	}
	ev.Provider, ev.Attempt, ev.ProviderMessageID = provider, attempt, msgID
	// The deliver group routed it here then: the queued state is recorded
	// from this (processors.ImpliedQueued), not from an event of its own.
	ev.QueuedAt = n.RoutedAt
	return ev
}

func (s *Sink) event(j *job, ev *schemas.StatusEvent) {
	b, err := schemas.StatusEventCodec.Encode(ev)
	if err != nil {
		s.Log.Error("encode status event", "err", err)
		return
	}
	s.produce(j, s.Producer, &kgo.Record{Topic: string(topology.Events), Key: []byte(ev.NotificationID), Value: b})
}

// deadLetter writes the job's record to notify.dlq; its reason (a provider's
// error, often) goes through Redact like every reason.
func (s *Sink) deadLetter(j *job, notificationID string, cause error) {
	r := j.rec
	var known []string
	if j.n != nil {
		known = processors.Sensitive(j.n)
	}
	key, value := topology.EncodeDeadLetter(&schemas.DeadLetter{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset,
		Key: r.Key, Value: r.Value, Reason: processors.Redact(cause.Error(), known, processors.MaxReason), Stage: "sink." + s.Channel, At: s.now().UnixMilli(),
		NotificationID: notificationID})
	s.produce(j, s.Producer, &kgo.Record{Topic: string(topology.DLQ), Key: []byte(key), Value: value})
	s.Metrics.deadLetter(s.Channel)
}

// feedback tells the deliver group that nothing was sent, so a resend of
// the same content is not suppressed as a duplicate of it.
func (s *Sink) feedback(j *job, status string) {
	fb := &schemas.DeliveryFeedback{NotificationID: j.n.ID, Channel: s.Channel,
		Status: status, At: s.now().UnixMilli(), Invalid: j.invalid, Unsubscribe: j.unsubscribe, Moved: j.moved,
		Reason: processors.Redact(errString(j.lastErr), processors.Sensitive(j.n), processors.MaxReason)}
	// The targets it names are the user's contacts: sealed for the user.
	err := processors.SealFeedback(j.ctx, s.Keys, processors.Subject(j.n), fb)
	var b []byte
	if err == nil {
		b, err = schemas.FeedbackCodec.Encode(fb)
	}
	if err != nil || !processors.ValidID(j.n.UserID) {
		return
	}
	s.produce(j, s.Producer, &kgo.Record{Topic: string(topology.Feedback), Key: []byte(schemas.TenantKey(j.n.Tenant, j.n.UserID)), Value: b})
}

// produce produces a side effect of a job; the job finishes (and its offset
// may be committed) only once every side effect is acknowledged. A failed
// produce is retried; one that keeps failing leaves the job unfinished, so
// its offset is never committed and the watchdog reports the partition stuck.
func (s *Sink) produce(j *job, cl *kgo.Client, r *kgo.Record) {
	j.pending.Add(1)
	var try func(attempt int)
	try = func(attempt int) {
		cl.Produce(context.Background(), r, func(r *kgo.Record, err error) {
			if err == nil {
				j.release()
				return
			}
			s.Metrics.produceError(s.Channel)
			s.Log.Error("produce failed; the record's offset is held", "topic", r.Topic, "attempt", attempt, "err", err)
			if attempt >= 5 || errors.Is(err, kgo.ErrClientClosed) {
				return
			}
			time.AfterFunc(time.Duration(attempt)*200*time.Millisecond, func() { try(attempt + 1) })
		})
	}
	try(1)
}

// maxInlineRetryAfter is the longest Retry-After a lane worker waits itself
// before its next quick try; a longer one goes through the retry topics.
const maxInlineRetryAfter = 2 * time.Second

// invalidated notes targets a provider declared invalid: they are removed from
// the profile, and no other provider is asked to send to them.
func (j *job) invalidated(ir *InvalidRecipientError) {
	j.invalid = append(j.invalid, ir.Targets...)
	j.unsubscribe = j.unsubscribe || ir.Unsubscribe
	j.remaining = slices.DeleteFunc(slices.Clone(j.remaining), func(t schemas.Target) bool {
		return slices.ContainsFunc(ir.Targets, func(it schemas.InvalidTarget) bool { return sameTarget(t, it) })
	})
}

// accepted notes what a provider took: its id, and the targets it served.
func (j *job) accepted(provider, msgID string, served []schemas.Target) {
	if msgID == "" {
		msgID = "-"
	}
	j.ids = append(j.ids, msgID)
	if !slices.Contains(j.acceptedBy, provider) {
		j.acceptedBy = append(j.acceptedBy, provider)
	}
	j.remaining = slices.DeleteFunc(slices.Clone(j.remaining), func(t schemas.Target) bool { return slices.Contains(served, t) })
}

func sameTarget(t schemas.Target, it schemas.InvalidTarget) bool {
	return t.Platform == it.Platform && t.Token == it.Token && t.Endpoint == it.Endpoint
}

// targetsNote says which targets are removed from (or moved in) the profile.
func (j *job) targetsNote() string {
	var moved []string
	for _, m := range j.moved {
		moved = append(moved, describeTarget(m.Platform, m.From, "")+" → "+describeTarget(m.Platform, m.To, ""))
	}
	note := ""
	if len(moved) > 0 {
		note = "moved in the profile: " + strings.Join(moved, ", ")
	}
	if len(j.invalid) == 0 {
		return note
	}
	var names []string
	for _, t := range j.invalid {
		names = append(names, describeTarget(t.Platform, t.Token, t.Endpoint))
	}
	what := "removed from the profile: "
	if j.unsubscribe {
		what = "recipient unsubscribed at the provider; channel opted out in the profile: "
	}
	return joinNote(note, what+strings.Join(names, ", "))
}

func describeTargets(ts []schemas.Target) string {
	var names []string
	for _, t := range ts {
		names = append(names, describeTarget(t.Platform, t.Token, t.Endpoint))
	}
	return strings.Join(names, ", ")
}

// describeTarget names a target without writing its secret whole: tokens and
// numbers keep their last 4 characters, endpoints their host.
func describeTarget(platform, token, endpoint string) string {
	if endpoint != "" {
		host := endpoint
		if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
			host = u.Host
		}
		return platform + " subscription at " + host
	}
	if len(token) > 4 {
		token = "…" + token[len(token)-4:]
	}
	return platform + " " + token
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// done ends the job's work; it finishes once its produces are acknowledged.
func (j *job) done() { j.release() }

func (j *job) release() {
	if j.pending.Add(-1) == 0 {
		j.finish(true)
	}
}

// drop abandons a job whose partition was revoked or whose sink is stopping:
// it is not finished, so its record is redelivered to whoever owns it next.
func (j *job) drop() {
	if j.n != nil {
		j.s.ledger.Release(j.n.ID, j.s.Channel)
	}
	if j.chanDone != nil {
		j.chanDone(context.Canceled)
		j.chanDone = nil
	}
	j.finish(false)
}

func (j *job) finish(committable bool) {
	if !j.finished.CompareAndSwap(false, true) {
		return
	}
	s := j.s
	if committable {
		s.tracker.finish(j.track, j.rec)
		topology.Fault("sink.after-finish") // crash tests: side effects produced, offset not committed
	}
	j.watchDone()
	s.Metrics.inFlightAdd(s.Channel, processors.Priorities[j.pri], -1)
	s.mu.Lock()
	s.inFlight[j.pri]--
	j.part.active--
	s.idle.Broadcast()
	s.mu.Unlock()
	s.poke()
}
