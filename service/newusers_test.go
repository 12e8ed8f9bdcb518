package service_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/crypt"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/webhooktest"
	"github.com/notifyd/notifyd/topology"
)

// Requests to users nobody sealed for before: the dedup group writes their
// new data keys through its own emits and comes back to each request on its
// lane (a second pass, with the same origin) instead of waiting for a write
// in its callback. Every request is delivered once, every key a notification
// was sealed with is on notify.datakeys, and the ingest lane shows the passes.
func TestNewUsersGetTheirKeysWithoutAWaitInTheCallback(t *testing.T) {
	const users = 300
	h := newHarness(t)
	h.cfg.Limits.DefaultPerDay = 0
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/hook", webhookTemplate())
	cl := h.producer()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := 0; i < users; i++ {
		req := &schemas.SendRequest{EventID: fmt.Sprintf("new-%d", i), Template: "hook",
			Data: fmt.Sprintf(`{"orderId":"%d"}`, i), Recipients: []schemas.Recipient{{UserID: fmt.Sprintf("fresh-%d", i)}}}
		v, err := schemas.SendRequestCodec.Encode(req)
		if err != nil {
			t.Fatal(err)
		}
		cl.Produce(ctx, &kgo.Record{Topic: string(topology.Ingest), Key: []byte(req.EventID), Value: v}, nil)
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	d := waitDeliveries(ctx, h, users)
	seen := map[string]int{}
	for _, x := range d {
		seen[x.ID]++
	}
	if len(d) != users || len(seen) != users {
		t.Fatalf("%d deliveries of %d notifications, want %d once each", len(d), len(seen), users)
	}

	// The passes: each request once from the producer, once more from the
	// dedup group after its users' keys were emitted, with the same origin.
	if passes := keyPasses(t, h, `^notify\.ingest$`); len(passes) != users {
		t.Fatalf("%d of %d requests took a second pass for their keys", len(passes), users)
	}

	// Every notification on notify.accepted is sealed with a key that is on
	// notify.datakeys, under its own user.
	keys := map[string]bool{}
	for _, r := range topicRecords(t, h, `^`+crypt.Topic+`$`) {
		keys[string(r.Key)] = true
	}
	sealed := 0
	for _, r := range topicRecords(t, h, `^notify\.accepted$`) {
		n, err := schemas.NotificationCodec.Decode(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		env, err := crypt.ParseEnvelope(n.Sealed)
		if err != nil {
			t.Fatalf("notification %s: %v", n.ID, err)
		}
		if rk := "subject/" + env.Subject + "/" + env.KeyID; env.Subject != n.UserID || !keys[rk] {
			t.Fatalf("notification %s sealed with %s, not on %s (subject %q)", n.ID, rk, crypt.Topic, env.Subject)
		}
		sealed++
	}
	if sealed != users {
		t.Fatalf("%d sealed notifications on notify.accepted, want %d", sealed, users)
	}
}

// waitDeliveries waits until the webhook receiver accepted n deliveries (or
// ctx ends) and returns them.
func waitDeliveries(ctx context.Context, h *harness, n int) []webhooktest.Delivery {
	for len(h.hook.Deliveries()) < n && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	return h.hook.Deliveries()
}

// keyPasses counts, by record key, the records of the topics matching
// pattern that went round for a new user's data key.
func keyPasses(t *testing.T, h *harness, pattern string) map[string]int {
	passes := map[string]int{}
	for _, r := range topicRecords(t, h, pattern) {
		for _, hd := range r.Headers {
			if hd.Key == "notifyd-keys" {
				passes[string(r.Key)]++
			}
		}
	}
	return passes
}
