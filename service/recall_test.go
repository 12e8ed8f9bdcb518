package service_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/notifyd/notifyd/config"
)

// Recall takes an in-app message back: it leaves the user's feed, an open
// stream hears a "recall" event with its id, the counts drop, and the status
// says recalled. Another tenant cannot recall it; a notification without an
// in-app message cannot be recalled.
func TestRecallRemovesTheMessageFromTheInbox(t *testing.T) {
	h := newHarness(t)
	withInbox(&h.cfg)
	h.cfg.APIKeys = append(h.cfg.APIKeys, config.APIKey{Name: "acme", Key: acmeKey, Tenant: "acme", Scopes: []string{"admin"}})
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/inbox-welcome", inboxTemplate())
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("orders"))
	tok := h.token("r1")
	keep := h.sendInbox("r1", 1)
	gone := h.sendInbox("r1", 2)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, c := h.userCall("GET", "/v1/inbox/r1/count", tok, nil); c["unread"] == float64(2) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the two messages never arrived")
		}
	}
	stream := openStream(t, h.base, "r1", tok, "")
	stream.next(t) // counts

	h.as(acmeKey, http.StatusNotFound, "POST", "/v1/notifications/"+gone+"/recall", nil)
	mail := h.send(map[string]any{"template": "order-shipped", "data": map[string]any{"orderId": 1, "eta": "now"},
		"recipients": []any{map[string]any{"userId": "r1", "email": "r1@example.com"}}})["r1"]
	h.waitStatus(mail, "sent")
	h.mustCall(http.StatusConflict, "POST", "/v1/notifications/"+mail+"/recall", nil)

	out := h.mustCall(http.StatusAccepted, "POST", "/v1/notifications/"+gone+"/recall", nil)
	if out["status"] != "recalled" {
		t.Fatalf("recall answered %v", out)
	}
	ev := stream.next(t)
	ids, _ := ev.Data["ids"].([]any)
	if ev.Event != "recall" || len(ids) != 1 || ids[0] != gone || ev.Data["unread"] != float64(1) {
		t.Fatalf("stream event %+v", ev)
	}
	_, list := h.userCall("GET", "/v1/inbox/r1/messages", tok, nil)
	if ms, _ := list["messages"].([]any); len(ms) != 1 || ms[0].(map[string]any)["id"] != keep {
		t.Fatalf("feed after the recall: %v", list)
	}
	h.waitHistory(gone, "inapp", "recalled")
	// Recalling again changes nothing and says so the same way.
	h.mustCall(http.StatusAccepted, "POST", "/v1/notifications/"+gone+"/recall", nil)
	stream.quiet(t, 500*time.Millisecond)
}
