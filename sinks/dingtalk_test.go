package sinks

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/dingtalktest"
)

// ---- helpers shared by the group robot tests (dingtalk, wecom, feishu)

func groupRobotNotification(channel, id, robot string, c schemas.Content) *schemas.Notification {
	return &schemas.Notification{ID: id, UserID: "u-" + id, Channel: channel, Address: robot, Content: c}
}

func groupRobotWantInvalid(t *testing.T, d delivery, channel, robot string) {
	t.Helper()
	wantInvalid(t, d, schemas.InvalidTarget{Platform: channel, Token: robot}, "not configured")
}

// ---- DingTalk

const dingTalkSecret = "SEC0123456789abcdef"

func dingTalkSetup(t *testing.T, extra string) (*dingtalktest.Server, Provider) {
	t.Helper()
	srv := dingtalktest.Start()
	t.Cleanup(srv.Close)
	srv.AddRobot("tok-ops", dingTalkSecret)
	srv.AddRobot("tok-plain", "")
	p := buildProvider(t, "dingtalk", "dingtalk", `
baseUrl: `+srv.URL+`
robots:
  ops: {accessToken: tok-ops, secret: `+dingTalkSecret+`}
  plain: {accessToken: tok-plain}
`+extra)
	return srv, p
}

// The sign of DingTalk's documented algorithm, against a published vector.
func TestDingTalkSignMatchesKnownVector(t *testing.T) {
	got := url.QueryEscape(DingTalkSign("secret", 1700000000000))
	if got != "OuzzJR5%2BxZ4%2FEYwqtNt6sMYZQMTa%2FHEGvc9miJe7XzY%3D" {
		t.Fatalf("sign %s", got)
	}
	if DingTalkSign("secret", 1700000000000) != dingtalktest.Sign("secret", "1700000000000") {
		t.Fatal("the test server computes another sign")
	}
}

func TestDingTalkSendsSignedTextThroughSink(t *testing.T) {
	srv, p := dingTalkSetup(t, "")
	n := groupRobotNotification("dingtalk", "dt-accept", "ops", schemas.Content{Title: "Deploy finished", Text: "api v42 is live"})
	d := deliverThroughSink(t, n, p)
	wantSent(t, d, "ops:dt-accept")
	msgs := srv.Messages()
	if len(msgs) != 1 || msgs[0].Robot != "tok-ops" || msgs[0].MsgType != "text" || msgs[0].Text != "Deploy finished\napi v42 is live" {
		t.Fatalf("server accepted %+v", msgs)
	}
}

func TestDingTalkSendsMarkdownAndUnsigned(t *testing.T) {
	srv, p := dingTalkSetup(t, "perRobotPerMinute: 0")
	ctx := context.Background()
	id, err := p.Send(ctx, groupRobotNotification("dingtalk", "m1", "ops",
		schemas.Content{Markdown: "## Disk full\n**db-1** at 97%", Body: "ignored"}))
	if err != nil || id != "ops:m1" {
		t.Fatalf("markdown: %q %v", id, err)
	}
	// No secret: no timestamp nor sign; the body is used when there is no text.
	if _, err := p.Send(ctx, groupRobotNotification("dingtalk", "m2", "plain", schemas.Content{Body: "plain body"})); err != nil {
		t.Fatal(err)
	}
	msgs := srv.Messages()
	if len(msgs) != 2 {
		t.Fatalf("accepted %d", len(msgs))
	}
	if m := msgs[0]; m.MsgType != "markdown" || m.Title != "Disk full" || m.Markdown != "## Disk full\n**db-1** at 97%" {
		t.Fatalf("markdown message %+v", m)
	}
	if m := msgs[1]; m.Robot != "tok-plain" || m.MsgType != "text" || m.Text != "plain body" {
		t.Fatalf("text message %+v", m)
	}
	if _, err := p.Send(ctx, groupRobotNotification("dingtalk", "m3", "ops", schemas.Content{Title: "T", Markdown: "x"})); err != nil {
		t.Fatal(err)
	}
	if m := srv.Messages()[2]; m.Title != "T" {
		t.Fatalf("the content's title is not the markdown title: %+v", m)
	}
	if _, err := p.Send(ctx, groupRobotNotification("dingtalk", "m4", "ops", schemas.Content{})); !IsPermanent(err) {
		t.Fatalf("empty content: %v", err)
	}
}

func TestDingTalkRetriesWhenThrottled(t *testing.T) {
	srv, p := dingTalkSetup(t, "")
	srv.Throttle(1)
	d := deliverThroughSink(t, groupRobotNotification("dingtalk", "dt-throttled", "ops", schemas.Content{Text: "hello"}), p)
	wantSent(t, d, "ops:dt-throttled")
	if st := d.Statuses(); !slices.Contains(st, "retrying") || st[len(st)-1] != "sent" {
		t.Fatalf("statuses %v", st)
	}
	if n := len(srv.Messages()); n != 1 || srv.Requests() != 2 {
		t.Fatalf("accepted %d of %d requests", n, srv.Requests())
	}
}

