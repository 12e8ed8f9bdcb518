package sinks

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
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
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/webhooktest"
	"github.com/notifyd/notifyd/topology"
)

// parkedRecord is a retry record as a sink writes it, parked at `at` by the
// given providers (recovery keys), due in ten minutes.
func parkedRecord(t testing.TB, topic, id string, at time.Time, by ...string) *kgo.Record {
	t.Helper()
	n := &schemas.Notification{ID: id, EventID: "e-" + id, UserID: "u-" + id, Template: "t", Channel: "webhook",
		Address: "default", Priority: "normal", AcceptedAt: at.UnixMilli(), Retries: 3,
		RetryAt: time.Now().Add(10 * time.Minute).UnixMilli(), Content: schemas.Content{Body: `{"id":"` + id + `"}`}}
	b, err := schemas.NotificationCodec.Encode(n)
	if err != nil {
		t.Fatal(err)
	}
	rec := &kgo.Record{Topic: topic, Key: []byte(id), Value: b}
	if !at.IsZero() {
		rec.Headers = parking{at: at, by: by}.headers()
	}
	return rec
}

// The release decision: a recovery of provider P at T frees the records a
// failure of P parked before T, and nothing else: not those parked after T
// (P failed again, or asked to wait past T), not those parked by another
// provider or by a provider of the same name in another channel, not those
// that say nothing of their parking.
func TestRecoveryReleasesWhatItsProviderParkedBefore(t *testing.T) {
	T := time.UnixMilli(1_700_000_000_000)
	recovered := map[string]time.Time{"webhook/wh": T, "email/channel:email": T}
	cases := []struct {
		name string
		rec  *kgo.Record
		want string
	}{
		{"parked by P before T", parkedRecord(t, "r", "a", T.Add(-time.Minute), "webhook/wh", "webhook/channel:webhook"), "webhook/wh"},
		{"P is its second provider", parkedRecord(t, "r", "b", T.Add(-time.Millisecond), "webhook/other", "webhook/wh"), "webhook/wh"},
		{"parked at T", parkedRecord(t, "r", "c", T, "webhook/wh"), ""},
		{"parked after T", parkedRecord(t, "r", "d", T.Add(time.Second), "webhook/wh"), ""},
		{"another provider", parkedRecord(t, "r", "e", T.Add(-time.Minute), "webhook/other", "webhook/channel:webhook"), ""},
		{"same name, another channel", parkedRecord(t, "r", "f", T.Add(-time.Minute), "sms/wh"), ""},
		{"the channel's chain recovered", parkedRecord(t, "r", "g", T.Add(-time.Minute), "email/smtp", "email/channel:email"), "email/channel:email"},
		{"no parking headers", parkedRecord(t, "r", "h", time.Time{}), ""},
	}
	for _, c := range cases {
		if got := parkedBy(c.rec).releasedBy(recovered); got != c.want {
			t.Errorf("%s: released by %q, want %q", c.name, got, c.want)
		}
	}
	garbled := parkedRecord(t, "r", "i", T.Add(-time.Minute), "webhook/wh")
	garbled.Headers[0].Value = []byte("yesterday")
	if got := parkedBy(garbled).releasedBy(recovered); got != "" {
		t.Errorf("unreadable parking time: released by %q, want kept", got)
	}

	// Held records: released wherever they are in their partition, the others
	// kept in order; only the records just fetched are looked at unless a
	// recovery is news.
	k := tp{"notify.retry.10m", 0}
	hold := func(ids ...string) map[tp][]*held {
		m := map[tp][]*held{}
		for _, id := range ids {
			at := T.Add(-time.Minute)
			if strings.HasPrefix(id, "late") {
				at = T.Add(time.Minute)
			}
			m[k] = append(m[k], newHeld(parkedRecord(t, k.topic, id, at, "webhook/wh")))
		}
		return m
	}
	heldBy := hold("late1", "early1", "late2", "early2")
	out := takeReleased(heldBy, recovered, nil)
	if ids := heldIDs(out); ids != "early1,early2" {
		t.Fatalf("released %s, want early1,early2", ids)
	}
	if ids := heldIDs(heldBy[k]); ids != "late1,late2" {
		t.Fatalf("kept %s, want late1,late2", ids)
	}
	if out[0].by != "webhook/wh" || out[0].due.IsZero() {
		t.Fatalf("released record reads by %q, due %v", out[0].by, out[0].due)
	}
	heldBy = hold("early1", "late1", "early2")
	if out := takeReleased(heldBy, recovered, map[tp]int{k: 2}); heldIDs(out) != "early2" || heldIDs(heldBy[k]) != "early1,late1" {
		t.Fatalf("looking at the fetched records only: released %s, kept %s", heldIDs(out), heldIDs(heldBy[k]))
	}
	if out := takeReleased(heldBy, nil, nil); len(out) != 0 {
		t.Fatalf("released %s with no recovery known", heldIDs(out))
	}
}

