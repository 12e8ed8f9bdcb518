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

// groupRobotFake is what the group robot test servers have in common.
type groupRobotFake interface {
	chatFake
	Throttle(n int)
	FailWith(code int, msg string)
}

// groupRobotRetriesWhenThrottled: a message the robot throttles once is
// retried, then sent.
func groupRobotRetriesWhenThrottled(t *testing.T, srv groupRobotFake, p Provider, channel, id string) {
	t.Helper()
	srv.Throttle(1)
	d := deliverThroughSink(t, groupRobotNotification(channel, id, "ops", schemas.Content{Text: "hello"}), p)
	wantSent(t, d, "ops:"+id)
	wantThrottledThenSent(t, d, srv)
}

// groupRobotFailsPermanently: a message the robot refuses with code and msg
// fails at once, its reason saying each of reason, the robot kept.
func groupRobotFailsPermanently(t *testing.T, srv groupRobotFake, p Provider, channel, id string, code int, msg string,
	reason ...string) {
	t.Helper()
	srv.FailWith(code, msg)
	d := deliverThroughSink(t, groupRobotNotification(channel, id, "ops", schemas.Content{Text: "hello"}), p)
	wantFailed(t, d, reason...)
	wantNoInvalid(t, d)
	wantServed(t, srv, 0, 1)
}

// groupRobotUnknownIsInvalid: a robot name the provider does not have is an
// invalid recipient, and nothing is sent.
func groupRobotUnknownIsInvalid(t *testing.T, srv chatFake, p Provider, channel, id string) {
	t.Helper()
	d := deliverThroughSink(t, groupRobotNotification(channel, id, "nosuch", schemas.Content{Text: "hello"}), p)
	groupRobotWantInvalid(t, d, channel, "nosuch")
	wantRequests(t, srv, 0)
}

// groupRobotRefused: a message to the robot "ops" with a wrong credential
// fails at once, its reason saying each of reason; the robot is kept and the
// server refused it for its credential.
func groupRobotRefused(t *testing.T, srv groupRobotFake, p Provider, channel, id string, reason ...string) {
	t.Helper()
	d := deliverThroughSink(t, groupRobotNotification(channel, id, "ops", schemas.Content{Text: "hello"}), p)
	wantRefused(t, d, srv, "", reason...)
	wantNoInvalid(t, d)
}

// groupRobotWantRemoved: err, of a message to a robot removed from its group,
// is a permanent failure saying each of says, not an invalid recipient (the
// robot is the provider's configuration, not the profile's).
func groupRobotWantRemoved(t *testing.T, err error, says ...string) {
	t.Helper()
	var ir *InvalidRecipientError
	if !IsPermanent(err) || errors.As(err, &ir) {
		t.Fatalf("removed robot: %v", err)
	}
	for _, w := range says {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("removed robot: %v, want it to say %q", err, w)
		}
	}
}

// wantTransportError: err, of a request the server never answered, is to be
// retried and names none of secrets.
func wantTransportError(t *testing.T, err error, secrets ...string) {
	t.Helper()
	if err == nil || IsPermanent(err) {
		t.Fatalf("transport error: %v", err)
	}
	for _, s := range secrets {
		if strings.Contains(err.Error(), s) {
			t.Fatalf("transport error: %v names %q", err, s)
		}
	}
}

// ---- shared by the chat tests (slack, telegram, whatsapp and the group robots)

// chatFake is what every chat test server counts.
type chatFake interface {
	Accepted() int
	Requests() int
	Rejected() int
}

// wantServed: srv accepted accepted messages in requests requests.
func wantServed(t *testing.T, srv chatFake, accepted, requests int) {
	t.Helper()
	if srv.Accepted() != accepted || srv.Requests() != requests {
		t.Fatalf("accepted %d of %d requests, want %d of %d", srv.Accepted(), srv.Requests(), accepted, requests)
	}
}

// wantThrottledThenSent: the delivery, throttled once by srv, was retried
// and then sent, srv accepting it the second time.
func wantThrottledThenSent(t *testing.T, d delivery, srv chatFake) {
	t.Helper()
	if d.Final.Status != "sent" {
		t.Fatalf("status %s (%s), want sent", d.Final.Status, d.Final.Reason)
	}
	if st := d.Statuses(); !slices.Contains(st, "retrying") || st[len(st)-1] != "sent" {
		t.Fatalf("statuses %v, want retrying then sent", st)
	}
	wantServed(t, srv, 1, 2)
}

// wantRefused: the delivery failed at once, its reason saying each of reason
// and not secret (when not empty), srv having refused it for its credentials.
func wantRefused(t *testing.T, d delivery, srv chatFake, secret string, reason ...string) {
	t.Helper()
	wantFailed(t, d, reason...)
	if secret != "" && strings.Contains(d.Final.Reason, secret) {
		t.Fatalf("the reason carries the secret: %s", d.Final.Reason)
	}
	if srv.Rejected() != 1 || srv.Accepted() != 0 {
		t.Fatalf("rejected %d, accepted %d", srv.Rejected(), srv.Accepted())
	}
}

