package service_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/analytics"
	"github.com/notifyd/notifyd/analytics/analyticstest"
	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/smtptest"
	"github.com/notifyd/notifyd/topology"
)

const (
	creatorKey  = "creator-key"
	approverKey = "approver-key"
)

// campaignKeys adds a campaign creator (who may approve too, just not their
// own campaigns) and a second approver to the harness's configured keys.
func campaignKeys(cfg *config.Config) {
	cfg.APIKeys = append(cfg.APIKeys,
		config.APIKey{Name: "creator", Key: creatorKey, Scopes: []string{"send", "notifications:read", "approve"}},
		config.APIKey{Name: "approver", Key: approverKey, Scopes: []string{"approve"}})
}

func as(key string) []string { return []string{"Authorization", "Bearer " + key} }

// waitCampaign polls a campaign until done says so.
func (h *harness) waitCampaign(id string, done func(map[string]any) bool) map[string]any {
	h.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last map[string]any
	for time.Now().Before(deadline) {
		code, out := h.call("GET", "/v1/campaigns/"+id, nil)
		if code == http.StatusOK && done(out) {
			return out
		}
		last = out
		time.Sleep(50 * time.Millisecond)
	}
	h.t.Fatalf("campaign %s: never done; last: %v", id, last)
	return nil
}

func progressOf(c map[string]any) map[string]int {
	out := map[string]int{}
	p, _ := c["progress"].(map[string]any)
	for k, v := range p {
		out[k] = int(v.(float64))
	}
	return out
}

// settled: the campaign has targeted everyone and none of its notifications
// is still on its way.
func settled(c map[string]any) bool {
	p := progressOf(c)
	return (c["state"] == processors.CampaignCompleted || c["state"] == processors.CampaignCanceled) &&
		p["targeted"] > 0 && p["queued"] == 0 && p["targeted"] == int(c["fanout"].(map[string]any)["targeted"].(float64))
}

// auditActions reads notify.audit: action → key name → statuses.
func (h *harness) auditActions() map[string]map[string][]int32 {
	h.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.svc.Brokers()...), kgo.ConsumeTopics(string(topology.Audit)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		h.t.Fatal(err)
	}
	defer cl.Close()
	out := map[string]map[string][]int32{}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			ev, err := schemas.AuditEventCodec.Decode(r.Value)
			if err != nil {
				return
			}
			if out[ev.Action] == nil {
				out[ev.Action] = map[string][]int32{}
			}
			out[ev.Action][ev.KeyName] = append(out[ev.Action][ev.KeyName], ev.Status)
		})
	}
	return out
}

