package sinks

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/slacktest"
)

const slackTestToken = "xoxb-1111-2222-abcdefABCDEF"

func slackProviderFor(t *testing.T, srv *slacktest.Server, token string, extra string) Provider {
	t.Helper()
	y := fmt.Sprintf("baseUrl: %s\nwebhookHosts: [%q]\n", srv.URL, srv.Host())
	if token != "" {
		y += "botToken: " + token + "\n"
	}
	return buildProvider(t, "slack", "slack", y+extra)
}

func slackNotification(id, addr string, c schemas.Content) *schemas.Notification {
	return &schemas.Notification{ID: id, UserID: "u-" + id, Channel: "slack", Address: addr, Content: c}
}

func TestSlackBotTokenMessageAccepted(t *testing.T) {
	srv := slacktest.Start(slackTestToken)
	defer srv.Close()
	p := slackProviderFor(t, srv, slackTestToken, "")
	d := deliverThroughSink(t, slackNotification("sl-ok", "C0123ABCD",
		schemas.Content{Title: "Deploy <prod>", Text: "build 1 < 2 & done", Body: "ignored"}), p)
	if d.Final.Status != "sent" {
		t.Fatalf("status %s (%s), want sent", d.Final.Status, d.Final.Reason)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("server accepted %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if m.Channel != "C0123ABCD" || m.Webhook || !m.Mrkdwn || m.Text != "*Deploy &lt;prod&gt;*\nbuild 1 &lt; 2 &amp; done" {
		t.Fatalf("message %+v", m)
	}
	if d.Final.ProviderMessageID != m.TS || m.TS == "" {
		t.Fatalf("provider message id %q, want the ts %q", d.Final.ProviderMessageID, m.TS)
	}
}

func TestSlackWebhookMessageAccepted(t *testing.T) {
	srv := slacktest.Start(slackTestToken)
	defer srv.Close()
	hook := srv.NewWebhook("C-alerts")
	p := slackProviderFor(t, srv, "", "") // webhooks need no bot token
	d := deliverThroughSink(t, slackNotification("sl-hook", hook,
		schemas.Content{Markdown: "*disk* at _91%_ <https://x.example|see>", Text: "plain"}), p)
	if d.Final.Status != "sent" {
		t.Fatalf("status %s (%s), want sent", d.Final.Status, d.Final.Reason)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 || !msgs[0].Webhook || msgs[0].Channel != "C-alerts" || !msgs[0].Mrkdwn ||
		msgs[0].Text != "*disk* at _91%_ <https://x.example|see>" {
		t.Fatalf("messages %+v", msgs)
	}
	if d.Final.ProviderMessageID == "" || d.Final.ProviderMessageID != msgs[0].ReqID {
		t.Fatalf("provider message id %q, want the request id %q", d.Final.ProviderMessageID, msgs[0].ReqID)
	}
}

func TestSlackRateLimitedIsRetried(t *testing.T) {
	srv := slacktest.Start(slackTestToken)
	defer srv.Close()
	srv.ThrottleNext(1, 1)
	// No per-channel limit here: the retry must not wait on this instance's own limiter.
	p := slackProviderFor(t, srv, slackTestToken, "perChannelPerMinute: 0")
	d := deliverThroughSink(t, slackNotification("sl-429", "C0RATE", schemas.Content{Text: "hello"}), p)
	wantThrottledThenSent(t, d, srv)
}

func TestSlackPermanentFailure(t *testing.T) {
	srv := slacktest.Start(slackTestToken)
	defer srv.Close()
	srv.FailPermanently("msg_too_long")
	p := slackProviderFor(t, srv, slackTestToken, "")
	d := deliverThroughSink(t, slackNotification("sl-perm", "C0PERM", schemas.Content{Text: "x"}), p)
	wantFailed(t, d, "msg_too_long")
	wantRequests(t, srv, 1) // not retried
	wantNoInvalid(t, d)
}

func TestSlackArchivedChannelIsInvalidRecipient(t *testing.T) {
	srv := slacktest.Start(slackTestToken)
	defer srv.Close()
	srv.ArchiveChannel("C0GONE")
	p := slackProviderFor(t, srv, slackTestToken, "")
	d := deliverThroughSink(t, slackNotification("sl-gone", "C0GONE", schemas.Content{Text: "x"}), p)
	wantOnlyInvalid(t, d, schemas.InvalidTarget{Platform: "slack", Token: "C0GONE"}, "is_archived")
}

func TestSlackRevokedWebhookIsInvalidRecipient(t *testing.T) {
	srv := slacktest.Start(slackTestToken)
	defer srv.Close()
	hook := srv.NewWebhook("C-old")
	srv.RevokeWebhook(hook)
	p := slackProviderFor(t, srv, "", "")
	d := deliverThroughSink(t, slackNotification("sl-revoked", hook, schemas.Content{Text: "x"}), p)
	wantOnlyInvalid(t, d, schemas.InvalidTarget{Platform: "slack", Token: hook}, "no_service")
	if strings.Contains(d.Final.Reason, hook[strings.LastIndex(hook, "/")+1:]) {
		t.Fatalf("the reason carries the webhook's secret: %s", d.Final.Reason)
	}
}

func TestSlackBadBotTokenFails(t *testing.T) {
	srv := slacktest.Start(slackTestToken)
	defer srv.Close()
	p := slackProviderFor(t, srv, "xoxb-1111-2222-wrong", "")
	d := deliverThroughSink(t, slackNotification("sl-auth", "C0AUTH", schemas.Content{Text: "x"}), p)
	wantRefused(t, d, srv, "wrong", "invalid_auth")
	wantNoInvalid(t, d)
}

// Direct sends: outcomes the sink tests above do not cover.
func TestSlackSendOutcomes(t *testing.T) {
	srv := slacktest.Start(slackTestToken)
	defer srv.Close()
	ctx := context.Background()
	p := slackProviderFor(t, srv, slackTestToken, "perChannelPerMinute: 0")

	// A webhook with a wrong secret: Slack says invalid_token, the webhook is dead.
	hook := srv.NewWebhook("C1")
	bad := hook[:strings.LastIndex(hook, "/")+1] + "notthesecret000000000000"
	var ir *InvalidRecipientError
	if _, err := p.Send(ctx, slackNotification("a", bad, schemas.Content{Text: "x"})); !errors.As(err, &ir) ||
		!strings.Contains(err.Error(), "invalid_token") || strings.Contains(err.Error(), "notthesecret") {
		t.Fatalf("wrong webhook secret: %v", err)
	}
	// Archived channel on a webhook: 410.
	srv.ArchiveChannel("C1")
	if _, err := p.Send(ctx, slackNotification("b", hook, schemas.Content{Text: "x"})); !errors.As(err, &ir) ||
		!strings.Contains(err.Error(), "410") {
		t.Fatalf("archived webhook channel: %v", err)
	}
	// Bot removed from the channel.
	srv.KickBot("C2")
	if _, err := p.Send(ctx, slackNotification("c", "C2", schemas.Content{Text: "x"})); !errors.As(err, &ir) ||
		ir.Targets[0].Token != "C2" || !strings.Contains(err.Error(), "not_in_channel") {
		t.Fatalf("not in channel: %v", err)
	}
	// 5xx and 429 are retried, honouring Retry-After.
	srv.FailNext(1)
	if _, err := p.Send(ctx, slackNotification("d", "C3", schemas.Content{Text: "x"})); err == nil || IsPermanent(err) {
		t.Fatalf("503: %v", err)
	}
	srv.ThrottleNext(1, 7)
	hook2 := srv.NewWebhook("C4")
	if _, err := p.Send(ctx, slackNotification("e", hook2, schemas.Content{Text: "x"})); retryAfter(err) != 7*time.Second {
		t.Fatalf("webhook 429: %v, want retry after 7s", err)
	}
	// Nothing to send.
	if _, err := p.Send(ctx, slackNotification("f", "C3", schemas.Content{})); !IsPermanent(err) {
		t.Fatalf("empty content: %v", err)
	}
	// A channel address without a bot token.
	noTok := slackProviderFor(t, srv, "", "")
	if _, err := noTok.Send(ctx, slackNotification("g", "C3", schemas.Content{Text: "x"})); !IsPermanent(err) ||
		!strings.Contains(err.Error(), "botToken") {
		t.Fatalf("no token: %v", err)
	}
}

// A webhook address is only called on an allowed host: a profile cannot make
// notifyd call an internal service.
func TestSlackWebhookHostAllowList(t *testing.T) {
	srv := slacktest.Start(slackTestToken)
	defer srv.Close()
	other := slacktest.Start(slackTestToken) // a listener that is not allowed
	defer other.Close()
	p := slackProviderFor(t, srv, "", "")
	ctx := context.Background()
	for _, addr := range []string{
		other.NewWebhook("C1"),
		"https://hooks.slack.com.evil.example/services/T/B/x",
		"http://169.254.169.254/latest/meta-data",
		"https://user:pw@" + srv.Host() + "/services/T/B/x",
		"ftp://" + srv.Host() + "/x",
	} {
		if _, err := p.Send(ctx, slackNotification("x", addr, schemas.Content{Text: "x"})); !IsPermanent(err) {
			t.Errorf("%s: %v, want a permanent refusal", addr, err)
		}
	}
	if other.Requests() != 0 || srv.Requests() != 0 {
		t.Fatalf("refused webhooks were called: %d %d", other.Requests(), srv.Requests())
	}
	// The default allows only hooks.slack.com, and only over https.
	def := buildProvider(t, "slack", "slack", "perChannelPerMinute: 60").(*slackProvider)
	if _, err := def.webhookURL("https://hooks.slack.com/services/T/B/x"); err != nil {
		t.Fatalf("default host refused: %v", err)
	}
	if _, err := def.webhookURL("http://hooks.slack.com/services/T/B/x"); !IsPermanent(err) {
		t.Fatalf("plain http to slack: %v", err)
	}
}

// perChannelPerMinute bounds each channel without calling Slack.
func TestSlackPerChannelLimit(t *testing.T) {
	srv := slacktest.Start(slackTestToken)
	defer srv.Close()
	p := slackProviderFor(t, srv, slackTestToken, "perChannelPerMinute: 6")
	ctx := context.Background()
	if _, err := p.Send(ctx, slackNotification("a", "C1", schemas.Content{Text: "x"})); err != nil {
		t.Fatal(err)
	}
	_, err := p.Send(ctx, slackNotification("b", "C1", schemas.Content{Text: "x"}))
	wantRetryAfter(t, err, 5*time.Second, 10*time.Second)
	if _, err := p.Send(ctx, slackNotification("c", "C2", schemas.Content{Text: "x"})); err != nil {
		t.Fatalf("another channel: %v", err)
	}
	wantRequests(t, srv, 2) // the limited one not sent
}

func TestSlackSettings(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"botToken: abc", "botToken must be a Slack token"},
		{"webhookHosts: [\"https://hooks.slack.com/\"]", "webhookHosts entry"},
		{"perChannelPerMinute: -1", "perChannelPerMinute must be >= 0"},
		{"baseUrl: ftp://x", "baseUrl"},
		{"botTokn: xoxb-1", "field botTokn not found"},
	} {
		wantBuildErr(t, "slack", tc.yaml, tc.want)
	}
	_, err := BuildProviders("slack", []config.Provider{{Name: "s", Type: "slack"}}, Deps{})
	if err == nil || !strings.Contains(err.Error(), "slack section is missing") {
		t.Fatalf("no section: %v", err)
	}
	_, err = BuildProviders("sms", []config.Provider{providerConfig(t, "slack", "botToken: xoxb-1")}, Deps{})
	if err == nil || !strings.Contains(err.Error(), "serves slack") {
		t.Fatalf("wrong channel: %v", err)
	}
	p := buildProvider(t, "slack", "slack", "botToken: xoxb-1").(*slackProvider)
	if p.apiURL != "https://slack.com/api/chat.postMessage" || !p.hosts["hooks.slack.com"] || p.perMin != 60 {
		t.Fatalf("defaults: %+v", p)
	}
}

