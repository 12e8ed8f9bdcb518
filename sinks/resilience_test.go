package sinks

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/webhooktest"
	"github.com/notifyd/notifyd/topology"
)

// routeTo produces a routed notification to a channel's queue of a priority.
func (e *sinkEnv) routeTo(t *testing.T, channel, priority, id string, mod ...func(*schemas.Notification)) {
	t.Helper()
	n := &schemas.Notification{ID: id, EventID: "e-" + id, UserID: "u-" + id, Template: "t", Channel: channel,
		Address: "default", Priority: priority, AcceptedAt: time.Now().UnixMilli(), Content: schemas.Content{Body: `{"id":"` + id + `"}`}}
	for _, m := range mod {
		m(n)
	}
	b, _ := schemas.NotificationCodec.Encode(n)
	e.produce(t, string(topology.Out(channel, priority)), id, b)
}

func (e *sinkEnv) retrier(t *testing.T) {
	t.Helper()
	r := &Retrier{Brokers: e.brokers, Producer: e.producer}
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("retrier: %v", err)
		}
	})
}

// statuses follows notify.events and returns, per notification, the statuses
// seen in order, once cond holds (or the test's time is up).
func (e *sinkEnv) statuses(t *testing.T, cond func(map[string][]string) bool) map[string][]string {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(string(topology.Events)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	out := map[string][]string{}
	for !cond(out) {
		if e.ctx.Err() != nil {
			t.Fatalf("condition not met; statuses %v", out)
		}
		ctx, cancel := context.WithTimeout(e.ctx, 500*time.Millisecond)
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			ev, err := schemas.StatusEventCodec.Decode(r.Value)
			if err == nil {
				out[ev.NotificationID] = append(out[ev.NotificationID], ev.Status)
			}
		})
		cancel()
	}
	return out
}

func last(ss []string) string {
	if len(ss) == 0 {
		return ""
	}
	return ss[len(ss)-1]
}

func allEnd(ids []string, status string) func(map[string][]string) bool {
	return func(m map[string][]string) bool {
		for _, id := range ids {
			if last(m[id]) != status {
				return false
			}
		}
		return true
	}
}

