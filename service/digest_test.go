package service_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/processors"
)

// Ten events of a digest template for one user within its window become one
// notification listing ten items; each event's status says it was
// digested. Another user's events and another digest key are digests of
// their own.
func TestTenEventsInADigestWindowBecomeOneNotification(t *testing.T) {
	h := newHarness(t)
	h.cfg.Scheduler.Interval = 50 * time.Millisecond
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/comments", map[string]any{"category": "activity",
		"digest": map[string]any{"window": "2s"},
		"channels": map[string]any{"email": map[string]any{
			"subject": "{{.digest.count}} new comments",
			"text":    "{{range .digest.items}}{{.author}}: {{.text}}\n{{end}}"}}})
	got := h.mustCall(http.StatusOK, "GET", "/v1/templates/comments", nil)
	if d, _ := got["digest"].(map[string]any); d == nil || d["window"] != "2s" {
		t.Fatalf("template digest %v", got["digest"])
	}
	var ids []string
	for i := 0; i < 10; i++ {
		out := h.send(map[string]any{"template": "comments", "digestKey": "post-1",
			"data":       map[string]any{"author": fmt.Sprintf("a%d", i), "text": fmt.Sprintf("comment %d", i)},
			"recipients": []any{map[string]any{"userId": "reader", "email": "reader@example.com"}}})
		ids = append(ids, out["reader"])
	}
	h.send(map[string]any{"template": "comments", "digestKey": "post-2", "data": map[string]any{"author": "z", "text": "other post"},
		"recipients": []any{map[string]any{"userId": "reader", "email": "reader@example.com"}}})
	for _, id := range ids {
		if st := h.waitStatus(id, processors.StatusDigested); !strings.Contains(fmt.Sprint(st["history"]), "collected into digest") {
			t.Fatalf("%s: %v", id, st)
		}
	}
	msgs := h.smtp.WaitFor(2, 30*time.Second)
	time.Sleep(500 * time.Millisecond)
	if len(h.smtp.Messages()) != 2 {
		t.Fatalf("%d messages, want one digest per key", len(h.smtp.Messages()))
	}
	var ten string
	for _, m := range msgs {
		if strings.Contains(string(m.Data), "10 new comments") {
			ten = string(m.Data)
		}
	}
	for i := 0; i < 10; i++ {
		if !strings.Contains(ten, fmt.Sprintf("a%d: comment %d", i, i)) {
			t.Fatalf("the digest does not list event %d: %s", i, ten)
		}
	}
	if strings.Contains(ten, "other post") {
		t.Fatal("another digest key's event is in the digest")
	}
	// Bad digest settings are refused.
	for _, d := range []any{map[string]any{"window": "1ms"}, map[string]any{"window": "soon"}, map[string]any{"window": "1m", "max": 100000}} {
		code, out := h.call("PUT", "/v1/templates/bad", map[string]any{"digest": d, "channels": map[string]any{"email": map[string]any{"text": "x"}}})
		if e, _ := out["error"].(map[string]any); code != http.StatusBadRequest || e == nil || !strings.HasPrefix(e["field"].(string), "digest.") {
			t.Fatalf("digest %v: %d %v", d, code, out)
		}
	}
}
