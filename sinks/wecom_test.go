package sinks

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/wecomtest"
)

func weComSetup(t *testing.T, extra string) (*wecomtest.Server, Provider) {
	t.Helper()
	srv := wecomtest.Start()
	t.Cleanup(srv.Close)
	srv.AddRobot("key-ops")
	srv.AddRobot("key-dev")
	p := buildProvider(t, "wecom", "wecom", `
baseUrl: `+srv.URL+`
robots:
  ops: {key: key-ops}
  dev: {key: key-dev}
`+extra)
	return srv, p
}

func TestWeComSendsTextThroughSink(t *testing.T) {
	srv, p := weComSetup(t, "")
	d := deliverThroughSink(t, groupRobotNotification("wecom", "wc-accept", "ops",
		schemas.Content{Title: "Deploy finished", Body: "api v42 is live"}), p)
	wantSent(t, d, "ops:wc-accept")
	msgs := srv.Messages()
	if len(msgs) != 1 || msgs[0].Key != "key-ops" || msgs[0].MsgType != "text" || msgs[0].Content != "Deploy finished\napi v42 is live" {
		t.Fatalf("server accepted %+v", msgs)
	}
}

func TestWeComSendsMarkdownWithinLimits(t *testing.T) {
	srv, p := weComSetup(t, "perRobotPerMinute: 0")
	ctx := context.Background()
	if _, err := p.Send(ctx, groupRobotNotification("wecom", "m1", "ops",
		schemas.Content{Title: "Disk full", Markdown: "> **db-1** at <font color=\"warning\">97%</font>"})); err != nil {
		t.Fatal(err)
	}
	// Over the documented limits: cut on a rune boundary, still accepted.
	long := strings.Repeat("磁", 3000) // 9000 bytes
	if _, err := p.Send(ctx, groupRobotNotification("wecom", "m2", "dev", schemas.Content{Text: long})); err != nil {
		t.Fatalf("long text: %v", err)
	}
	if _, err := p.Send(ctx, groupRobotNotification("wecom", "m3", "dev", schemas.Content{Markdown: long})); err != nil {
		t.Fatalf("long markdown: %v", err)
	}
	msgs := srv.Messages()
	if len(msgs) != 3 {
		t.Fatalf("accepted %d", len(msgs))
	}
	if m := msgs[0]; m.MsgType != "markdown" || m.Content != "**Disk full**\n> **db-1** at <font color=\"warning\">97%</font>" {
		t.Fatalf("markdown %+v", m)
	}
	if m := msgs[1]; m.MsgType != "text" || len(m.Content) > wecomtest.MaxText || len(m.Content) < wecomtest.MaxText-3 || !utf8.ValidString(m.Content) {
		t.Fatalf("long text: %d bytes", len(m.Content))
	}
	if m := msgs[2]; m.MsgType != "markdown" || len(m.Content) > wecomtest.MaxMarkdown || !utf8.ValidString(m.Content) {
		t.Fatalf("long markdown: %d bytes", len(m.Content))
	}
}

// The key is WeCom's only credential: a wrong one is refused with 93000.
func TestWeComWrongKeyIsRefused(t *testing.T) {
	srv := wecomtest.Start()
	t.Cleanup(srv.Close)
	srv.AddRobot("key-ops")
	p := buildProvider(t, "wecom", "wecom", "baseUrl: "+srv.URL+"\nrobots:\n  ops: {key: key-wrong}")
	groupRobotRefused(t, srv, p, "wecom", "wc-badkey", "errcode 93000", "invalid webhook url", "robots.ops")
}

func TestWeComRemovedRobotAndServerErrors(t *testing.T) {
	srv, p := weComSetup(t, "perRobotPerMinute: 0")
	ctx := context.Background()
	srv.RemoveRobot("key-ops")
	_, err := p.Send(ctx, groupRobotNotification("wecom", "r1", "ops", schemas.Content{Text: "hi"}))
	groupRobotWantRemoved(t, err, "93000", "removed")
	srv.Unavailable(1, "")
	_, err = p.Send(ctx, groupRobotNotification("wecom", "r2", "dev", schemas.Content{Text: "hi"}))
	if err == nil || IsPermanent(err) {
		t.Fatalf("503: %v", err)
	}
	if _, err := p.Send(ctx, groupRobotNotification("wecom", "r3", "dev", schemas.Content{})); !IsPermanent(err) {
		t.Fatalf("empty content: %v", err)
	}
	srv.Close()
	_, err = p.Send(ctx, groupRobotNotification("wecom", "r4", "dev", schemas.Content{Text: "hi"}))
	wantTransportError(t, err, "key-dev")
}

