package service_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/config"
)

const (
	acmeKey   = "key-acme-0123456789abcdef"
	globexKey = "key-globex-0123456789abcdef"
)

// as calls the API with another key than the harness's.
func (h *harness) as(key string, want int, method, path string, body any) map[string]any {
	h.t.Helper()
	return h.mustCall(want, method, path, body, "Authorization", "Bearer "+key)
}

// Tenants share topics and tables but nothing else: a key of tenant globex
// cannot read, list, preview, delete, send with, receipt or analyse what a
// key of acme wrote, even under the same ids, and an inbox token of one
// tenant does not open the same user's inbox in the other (list nor stream).
func TestTenantsSeeOnlyTheirOwn(t *testing.T) {
	h := newHarness(t)
	on := true
	h.cfg.Analytics.Enabled = &on
	h.cfg.Analytics.FlushEvery = 100 * time.Millisecond
	h.cfg.APIKeys = append(h.cfg.APIKeys,
		config.APIKey{Name: "acme", Key: acmeKey, Tenant: "acme", Scopes: []string{"admin"}},
		config.APIKey{Name: "globex", Key: globexKey, Tenant: "globex", Scopes: []string{"admin"}})
	withInbox(&h.cfg)
	h.start()

	tmpl := func(subject string) map[string]any {
		return map[string]any{"category": "account", "channels": map[string]any{
			"email": map[string]any{"subject": subject, "text": "order {{.orderId}}"},
			"inapp": map[string]any{"title": subject, "body": "order {{.orderId}}"}}}
	}
	h.as(acmeKey, http.StatusOK, "PUT", "/v1/templates/shared", tmpl("acme subject"))
	h.as(acmeKey, http.StatusOK, "PUT", "/v1/templates/acme-only", tmpl("acme only"))
	h.as(acmeKey, http.StatusOK, "PUT", "/v1/profiles/u1", map[string]any{"email": "u1@acme.example"})
	sent := h.as(acmeKey, http.StatusAccepted, "POST", "/v1/notifications", map[string]any{"template": "shared",
		"eventId": "e1", "data": map[string]any{"orderId": "1"}, "recipients": []any{map[string]any{"userId": "u1"}}})
	acmeID := sent["notifications"].([]any)[0].(map[string]any)["id"].(string)
	waitAs := func(key, id, want string) map[string]any {
		t.Helper()
		var last map[string]any
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			code, out := h.call("GET", "/v1/notifications/"+id, nil, "Authorization", "Bearer "+key)
			if code == http.StatusOK && out["status"] == want {
				return out
			}
			last = out
		}
		t.Fatalf("%s: never %s: %v", id, want, last)
		return nil
	}
	waitAs(acmeKey, acmeID, "sent")

	// Nothing of acme's is visible to globex.
	h.as(globexKey, http.StatusNotFound, "GET", "/v1/templates/shared", nil)
	h.as(globexKey, http.StatusNotFound, "POST", "/v1/templates/acme-only/preview", map[string]any{"channel": "email"})
	h.as(globexKey, http.StatusNotFound, "DELETE", "/v1/templates/acme-only", nil)
	if list := h.as(globexKey, http.StatusOK, "GET", "/v1/templates", nil); len(list["templates"].([]any)) != 0 {
		t.Fatalf("globex lists %v", list)
	}
	h.as(globexKey, http.StatusNotFound, "GET", "/v1/profiles/u1", nil)
	h.as(globexKey, http.StatusNotFound, "DELETE", "/v1/profiles/u1", nil)
	h.as(globexKey, http.StatusNotFound, "GET", "/v1/notifications/"+acmeID, nil)
	h.mustCall(http.StatusNotFound, "GET", "/v1/notifications/"+acmeID, nil) // the default tenant neither
	h.as(globexKey, http.StatusBadRequest, "POST", "/v1/notifications", map[string]any{"template": "acme-only",
		"recipients": []any{map[string]any{"userId": "u1"}}})
	h.as(globexKey, http.StatusNotFound, "POST", "/v1/receipts", map[string]any{"receipts": []any{map[string]any{
		"notificationId": acmeID, "channel": "email", "provider": "smtp-main", "status": "delivered"}}})

	// The same ids in globex are globex's own: its template, its (empty)
	// profile; acme's contact is not used, and acme's records are untouched.
	h.as(globexKey, http.StatusOK, "PUT", "/v1/templates/shared", tmpl("globex subject"))
	sent = h.as(globexKey, http.StatusAccepted, "POST", "/v1/notifications", map[string]any{"template": "shared",
		"eventId": "e1", "data": map[string]any{"orderId": "2"}, "recipients": []any{map[string]any{"userId": "u1"}}})
	globexID := sent["notifications"].([]any)[0].(map[string]any)["id"].(string)
	if globexID == acmeID {
		t.Fatal("the same eventId and userId in two tenants made the same notification id")
	}
	st := waitAs(globexKey, globexID, "rejected")
	if st["channels"].(map[string]any)["email"] != "rejected" || !strings.Contains(historyText(st), "no email address") {
		t.Fatalf("globex's u1 used someone's email: %v", st)
	}
	if got := h.as(acmeKey, http.StatusOK, "GET", "/v1/templates/shared", nil); got["channels"].(map[string]any)["email"].(map[string]any)["subject"] != "acme subject" {
		t.Fatalf("acme's template changed: %v", got)
	}
	if p := h.as(acmeKey, http.StatusOK, "GET", "/v1/profiles/u1", nil); p["email"] != "u1@acme.example" {
		t.Fatalf("acme's profile: %v", p)
	}
	if msgs := h.smtp.WaitFor(1, 5*time.Second); len(msgs) != 1 || msgs[0].To[0] != "u1@acme.example" {
		t.Fatalf("mail sent: %+v", msgs)
	}

	// Inbox: each tenant's token opens its own u1 only, list and stream.
	acmeTok := h.as(acmeKey, http.StatusOK, "GET", "/v1/inbox/u1/token", nil)["token"].(string)
	globexTok := h.as(globexKey, http.StatusOK, "GET", "/v1/inbox/u1/token", nil)["token"].(string)
	defaultTok := h.token("u1")
	if acmeTok == globexTok || acmeTok == defaultTok {
		t.Fatal("tokens of one user id in two tenants are equal")
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, l := h.userCall("GET", "/v1/inbox/u1/messages", acmeTok, nil)
		if ms, _ := l["messages"].([]any); len(ms) == 1 && ms[0].(map[string]any)["title"] == "acme subject" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("acme's inbox: %v", l)
		}
	}
	for _, tok := range []string{globexTok, defaultTok} {
		_, l := h.userCall("GET", "/v1/inbox/u1/messages", tok, nil)
		for _, m := range l["messages"].([]any) {
			if m.(map[string]any)["title"] == "acme subject" {
				t.Fatalf("another tenant's token lists acme's message: %v", l)
			}
		}
	}
	// A forged tenant prefix on a real token does not pass.
	mac := acmeTok[strings.Index(acmeTok, ".")+1:]
	if code, _ := h.userCall("GET", "/v1/inbox/u1/messages", "globex."+mac, nil); code != http.StatusUnauthorized {
		t.Fatalf("acme's MAC under globex's name: %d", code)
	}
	globexStream := openStream(t, h.base, "u1", globexTok, "")
	acmeStream := openStream(t, h.base, "u1", acmeTok, "")
	globexStream.next(t) // counts
	acmeStream.next(t)
	h.as(acmeKey, http.StatusAccepted, "POST", "/v1/notifications", map[string]any{"template": "shared",
		"eventId": "e3", "data": map[string]any{"orderId": "3"}, "recipients": []any{map[string]any{"userId": "u1"}}})
	if ev := acmeStream.next(t); ev.Event != "message" {
		t.Fatalf("acme's stream got %+v", ev)
	}
	globexStream.quiet(t, time.Second)

	// Analytics: each key sees its tenant's rows only.
	from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	templates := func(key string) map[string]bool {
		out := map[string]bool{}
		sum := h.as(key, http.StatusOK, "GET", "/v1/analytics/summary?groupBy=template&from="+from, nil)
		for _, r := range sum["rows"].([]any) {
			out[r.(map[string]any)["template"].(string)] = true
		}
		return out
	}
	for deadline := time.Now().Add(60 * time.Second); !templates(acmeKey)["shared"] || !templates(globexKey)["shared"]; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("analytics never showed both tenants: acme %v, globex %v", templates(acmeKey), templates(globexKey))
		}
	}
	emailStatuses := func(key string) map[string]bool {
		out := map[string]bool{}
		sum := h.as(key, http.StatusOK, "GET", "/v1/analytics/summary?groupBy=channel,status&from="+from, nil)
		for _, r := range sum["rows"].([]any) {
			if m := r.(map[string]any); m["channel"] == "email" {
				out[m["status"].(string)] = true
			}
		}
		return out
	}
	if s := emailStatuses(globexKey); s["sent"] || !s["rejected"] {
		t.Fatalf("globex's email statuses %v include acme's sent", s)
	}
	if s := emailStatuses(acmeKey); !s["sent"] || s["rejected"] {
		t.Fatalf("acme's email statuses %v include globex's rejected", s)
	}
	if len(templates(testKey)) != 0 {
		t.Fatalf("the default tenant sees %v", templates(testKey))
	}
}

// historyText joins a status answer's reasons.
func historyText(st map[string]any) string {
	var b strings.Builder
	for _, e := range st["history"].([]any) {
		if r, ok := e.(map[string]any)["reason"].(string); ok {
			b.WriteString(r + "\n")
		}
	}
	return b.String()
}