func heldIDs(hs []*held) string {
	var ids []string
	for _, h := range hs {
		ids = append(ids, string(h.rec.Key))
	}
	return strings.Join(ids, ",")
}

// A record released early leaves older records held behind it: the commit
// stops at the first of those (a restart reads them again), and goes past
// everything once they are put back too.
func TestReleasedRecordsCommitOnlyPastWhatIsPutBack(t *testing.T) {
	k := tp{"notify.retry.10m", 1}
	owned := map[tp]bool{k: true}
	rec := func(off int64) *held {
		return &held{rec: &kgo.Record{Topic: k.topic, Partition: k.partition, Offset: off, LeaderEpoch: 1}}
	}
	r3, r4, r5, r6 := rec(3), rec(4), rec(5), rec(6)
	heldBy := map[tp][]*held{k: {r3, r5}}
	next := map[tp]kgo.EpochOffset{}
	got := commitPoints(heldBy, owned, next, []*held{r4, r6})
	if at := got[k.topic][k.partition]; at.Offset != 3 {
		t.Fatalf("commit at %d with offset 3 still held, want 3", at.Offset)
	}
	delete(heldBy, k)
	got = commitPoints(heldBy, owned, next, []*held{r3, r5})
	if at := got[k.topic][k.partition]; at.Offset != 7 {
		t.Fatalf("commit at %d once nothing is held, want 7 (past offset 6 put back earlier)", at.Offset)
	}
	if got := commitPoints(map[tp][]*held{}, map[tp]bool{}, next, []*held{r6}); len(got) != 0 {
		t.Fatalf("committed %v for a partition no longer owned", got)
	}
}

// retrierWith runs a retrier until the test ends and returns it.
func (e *sinkEnv) retrierWith(t *testing.T, r *Retrier) *Retrier {
	t.Helper()
	r.Brokers, r.Producer = e.brokers, e.producer
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("retrier: %v", err)
		}
	})
	return r
}

// outIDs reads notify.out.webhook.normal from its start until every id of
// want arrived (or the test's time is up) and returns how often each came.
func (e *sinkEnv) outIDs(t *testing.T, want []string) map[string]int {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(string(topology.Out("webhook", "normal"))),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	got := map[string]int{}
	missing := func() int {
		n := 0
		for _, id := range want {
			if got[id] == 0 {
				n++
			}
		}
		return n
	}
	for missing() > 0 {
		if e.ctx.Err() != nil {
			t.Fatalf("%d of %d notifications never put back on their queue", missing(), len(want))
		}
		ctx, cancel := context.WithTimeout(e.ctx, 500*time.Millisecond)
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) { got[string(r.Key)]++ })
		cancel()
	}
	return got
}