func TestWeComPerRobotLimit(t *testing.T) {
	srv, p := weComSetup(t, "perRobotPerMinute: 2\nperRobotBurst: 2")
	ctx := context.Background()
	for i, id := range []string{"l1", "l2"} {
		if _, err := p.Send(ctx, groupRobotNotification("wecom", id, "ops", schemas.Content{Text: "x"})); err != nil {
			t.Fatalf("%d: %v", i, err)
		}
	}
	_, err := p.Send(ctx, groupRobotNotification("wecom", "l3", "ops", schemas.Content{Text: "x"}))
	wantRetryAfter(t, err, 20*time.Second, 30*time.Second)
	wantRequests(t, srv, 2)
}

func TestWeComSettingsValidation(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"baseUrl: https://x", "robots is empty"},
		{"robots:\n  ops: {}", "robots.ops.key is required"},
		{"robots:\n  ops: {key: k, secret: s}", "field secret not found"},
		{"robots:\n  ops: {key: 'https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k'}", "not the URL"},
		{"baseUrl: qyapi.weixin.qq.com\nrobots:\n  ops: {key: k}", "baseUrl"},
		{"perRobotBurst: -2\nrobots:\n  ops: {key: k}", "perRobotBurst is negative"},
		{"timeout: -1s\nrobots:\n  ops: {key: k}", "timeout is negative"},
	} {
		wantBuildErr(t, "wecom", tc.yaml, tc.want)
	}
	p, err := newWeComProvider(Spec{Provider: providerConfig(t, "wecom", "robots:\n  ops: {key: k}\ntimeout: 3s"), Channel: "wecom"})
	if err != nil {
		t.Fatal(err)
	}
	if wp := p.(*weComProvider); wp.baseURL != "https://qyapi.weixin.qq.com" || wp.client.Timeout != 3*time.Second || wp.limit == nil {
		t.Fatalf("defaults: %+v", wp)
	}
}

func TestWeComClassifiesAnswers(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		status int
		body   string
		want   string
		after  time.Duration
	}{
		{200, `{"errcode":0,"errmsg":"ok"}`, "ok", 0},
		{200, `{"errcode":45009,"errmsg":"api freq out of limit"}`, "retry", time.Minute},
		{200, `{"errcode":-1,"errmsg":"system busy"}`, "retry", 0},
		{200, `{"errcode":93000,"errmsg":"invalid webhook url"}`, "permanent", 0},
		{200, `{"errcode":44004,"errmsg":"empty content"}`, "permanent", 0},
		{200, `{"errcode":40058,"errmsg":"content exceed max length"}`, "permanent", 0},
		{200, `{}`, "transient", 0},
		{500, `{"errcode":0}`, "transient", 0},
		{403, ``, "permanent", 0},
	} {
		groupRobotWantClass(t, classifyWeCom(tc.status, nil, []byte(tc.body), "ops", now), tc.want, tc.after, tc.body)
	}
}

func FuzzWeComResponse(f *testing.F) {
	for _, s := range []string{`{"errcode":0,"errmsg":"ok"}`, `{"errcode":45009}`, `{"errcode":93000,"errmsg":"x"}`, `{`, ``, `{"errcode":null}`} {
		f.Add(200, []byte(s))
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		status = 100 + (status%500+500)%500
		err := classifyWeCom(status, http.Header{}, body, "ops", now)
		fuzzClassified(t, status, body, err)
		var a struct {
			ErrCode *int64 `json:"errcode"`
		}
		if err == nil && (json.Unmarshal(body, &a) != nil || a.ErrCode == nil || *a.ErrCode != 0) {
			t.Fatalf("accepted an answer without errcode 0: %q", body)
		}
	})
}
