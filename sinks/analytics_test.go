package sinks

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/analytics"
	"github.com/notifyd/notifyd/analytics/analyticstest"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// startClickHouse runs a real clickhouse-server for one test, on tcpPort (0 = free).
func startClickHouse(t testing.TB, dir string, tcpPort int) *analytics.LocalServer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	s, err := analytics.StartLocal(ctx, dir, tcpPort)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func migrated(t testing.TB, addr, db string) driver.Conn {
	t.Helper()
	conn, err := analytics.Open(addr, "default", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := analytics.Migrate(context.Background(), conn, db); err != nil {
		t.Fatal(err)
	}
	return conn
}

func produceEvents(t testing.TB, env *sinkEnv, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		ev := &schemas.StatusEvent{ID: fmt.Sprintf("ev-%d", i), NotificationID: fmt.Sprintf("n-%d", i), Channel: "email",
			Provider: "smtp-main", Status: "sent", At: time.Now().UnixMilli(), AcceptedAt: time.Now().UnixMilli() - 5}
		b, _ := schemas.StatusEventCodec.Encode(ev)
		env.producer.Produce(env.ctx, &kgo.Record{Topic: string(topology.Events), Key: []byte(ev.NotificationID), Value: b}, nil)
	}
	if err := env.producer.Flush(env.ctx); err != nil {
		t.Fatal(err)
	}
}