// The section documented in docs/CONFIG.md builds.
func TestSlackDocumentedSettings(t *testing.T) {
	p := buildProvider(t, "slack", "slack", `
botToken: xoxb-123-456-abc
webhookHosts: [hooks.slack.com]
perChannelPerMinute: 60
baseUrl: https://slack.com
timeout: 10s`).(*slackProvider)
	if p.token != "xoxb-123-456-abc" || p.client.Timeout != 10*time.Second {
		t.Fatalf("%+v", p)
	}
}

func TestSlackClassify(t *testing.T) {
	n := slackNotification("x", "C1", schemas.Content{Text: "x"})
	now := time.Now()
	h := http.Header{"Retry-After": {"3"}}
	var ir *InvalidRecipientError
	if id, err := slackClassifyAPI(200, nil, []byte(`{"ok":true,"ts":"1.2"}`), n, now); id != "1.2" || err != nil {
		t.Fatalf("ok: %q %v", id, err)
	}
	if _, err := slackClassifyAPI(200, h, []byte(`{"ok":false,"error":"ratelimited"}`), n, now); retryAfter(err) != 3*time.Second {
		t.Fatalf("ratelimited in a 200: %v", err)
	}
	for _, code := range []string{"channel_not_found", "is_archived", "not_in_channel"} {
		if _, err := slackClassifyAPI(200, nil, []byte(`{"ok":false,"error":"`+code+`"}`), n, now); !errors.As(err, &ir) {
			t.Errorf("%s: %v", code, err)
		}
	}
	for _, code := range []string{"invalid_auth", "not_authed", "token_revoked"} {
		_, err := slackClassifyAPI(200, nil, []byte(`{"ok":false,"error":"`+code+`"}`), n, now)
		if !IsPermanent(err) || errors.As(err, &ir) || !strings.Contains(err.Error(), code) {
			t.Errorf("%s: %v", code, err)
		}
	}
	if _, err := slackClassifyAPI(502, nil, []byte(`<html>`), n, now); err == nil || IsPermanent(err) {
		t.Fatalf("502 html: %v", err)
	}
	if _, err := slackClassifyWebhook(200, http.Header{"X-Slack-Req-Id": {"r1"}}, []byte("ok"), n, now); err != nil {
		t.Fatal(err)
	}
	for _, code := range []string{"invalid_payload", "action_prohibited"} {
		if _, err := slackClassifyWebhook(400, nil, []byte(code), n, now); !IsPermanent(err) || errors.As(err, &ir) {
			t.Errorf("webhook %s: %v", code, err)
		}
	}
}

