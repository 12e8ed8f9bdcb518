package sinks

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/feishutest"
)

const feishuSecret = "qGx7bT3Fm9kP2s"

func feishuSetup(t *testing.T, extra string) (*feishutest.Server, Provider) {
	t.Helper()
	srv := feishutest.Start()
	t.Cleanup(srv.Close)
	srv.AddBot("hook-ops", feishuSecret)
	srv.AddBot("hook-plain", "")
	p := buildProvider(t, "feishu", "feishu", `
baseUrl: `+srv.URL+`
robots:
  ops: {hookId: hook-ops, secret: `+feishuSecret+`}
  plain: {hookId: hook-plain}
`+extra)
	return srv, p
}

func TestFeishuSignMatchesDocumentedAlgorithm(t *testing.T) {
	// key = timestamp + "\n" + secret, message empty (not DingTalk's scheme).
	if FeishuSign("s", 1599360473) != feishutest.Sign("s", "1599360473") {
		t.Fatal("the provider and the test server sign differently")
	}
	if FeishuSign("s", 1599360473) == DingTalkSign("s", 1599360473) {
		t.Fatal("feishu signs like dingtalk")
	}
	// Computed with the Python sample of the documentation.
	if got := FeishuSign("secret", 1700000000); got != "fiWS2+gh28DOydAv7hzONH/mDn9+b1Y4Y5ivXWXy8vA=" {
		t.Fatalf("sign %s", got)
	}
}

func TestFeishuSendsSignedTextThroughSink(t *testing.T) {
	srv, p := feishuSetup(t, "")
	d := deliverThroughSink(t, groupRobotNotification("feishu", "fs-accept", "ops",
		schemas.Content{Title: "Deploy finished", Text: "api v42 is live"}), p)
	wantSent(t, d, "ops:fs-accept")
	msgs := srv.Messages()
	if len(msgs) != 1 || msgs[0].HookID != "hook-ops" || msgs[0].MsgType != "text" || msgs[0].Text != "Deploy finished\napi v42 is live" {
		t.Fatalf("server accepted %+v", msgs)
	}
	var body map[string]any
	if err := json.Unmarshal(msgs[0].Body, &body); err != nil {
		t.Fatal(err)
	}
	if _, ok := body["timestamp"].(string); !ok || body["sign"] == "" {
		t.Fatalf("timestamp is not a string or no sign: %s", msgs[0].Body)
	}
}

func TestFeishuSendsMarkdownCardAndUnsigned(t *testing.T) {
	srv, p := feishuSetup(t, "perRobotPerMinute: 0")
	ctx := context.Background()
	if _, err := p.Send(ctx, groupRobotNotification("feishu", "m1", "ops",
		schemas.Content{Title: "Disk full", Markdown: "**db-1** at 97%"})); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Send(ctx, groupRobotNotification("feishu", "m2", "plain", schemas.Content{Body: "plain body"})); err != nil {
		t.Fatal(err)
	}
	srv.Legacy = true // the older answer {"StatusCode":0} is a success too
	if _, err := p.Send(ctx, groupRobotNotification("feishu", "m3", "plain", schemas.Content{Markdown: "no title"})); err != nil {
		t.Fatal(err)
	}
	msgs := srv.Messages()
	if len(msgs) != 3 {
		t.Fatalf("accepted %d", len(msgs))
	}
	if m := msgs[0]; m.MsgType != "interactive" || m.CardTitle != "Disk full" || m.CardMarkdown != "**db-1** at 97%" {
		t.Fatalf("card %+v", m)
	}
	if m := msgs[1]; m.MsgType != "text" || m.Text != "plain body" || strings.Contains(string(m.Body), "sign") {
		t.Fatalf("unsigned text %+v %s", m, m.Body)
	}
	if m := msgs[2]; m.CardTitle != "" || m.CardMarkdown != "no title" || m.Card["header"] != nil {
		t.Fatalf("untitled card %+v", m)
	}
	// Longer than the 20 KB body limit: cut, still accepted.
	if _, err := p.Send(ctx, groupRobotNotification("feishu", "m4", "ops", schemas.Content{Text: strings.Repeat("飞", 10000)})); err != nil {
		t.Fatalf("long text: %v", err)
	}
}

func TestFeishuWrongSecretIsRefused(t *testing.T) {
	srv := feishutest.Start()
	t.Cleanup(srv.Close)
	srv.AddBot("hook-ops", feishuSecret)
	p := buildProvider(t, "feishu", "feishu", "baseUrl: "+srv.URL+"\nrobots:\n  ops: {hookId: hook-ops, secret: wrong}")
	groupRobotRefused(t, srv, p, "feishu", "fs-badsign", "code 19021", "sign match fail", "robots.ops.secret")
	// A clock two hours off is refused the same way.
	srv.Now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	p = buildProvider(t, "feishu", "feishu", "baseUrl: "+srv.URL+"\nrobots:\n  ops: {hookId: hook-ops, secret: "+feishuSecret+"}")
	if _, err := p.Send(context.Background(), groupRobotNotification("feishu", "x", "ops", schemas.Content{Text: "hi"})); !IsPermanent(err) ||
		!strings.Contains(err.Error(), "19021") {
		t.Fatalf("stale timestamp: %v", err)
	}
}

