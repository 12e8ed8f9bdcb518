package service_test

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/http"
	"net/mail"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/analytics/analyticstest"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/sinks/smtptest"
)

// mailParts reads a message as an SMTP server received it: its header and
// its HTML part, decoded.
func mailParts(t *testing.T, m smtptest.Message) (mail.Header, string) {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	var html string
	var walk func(h map[string][]string, body io.Reader)
	walk = func(h map[string][]string, body io.Reader) {
		mt, params, err := mime.ParseMediaType(mail.Header(h).Get("Content-Type"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(mt, "multipart/") {
			r := multipart.NewReader(body, params["boundary"])
			for {
				p, err := r.NextRawPart()
				if err != nil {
					return
				}
				walk(p.Header, p)
			}
		}
		if mt == "text/html" {
			if strings.EqualFold(mail.Header(h).Get("Content-Transfer-Encoding"), "quoted-printable") {
				body = quotedprintable.NewReader(body)
			}
			b, _ := io.ReadAll(body)
			html = string(b)
		}
	}
	walk(msg.Header, msg.Body)
	return msg.Header, html
}

var trackingURL = regexp.MustCompile(`http://t\.example\.test/t/[ocu]/[A-Za-z0-9_.-]+`)

// Open, click and one-click unsubscribe tracking of marketing email: links
// go through signed redirects that lead exactly where the email said, a
// pixel records the open, List-Unsubscribe (RFC 8058) opts the user out of
// the category; each is a status event with template and channel, so
// ClickHouse's open and click rates per template (docs/ANALYTICS.md, query
// 8) are right. Altered links answer 404 and record nothing; transactional
// email is not tracked.
func TestEmailTrackingOpensClicksAndOneClickUnsubscribe(t *testing.T) {
	h := newHarness(t)
	on := true
	h.cfg.Analytics.Enabled = &on
	h.cfg.Analytics.FlushEvery = 100 * time.Millisecond
	h.cfg.Tracking.BaseURL = "http://t.example.test"
	h.start()
	const sale = "https://shop.example/sale?x=1&y=2"
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/promo", map[string]any{"category": "marketing", "channels": map[string]any{
		"email": map[string]any{"subject": "Sale", "text": "Sale at " + sale,
			"html": `<html><body><p><a href="` + strings.ReplaceAll(sale, "&", "&amp;") + `">Sale</a> <a href="mailto:help@example.com">help</a></p></body></html>`}}})
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/reset", map[string]any{"category": "transactional", "channels": map[string]any{
		"email": map[string]any{"subject": "Reset", "html": `<a href="https://shop.example/reset?t=secret">reset</a>`}}})
	users := []string{"t0", "t1", "t2", "t3"}
	ids := map[string]string{}
	for _, u := range users {
		ids[u] = h.send(map[string]any{"template": "promo", "recipients": []any{map[string]any{"userId": u, "email": u + "@example.com"}}})[u]
		h.waitStatus(ids[u], processors.StatusSent)
	}
	resetID := h.send(map[string]any{"template": "reset", "recipients": []any{map[string]any{"userId": "t0", "email": "t0@example.com"}}})["t0"]
	h.waitStatus(resetID, processors.StatusSent)

	links := map[string]map[string]string{} // user → kind → URL
	for _, m := range h.smtp.WaitFor(5, 10*time.Second) {
		hdr, html := mailParts(t, m)
		if hdr.Get("Subject") == "Reset" {
			if !strings.Contains(html, "https://shop.example/reset?t=secret") || hdr.Get("List-Unsubscribe") != "" || trackingURL.MatchString(html) {
				t.Fatalf("transactional mail was tracked: %q %v", html, hdr)
			}
			continue
		}
		user := strings.TrimSuffix(m.To[0], "@example.com")
		if strings.Contains(html, "shop.example/sale") || !strings.Contains(html, `href="mailto:help@example.com"`) {
			t.Fatalf("%s: links not rewritten as they should: %s", user, html)
		}
		links[user] = map[string]string{}
		for _, u := range trackingURL.FindAllString(html, -1) {
			links[user][u[len("http://t.example.test/t/"):][:1]] = u
		}
		unsub := hdr.Get("List-Unsubscribe")
		if !strings.HasPrefix(unsub, "<http://t.example.test/t/u/") || hdr.Get("List-Unsubscribe-Post") != "List-Unsubscribe=One-Click" {
			t.Fatalf("%s: List-Unsubscribe %q, -Post %q", user, unsub, hdr.Get("List-Unsubscribe-Post"))
		}
		links[user]["u"] = strings.Trim(unsub, "<>")
		if links[user]["o"] == "" || links[user]["c"] == "" {
			t.Fatalf("%s: no pixel or click link in %s", user, html)
		}
	}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(method, u string) *http.Response {
		t.Helper()
		path := strings.TrimPrefix(u, "http://t.example.test")
		req, _ := http.NewRequest(method, h.base+path, strings.NewReader("List-Unsubscribe=One-Click"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}

	// Altered links: 404, nothing recorded.
	for _, u := range []string{links["t2"]["o"][:len(links["t2"]["o"])-2] + "xx", strings.Replace(links["t2"]["c"], "/t/c/", "/t/o/", 1),
		links["t2"]["u"] + "A"} {
		method := "GET"
		if strings.Contains(u, "/t/u/") {
			method = "POST"
		}
		if resp := get(method, u); resp.StatusCode != http.StatusNotFound {
			t.Fatalf("%s %s: %d, want 404", method, u, resp.StatusCode)
		}
	}

	// Opens by t0 and t1 (t0 twice: counted once), a click by t0.
	for _, u := range []string{"t0", "t0", "t1"} {
		resp := get("GET", links[u]["o"])
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "image/gif" {
			t.Fatalf("pixel: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
	resp := get("GET", links["t0"]["c"])
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusFound || loc != sale {
		t.Fatalf("click: %d to %q, want 302 to %q", resp.StatusCode, loc, sale)
	}
	h.waitHistory(ids["t0"], "email", processors.StatusOpened)
	h.waitHistory(ids["t0"], "email", processors.StatusClicked)
	h.waitHistory(ids["t1"], "email", processors.StatusOpened)

	// One-click unsubscribe: a GET only asks; the POST opts t3 out of
	// marketing email, and the next one is suppressed.
	if resp := get("GET", links["t3"]["u"]); resp.StatusCode != http.StatusOK {
		t.Fatalf("unsubscribe page: %d", resp.StatusCode)
	}
	if st := h.mustCall(http.StatusOK, "GET", "/v1/notifications/"+ids["t3"], nil); strings.Contains(strings.Join(historyStatuses(st), ","), "unsubscribed") {
		t.Fatal("a GET of the unsubscribe link unsubscribed")
	}
	if resp := get("POST", links["t3"]["u"]); resp.StatusCode != http.StatusOK {
		t.Fatalf("one-click unsubscribe: %d", resp.StatusCode)
	}
	h.waitHistory(ids["t3"], "email", processors.StatusUnsubscribed)
	h.waitProfile("t3", func(p map[string]any) bool {
		prefs, _ := p["preferences"].(map[string]any)
		cats, _ := prefs["categories"].(map[string]any)
		m, _ := cats["marketing"].(map[string]any)
		return m["email"] == false
	})
	again := h.send(map[string]any{"template": "promo", "recipients": []any{map[string]any{"userId": "t3", "email": "t3@example.com"}}})["t3"]
	h.waitStatus(again, processors.StatusSuppressed)
	for _, st := range historyStatuses(h.mustCall(http.StatusOK, "GET", "/v1/notifications/"+ids["t2"], nil)) {
		if st == processors.StatusOpened || st == processors.StatusClicked || st == processors.StatusUnsubscribed {
			t.Fatalf("t2's altered links recorded %s", st)
		}
	}

	// ClickHouse: the documented open and click rates per template.
	queries, err := analyticstest.DocQueries("../docs/ANALYTICS.md")
	if err != nil || len(queries) < 8 || !strings.Contains(queries[7], "open_rate") {
		t.Fatalf("docs/ANALYTICS.md query 8: %v", err)
	}
	rates := strings.ReplaceAll(queries[7], "tenant = 'acme'", "tenant = ''")
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		for h.svc.AnalyticsAddr() == "" && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		out, err := analyticstest.Client(h.svc.AnalyticsAddr(), rates)
		if err == nil && strings.Contains(string(out), "promo\t4\t2\t1\t0.5\t0.25") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("open and click rates per template: %s %v", out, err)
		}
	}
}