func idList(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func distinct(ds []webhooktest.Delivery) map[string]int {
	m := map[string]int{}
	for _, d := range ds {
		m[d.ID]++
	}
	return m
}

// A provider outage is ridden out on the retry topics: nothing fails, every
// notification is delivered once when the provider is back, and the breaker
// opened and closed.
func TestProviderOutageIsRetriedThroughRetryTopics(t *testing.T) {
	env := newSinkEnv(t)
	rc := webhooktest.Start("s")
	defer rc.Close()
	var down atomic.Bool
	down.Store(true)
	var calls atomic.Int32
	rc.Hook = func(*http.Request, []byte) int {
		calls.Add(1)
		if down.Load() {
			return http.StatusServiceUnavailable
		}
		return 0
	}
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	s := env.sink(newTestWebhook(t, rc.URL, "s", true))
	s.Metrics = m
	s.Opts.Attempts = 1
	s.Opts.Retry = config.Retry{Tiers: []time.Duration{time.Second, 2 * time.Second}, Horizon: map[string]time.Duration{"normal": time.Hour}}
	s.Opts.Breaker = config.Breaker{Failures: 3, OpenFor: 500 * time.Millisecond, Probes: 1}
	env.run(t, s)
	env.retrier(t)
	want := idList("out", 30)
	for _, id := range want {
		env.routeTo(t, "webhook", "normal", id)
	}
	env.statuses(t, func(m map[string][]string) bool {
		for _, id := range want {
			if !contains2(m[id], processors.StatusRetrying) {
				return false
			}
		}
		return true
	})
	if open := testutil.ToFloat64(m.transitions.WithLabelValues("webhook", "wh", "open")); open < 1 {
		t.Fatalf("breaker never opened during the outage")
	}
	// The breaker refuses calls while open: far fewer calls than retries.
	down.Store(false)
	st := env.statuses(t, allEnd(want, processors.StatusSent))
	for id, ss := range st {
		for _, s := range ss {
			if s == processors.StatusFailed {
				t.Fatalf("%s failed during the outage: %v", id, ss)
			}
		}
	}
	got := distinct(rc.Deliveries())
	if len(got) != len(want) {
		t.Fatalf("%d distinct deliveries, want %d", len(got), len(want))
	}
	for id, n := range got {
		if n != 1 {
			t.Fatalf("%s delivered %d times", id, n)
		}
	}
	waitFor(t, "the breaker to close", 10*time.Second, func() bool {
		return testutil.ToFloat64(m.breaker.WithLabelValues("webhook", "wh")) == breakerClosed
	})
	if closed := testutil.ToFloat64(m.transitions.WithLabelValues("webhook", "wh", "closed")); closed < 1 {
		t.Fatal("breaker state is closed but no transition to closed was counted")
	}
}

func contains2(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// Past its retry horizon a notification fails for good: dead letter, failed
// status, the exhausted metric and an ops alert. A notification whose
// expiresAt comes first ends expired instead, never sent late.
func TestRetriesEndAtTheHorizonOrExpiry(t *testing.T) {
	env := newSinkEnv(t)
	rc := webhooktest.Start("s")
	defer rc.Close()
	rc.Hook = func(*http.Request, []byte) int { return http.StatusServiceUnavailable }
	var alerts []map[string]any
	var amu sync.Mutex
	ops := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var a map[string]any
		body, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(body, &a)
		amu.Lock()
		alerts = append(alerts, a)
		amu.Unlock()
	}))
	defer ops.Close()
	alerter := NewWebhookAlerter(ops.URL, 5*time.Second, discardLog())
	actx, cancel := context.WithCancel(env.ctx)
	defer cancel()
	go alerter.Run(actx)

	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	s := env.sink(newTestWebhook(t, rc.URL, "s", true))
	s.Metrics, s.Alerter = m, alerter
	s.Opts.Attempts = 1
	s.Opts.Retry = config.Retry{Tiers: []time.Duration{time.Second}, Horizon: map[string]time.Duration{"normal": 2500 * time.Millisecond}}
	s.Opts.Breaker = config.Breaker{Failures: 1000, OpenFor: time.Second, Probes: 1}
	env.run(t, s)
	env.retrier(t)
	env.routeTo(t, "webhook", "normal", "horizon")
	env.routeTo(t, "webhook", "normal", "expiring", func(n *schemas.Notification) {
		n.AcceptedAt = time.Now().Add(time.Hour).UnixMilli() // its horizon is far; its expiry is not
		n.ExpiresAt = time.Now().Add(1500 * time.Millisecond).UnixMilli()
	})
	st := env.statuses(t, func(m map[string][]string) bool {
		return last(m["horizon"]) == processors.StatusFailed && last(m["expiring"]) == processors.StatusExpired
	})
	if !contains2(st["horizon"], processors.StatusRetrying) {
		t.Fatalf("horizon: never retried: %v", st["horizon"])
	}
	if got := testutil.ToFloat64(m.exhausted.WithLabelValues("webhook")); got != 1 {
		t.Fatalf("exhausted metric %v, want 1 (the expired one is not exhausted)", got)
	}
	waitFor(t, "the ops alert", 10*time.Second, func() bool { amu.Lock(); defer amu.Unlock(); return len(alerts) == 1 })
	amu.Lock()
	a, _ := alerts[0]["alert"].(map[string]any)
	amu.Unlock()
	if a["notificationId"] != "horizon" || a["channel"] != "webhook" {
		t.Fatalf("alert %v", alerts[0])
	}
	if len(rc.Deliveries()) != 0 {
		t.Fatal("a failing provider counted deliveries")
	}
	dlq := env.deadLetters(t, 1)
	if dlq[0].NotificationID != "horizon" || dlq[0].Topic != string(topology.Out("webhook", "normal")) {
		t.Fatalf("dead letter %+v: it must name the queue it can be replayed to", dlq[0])
	}
}

func (e *sinkEnv) deadLetters(t *testing.T, want int) []*schemas.DeadLetter {
	t.Helper()
	return readTopic(t, e, string(topology.DLQ), schemas.DeadLetterCodec, want)
}