func TestFeishuRemovedBotAndServerErrors(t *testing.T) {
	srv, p := feishuSetup(t, "perRobotPerMinute: 0")
	ctx := context.Background()
	srv.RemoveBot("hook-ops")
	_, err := p.Send(ctx, groupRobotNotification("feishu", "r1", "ops", schemas.Content{Text: "hi"}))
	groupRobotWantRemoved(t, err, "19001", "robots.ops")
	srv.Unavailable(1, "5")
	_, err = p.Send(ctx, groupRobotNotification("feishu", "r2", "plain", schemas.Content{Text: "hi"}))
	if IsPermanent(err) || retryAfter(err) != 5*time.Second {
		t.Fatalf("503: %v", err)
	}
	srv.Close()
	_, err = p.Send(ctx, groupRobotNotification("feishu", "r3", "plain", schemas.Content{Text: "hi"}))
	wantTransportError(t, err, "hook-plain")
}

// The default limit: 100 a minute with a burst of 5 (Feishu's 5 a second).
func TestFeishuPerRobotLimit(t *testing.T) {
	srv, p := feishuSetup(t, "")
	ctx := context.Background()
	for i := range 5 {
		if _, err := p.Send(ctx, groupRobotNotification("feishu", "l"+string(rune('0'+i)), "ops", schemas.Content{Text: "x"})); err != nil {
			t.Fatalf("%d: %v", i, err)
		}
	}
	_, err := p.Send(ctx, groupRobotNotification("feishu", "l6", "ops", schemas.Content{Text: "x"}))
	wantRetryAfter(t, err, 0, time.Second)
	wantRequests(t, srv, 5)
}

func TestFeishuSettingsValidation(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"baseUrl: https://open.larksuite.com", "robots is empty"},
		{"robots:\n  ops: {secret: s}", "robots.ops.hookId is required"},
		{"robots:\n  ops: {hookId: 'https://open.feishu.cn/open-apis/bot/v2/hook/abc'}", "not the URL"},
		{"robots:\n  ops: {hookId: a/b}", "hookId must be"},
		{"robots:\n  ops: {hookId: a, accessToken: b}", "field accessToken not found"},
		{"robots:\n  ops: {hookId: a, secret: ' s'}", "secret has leading or trailing spaces"},
	} {
		wantBuildErr(t, "feishu", tc.yaml, tc.want)
	}
	p, err := newFeishuProvider(Spec{Provider: providerConfig(t, "feishu", "baseUrl: https://open.larksuite.com/\nrobots:\n  ops: {hookId: h}"), Channel: "feishu"})
	if err != nil {
		t.Fatal(err)
	}
	if fp := p.(*feishuProvider); fp.baseURL != "https://open.larksuite.com" {
		t.Fatalf("baseUrl %q", fp.baseURL)
	}
}

func TestFeishuClassifiesAnswers(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		status int
		body   string
		want   string
		after  time.Duration
	}{
		{200, `{"code":0,"msg":"success","data":{}}`, "ok", 0},
		{200, `{"Extra":null,"StatusCode":0,"StatusMessage":"success"}`, "ok", 0},
		{200, `{"code":11232,"msg":"frequency limited"}`, "retry", 0},
		{400, `{"code":9499,"msg":"too many request"}`, "retry", 0}, // throttled, whatever the status
		{400, `{"code":19001,"msg":"param invalid"}`, "permanent", 0},
		{429, `{"code":9499,"msg":"too many request"}`, "retry", 0},
		{200, `{"code":9499,"msg":"too many request"}`, "retry", 0},
		{200, `{"code":19021,"msg":"sign match fail"}`, "permanent", 0},
		{200, `{"code":19022,"msg":"Ip Not Allowed"}`, "permanent", 0},
		{200, `{"code":19001,"msg":"param invalid"}`, "permanent", 0},
		{200, `{"StatusCode":19021,"StatusMessage":"sign match fail"}`, "permanent", 0},
		{200, `{"data":{}}`, "transient", 0},
		{503, ``, "transient", 0},
	} {
		groupRobotWantClass(t, classifyFeishu(tc.status, nil, []byte(tc.body), "ops", now), tc.want, tc.after, tc.body)
	}
}

func FuzzFeishuResponse(f *testing.F) {
	for _, s := range []string{`{"code":0,"msg":"success","data":{}}`, `{"StatusCode":0}`, `{"code":11232}`,
		`{"code":19021,"msg":"sign match fail"}`, `{"code":"0"}`, ``, `{"code":0,"StatusCode":5}`} {
		f.Add(200, []byte(s))
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		status = 100 + (status%500+500)%500
		err := classifyFeishu(status, http.Header{"Retry-After": {"Tue, 01 Dec 2026 10:00:30 GMT"}}, body, "ops", now)
		fuzzClassified(t, status, body, err)
		var a struct {
			Code       *int64 `json:"code"`
			StatusCode *int64 `json:"StatusCode"`
		}
		if err == nil && (json.Unmarshal(body, &a) != nil || !(a.Code != nil && *a.Code == 0 || a.Code == nil && a.StatusCode != nil && *a.StatusCode == 0)) {
			t.Fatalf("accepted an answer without code 0: %q", body)
		}
	})
}
