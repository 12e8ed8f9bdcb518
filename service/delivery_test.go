package service_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/webhooktest"
	"github.com/notifyd/notifyd/topology"
)

// holdUntil is a webhook hook that holds every request until release is
// closed (or the sender gives up), then accepts it.
func holdUntil(release <-chan struct{}) func(*http.Request, []byte) int {
	return func(r *http.Request, _ []byte) int {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return 0
	}
}

func webhookTemplate() map[string]any {
	return map[string]any{"category": "transactional", "channels": map[string]any{
		"webhook": map[string]any{"body": `{"orderId": "{{.orderId}}"}`}}}
}

// Stop notifyd while the provider holds the request (between accept and
// delivery), start it again on the same data dir: the notification is
// delivered exactly once.
func TestRestartBetweenAcceptAndDeliveryDeliversOnce(t *testing.T) {
	h := newHarness(t)
	arrived := make(chan string, 1)
	var first atomic.Bool
	first.Store(true)
	h.hook.Hook = func(r *http.Request, _ []byte) int {
		if first.CompareAndSwap(true, false) {
			arrived <- r.Header.Get("X-Notifyd-Notification-Id")
			<-r.Context().Done() // blocks until the process is stopped
		}
		return 0
	}
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/hook", webhookTemplate())
	ids := h.send(map[string]any{"template": "hook", "data": map[string]any{"orderId": "r1"},
		"recipients": []any{map[string]any{"userId": "r1"}}})
	select {
	case got := <-arrived:
		if got != ids["r1"] {
			t.Fatalf("provider got %s, want %s", got, ids["r1"])
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the provider never saw the notification")
	}
	h.stop()
	if n := len(h.hook.Deliveries()); n != 0 {
		t.Fatalf("%d deliveries counted before restart", n)
	}

	h.start() // same config, same data directory
	st := h.waitStatus(ids["r1"], "sent")
	time.Sleep(time.Second) // room for a wrong second delivery
	d := h.hook.Deliveries()
	if len(d) != 1 || d[0].ID != ids["r1"] || string(d[0].Body) != `{"orderId": "r1"}` {
		t.Fatalf("want exactly one delivery of %s, got %+v", ids["r1"], d)
	}
	if st["provider"] != "hook-main" {
		t.Errorf("status %v", st)
	}
}

// With 5,000 low-priority notifications queued, a high-priority one is
// delivered before 90% of that backlog.
func TestHighPriorityOvertakesBacklog(t *testing.T) {
	const backlog = 5000
	h := newHarness(t)
	h.cfg.Limits.DefaultPerDay = 0
	// The provider is slow here, not failing: held sends must not time out
	// (and open the breaker) while a loaded machine routes the backlog.
	h.cfg.Sink.SendTimeout = 3 * time.Minute
	release := make(chan struct{})
	h.hook.Hook = holdUntil(release)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/hook", webhookTemplate())
	cl := h.producer()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for i := 0; i < backlog; i++ {
		req := &schemas.SendRequest{EventID: fmt.Sprintf("low-%d", i), Template: "hook", Priority: "low",
			Data: fmt.Sprintf(`{"orderId":"%d"}`, i), Recipients: []schemas.Recipient{{UserID: fmt.Sprintf("user-%d", i)}}}
		v, _ := schemas.SendRequestCodec.Encode(req)
		cl.Produce(ctx, &kgo.Record{Topic: string(topology.Ingest), Key: []byte(req.EventID), Value: v}, nil)
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	waitRouted(t, ctx, h, topology.Out("webhook", "low"), backlog)
	ids := h.send(map[string]any{"template": "hook", "priority": "high", "data": map[string]any{"orderId": "vip"},
		"recipients": []any{map[string]any{"userId": "vip"}}})
	waitRouted(t, ctx, h, topology.Out("webhook", "high"), 1)
	close(release)

	for len(h.hook.Deliveries()) < backlog+1 && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	d := h.hook.Deliveries()
	pos := slices.IndexFunc(d, func(x webhooktest.Delivery) bool { return x.ID == ids["vip"] })
	t.Logf("high-priority notification delivered at position %d of %d", pos, len(d))
	if pos < 0 || pos >= backlog*9/10 {
		t.Fatalf("high priority delivered at position %d, want before %d", pos, backlog*9/10)
	}
	// The design's own bound: a high-priority record waits at most for the chunk
	// in flight and the one being polled. FIFO draining would put it behind the
	// ~4 chunks of low records already queued locally.
	if limit := 3 * h.cfg.Sink.Chunk; pos >= limit {
		t.Fatalf("high priority delivered at position %d, want within %d (3 chunks)", pos, limit)
	}
	if len(d) != backlog+1 {
		t.Fatalf("%d deliveries, want %d", len(d), backlog+1)
	}
}

// Priority holds before routing too: with a backlog of low-priority requests
// not yet deduplicated or routed, a high-priority request sent after them
// through the API overtakes most of them in the dedup and deliver groups, not
// only in the sink.
func TestHighPriorityOvertakesABacklogBeforeRouting(t *testing.T) {
	const backlog = 4000
	h := newHarness(t)
	h.cfg.Limits.DefaultPerDay = 0
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/hook", webhookTemplate())
	cl := h.producer()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for i := 0; i < backlog; i++ {
		req := &schemas.SendRequest{EventID: fmt.Sprintf("low-%d", i), Template: "hook", Priority: "low",
			Data: fmt.Sprintf(`{"orderId":"%d"}`, i), Recipients: []schemas.Recipient{{UserID: fmt.Sprintf("user-%d", i)}}}
		v, _ := schemas.SendRequestCodec.Encode(req)
		// Where the API puts a low-priority request.
		cl.Produce(ctx, &kgo.Record{Topic: string(topology.IngestLane("low")), Key: []byte(req.EventID), Value: v}, nil)
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	ids := h.send(map[string]any{"template": "hook", "priority": "high", "data": map[string]any{"orderId": "vip"},
		"recipients": []any{map[string]any{"userId": "vip"}}})
	for len(h.hook.Deliveries()) < backlog+1 && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	d := h.hook.Deliveries()
	pos := slices.IndexFunc(d, func(x webhooktest.Delivery) bool { return x.ID == ids["vip"] })
	t.Logf("high-priority notification delivered at position %d of %d", pos, len(d))
	// In one lane it would come after the whole backlog, less what was routed
	// while the API call was made.
	if pos < 0 || pos >= backlog/2 {
		t.Fatalf("high priority delivered at position %d, want before %d", pos, backlog/2)
	}
	if len(d) != backlog+1 {
		t.Fatalf("%d deliveries, want %d", len(d), backlog+1)
	}
	st := h.waitStatus(ids["vip"], "sent")
	if got := historyStatuses(st); !slices.Equal(got, []string{"accepted", "queued", "sent"}) {
		t.Fatalf("history %v", got)
	}
}

// waitRouted waits until topic holds n records.
func waitRouted(t *testing.T, ctx context.Context, h *harness, topic goka.Stream, n int64) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.svc.Brokers()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	for ctx.Err() == nil {
		ends, err := adm.ListEndOffsets(ctx, string(topic))
		if err == nil {
			var total int64
			ends.Each(func(o kadm.ListedOffset) { total += o.Offset })
			if total >= n {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never held %d records", topic, n)
}

// The dedup table is bounded by the window: an entry past it is deleted, and
// the same eventId is then accepted as new.
func TestDedupEntriesExpireAfterWindow(t *testing.T) {
	h := newHarness(t)
	h.cfg.Dedup.Window = 1500 * time.Millisecond
	h.cfg.Dedup.SweepInterval = 200 * time.Millisecond
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	body := map[string]any{"template": "order-shipped", "data": map[string]any{"orderId": "w", "eta": "now"},
		"recipients": []any{map[string]any{"userId": "w1", "email": "w1@example.com"}}}
	ids := h.send(body, "Idempotency-Key", "window-key")
	h.waitStatus(ids["w1"], "sent")
	view := h.svc.Processor(topology.DedupGroup)
	if v, _ := view.Get("window-key"); v == nil {
		t.Fatal("dedup entry missing right after the send")
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		v, err := view.Get("window-key")
		if err == nil && v == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dedup entry still there %v after a %v window", v, h.cfg.Dedup.Window)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Accepted again, not reported as a duplicate.
	h.send(body, "Idempotency-Key", "window-key")
	deadline = time.Now().Add(15 * time.Second)
	for {
		_, st := h.call("GET", "/v1/notifications/"+ids["w1"], nil)
		hist := historyStatuses(st)
		accepted := 0
		for _, s := range hist {
			if s == processors.StatusDuplicate {
				t.Fatalf("repeat after the window reported as duplicate: %v", hist)
			}
			if s == processors.StatusAccepted {
				accepted++
			}
		}
		if accepted == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("repeat after the window not accepted: %v", hist)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A notification with sendAt in the future is scheduled, sent once due, and
// the schedule survives a restart.
func TestSendAtSchedulesDelivery(t *testing.T) {
	h := newHarness(t)
	h.cfg.Scheduler.Interval = 100 * time.Millisecond
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	data := map[string]any{"orderId": "s", "eta": "later"}
	soon := time.Now().Add(2 * time.Second).UTC()
	later := time.Now().Add(5 * time.Second).UTC()
	a := h.send(map[string]any{"template": "order-shipped", "data": data, "sendAt": soon.Format(time.RFC3339Nano),
		"recipients": []any{map[string]any{"userId": "s1", "email": "s1@example.com"}}})
	b := h.send(map[string]any{"template": "order-shipped", "data": data, "sendAt": later.Format(time.RFC3339Nano),
		"recipients": []any{map[string]any{"userId": "s2", "email": "s2@example.com"}}})
	st := h.waitStatus(a["s1"], "scheduled")
	if hist := st["history"].([]any); !strings.Contains(hist[len(hist)-1].(map[string]any)["reason"].(string), "scheduled for") {
		t.Errorf("history %v", hist)
	}
	h.waitStatus(b["s2"], "scheduled")
	if n := len(h.smtp.Messages()); n != 0 {
		t.Fatalf("%d emails sent before their time", n)
	}
	h.waitStatus(a["s1"], "sent")
	if msgs := h.smtp.Messages(); len(msgs) != 1 || msgs[0].At.Before(soon.Truncate(time.Second)) {
		t.Fatalf("first scheduled email: %+v (due %v)", msgs, soon)
	}
	// Restart before the second is due: it is still delivered, once.
	h.stop()
	h.start()
	h.waitStatus(b["s2"], "sent")
	time.Sleep(500 * time.Millisecond)
	msgs := h.smtp.Messages()
	if len(msgs) != 2 || msgs[1].At.Before(later.Truncate(time.Second)) {
		t.Fatalf("emails %d, second at %v, due %v", len(msgs), msgs[len(msgs)-1].At, later)
	}
}

// Inside a user's quiet hours a marketing notification waits for them to end;
// a transactional one goes at once.
func TestQuietHoursHoldUntilTheyEnd(t *testing.T) {
	h := newHarness(t)
	h.cfg.Scheduler.Interval = 100 * time.Millisecond
	// The service's clock reads 07:59:57 UTC now: the quiet hours end in 3 s.
	target := time.Date(2026, 11, 23, 7, 59, 57, 0, time.UTC)
	offset := time.Until(target)
	h.now = func() time.Time { return time.Now().Add(offset) }
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/promo", orderTemplate("marketing"))
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/receipt", orderTemplate("transactional"))
	h.mustCall(http.StatusOK, "PUT", "/v1/profiles/q1", map[string]any{"email": "q1@example.com", "timezone": "UTC",
		"preferences": map[string]any{"quietHours": map[string]any{"start": "22:00", "end": "08:00"}}})
	promo := h.send(map[string]any{"template": "promo", "data": map[string]any{"orderId": "sale", "eta": "now"},
		"recipients": []any{map[string]any{"userId": "q1"}}})
	receipt := h.send(map[string]any{"template": "receipt", "data": map[string]any{"orderId": "q", "eta": "now"},
		"recipients": []any{map[string]any{"userId": "q1"}}})
	h.waitStatus(receipt["q1"], "sent")
	st := h.waitStatus(promo["q1"], "scheduled")
	hist := st["history"].([]any)
	if r := hist[len(hist)-1].(map[string]any)["reason"].(string); !strings.Contains(r, "quiet hours 22:00–08:00 (UTC) until 2026-11-23T08:00:00Z") {
		t.Fatalf("reason %q", r)
	}
	if n := len(h.smtp.Messages()); n != 1 {
		t.Fatalf("%d emails during quiet hours, want only the receipt", n)
	}
	h.waitStatus(promo["q1"], "sent")
	msgs := h.smtp.Messages()
	if len(msgs) != 2 || msgs[1].At.Add(offset).Before(time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)) {
		t.Fatalf("promo sent at %v (service clock), before quiet hours ended", msgs[len(msgs)-1].At.Add(offset))
	}
}

// The API writes the ingest lanes in record batches of at most
// topology.IngestBatchBytes, so the dedup group's consumer is never handed a
// large batch of low-priority requests to take in before it can fetch a
// high-priority one; a request too large for such a batch still goes
// through, in a batch of its own.
func TestAPIWritesTheIngestLanesInSmallBatches(t *testing.T) {
	h := newHarness(t)
	h.cfg.Limits.DefaultPerDay = 0
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/hook", webhookTemplate())
	burst := func(priority string) {
		var reqs []any
		for i := 0; i < 1000; i++ {
			reqs = append(reqs, map[string]any{"eventId": fmt.Sprintf("%s-%d", priority, i), "template": "hook", "priority": priority,
				"data":       map[string]any{"orderId": i, "note": strings.Repeat("n", 800)},
				"recipients": []any{map[string]any{"userId": fmt.Sprintf("user-%d", i)}}})
		}
		h.mustCall(http.StatusOK, "POST", "/v1/notifications/batch", map[string]any{"requests": reqs})
	}
	// The users' keys first: the dedup group sends a request to a new user
	// round its lane once (in goka's batches, not the API's).
	burst("normal")
	for deadline := time.Now().Add(time.Minute); len(h.hook.Deliveries()) < 1000; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 1,000 delivered", len(h.hook.Deliveries()))
		}
	}
	burst("low")
	big := strings.Repeat("x", 3*topology.IngestBatchBytes)
	ids := h.send(map[string]any{"eventId": "big", "template": "hook", "priority": "low",
		"data": map[string]any{"orderId": "big", "note": big}, "recipients": []any{map[string]any{"userId": "big"}}})
	h.waitStatus(ids["big"], "sent")

	type batch struct{ records, bytes int }
	var mu sync.Mutex
	var batches []batch
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.svc.Brokers()...), kgo.ConsumeTopics(string(topology.IngestLow)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.WithHooks(batchHook(func(records, bytes int) {
			mu.Lock()
			batches = append(batches, batch{records, bytes})
			mu.Unlock()
		})))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var largest []byte
	for n := 0; n < 1001 && ctx.Err() == nil; {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			n++
			if len(r.Value) > len(largest) {
				largest = r.Value
			}
		})
	}
	if ctx.Err() != nil {
		t.Fatal("notify.ingest.low does not hold the 1,001 requests")
	}
	if len(largest) <= len(big) {
		t.Fatalf("largest request on the lane is %d bytes, want the one above %d", len(largest), len(big))
	}
	mu.Lock()
	defer mu.Unlock()
	multi := 0
	for _, b := range batches {
		if b.records > 1 {
			multi++
			if b.bytes > topology.IngestBatchBytes {
				t.Errorf("a batch of %d requests is %d bytes, above %d", b.records, b.bytes, topology.IngestBatchBytes)
			}
		}
	}
	t.Logf("%d batches on notify.ingest.low, %d of them of several requests", len(batches), multi)
	if multi == 0 {
		t.Fatal("no batch held more than one request: the burst was not batched at all")
	}
}

// batchHook reports each record batch a consumer reads.
type batchHook func(records, bytes int)

func (f batchHook) OnFetchBatchRead(_ kgo.BrokerMetadata, _ string, _ int32, m kgo.FetchBatchMetrics) {
	f(m.NumRecords, m.UncompressedBytes)
}