// With the first provider failing, its breaker opens after the configured
// failures and every later notification goes straight to the second
// provider: no call is wasted on the open one.
func TestOpenBreakerFailsOverImmediately(t *testing.T) {
	env := newSinkEnv(t)
	bad := webhooktest.Start("s")
	defer bad.Close()
	var badCalls atomic.Int32
	bad.Hook = func(*http.Request, []byte) int { badCalls.Add(1); return http.StatusServiceUnavailable }
	good := webhooktest.Start("s")
	defer good.Close()
	p2, _ := newWebhookProvider(configFor("wh-2", good.URL), Deps{})
	s := env.sink(newTestWebhook(t, bad.URL, "s", true), p2)
	s.Opts.Attempts = 1
	s.Opts.Concurrency = 1 // one call at a time, so the breaker sees them in order
	s.Opts.Breaker = config.Breaker{Failures: 3, OpenFor: time.Minute, Probes: 1}
	env.run(t, s)
	want := idList("fo", 40)
	for _, id := range want {
		env.routeTo(t, "webhook", "normal", id)
	}
	env.statuses(t, allEnd(want, processors.StatusSent))
	if n := badCalls.Load(); n != 3 {
		t.Fatalf("the failing provider was called %d times, want 3 (then its breaker is open)", n)
	}
	if n := len(distinct(good.Deliveries())); n != len(want) {
		t.Fatalf("second provider delivered %d, want %d", n, len(want))
	}
}

// A provider that hangs holds only its own lane: high-priority notifications
// served by another provider of the same channel, and another channel, are
// delivered while it hangs (measured by position: how many of the hanging
// provider's notifications were delivered before them — none).
func TestHangingProviderDoesNotHoldUpOthers(t *testing.T) {
	env := newSinkEnv(t)
	slow := webhooktest.Start("s")
	defer slow.Close()
	release := make(chan struct{})
	var hanging atomic.Int32
	slow.Hook = func(r *http.Request, _ []byte) int {
		hanging.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return 0
	}
	fast := webhooktest.Start("s")
	defer fast.Close()
	other := webhooktest.Start("s")
	defer other.Close()
	bulk, _ := newWebhookProvider(configFor("bulk", slow.URL), Deps{})
	priority, _ := newWebhookProvider(configFor("priority", fast.URL), Deps{})
	s := env.sink(bulk, priority)
	s.Limits = map[string]ProviderLimits{"bulk": {Priorities: []string{"normal", "low"}}, "priority": {Priorities: []string{"high"}}}
	s.Opts.SendTimeout = time.Minute
	env.run(t, s)
	slack, _ := newWebhookProvider(configFor("slack-hook", other.URL), Deps{})
	s2 := env.sink(slack)
	s2.Channel = "slack"
	env.run(t, s2)

	low := idList("low", 40)
	for _, id := range low {
		env.routeTo(t, "webhook", "low", id)
	}
	waitFor(t, "the bulk provider to hang", 20*time.Second, func() bool { return hanging.Load() > 0 })
	high := idList("high", 10)
	for _, id := range high {
		env.routeTo(t, "webhook", "high", id)
	}
	chat := idList("chat", 10)
	for _, id := range chat {
		env.routeTo(t, "slack", "normal", id)
	}
	waitFor(t, "high priority and the other channel", 30*time.Second, func() bool {
		return len(fast.Deliveries()) == len(high) && len(other.Deliveries()) == len(chat)
	})
	if n := len(slow.Deliveries()); n != 0 {
		t.Fatalf("%d bulk notifications were delivered before the high-priority ones; the test proves nothing", n)
	}
	close(release)
	env.statuses(t, allEnd(low, processors.StatusSent))
	if n := len(distinct(slow.Deliveries())); n != len(low) {
		t.Fatalf("bulk delivered %d of %d after the hang ended", n, len(low))
	}
}

// A provider limited to N calls per second sees at most N per second (and a
// small burst) across two sink instances: each takes the share of the limit
// that its partitions are of the channel's.
func TestRateLimitHoldsAcrossInstances(t *testing.T) {
	env := newSinkEnv(t)
	rc := webhooktest.Start("s")
	defer rc.Close()
	const limit = 20
	mk := func() *Sink {
		s := env.sink(newTestWebhook(t, rc.URL, "s", true))
		s.Limits = map[string]ProviderLimits{"wh": {RateLimit: limit, Burst: 2}}
		s.Opts.Partitions = 2
		s.Opts.Concurrency = 8
		return s
	}
	a, b := mk(), mk()
	env.run(t, a)
	env.run(t, b)
	waitFor(t, "both instances to own partitions", 30*time.Second, func() bool {
		return a.ownedCount() > 0 && b.ownedCount() > 0 && a.ownedCount()+b.ownedCount() == 6
	})
	want := idList("rl", 100)
	for i, id := range want {
		env.routeTo(t, "webhook", processors.Priorities[i%3], id)
	}
	env.statuses(t, allEnd(want, processors.StatusSent))
	ds := rc.Deliveries()
	times := make([]time.Time, len(ds))
	for i, d := range ds {
		times[i] = d.At
	}
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	worst := 0
	for i := range times {
		j := i
		for j < len(times) && times[j].Sub(times[i]) < time.Second {
			j++
		}
		worst = max(worst, j-i)
	}
	if worst > limit+2 {
		t.Fatalf("%d calls within one second, limit %d/s (+2 burst) across both instances", worst, limit)
	}
	t.Logf("busiest second: %d calls (limit %d/s)", worst, limit)
}