// wantOnlyInvalid: the delivery failed and its feedback names target, and
// only target, as invalid.
func wantOnlyInvalid(t *testing.T, d delivery, target schemas.InvalidTarget, reason ...string) {
	t.Helper()
	wantInvalid(t, d, target, reason...)
	if len(d.Feedback.Invalid) != 1 {
		t.Fatalf("feedback %+v, want only %+v invalid", d.Feedback, target)
	}
}

// wantRequests: srv received n requests.
func wantRequests(t *testing.T, srv chatFake, n int) {
	t.Helper()
	if srv.Requests() != n {
		t.Fatalf("%d requests, want %d", srv.Requests(), n)
	}
}

// wantBuildErr: building a provider of type typ (for its own channel) from
// settingsYAML fails, saying want; the error is returned for more checks.
func wantBuildErr(t *testing.T, typ, settingsYAML, want string) error {
	t.Helper()
	err := buildErr(t, typ, typ, settingsYAML)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("%q: %v, want %q", settingsYAML, err, want)
	}
	return err
}

// wantRetryAfter: err is a retry-later error whose wait is in (lo, hi].
func wantRetryAfter(t *testing.T, err error, lo, hi time.Duration) {
	t.Helper()
	if d := retryAfter(err); IsPermanent(err) || d <= lo || d > hi {
		t.Fatalf("%v (after %s), want a retry after (%s, %s]", err, d, lo, hi)
	}
}

// The outcomes every group robot provider has: a throttled message is
// retried then sent; a message the robot refuses (DingTalk's and Feishu's
// keyword check, WeCom's message check) fails at once, the robot kept; a
// robot name the provider does not have is an invalid recipient.
func TestGroupRobotSharedOutcomes(t *testing.T) {
	for _, tc := range []struct {
		channel string
		setup   func(t *testing.T) (groupRobotFake, Provider)
		code    int
		msg     string
		reason  []string
	}{
		{"dingtalk", func(t *testing.T) (groupRobotFake, Provider) { return dingTalkSetup(t, "") },
			310000, "keywords not in content", []string{"errcode 310000", "keywords not in content", `"ops"`}},
		{"wecom", func(t *testing.T) (groupRobotFake, Provider) { return weComSetup(t, "") },
			40008, "invalid message type", []string{"errcode 40008", "invalid message type", `"ops"`}},
		{"feishu", func(t *testing.T) (groupRobotFake, Provider) { return feishuSetup(t, "") },
			19024, "Key Words Not Found", []string{"code 19024", "Key Words Not Found", `"ops"`}},
	} {
		t.Run(tc.channel+"/throttled", func(t *testing.T) {
			srv, p := tc.setup(t)
			groupRobotRetriesWhenThrottled(t, srv, p, tc.channel, tc.channel+"-throttled")
		})
		t.Run(tc.channel+"/refused", func(t *testing.T) {
			srv, p := tc.setup(t)
			groupRobotFailsPermanently(t, srv, p, tc.channel, tc.channel+"-perm", tc.code, tc.msg, tc.reason...)
		})
		t.Run(tc.channel+"/unknown robot", func(t *testing.T) {
			srv, p := tc.setup(t)
			groupRobotUnknownIsInvalid(t, srv, p, tc.channel, tc.channel+"-invalid")
		})
	}
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

func TestDingTalkWrongSecretIsRefused(t *testing.T) {
	srv := dingtalktest.Start()
	t.Cleanup(srv.Close)
	srv.AddRobot("tok-ops", dingTalkSecret)
	p := buildProvider(t, "dingtalk", "dingtalk", "baseUrl: "+srv.URL+"\nrobots:\n  ops: {accessToken: tok-ops, secret: SECwrong}")
	groupRobotRefused(t, srv, p, "dingtalk", "dt-badsign", "errcode 310000", "sign not match", "secret")
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
	groupRobotWantRemoved(t, err, "300001", "robots.ops")
	srv.Unavailable(1, "7")
	_, err = p.Send(ctx, groupRobotNotification("dingtalk", "r2", "plain", schemas.Content{Text: "hi"}))
	if IsPermanent(err) || retryAfter(err) != 7*time.Second {
		t.Fatalf("503: %v", err)
	}
	// A transport failure names neither the token nor the sign.
	srv.Close()
	_, err = p.Send(ctx, groupRobotNotification("dingtalk", "r3", "plain", schemas.Content{Text: "hi"}))
	wantTransportError(t, err, "tok-plain", "access_token")
}

func TestDingTalkPerRobotLimit(t *testing.T) {
	srv, p := dingTalkSetup(t, "perRobotPerMinute: 1")
	ctx := context.Background()
	if _, err := p.Send(ctx, groupRobotNotification("dingtalk", "l1", "ops", schemas.Content{Text: "1"})); err != nil {
		t.Fatal(err)
	}
	_, err := p.Send(ctx, groupRobotNotification("dingtalk", "l2", "ops", schemas.Content{Text: "2"}))
	wantRetryAfter(t, err, 50*time.Second, time.Minute)
	if _, err := p.Send(ctx, groupRobotNotification("dingtalk", "l3", "plain", schemas.Content{Text: "3"})); err != nil {
		t.Fatalf("another robot was limited: %v", err)
	}
	wantRequests(t, srv, 2) // none over the limit
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
		wantBuildErr(t, "dingtalk", tc.yaml, tc.want)
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