func TestDingTalkKeywordRefusalFailsPermanently(t *testing.T) {
	srv, p := dingTalkSetup(t, "")
	srv.FailWith(310000, "keywords not in content")
	d := deliverThroughSink(t, groupRobotNotification("dingtalk", "dt-perm", "ops", schemas.Content{Text: "hello"}), p)
	wantFailed(t, d, "errcode 310000", "keywords not in content", `"ops"`)
	wantNoInvalid(t, d)
	if len(srv.Messages()) != 0 || srv.Requests() != 1 {
		t.Fatalf("accepted %d of %d requests", len(srv.Messages()), srv.Requests())
	}
}

func TestDingTalkUnknownRobotIsInvalidRecipient(t *testing.T) {
	srv, p := dingTalkSetup(t, "")
	d := deliverThroughSink(t, groupRobotNotification("dingtalk", "dt-invalid", "nosuch", schemas.Content{Text: "hello"}), p)
	groupRobotWantInvalid(t, d, "dingtalk", "nosuch")
	if srv.Requests() != 0 {
		t.Fatalf("%d requests for an unknown robot", srv.Requests())
	}
}

func TestDingTalkWrongSecretIsRefused(t *testing.T) {
	srv := dingtalktest.Start()
	t.Cleanup(srv.Close)
	srv.AddRobot("tok-ops", dingTalkSecret)
	p := buildProvider(t, "dingtalk", "dingtalk", "baseUrl: "+srv.URL+"\nrobots:\n  ops: {accessToken: tok-ops, secret: SECwrong}")
	d := deliverThroughSink(t, groupRobotNotification("dingtalk", "dt-badsign", "ops", schemas.Content{Text: "hello"}), p)
	wantFailed(t, d, "errcode 310000", "sign not match", "secret")
	wantNoInvalid(t, d)
	if srv.Rejected() != 1 || len(srv.Messages()) != 0 {
		t.Fatalf("rejected %d, accepted %d", srv.Rejected(), len(srv.Messages()))
	}
	// Unsigned to a signing robot is refused as well.
	p = buildProvider(t, "dingtalk", "dingtalk", "baseUrl: "+srv.URL+"\nrobots:\n  ops: {accessToken: tok-ops}")
	if _, err := p.Send(context.Background(), groupRobotNotification("dingtalk", "x", "ops", schemas.Content{Text: "hi"})); !IsPermanent(err) ||
		!strings.Contains(err.Error(), "310000") {
		t.Fatalf("unsigned: %v", err)
	}
}

func TestDingTalkRemovedRobotAndServerErrors(t *testing.T) {
	srv, p := dingTalkSetup(t, "")
	ctx := context.Background()
	srv.RemoveRobot("tok-ops")
	_, err := p.Send(ctx, groupRobotNotification("dingtalk", "r1", "ops", schemas.Content{Text: "hi"}))
	var ir *InvalidRecipientError
	if !IsPermanent(err) || errors.As(err, &ir) || !strings.Contains(err.Error(), "300001") || !strings.Contains(err.Error(), "robots.ops") {
		t.Fatalf("removed robot: %v", err)
	}
	srv.Unavailable(1, "7")
	_, err = p.Send(ctx, groupRobotNotification("dingtalk", "r2", "plain", schemas.Content{Text: "hi"}))
	if IsPermanent(err) || retryAfter(err) != 7*time.Second {
		t.Fatalf("503: %v", err)
	}
	// A transport failure names neither the token nor the sign.
	srv.Close()
	_, err = p.Send(ctx, groupRobotNotification("dingtalk", "r3", "plain", schemas.Content{Text: "hi"}))
	if err == nil || IsPermanent(err) || strings.Contains(err.Error(), "tok-plain") || strings.Contains(err.Error(), "access_token") {
		t.Fatalf("transport error: %v", err)
	}
}

func TestDingTalkPerRobotLimit(t *testing.T) {
	srv, p := dingTalkSetup(t, "perRobotPerMinute: 1")
	ctx := context.Background()
	if _, err := p.Send(ctx, groupRobotNotification("dingtalk", "l1", "ops", schemas.Content{Text: "1"})); err != nil {
		t.Fatal(err)
	}
	_, err := p.Send(ctx, groupRobotNotification("dingtalk", "l2", "ops", schemas.Content{Text: "2"}))
	if d := retryAfter(err); IsPermanent(err) || d <= 50*time.Second || d > time.Minute {
		t.Fatalf("over the limit: %v (after %s)", err, d)
	}
	if _, err := p.Send(ctx, groupRobotNotification("dingtalk", "l3", "plain", schemas.Content{Text: "3"})); err != nil {
		t.Fatalf("another robot was limited: %v", err)
	}
	if srv.Requests() != 2 {
		t.Fatalf("%d requests, want 2 (none over the limit)", srv.Requests())
	}
}