// Stopping (SIGTERM) lets the sends in flight finish and commits them; what
// had not started is delivered after the restart, nothing twice.
func TestStopDrainsSendsInFlight(t *testing.T) {
	env := newSinkEnv(t)
	rc := webhooktest.Start("s")
	defer rc.Close()
	var started atomic.Int32
	rc.Hook = func(*http.Request, []byte) int { started.Add(1); time.Sleep(400 * time.Millisecond); return 0 }
	s := env.sink(newTestWebhook(t, rc.URL, "s", true))
	s.Opts.Concurrency = 3
	want := idList("dr", 12)
	for _, id := range want {
		env.routeTo(t, "webhook", "normal", id)
	}
	ctx, cancel := context.WithCancel(env.ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitFor(t, "sends in flight", 20*time.Second, func() bool { return started.Load() >= 3 })
	inFlight := int(started.Load())
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	delivered := len(rc.Deliveries())
	if delivered < inFlight {
		t.Fatalf("%d sends were in flight at the stop, only %d finished: the stop cancelled them", inFlight, delivered)
	}
	offs, err := kadm.NewClient(env.producer).FetchOffsets(env.ctx, topology.SinkGroup("webhook"))
	if err != nil {
		t.Fatal(err)
	}
	var committed int64
	offs.Each(func(o kadm.OffsetResponse) { committed += o.At })
	if committed != int64(delivered) {
		t.Fatalf("committed %d records, %d were delivered", committed, delivered)
	}
	env.run(t, env.sink(newTestWebhook(t, rc.URL, "s", true)))
	env.statuses(t, allEnd(want, processors.StatusSent))
	for id, n := range distinct(rc.Deliveries()) {
		if n != 1 {
			t.Fatalf("%s delivered %d times", id, n)
		}
	}
	if n := len(distinct(rc.Deliveries())); n != len(want) {
		t.Fatalf("%d delivered, want %d", n, len(want))
	}
}

// When partitions move to another instance, it reads their ledger on that
// assignment: what the previous owner sent but had not committed is not sent
// again.
func TestLedgerIsReadOnEveryAssignment(t *testing.T) {
	env := newSinkEnv(t)
	rc := webhooktest.Start("s")
	defer rc.Close()
	a := env.sink(newTestWebhook(t, rc.URL, "s", true))
	a.skipCommit.Store(true) // as if it crashed before committing
	b := env.sink(newTestWebhook(t, rc.URL, "s", true))
	stopA := env.run(t, a)
	env.run(t, b)
	waitFor(t, "both instances to own partitions", 30*time.Second, func() bool {
		return a.ownedCount() > 0 && b.ownedCount() > 0 && a.ownedCount()+b.ownedCount() == 6
	})
	want := idList("mv", 40)
	for _, id := range want {
		env.routeTo(t, "webhook", "normal", id)
	}
	env.statuses(t, allEnd(want, processors.StatusSent))
	before := len(rc.Deliveries())
	stopA()
	waitFor(t, "b to own every partition", 30*time.Second, func() bool { return b.ownedCount() == 6 })
	// b re-reads a's uncommitted records; give it time to (not) send them.
	time.Sleep(2 * time.Second)
	for id, n := range distinct(rc.Deliveries()) {
		if n != 1 {
			t.Fatalf("%s delivered %d times after its partition moved (%d deliveries before, %d after)",
				id, n, before, len(rc.Deliveries()))
		}
	}
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// A null or unreadable record on a sink's queue or on a retry topic is
// dead-lettered with its reason; the records after it are delivered.
func TestNullAndUnreadableRecordsAreDeadLettered(t *testing.T) {
	env := newSinkEnv(t)
	rc := webhooktest.Start("s")
	defer rc.Close()
	env.produce(t, string(topology.Out("webhook", "normal")), "null-key", nil)
	env.produce(t, topology.RetryTopic(time.Second), "junk", []byte("not a notification"))
	env.routeTo(t, "webhook", "normal", "after-null")
	env.run(t, env.sink(newTestWebhook(t, rc.URL, "s", true)))
	env.retrier(t)
	env.statuses(t, allEnd([]string{"after-null"}, processors.StatusSent))
	dls := env.deadLetters(t, 2)
	reasons := map[string]string{}
	for _, d := range dls {
		reasons[d.Topic] = d.Stage + ": " + d.Reason
	}
	if r := reasons[string(topology.Out("webhook", "normal"))]; !strings.Contains(r, "sink.webhook: null value") {
		t.Fatalf("null record: %q", r)
	}
	if r := reasons[topology.RetryTopic(time.Second)]; !strings.HasPrefix(r, "retry: ") {
		t.Fatalf("unreadable retry record: %q", r)
	}
}

// A crash can leave a delivery's ledger entry without its sent event (they
// are separate produces). The redelivered record is not sent again, and its
// sent event is stated again, with the id the lost one had.
func TestLedgerSkipStatesTheSentEventAgain(t *testing.T) {
	env := newSinkEnv(t)
	rc := webhooktest.Start("s")
	defer rc.Close()
	w, err := topology.NewProducer(env.brokers, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	at := time.Now().Add(-time.Minute).UnixMilli()
	entry, _ := schemas.LedgerEntryCodec.Encode(&schemas.LedgerEntry{NotificationID: "lost-event", Channel: "webhook",
		Provider: "wh", Topic: string(topology.Out("webhook", "normal")), At: at})
	if err := w.ProduceSync(env.ctx, &kgo.Record{Topic: string(topology.Ledger), Partition: topology.PartitionFor("lost-event", 2),
		Key: []byte("lost-event/webhook"), Value: entry}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	env.routeTo(t, "webhook", "normal", "lost-event")
	env.run(t, env.sink(newTestWebhook(t, rc.URL, "s", true)))
	evs := env.events(t, 1)
	want := processors.StatusEventID("lost-event", processors.StatusSent, "webhook", 0)
	if evs[0].Status != processors.StatusSent || evs[0].ID != want || evs[0].Provider != "wh" || evs[0].At != at {
		t.Fatalf("event %+v, want sent by wh at %d with id %s", evs[0], at, want)
	}
	time.Sleep(500 * time.Millisecond)
	if n := len(rc.Deliveries()); n != 0 {
		t.Fatalf("sent again: %d deliveries", n)
	}
}

// When a side effect cannot be produced (here: the status events and ledger
// entries go to a broker that is gone), the record is not committed: its
// offset waits, and the watchdog reports the partition stuck.
func TestFailedSideEffectsAreNotCommitted(t *testing.T) {
	env := newSinkEnv(t)
	rc := webhooktest.Start("s")
	defer rc.Close()
	dead, err := topology.NewProducer([]string{"127.0.0.1:1"}, kgo.RecordDeliveryTimeout(time.Second),
		kgo.RetryTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	s := env.sink(newTestWebhook(t, rc.URL, "s", true))
	s.Producer = dead
	s.Watch = topology.NewWatchdog()
	s.Opts.DrainTimeout = time.Second
	env.routeTo(t, "webhook", "normal", "unrecorded")
	env.run(t, s)
	waitFor(t, "the delivery", 20*time.Second, func() bool { return len(rc.Deliveries()) == 1 })
	waitFor(t, "the watchdog to see the record stuck", 20*time.Second, func() bool {
		stuck := s.Watch.Stuck(time.Second)
		return len(stuck) == 1 && strings.HasPrefix(stuck[0], "notify.sink.webhook/")
	})
	offs, err := kadm.NewClient(env.producer).FetchOffsets(env.ctx, topology.SinkGroup("webhook"))
	if err != nil {
		t.Fatal(err)
	}
	offs.Each(func(o kadm.OffsetResponse) {
		if o.At > 0 {
			t.Fatalf("%s/%d committed at %d although its status event was never produced", o.Topic, o.Partition, o.At)
		}
	})
}
