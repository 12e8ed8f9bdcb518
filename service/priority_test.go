package service_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// The priority gate is wired through the all-in-one process: a high-priority
// request on notify.ingest.high, produced by a client of its own, makes the
// groups and the sink hold the normal lanes for priority.hold after they saw
// it, so a normal request produced right after the high one was delivered
// reaches its provider only when that hold has passed. Without the gate it
// takes milliseconds.
func TestHighPriorityRecordHoldsTheProcessLowerLanes(t *testing.T) {
	h := newHarness(t)
	h.cfg.Priority.Hold = 1500 * time.Millisecond
	h.cfg.Priority.MaxHold = 10 * time.Second
	h.cfg.Limits.DefaultPerDay = 0
	h.start()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/hook", map[string]any{"category": "transactional",
		"channels": map[string]any{"webhook": map[string]any{"body": `{"orderId": "{{.orderId}}"}`}}})
	cl := h.producer()
	produce := func(id, priority string) {
		req := &schemas.SendRequest{EventID: id, Template: "hook", Priority: priority, AcceptedAt: time.Now().UnixMilli(),
			Data: `{"orderId":"` + id + `"}`, Recipients: []schemas.Recipient{{UserID: "u-" + id}}}
		v, err := schemas.SendRequestCodec.Encode(req)
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: string(topology.IngestLane(priority)), Key: []byte(id), Value: v}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	deliveredAt := func(id string) time.Time {
		for ctx.Err() == nil {
			for _, d := range h.hook.Deliveries() {
				if strings.Contains(string(d.Body), `"`+id+`"`) {
					return d.At
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("%s was not delivered", id)
		return time.Time{}
	}
	produce("warm", "normal") // every stage is up; a normal one holds nothing
	deliveredAt("warm")
	if n := h.metric("notifyd_priority_holds_total"); n != "0" {
		t.Fatalf("notifyd_priority_holds_total %q before any high-priority work", n)
	}
	produce("otp", "high")
	high := deliveredAt("otp")
	produce("news", "normal")
	if after := deliveredAt("news").Sub(high); after < time.Second {
		t.Fatalf("the normal request was delivered %v after the high one, inside the hold (1.5s after the stages saw it)", after)
	}
	if n := h.metric("notifyd_priority_holds_total"); n == "0" || n == "" {
		t.Fatalf("notifyd_priority_holds_total %q after a hold", n)
	}
	if s := h.metric("notifyd_priority_held_seconds_total"); s == "0" || s == "" {
		t.Fatalf("notifyd_priority_held_seconds_total %q after a hold", s)
	}
}