// A campaign to a segment waits for approval: nothing goes out before; its
// creator cannot approve it; another approve key can, with a comment. Then
// every eligible user of the segment gets exactly one message, users who
// opted out of the category none, users outside the segment none; the
// progress counts equal the status table's and ClickHouse's (query 11 of
// docs/ANALYTICS.md), and an open and a click count in query 12 per
// campaign. A rejected campaign sends nothing, an unapproved one expires;
// every decision is in the audit trail.
func TestCampaignToASegmentWaitsForApprovalThenSendsOncePerEligibleUser(t *testing.T) {
	h := newHarness(t)
	campaignKeys(&h.cfg)
	on := true
	h.cfg.Analytics.Enabled = &on
	h.cfg.Analytics.FlushEvery = 100 * time.Millisecond
	h.cfg.Tracking.BaseURL = "http://t.example.test"
	h.cfg.Campaigns.Step = 200 * time.Millisecond
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/promo", map[string]any{"category": "marketing", "channels": map[string]any{
		"email": map[string]any{"subject": "Sale for {{.plan}}", "html": `<p><a href="https://shop.example/sale">Sale</a></p>`}}})
	eligible, optedOut, outside := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for i := 0; i < 40; i++ {
		u := fmt.Sprintf("u%02d", i)
		locale, plan := []string{"de", "en"}[i%2], []string{"pro", "free"}[(i/2)%2]
		prof := map[string]any{"email": u + "@example.com", "locale": locale, "attributes": map[string]any{"plan": plan}}
		in := locale == "de" && plan == "pro"
		switch {
		case in && i%3 == 0:
			prof["preferences"] = map[string]any{"categories": map[string]any{"marketing": map[string]any{"email": false}}}
			optedOut[u] = true
		case in:
			eligible[u] = true
		default:
			outside[u] = true
		}
		h.mustCall(http.StatusOK, "PUT", "/v1/profiles/"+u, prof)
	}
	if len(eligible) < 5 || len(optedOut) < 2 {
		t.Fatalf("fixture: %d eligible, %d opted out", len(eligible), len(optedOut))
	}
	body := map[string]any{"id": "spring", "template": "promo", "data": map[string]any{"plan": "pro"}, "rate": 1000,
		"audience": map[string]any{"segment": `locale = "de" AND attributes.plan = "pro"`}}
	c := h.mustCall(http.StatusAccepted, "POST", "/v1/campaigns", body, as(creatorKey)...)
	if c["state"] != processors.CampaignPending || c["createdBy"] != "creator" {
		t.Fatalf("created %v", c)
	}
	// Unapproved, it sends nothing, however many steps pass.
	time.Sleep(1500 * time.Millisecond)
	if n := len(h.smtp.Messages()); n != 0 {
		t.Fatalf("an unapproved campaign sent %d messages", n)
	}
	if c := h.mustCall(http.StatusOK, "GET", "/v1/campaigns/spring", nil); c["state"] != processors.CampaignPending {
		t.Fatalf("unapproved campaign is %v", c["state"])
	}
	h.mustCall(http.StatusForbidden, "POST", "/v1/campaigns/spring/approve", map[string]any{"comment": "mine"}, as(creatorKey)...)
	c = h.mustCall(http.StatusOK, "POST", "/v1/campaigns/spring/approve", map[string]any{"comment": "copy checked"}, as(approverKey)...)
	if d := c["decisions"].([]any); len(d) != 1 || d[0].(map[string]any)["by"] != "approver" && d[0].(map[string]any)["byName"] != "approver" ||
		d[0].(map[string]any)["comment"] != "copy checked" {
		t.Fatalf("decisions %v", c["decisions"])
	}
	h.mustCall(http.StatusConflict, "POST", "/v1/campaigns/spring/reject", map[string]any{"comment": "too late"}, as(approverKey)...) // decided already
	c = h.waitCampaign("spring", settled)
	p := progressOf(c)
	want := map[string]int{"targeted": len(eligible) + len(optedOut), "queued": 0, "sent": len(eligible), "suppressed": len(optedOut), "failed": 0}
	for k, v := range want {
		if p[k] != v {
			t.Fatalf("progress %v, want %v", p, want)
		}
	}
	got := map[string]int{}
	for _, m := range h.smtp.Messages() {
		got[strings.TrimSuffix(m.To[0], "@example.com")]++
	}
	for u := range eligible {
		if got[u] != 1 {
			t.Fatalf("eligible %s got %d messages", u, got[u])
		}
	}
	if len(got) != len(eligible) {
		t.Fatalf("messages to %v, want exactly the %d eligible users", got, len(eligible))
	}
	// The counts are the status table's: each notification where it stands.
	for u := range optedOut {
		st := h.waitStatus(processors.CampaignNotificationID("", "spring", u), processors.StatusSuppressed)
		if st["campaign"] != "spring" {
			t.Fatalf("%s: status %v", u, st)
		}
	}
	for u := range eligible {
		h.waitStatus(processors.CampaignNotificationID("", "spring", u), processors.StatusSent)
	}
	for u := range outside {
		if code, _ := h.call("GET", "/v1/notifications/"+processors.CampaignNotificationID("", "spring", u), nil); code != http.StatusNotFound {
			t.Fatalf("%s outside the segment has a notification: %d", u, code)
		}
	}

	// Rejected: nothing. Not approved in time: expired, nothing.
	h.mustCall(http.StatusAccepted, "POST", "/v1/campaigns", map[string]any{"id": "summer", "template": "promo",
		"audience": map[string]any{"segment": `locale = "de"`}}, as(creatorKey)...)
	h.mustCall(http.StatusOK, "POST", "/v1/campaigns/summer/reject", map[string]any{"comment": "wrong season"}, as(approverKey)...)
	h.mustCall(http.StatusAccepted, "POST", "/v1/campaigns", map[string]any{"id": "autumn", "template": "promo",
		"approvalDeadline": time.Now().Add(time.Second).UTC().Format(time.RFC3339Nano),
		"audience":         map[string]any{"segment": `locale = "de"`}}, as(creatorKey)...)
	h.waitCampaign("autumn", func(c map[string]any) bool { return c["state"] == processors.CampaignExpired })
	h.mustCall(http.StatusConflict, "POST", "/v1/campaigns/autumn/approve", nil, as(approverKey)...)
	time.Sleep(time.Second)
	if c := h.mustCall(http.StatusOK, "GET", "/v1/campaigns/summer", nil); c["state"] != processors.CampaignRejected || c["fanout"].(map[string]any)["targeted"].(float64) != 0 {
		t.Fatalf("rejected campaign: %v", c)
	}
	if n := len(h.smtp.Messages()); n != len(eligible) {
		t.Fatalf("%d messages after the rejected and expired campaigns, want %d", n, len(eligible))
	}
	audit := h.auditActions()
	approve, reject := audit["POST /v1/campaigns/{id}/approve"], audit["POST /v1/campaigns/{id}/reject"]
	if fmt.Sprint(approve["creator"]) != "[403]" || fmt.Sprint(approve["approver"]) != "[200 409]" ||
		fmt.Sprint(reject["approver"]) != "[409 200]" {
		t.Fatalf("audit trail of decisions: approve %v, reject %v", approve, reject)
	}

	// Tracking: one user opens, another clicks; ClickHouse has the campaign.
	var opened, clicked bool
	for _, m := range h.smtp.Messages() {
		_, html := mailParts(t, m)
		for _, u := range trackingURL.FindAllString(html, -1) {
			kind := u[len("http://t.example.test/t/"):][:1]
			if (kind == "o" && !opened) || (kind == "c" && !clicked && opened) {
				// The pixel follows the link in the mail: the first mail is
				// opened, the click is the next one's.
				req, _ := http.NewRequest("GET", h.base+strings.TrimPrefix(u, "http://t.example.test"), nil)
				resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
				if err != nil || resp.StatusCode >= 400 {
					t.Fatalf("tracking %s: %v %v", u, resp, err)
				}
				resp.Body.Close()
				opened, clicked = opened || kind == "o", clicked || kind == "c"
			}
		}
	}
	if !opened || !clicked {
		t.Fatal("no pixel or click link in the campaign's mail")
	}
	h.campaignAnalytics(t, "spring", p, len(eligible))
}