// counts returns distinct event ids, rows after folding, and distinct sent
// notifications in the rollup. Queries are retried: after an outage the
// connection pool may hand out a connection the restart broke.
func counts(t *testing.T, conn driver.Conn, db string) (ids, final, rollup uint64) {
	t.Helper()
	ctx := context.Background()
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		if err = conn.QueryRow(ctx, "SELECT uniqExact(id) FROM "+db+".events").Scan(&ids); err == nil {
			if err = conn.QueryRow(ctx, "SELECT count() FROM "+db+".events FINAL").Scan(&final); err == nil {
				if err = conn.QueryRow(ctx, "SELECT uniqExactMerge(notifications) FROM "+db+".events_per_minute WHERE status = 'sent'").Scan(&rollup); err == nil {
					return
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("counting in ClickHouse: %v", err)
	return
}

// waitCount waits until the raw table and the rollup both count want. An
// INSERT commits the events part before the part its materialized view
// writes, so a query between the two sees the raw rows without their rollup.
func waitCount(t *testing.T, conn driver.Conn, db string, want uint64, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ids, _, rollup := counts(t, conn, db)
		if ids >= want && rollup >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events (rollup %d) in ClickHouse after %v", ids, want, rollup, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runAnalytics runs a sink until ctx ends or the test does; done closes when Run returned.
func runAnalytics(t *testing.T, ctx context.Context, a *AnalyticsSink) (done chan struct{}) {
	ctx, cancel := context.WithCancel(ctx)
	done = make(chan struct{})
	go func() {
		if err := a.Run(ctx); err != nil {
			t.Errorf("analytics sink: %v", err)
		}
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return done
}

// Stop the sink after a batch was inserted but before its offsets were
// committed, start it again: every event arrives, none counts twice.
func TestAnalyticsSinkRestartMidBatch(t *testing.T) {
	env := newSinkEnv(t)
	ch := startClickHouse(t, t.TempDir(), 0)
	defer ch.Stop()
	conn := migrated(t, ch.Addr, "a1")
	produceEvents(t, env, 0, 1000)
	produceEvents(t, env, 0, 50) // the pipeline re-emitting after a crash: same event ids

	reg := prometheus.NewRegistry()
	m := NewAnalyticsMetrics(reg)
	newSink := func() *AnalyticsSink {
		return &AnalyticsSink{Brokers: env.brokers, Conn: conn, DB: "a1", BatchSize: 100, FlushEvery: 50 * time.Millisecond,
			Backoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Metrics: m, Log: slog.New(slog.DiscardHandler)}
	}
	first := newSink()
	crashCtx, crash := context.WithCancel(context.Background())
	defer crash()
	batches := 0
	first.afterInsert = func() {
		if batches++; batches == 3 {
			crash() // dies between insert and commit
		}
	}
	done := runAnalytics(t, crashCtx, first)
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("first sink never reached its third batch")
	}
	runAnalytics(t, context.Background(), newSink())
	waitCount(t, conn, "a1", 1000, 60*time.Second)
	time.Sleep(300 * time.Millisecond)
	ids, final, rollup := counts(t, conn, "a1")
	if ids != 1000 || final != 1000 || rollup != 1000 {
		t.Fatalf("ids %d, rows after folding %d, rollup %d; want 1000 each", ids, final, rollup)
	}
	// The third batch was inserted twice (and the 50 re-emitted events once more):
	// the proof that the test crossed a redelivery.
	if inserted := testutil.ToFloat64(m.rows); inserted < 1150 {
		t.Fatalf("%v rows inserted; the crash did not cause a redelivery", inserted)
	}
}

// ClickHouse goes away: the sink keeps its batch and retries, and when the
// server is back every event arrives once.
func TestAnalyticsSinkRidesOutClickHouseOutage(t *testing.T) {
	env := newSinkEnv(t)
	dir := t.TempDir()
	ch := startClickHouse(t, dir, 0)
	relay, err := analyticstest.NewRelay(ch.Addr) // the sink's fixed address
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	conn := migrated(t, relay.Addr, "a2")
	reg := prometheus.NewRegistry()
	m := NewAnalyticsMetrics(reg)
	runAnalytics(t, context.Background(), &AnalyticsSink{Brokers: env.brokers, Conn: conn, DB: "a2", BatchSize: 100, FlushEvery: 50 * time.Millisecond,
		Backoff: 20 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, Metrics: m, Log: slog.New(slog.DiscardHandler)})
	produceEvents(t, env, 0, 200)
	waitCount(t, conn, "a2", 200, 30*time.Second)

	ch.Kill()
	produceEvents(t, env, 200, 500)
	deadline := time.Now().Add(20 * time.Second)
	for testutil.ToFloat64(m.failures) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if testutil.ToFloat64(m.failures) == 0 {
		t.Fatal("no failed insert while ClickHouse was down")
	}
	ch = startClickHouse(t, dir, 0) // same data; any port, behind the same address
	defer ch.Stop()
	relay.Retarget(ch.Addr)
	waitCount(t, conn, "a2", 500, 60*time.Second)
	ids, final, rollup := counts(t, conn, "a2")
	if ids != 500 || final != 500 || rollup != 500 {
		t.Fatalf("ids %d, rows %d, rollup %d; want 500 each", ids, final, rollup)
	}
}

// BenchmarkAnalyticsSink measures what the sink alone sustains into a local
// clickhouse-server. Each op produces a backlog of whole batches of status
// events (shaped like the pipeline's: mixed channels, providers, templates,
// statuses), then starts a sink and times it from its start (group join
// included) to the last insert: it fetches, decodes and inserts every event
// inside the timed part.
//
//	go test -run '^$' -bench AnalyticsSink -benchtime 5x ./sinks/
func BenchmarkAnalyticsSink(b *testing.B) {
	for _, batch := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			env := newSinkEnv(b)
			ch := startClickHouse(b, b.TempDir(), 0)
			defer ch.Stop()
			conn := migrated(b, ch.Addr, "bench")
			m := NewAnalyticsMetrics(prometheus.NewRegistry())
			const perOp = 100_000 // a whole number of batches: no op waits for FlushEvery
			var inserted float64
			var busy time.Duration
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				benchEvents(b, env, i*perOp, (i+1)*perOp)
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				sink := &AnalyticsSink{Brokers: env.brokers, Conn: conn, DB: "bench", BatchSize: batch, FlushEvery: time.Second,
					Backoff: 100 * time.Millisecond, MaxBackoff: time.Second, Metrics: m, Log: slog.New(slog.DiscardHandler)}
				b.StartTimer()
				start := time.Now()
				go func() { done <- sink.Run(ctx) }()
				inserted += perOp
				for testutil.ToFloat64(m.rows) < inserted {
					select {
					case err := <-done:
						b.Fatalf("sink stopped: %v", err)
					case <-time.After(time.Millisecond):
					}
				}
				busy += time.Since(start)
				b.StopTimer()
				cancel()
				<-done
				b.StartTimer()
			}
			b.ReportMetric(inserted/busy.Seconds(), "events/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// benchEvents produces status events from..to with the variety of a real stream.
func benchEvents(b *testing.B, env *sinkEnv, from, to int) {
	channels := []string{"email", "sms", "push", "webhook"}
	statuses := []string{"accepted", "routed", "sent", "delivered", "failed", "suppressed"}
	now := time.Now().UnixMilli()
	for i := from; i < to; i++ {
		n := i / len(statuses)
		ev := &schemas.StatusEvent{ID: fmt.Sprintf("ev-%d", i), NotificationID: fmt.Sprintf("n-%d", n), EventID: fmt.Sprintf("e-%d", n),
			UserID: fmt.Sprintf("u-%d", n%5000), Template: fmt.Sprintf("template-%d", n%40), Channel: channels[n%len(channels)],
			Priority: "normal", Category: "transactional", Provider: channels[n%len(channels)] + "-main", Status: statuses[i%len(statuses)],
			At: now + int64(i%len(statuses))*40, AcceptedAt: now, Attempt: 1, ProviderMessageID: fmt.Sprintf("pm-%d", n)}
		v, err := schemas.StatusEventCodec.Encode(ev)
		if err != nil {
			b.Fatal(err)
		}
		env.producer.Produce(context.Background(), &kgo.Record{Topic: string(topology.Events), Key: []byte(ev.NotificationID), Value: v}, nil)
	}
	if err := env.producer.Flush(context.Background()); err != nil {
		b.Fatal(err)
	}
}

// Every row carries its event's tenant and campaign, and the rollup counts
// per tenant and campaign: a tenant's events never count for another, the
// default tenant's included, nor a campaign's for another campaign or for
// notifications no campaign sent. An oversized campaign is clipped.
func TestAnalyticsSinkWritesTheTenant(t *testing.T) {
	env := newSinkEnv(t)
	ch := startClickHouse(t, t.TempDir(), 0)
	defer ch.Stop()
	conn := migrated(t, ch.Addr, "a3")
	now := time.Now().UnixMilli()
	long := strings.Repeat("c", 300)
	clipped := processors.Clip(long, maxCampaign)
	type key struct{ tenant, campaign string }
	want := map[key]uint64{{"", ""}: 3, {"", "spring"}: 1, {"acme", ""}: 1, {"acme", "spring"}: 2, {"globex", "spring"}: 1,
		{"globex", long}: 1}
	i := 0
	for k, n := range want {
		for j := uint64(0); j < n; j++ {
			i++
			ev := &schemas.StatusEvent{Tenant: k.tenant, Campaign: k.campaign, ID: fmt.Sprintf("ev-%d", i), NotificationID: fmt.Sprintf("n-%d", i),
				Channel: "email", Provider: "smtp-main", Status: "sent", At: now, AcceptedAt: now - 5}
			b, err := schemas.StatusEventCodec.Encode(ev)
			if err != nil {
				t.Fatal(err)
			}
			env.producer.Produce(env.ctx, &kgo.Record{Topic: string(topology.Events), Key: []byte(ev.NotificationID), Value: b}, nil)
		}
	}
	if err := env.producer.Flush(env.ctx); err != nil {
		t.Fatal(err)
	}
	runAnalytics(t, context.Background(), &AnalyticsSink{Brokers: env.brokers, Conn: conn, DB: "a3", BatchSize: 100,
		FlushEvery: 50 * time.Millisecond, Backoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Log: slog.New(slog.DiscardHandler)})
	waitCount(t, conn, "a3", uint64(i), 30*time.Second)
	ctx := context.Background()
	for k, n := range want {
		if k.campaign == long {
			k.campaign = clipped
		}
		var rows, rollup uint64
		if err := conn.QueryRow(ctx, "SELECT uniqExact(id) FROM a3.events WHERE tenant = ? AND campaign = ?", k.tenant, k.campaign).Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if err := conn.QueryRow(ctx, "SELECT uniqExactMerge(notifications) FROM a3.events_per_minute WHERE tenant = ? AND campaign = ? AND status = 'sent'",
			k.tenant, k.campaign).Scan(&rollup); err != nil {
			t.Fatal(err)
		}
		if rows != n || rollup != n {
			t.Fatalf("tenant %q, campaign %.20q: %d rows, rollup %d; want %d", k.tenant, k.campaign, rows, rollup, n)
		}
	}
	for tenant, n := range map[string]uint64{"": 4, "acme": 3, "globex": 2} {
		var rollup uint64
		if err := conn.QueryRow(ctx, "SELECT uniqExactMerge(notifications) FROM a3.events_per_minute WHERE tenant = ? AND status = 'sent'",
			tenant).Scan(&rollup); err != nil || rollup != n {
			t.Fatalf("tenant %q over all campaigns: rollup %d (%v), want %d", tenant, rollup, err, n)
		}
	}
	var longest uint64
	if err := conn.QueryRow(ctx, "SELECT max(length(campaign)) FROM a3.events").Scan(&longest); err != nil || int(longest) > maxCampaign+len("…") {
		t.Fatalf("longest campaign stored: %d bytes (%v)", longest, err)
	}
}