func TestDingTalkSettingsValidation(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"baseUrl: https://x", "robots is empty"},
		{"robots:\n  ops: {secret: s}", "robots.ops.accessToken is required"},
		{"robots:\n  ops: {accessToken: 'https://oapi.dingtalk.com/robot/send?access_token=abc'}", "not the URL"},
		{"robots:\n  ops: {accessToken: a, token: b}", "field token not found"},
		{"baseUrl: ftp://x\nrobots:\n  ops: {accessToken: a}", "baseUrl"},
		{"perRobotPerMinute: -1\nrobots:\n  ops: {accessToken: a}", "perRobotPerMinute is negative"},
		{"robots:\n  ' ops': {accessToken: a}", "robot name"},
	} {
		if err := buildErr(t, "dingtalk", "dingtalk", tc.yaml); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.yaml, err, tc.want)
		}
	}
	if err := buildErr(t, "sms", "dingtalk", "robots:\n  ops: {accessToken: a}"); err == nil {
		t.Error("dingtalk served sms")
	}
	c := providerConfig(t, "dingtalk", "robots:\n  ops: {accessToken: a}")
	p, err := newDingTalkProvider(Spec{Provider: c, Channel: "dingtalk"})
	if err != nil {
		t.Fatal(err)
	}
	if dp := p.(*dingTalkProvider); dp.baseURL != "https://oapi.dingtalk.com" || dp.limit == nil {
		t.Fatalf("defaults: %+v", dp)
	}
	if err := (Spec{Provider: config.Provider{Name: "x", Type: "dingtalk"}}).Settings(&DingTalkSettings{}); err == nil {
		t.Fatal("missing section accepted")
	}
}

func TestDingTalkClassifiesAnswers(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		status int
		body   string
		want   string // ok | retry | permanent | transient
		after  time.Duration
	}{
		{200, `{"errcode":0,"errmsg":"ok"}`, "ok", 0},
		{200, `{"errcode":130101,"errmsg":"send too fast"}`, "retry", time.Minute},
		{200, `{"errcode":410100,"errmsg":"send too fast"}`, "retry", time.Minute},
		{200, `{"errcode":-1,"errmsg":"系统繁忙"}`, "retry", 0},
		{200, `{"errcode":310000,"errmsg":"ip X not in whitelist"}`, "permanent", 0},
		{200, `{"errcode":300001,"errmsg":"token is not exist"}`, "permanent", 0},
		{200, `{"errcode":400013,"errmsg":"群已被解散"}`, "permanent", 0},
		{200, `{"errcode":40035,"errmsg":"缺少参数 json"}`, "permanent", 0},
		{200, `<html>proxy</html>`, "transient", 0},
		{502, `bad gateway`, "transient", 0},
		{429, ``, "transient", 0},
		{404, `{"errcode":0}`, "permanent", 0},
		{400, `{"errcode":130101,"errmsg":"send too fast"}`, "retry", time.Minute},
	} {
		err := classifyDingTalk(tc.status, nil, []byte(tc.body), "ops", now)
		groupRobotWantClass(t, err, tc.want, tc.after, tc.body)
	}
}

func groupRobotWantClass(t *testing.T, err error, want string, after time.Duration, body string) {
	t.Helper()
	var rl *RetryLaterError
	got := "transient"
	switch {
	case err == nil:
		got = "ok"
	case IsPermanent(err):
		got = "permanent"
	case errors.As(err, &rl) && rl.After > 0:
		got = "retry"
	}
	if want == "retry" && after == 0 && got == "transient" {
		got = "retry"
	}
	if got != want || (want == "retry" && retryAfter(err) != after) {
		t.Errorf("%q: %v (%s, after %s), want %s after %s", body, err, got, retryAfter(err), want, after)
	}
}

func FuzzDingTalkResponse(f *testing.F) {
	for _, s := range []string{`{"errcode":0,"errmsg":"ok"}`, `{"errcode":310000,"errmsg":"sign not match"}`,
		`{"errcode":130101}`, `{"errcode":"x"}`, `null`, ``, `{"errcode":1e99}`, `[]`} {
		f.Add(200, []byte(s))
	}
	f.Add(503, []byte(`{"errcode":-1}`))
	now := time.Now()
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		status = 100 + (status%500+500)%500
		err := classifyDingTalk(status, http.Header{"Retry-After": {"3"}}, body, "ops", now)
		fuzzClassified(t, status, body, err)
		var a struct {
			ErrCode *int64 `json:"errcode"`
		}
		if err == nil && (json.Unmarshal(body, &a) != nil || a.ErrCode == nil || *a.ErrCode != 0) {
			t.Fatalf("accepted an answer without errcode 0: %q", body)
		}
	})
}