// campaignAnalytics checks queries 11 and 12 of docs/ANALYTICS.md against
// ClickHouse for campaign id: the progress counts p, and one open and one
// click of the sent messages.
func (h *harness) campaignAnalytics(t *testing.T, id string, p map[string]int, sent int) {
	t.Helper()
	queries, err := analyticstest.DocQueries("../docs/ANALYTICS.md")
	if err != nil || len(queries) < 12 || !strings.Contains(queries[10], "suppressed") || !strings.Contains(queries[11], "click_rate") {
		t.Fatalf("docs/ANALYTICS.md queries 11 and 12: %v", err)
	}
	progressSQL := strings.NewReplacer("tenant = 'acme'", "tenant = ''", "campaign = 'spring'", "campaign = '"+id+"'").Replace(queries[10])
	rateSQL := strings.ReplaceAll(queries[11], "tenant = 'acme'", "tenant = ''")
	wantProgress := fmt.Sprintf("%s\t%d\t%d\t%d\t%d\t%d\n", id, p["targeted"], p["queued"], p["sent"], p["suppressed"], p["failed"])
	// One message opened, another clicked (a click counts as an open).
	wantRate := fmt.Sprintf("%s\tpromo\t%d\t2\t1\t", id, sent)
	var gotProgress, gotRate []byte
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		for h.svc.AnalyticsAddr() == "" && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		gotProgress, _ = analyticstest.Client(h.svc.AnalyticsAddr(), progressSQL)
		gotRate, _ = analyticstest.Client(h.svc.AnalyticsAddr(), rateSQL)
		if string(gotProgress) == wantProgress && strings.Contains(string(gotRate), wantRate) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ClickHouse: progress %q, want %q; rates %q, want %q", gotProgress, wantProgress, gotRate, wantRate)
		}
	}
	// analytics.CampaignProgress (what notifyd bench -campaign checks) agrees.
	conn, err := analytics.Open(h.svc.AnalyticsAddr(), "default", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tab, err := analytics.CampaignProgress(context.Background(), conn, "notifyd", "", id)
	if err != nil || len(tab.Rows) != 1 {
		t.Fatalf("analytics.CampaignProgress: %v %v", tab, err)
	}
	var got []string
	for _, v := range tab.Rows[0] {
		got = append(got, fmt.Sprint(v))
	}
	if line := strings.Join(got, "\t") + "\n"; line != wantProgress {
		t.Fatalf("analytics.CampaignProgress: %q, want %q", line, wantProgress)
	}
}