func (e *sinkEnv) announce(t *testing.T, rc Recovery) {
	t.Helper()
	if err := e.producer.ProduceSync(e.ctx, rc.record()).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// Scale-out: two retriers share the retry topics in one group, and the
// recovery is announced by neither of them (a sink in another process).
// Each releases what it holds, so every parked notification is back on its
// queue at once rather than in ten minutes.
func TestRecoveryReachesEveryRetrierOfTheGroup(t *testing.T) {
	env := newSinkEnv(t)
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	a := env.retrierWith(t, &Retrier{Metrics: NewMetrics(regA), Log: discardLog()})
	b := env.retrierWith(t, &Retrier{Metrics: NewMetrics(regB), Log: discardLog()})
	<-a.Ready()
	<-b.Ready()
	env.waitGroupSplit(t, 2)

	parkedAt := time.Now().Add(-time.Second)
	var ids []string
	tiers := []time.Duration{time.Second, 2 * time.Second, 10 * time.Second, time.Minute, 10 * time.Minute, time.Hour}
	for i := range 48 {
		id := "x" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		ids = append(ids, id)
		rec := parkedRecord(t, topology.RetryTopic(tiers[i%len(tiers)]), id, parkedAt, "webhook/wh", "webhook/channel:webhook")
		if err := env.producer.ProduceSync(env.ctx, rec).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	env.announce(t, Recovery{Channel: "webhook", Provider: "wh", RecoveredAt: time.Now().UnixMilli()})

	got := env.outIDs(t, ids)
	released := func(m *Metrics) float64 { return testutil.ToFloat64(m.released.WithLabelValues("webhook", "wh")) }
	waitFor(t, "both retriers to count their releases", 20*time.Second, func() bool {
		return released(a.Metrics)+released(b.Metrics) == float64(len(ids))
	})
	if released(a.Metrics) == 0 || released(b.Metrics) == 0 {
		t.Fatalf("released %v by one retriever and %v by the other: both hold partitions, both must act on the recovery",
			released(a.Metrics), released(b.Metrics))
	}
	for id, n := range got {
		if n != 1 {
			t.Fatalf("%s put back %d times", id, n)
		}
	}
}

// waitGroupSplit waits until the retry group has members members, each with
// partitions of its own, covering every retry partition.
func (e *sinkEnv) waitGroupSplit(t *testing.T, members int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	waitFor(t, "the retry group to split its partitions", 30*time.Second, func() bool {
		groups, err := adm.DescribeGroups(e.ctx, topology.RetryGroup)
		if err != nil {
			return false
		}
		g := groups[topology.RetryGroup]
		if g.State != "Stable" || len(g.Members) != members {
			return false
		}
		total := 0
		for _, m := range g.Members {
			c, ok := m.Assigned.AsConsumer()
			if !ok {
				return false
			}
			n := 0
			for _, ct := range c.Topics {
				n += len(ct.Partitions)
			}
			if n == 0 {
				return false
			}
			total += n
		}
		return total == 6*2 // the env's six tiers, two partitions each
	})
}

// A record parked before a recovery but fetched after it (its partition was
// paused at MaxHeld, or it came late) is released once fetched, without
// waiting for another recovery.
func TestRecordsFetchedAfterARecoveryAreReleased(t *testing.T) {
	env := newSinkEnv(t)
	r := env.retrierWith(t, &Retrier{Metrics: NewMetrics(prometheus.NewRegistry()), Log: discardLog(), MaxHeld: 4})
	<-r.Ready()
	parkedAt := time.Now().Add(-time.Minute)
	topic := topology.RetryTopic(10 * time.Minute)
	before := idList("early", 12)
	for _, id := range before {
		env.produceRecord(t, parkedRecord(t, topic, id, parkedAt, "webhook/wh"))
	}
	env.announce(t, Recovery{Channel: "webhook", Provider: "wh", RecoveredAt: time.Now().UnixMilli()})
	env.outIDs(t, before)
	after := idList("late", 30)
	for _, id := range after {
		env.produceRecord(t, parkedRecord(t, topic, id, parkedAt, "webhook/wh"))
	}
	got := env.outIDs(t, append(before, after...))
	for id, n := range got {
		if n != 1 {
			t.Fatalf("%s put back %d times", id, n)
		}
	}
}

func (e *sinkEnv) produceRecord(t *testing.T, rec *kgo.Record) {
	t.Helper()
	if err := e.producer.ProduceSync(e.ctx, rec).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a log destination the test reads while the retrier writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Garbage on notify.recoveries is logged and skipped: the retrier goes on,
// and the recovery written after it still releases what it parked.
func TestUnreadableRecoveriesAreIgnored(t *testing.T) {
	env := newSinkEnv(t)
	var logs syncBuffer
	r := env.retrierWith(t, &Retrier{Log: slog.New(slog.NewTextHandler(&logs, nil))})
	<-r.Ready()
	topic := string(topology.Recoveries)
	env.produce(t, topic, "webhook/wh", []byte{0xc3, 0x01, 0xff, 0x00, 0x13})
	env.produce(t, topic, "webhook/wh", []byte(`{"channel":"webhook","provider":"wh"`))
	env.produce(t, topic, "webhook/other", []byte(`{"channel":"webhook","provider":"wh","recoveredAt":1}`))
	env.produce(t, topic, "webhook/wh", []byte(`{"channel":"webhook","provider":"wh","recoveredAt":-5}`))
	env.produce(t, topic, "webhook/wh", nil)
	env.produce(t, topic, "webhook/wh", bytes.Repeat([]byte("{"), 10_000))
	waitFor(t, "the unreadable recoveries to be logged", 20*time.Second, func() bool {
		return strings.Count(logs.String(), "unreadable provider recovery ignored") == 6
	})
	env.produceRecord(t, parkedRecord(t, topology.RetryTopic(10*time.Minute), "n1", time.Now().Add(-time.Minute), "webhook/wh"))
	env.announce(t, Recovery{Channel: "webhook", Provider: "wh", RecoveredAt: time.Now().UnixMilli()})
	env.outIDs(t, []string{"n1"})
	if !strings.Contains(logs.String(), "released=1") {
		t.Fatalf("no release logged with its count:\n%s", logs.String())
	}
}

// End to end in one channel: a webhook outage parks every notification on
// the ten-minute tier; once the provider is back, the first notification
// through closes the breaker and every parked one is delivered at once,
// each once.
func TestRecoveredProviderGetsItsParkedNotificationsAtOnce(t *testing.T) {
	env := newSinkEnv(t)
	rc := webhooktest.Start("s")
	defer rc.Close()
	var down atomic.Bool
	down.Store(true)
	rc.Hook = func(*http.Request, []byte) int {
		if down.Load() {
			return http.StatusServiceUnavailable
		}
		return 0
	}
	m := NewMetrics(prometheus.NewRegistry())
	s := env.sink(newTestWebhook(t, rc.URL, "s", true))
	s.Metrics, s.Log = m, discardLog()
	s.Opts.Attempts = 1
	s.Opts.Retry = config.Retry{Tiers: []time.Duration{time.Second, 2 * time.Second, 10 * time.Minute},
		Horizon: map[string]time.Duration{"normal": time.Hour}}
	s.Opts.Breaker = config.Breaker{Failures: 3, OpenFor: 500 * time.Millisecond, Probes: 1}
	env.run(t, s)
	env.retrierWith(t, &Retrier{Metrics: m, Log: discardLog()})
	parked := idList("parked", 30)
	for _, id := range parked {
		env.routeTo(t, "webhook", "normal", id)
	}
	waitFor(t, "every notification to reach the ten-minute tier", 30*time.Second, func() bool {
		return testutil.ToFloat64(m.retries.WithLabelValues("webhook", "10m")) >= float64(len(parked))
	})
	down.Store(false)
	env.routeTo(t, "webhook", "normal", "after") // traffic goes on: it closes the breaker
	all := append(parked, "after")
	env.statuses(t, allEnd(all, "sent"))
	got := distinct(rc.Deliveries())
	for _, id := range all {
		if got[id] != 1 {
			t.Fatalf("%s delivered %d times", id, got[id])
		}
	}
	if n := testutil.ToFloat64(m.released.WithLabelValues("webhook", "wh")) +
		testutil.ToFloat64(m.released.WithLabelValues("webhook", "channel:webhook")); n < 1 {
		t.Fatal("nothing counted as released early")
	}
}
