package service_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

const (
	senderKey = "key-sender-0123456789abcdef"  // scope send only
	trustKey  = "key-trusted-0123456789abcdef" // send:transactional
)

// The category comes from the template. A key without send:transactional
// cannot send a transactional template nor ask for transactional; nobody
// can turn a marketing template transactional, not through the API and not
// by producing to notify.ingest: a user opted out of marketing email gets
// none. A transactional template may be narrowed to marketing, and then
// the opt-out applies.
func TestCategoryComesFromTheTemplate(t *testing.T) {
	h := newHarness(t)
	h.cfg.APIKeys = append(h.cfg.APIKeys,
		config.APIKey{Name: "sender", Key: senderKey, Scopes: []string{"send", "notifications:read"}},
		config.APIKey{Name: "trusted", Key: trustKey, Scopes: []string{"send:transactional", "notifications:read"}})
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/promo", orderTemplate("marketing"))
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/receipt", orderTemplate("transactional"))
	h.mustCall(http.StatusOK, "PUT", "/v1/profiles/opted-out", map[string]any{"email": "out@example.com",
		"preferences": map[string]any{"categories": map[string]any{"marketing": map[string]any{"email": false}}}})
	req := func(template, category string) map[string]any {
		b := map[string]any{"template": template, "data": map[string]any{"orderId": "1", "eta": "soon"},
			"recipients": []any{map[string]any{"userId": "opted-out"}}}
		if category != "" {
			b["category"] = category
		}
		return b
	}

	// Refused at the API.
	for _, c := range []struct {
		key, template, category string
		want                    int
	}{
		{senderKey, "receipt", "", http.StatusForbidden},              // a transactional template needs the scope
		{senderKey, "promo", "transactional", http.StatusForbidden},   // asking for it too
		{trustKey, "promo", "transactional", http.StatusForbidden},    // and nobody widens marketing
		{senderKey, "promo", "security", http.StatusBadRequest},       // nor swaps it for another category
		{testKey, "promo", "transactional", http.StatusForbidden},     // not even an admin key
		{senderKey, "receipt", "transactional", http.StatusForbidden}, // nor restates it without the scope
	} {
		code, out := h.call("POST", "/v1/notifications", req(c.template, c.category), "Authorization", "Bearer "+c.key)
		if code != c.want {
			t.Fatalf("%s %s/%q: %d %v, want %d", c.key, c.template, c.category, code, out, c.want)
		}
		if e := out["error"].(map[string]any); e["field"] != "category" {
			t.Fatalf("%s %s/%q: error %v does not name category", c.key, c.template, c.category, e)
		}
	}

	// A transactional template narrowed to marketing: the opt-out holds.
	narrowed := h.send(req("receipt", "marketing"), "Authorization", "Bearer "+trustKey)["opted-out"]
	st := h.waitStatus(narrowed, processors.StatusSuppressed)
	if st["category"] != "marketing" {
		t.Fatalf("narrowed send ran as %v", st["category"])
	}
	// The key with the scope sends the transactional template: delivered.
	h.waitStatus(h.send(req("receipt", ""), "Authorization", "Bearer "+trustKey)["opted-out"], processors.StatusSent)
	// And with only send, the marketing template: suppressed.
	h.waitStatus(h.send(req("promo", ""), "Authorization", "Bearer "+senderKey)["opted-out"], processors.StatusSuppressed)

	// A producer that bypasses the API and claims transactional for the
	// marketing template is not believed either.
	direct := &schemas.SendRequest{EventID: "direct-1", Template: "promo", Category: "transactional", Data: `{"orderId":"2"}`,
		Recipients: []schemas.Recipient{{UserID: "opted-out"}}, Source: "test"}
	v, err := schemas.SendRequestCodec.Encode(direct)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.producer().ProduceSync(context.Background(), &kgo.Record{Topic: string(topology.Ingest), Key: []byte(direct.EventID), Value: v}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	st = h.waitStatus(processors.NotificationID("direct-1", "opted-out"), processors.StatusSuppressed)
	if st["category"] != "marketing" {
		t.Fatalf("a direct producer's transactional claim ran as %v", st["category"])
	}
	// One mail went out in all: the transactional one.
	time.Sleep(200 * time.Millisecond)
	if msgs := h.smtp.Messages(); len(msgs) != 1 {
		t.Fatalf("%d mails sent to the opted-out user, want 1 (the transactional one)", len(msgs))
	}
}