// A cancel during a campaign: nothing reaches a provider after it. Every
// provider call is held open once a few messages went through, so at the
// moment of the cancel each message is either accepted, in a provider's
// hands, or not yet tried; after it, no new message arrives, the held ones
// complete, and everything else ends canceled. The campaign's audience is a
// list uploaded as CSV, whose bad lines are reported by line number.
func TestCancelDuringACampaignStopsWhatNoProviderHasYet(t *testing.T) {
	var mu sync.Mutex
	arrivals := 0
	gate := make(chan struct{})
	smtpSrv, err := smtptest.Start(smtptest.Options{OnData: func(smtptest.Message) error {
		mu.Lock()
		arrivals++
		n := arrivals
		mu.Unlock()
		if n > 3 {
			<-gate
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(smtpSrv.Close)
	t.Cleanup(func() {
		select {
		case <-gate:
		default:
			close(gate)
		}
	})
	h := newHarness(t)
	h.smtp = smtpSrv
	h.cfg = testConfig(t, smtpSrv, h.hook)
	campaignKeys(&h.cfg)
	h.cfg.Sink.Concurrency = 4
	h.cfg.Campaigns.Step = 200 * time.Millisecond
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/news", map[string]any{"category": "newsletter", "channels": map[string]any{
		"email": map[string]any{"subject": "News", "text": "Hello"}}})
	var csv strings.Builder
	csv.WriteString("userId,name\n")
	const users = 120
	for i := 0; i < users; i++ {
		u := fmt.Sprintf("m%03d", i)
		h.mustCall(http.StatusOK, "PUT", "/v1/profiles/"+u, map[string]any{"email": u + "@example.com"})
		fmt.Fprintf(&csv, "%s,Name %d\n", u, i)
		if i == 10 {
			csv.WriteString("bad|id,x\n") // line 13
		}
	}
	csv.WriteString(",empty\n")
	rep := h.mustCall(http.StatusOK, "POST", "/v1/lists/readers/members", csv.String(), "Content-Type", "text/csv")["report"].(map[string]any)
	errs := rep["errors"].([]any)
	if rep["accepted"].(float64) != users || rep["rejected"].(float64) != 2 || len(errs) != 2 ||
		errs[0].(map[string]any)["line"].(float64) != 13 || errs[1].(map[string]any)["line"].(float64) != users+3 {
		t.Fatalf("upload report %v", rep)
	}
	if got := h.mustCall(http.StatusOK, "GET", "/v1/lists/readers/members?limit=5", nil); fmt.Sprint(got["users"]) != "[m000 m001 m002 m003 m004]" || got["next"] != "m004" {
		t.Fatalf("list members: %v", got)
	}
	h.mustCall(http.StatusAccepted, "POST", "/v1/campaigns", map[string]any{"id": "weekly", "template": "news", "rate": 200,
		"audience": map[string]any{"list": "readers"}}, as(creatorKey)...)
	h.mustCall(http.StatusOK, "POST", "/v1/campaigns/weekly/approve", nil, as(approverKey)...)

	// Wait until every sink worker is held inside a provider call: the
	// count of arrivals stops moving.
	stable := func() int {
		last, since := -1, time.Now()
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			mu.Lock()
			n := arrivals
			mu.Unlock()
			if n != last {
				last, since = n, time.Now()
			} else if n > 3 && time.Since(since) > 700*time.Millisecond {
				return n
			}
		}
		t.Fatalf("arrivals never settled: %d", last)
		return 0
	}
	held := stable()
	h.mustCall(http.StatusOK, "POST", "/v1/campaigns/weekly/cancel", map[string]any{"comment": "typo"})
	close(gate)
	c := h.waitCampaign("weekly", settled)
	mu.Lock()
	after := arrivals
	mu.Unlock()
	p := progressOf(c)
	if after != held {
		t.Fatalf("%d messages reached the provider after the cancel (held %d at the cancel)", after-held, held)
	}
	if len(smtpSrv.Messages()) != held || p["sent"] != held || p["suppressed"] != p["targeted"]-held || p["failed"] != 0 {
		t.Fatalf("accepted %d, progress %v, held at the cancel %d", len(smtpSrv.Messages()), p, held)
	}
	if c["state"] != processors.CampaignCanceled || p["targeted"] == 0 {
		t.Fatalf("campaign %v", c)
	}
	// Nothing more goes out later either: the cancel is in notify.cancels.
	time.Sleep(time.Second)
	if n := len(smtpSrv.Messages()); n != held {
		t.Fatalf("%d messages after the cancel settled, want %d", n, held)
	}
}
