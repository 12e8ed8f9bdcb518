package sinks

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/webhooktest"
	"github.com/notifyd/notifyd/topology"
)

type sinkEnv struct {
	brokers  []string
	producer *kgo.Client
	ctx      context.Context
}

func newSinkEnv(t testing.TB) *sinkEnv {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	tiers := append([]time.Duration{time.Second, 2 * time.Second}, config.Default().Sink.Retry.Tiers...)
	if err := topology.CreateTopics(ctx, c.ListenAddrs(), 2, 1, topology.RetryTopics(tiers)...); err != nil {
		t.Fatal(err)
	}
	p, err := topology.NewProducer(c.ListenAddrs())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return &sinkEnv{brokers: c.ListenAddrs(), producer: p, ctx: ctx}
}

func (e *sinkEnv) produce(t *testing.T, topic string, key string, value []byte) {
	t.Helper()
	if err := e.producer.ProduceSync(e.ctx, &kgo.Record{Topic: topic, Key: []byte(key), Value: value}).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// routedAt is when the deliver group routed the notifications of route.
const routedAt = 1795000000456

func (e *sinkEnv) route(t *testing.T, id string) {
	t.Helper()
	b, _ := schemas.NotificationCodec.Encode(&schemas.Notification{ID: id, EventID: "e-" + id, UserID: "u", Template: "t",
		Channel: "webhook", Address: "default", Priority: "normal", Content: schemas.Content{Body: `{"id":"` + id + `"}`},
		RoutedAt: routedAt})
	e.produce(t, string(topology.Out("webhook", "normal")), id, b)
}

func (e *sinkEnv) run(t *testing.T, s *Sink) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sink: %v", err)
		}
	})
	return cancel
}

func (e *sinkEnv) sink(providers ...Provider) *Sink {
	return &Sink{Channel: "webhook", Brokers: e.brokers, Providers: providers, Producer: e.producer,
		Opts: Options{Chunk: 16, Concurrency: 4, Attempts: 2, Backoff: 5 * time.Millisecond, SendTimeout: 5 * time.Second, LedgerLookback: time.Hour}}
}

// readTopic decodes records of topic from its start until want arrived.
func readTopic[T any](t *testing.T, e *sinkEnv, topic string, codec *schemas.Codec[T], want int) []*T {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*T
	for len(out) < want && e.ctx.Err() == nil {
		cl.PollFetches(e.ctx).EachRecord(func(r *kgo.Record) {
			v, err := codec.Decode(r.Value)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, v)
		})
	}
	return out
}

// events reads status events from notify.events until want arrived.
func (e *sinkEnv) events(t *testing.T, want int) []*schemas.StatusEvent {
	t.Helper()
	return readTopic(t, e, string(topology.Events), schemas.StatusEventCodec, want)
}

// A notification the ledger says was handed to a provider (the process died
// after the provider accepted, before the offset was committed) is not sent again.
func TestSinkDoesNotResendWhatTheLedgerRecords(t *testing.T) {
	env := newSinkEnv(t)
	rc := webhooktest.Start("s")
	defer rc.Close()
	entry, _ := schemas.LedgerEntryCodec.Encode(&schemas.LedgerEntry{NotificationID: "n1", Channel: "webhook",
		Provider: "wh", Topic: string(topology.Out("webhook", "normal")), At: time.Now().UnixMilli()})
	env.produce(t, string(topology.Ledger), "n1/webhook", entry)
	env.route(t, "n1")
	env.route(t, "n2")
	env.run(t, env.sink(newTestWebhook(t, rc.URL, "s", true)))

	deadline := time.Now().Add(20 * time.Second)
	for len(rc.Deliveries()) < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// Both records are committed once n2 is done; wait for that, then check.
	adm := kadm.NewClient(env.producer)
	for time.Now().Before(deadline) {
		offs, err := adm.FetchOffsets(env.ctx, topology.SinkGroup("webhook"))
		var total int64
		if err == nil {
			offs.Each(func(o kadm.OffsetResponse) { total += o.At })
		}
		if total == 2 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	d := rc.Deliveries()
	if len(d) != 1 || d[0].ID != "n2" {
		t.Fatalf("deliveries %+v, want only n2", d)
	}
}

func TestSinkRetriesThenFailsOver(t *testing.T) {
	env := newSinkEnv(t)
	primary := webhooktest.Start("s")
	defer primary.Close()
	var primaryCalls atomic.Int32
	primary.Hook = func(*http.Request, []byte) int { primaryCalls.Add(1); return http.StatusServiceUnavailable }
	secondary := webhooktest.Start("s")
	defer secondary.Close()
	p1 := newTestWebhook(t, primary.URL, "s", true)
	p2, _ := newWebhookProvider(configFor("wh-2", secondary.URL), Deps{})
	env.route(t, "n1")
	env.run(t, env.sink(p1, p2))
	evs := env.events(t, 1)
	if evs[0].Status != "sent" || evs[0].Provider != "wh-2" || evs[0].Attempt != 3 {
		t.Fatalf("event %+v, want sent by wh-2 on attempt 3", evs[0])
	}
	// The event states the routing: the queued state is recorded from it.
	if evs[0].QueuedAt != routedAt || evs[0].Channel != "webhook" {
		t.Fatalf("event %+v, want queuedAt %d on webhook", evs[0], routedAt)
	}
	if primaryCalls.Load() != 2 || len(secondary.Deliveries()) != 1 {
		t.Fatalf("primary called %d times, secondary delivered %d", primaryCalls.Load(), len(secondary.Deliveries()))
	}
}

func TestSinkPermanentFailureGoesToDLQ(t *testing.T) {
	env := newSinkEnv(t)
	rc := webhooktest.Start("s")
	defer rc.Close()
	rc.Hook = func(*http.Request, []byte) int { return http.StatusGone }
	env.route(t, "n1")
	env.produce(t, string(topology.Out("webhook", "normal")), "junk", []byte("not a notification"))
	env.route(t, "n2")
	env.run(t, env.sink(newTestWebhook(t, rc.URL, "s", true)))
	evs := env.events(t, 3)
	statuses := map[string]string{}
	for _, e := range evs {
		statuses[e.NotificationID] = e.Status + ": " + e.Reason
	}
	for _, id := range []string{"n1", "n2"} {
		if statuses[id] != "failed: all providers failed, last: webhook default: HTTP 410" {
			t.Fatalf("%s: %q", id, statuses[id])
		}
	}
	rejected := 0
	for id, s := range statuses {
		if strings.HasPrefix(id, "record:notify.out.webhook.normal:") && strings.HasPrefix(s, "rejected: sink: decode") {
			rejected++
		}
	}
	if rejected != 1 {
		t.Fatalf("the undecodable record has no rejected event: %v", statuses)
	}
	var reasons []string
	for _, d := range env.deadLetters(t, 3) {
		reasons = append(reasons, d.Reason)
	}
	if len(reasons) != 3 {
		t.Fatalf("dead letters %q", reasons)
	}
}