func FuzzSlackClassify(f *testing.F) {
	for _, s := range []string{`{"ok":true,"ts":"1.2"}`, `{"ok":false,"error":"ratelimited"}`, `{"ok":false}`,
		"no_service", "ok", `{"ok":"yes"}`, "\xff\xfe", ""} {
		f.Add(200, s, "")
		f.Add(429, s, "5")
		f.Add(404, s, "x")
	}
	n := slackNotification("x", "C1", schemas.Content{Text: "x"})
	now := time.Now()
	f.Fuzz(func(t *testing.T, status int, body, ra string) {
		h := http.Header{"Retry-After": {ra}}
		for _, classify := range []func(int, http.Header, []byte, *schemas.Notification, time.Time) (string, error){
			slackClassifyAPI, slackClassifyWebhook} {
			id, err := classify(status, h, []byte(body), n, now)
			if err == nil {
				if status < 200 || status > 299 {
					t.Fatalf("HTTP %d %q accepted as %q", status, body, id)
				}
				continue
			}
			if id != "" {
				t.Fatalf("an error with an id: %q %v", id, err)
			}
			var rl *RetryLaterError
			if !IsPermanent(err) && !errors.As(err, &rl) {
				t.Fatalf("unclassified: %v", err)
			}
			if d := retryAfter(err); d < 0 || d > 24*time.Hour {
				t.Fatalf("retry after %s", d)
			}
		}
	})
}
