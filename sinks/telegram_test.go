package sinks

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/telegramtest"
)

const telegramTestToken = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"

func telegramProviderFor(t *testing.T, srv *telegramtest.Server, token, extra string) Provider {
	t.Helper()
	return buildProvider(t, "telegram", "telegram", "baseUrl: "+srv.URL+"\nbotToken: \""+token+"\"\n"+extra)
}

func telegramNotification(id, chat string, c schemas.Content) *schemas.Notification {
	return &schemas.Notification{ID: id, UserID: "u-" + id, Channel: "telegram", Address: chat, Content: c}
}

func TestTelegramMarkdownMessageAccepted(t *testing.T) {
	srv := telegramtest.Start(telegramTestToken)
	defer srv.Close()
	p := telegramProviderFor(t, srv, telegramTestToken, "")
	d := deliverThroughSink(t, telegramNotification("tg-ok", "-1001234", schemas.Content{
		Title: "Order #12 shipped!", Markdown: "Track it _here_: [link](https://x\\.example)", Text: "plain"}), p)
	if d.Final.Status != "sent" {
		t.Fatalf("status %s (%s), want sent", d.Final.Status, d.Final.Reason)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("server accepted %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if m.ChatID != "-1001234" || m.ParseMode != "MarkdownV2" || len(m.Entities) != 0 ||
		m.Text != "*Order \\#12 shipped\\!*\nTrack it _here_: [link](https://x\\.example)" {
		t.Fatalf("message %+v", m)
	}
	if d.Final.ProviderMessageID != "-1001234:1" {
		t.Fatalf("provider message id %q, want chat:message_id", d.Final.ProviderMessageID)
	}
}

// Plain text goes without parse_mode; the title is bold through an entity
// measured in UTF-16 units.
func TestTelegramPlainTextWithTitle(t *testing.T) {
	srv := telegramtest.Start(telegramTestToken)
	defer srv.Close()
	p := telegramProviderFor(t, srv, telegramTestToken, "")
	id, err := p.Send(context.Background(), telegramNotification("tg-plain", "42",
		schemas.Content{Title: "Héllo 👋", Body: "1+1=2. *not bold*"}))
	if err != nil || id != "42:1" {
		t.Fatalf("send: %q %v", id, err)
	}
	m := srv.Messages()[0]
	if m.ParseMode != "" || m.Text != "Héllo 👋\n1+1=2. *not bold*" ||
		!slices.Equal(m.Entities, []telegramtest.Entity{{Type: "bold", Offset: 0, Length: 8}}) {
		t.Fatalf("message %+v", m)
	}
	if _, err := p.Send(context.Background(), telegramNotification("tg-none", "43", schemas.Content{})); !IsPermanent(err) {
		t.Fatalf("empty content: %v", err)
	}
}

func TestTelegramFloodWaitIsRetried(t *testing.T) {
	srv := telegramtest.Start(telegramTestToken)
	defer srv.Close()
	srv.ThrottleNext(1, 1)
	p := telegramProviderFor(t, srv, telegramTestToken, "perChatPerMinute: 0")
	d := deliverThroughSink(t, telegramNotification("tg-429", "77", schemas.Content{Text: "hi"}), p)
	wantThrottledThenSent(t, d, srv)
}

func TestTelegramPermanentFailure(t *testing.T) {
	srv := telegramtest.Start(telegramTestToken)
	defer srv.Close()
	srv.FailPermanently("Bad Request: message is too long")
	p := telegramProviderFor(t, srv, telegramTestToken, "")
	d := deliverThroughSink(t, telegramNotification("tg-perm", "78", schemas.Content{Text: "x"}), p)
	wantFailed(t, d, "400 Bad Request: message is too long")
	wantRequests(t, srv, 1)
	wantNoInvalid(t, d)
}

func TestTelegramBlockedBotIsInvalidRecipient(t *testing.T) {
	srv := telegramtest.Start(telegramTestToken)
	defer srv.Close()
	srv.Block("555")
	p := telegramProviderFor(t, srv, telegramTestToken, "")
	d := deliverThroughSink(t, telegramNotification("tg-blocked", "555", schemas.Content{Text: "x"}), p)
	wantOnlyInvalid(t, d, schemas.InvalidTarget{Platform: "telegram", Token: "555"}, "blocked by the user")
}

func TestTelegramBadTokenFails(t *testing.T) {
	srv := telegramtest.Start(telegramTestToken)
	defer srv.Close()
	p := telegramProviderFor(t, srv, "123456789:WRONGwrongWRONGwrong", "")
	d := deliverThroughSink(t, telegramNotification("tg-auth", "79", schemas.Content{Text: "x"}), p)
	wantRefused(t, d, srv, "WRONG", "401 Unauthorized")
}

// A group upgraded to a supergroup: the message goes to the new chat in the
// same Send, and the id names it.
func TestTelegramMigratedGroupIsResent(t *testing.T) {
	srv := telegramtest.Start(telegramTestToken)
	defer srv.Close()
	srv.Migrate("-4001", -1009876543210)
	var logs bytes.Buffer
	c := providerConfig(t, "telegram", "baseUrl: "+srv.URL+"\nbotToken: \""+telegramTestToken+"\"\nperChatPerMinute: 0")
	ps, err := BuildProviders("telegram", []config.Provider{c}, Deps{Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	id, err := ps[0].Send(context.Background(), telegramNotification("tg-mig", "-4001", schemas.Content{Text: "moved"}))
	var mv *MovedError
	if !errors.As(err, &mv) || id != "-1009876543210:1" || mv.From != "-4001" || mv.To != "-1009876543210" || mv.Platform != "telegram" {
		t.Fatalf("send: %q %v", id, err)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 || msgs[0].ChatID != "-1009876543210" || msgs[0].Text != "moved" || srv.Requests() != 2 {
		t.Fatalf("messages %+v in %d requests", msgs, srv.Requests())
	}
	// Chat ids are contacts: the log shows them masked.
	if !strings.Contains(logs.String(), "to=-100***10") || strings.Contains(logs.String(), "-1009876543210") ||
		strings.Contains(logs.String(), "-4001") || strings.Contains(logs.String(), "moved") ||
		strings.Contains(logs.String(), telegramTestToken) {
		t.Fatalf("log: %s", logs.String())
	}
	// Through a sink: sent, and the feedback moves the profile's chat id.
	srv.Migrate("-4002", -1004444)
	d := deliverThroughSink(t, telegramNotification("tg-mig-sink", "-4002", schemas.Content{Text: "moved"}), ps[0])
	if d.Final.Status != "sent" || d.Feedback == nil || len(d.Feedback.Moved) != 1 ||
		d.Feedback.Moved[0] != (schemas.MovedTarget{Platform: "telegram", From: "-4002", To: "-1004444"}) ||
		!strings.Contains(d.Final.Reason, "moved in the profile") {
		t.Fatalf("through the sink: %s %q feedback %+v", d.Final.Status, d.Final.Reason, d.Feedback)
	}
	// Migrated twice: not followed further.
	srv.Migrate("-1009876543210", -1001)
	if _, err := ps[0].Send(context.Background(), telegramNotification("tg-mig2", "-4001", schemas.Content{Text: "x"})); !IsPermanent(err) {
		t.Fatalf("second migration: %v", err)
	}
}

func TestTelegramSendOutcomes(t *testing.T) {
	srv := telegramtest.Start(telegramTestToken)
	defer srv.Close()
	p := telegramProviderFor(t, srv, telegramTestToken, "perChatPerMinute: 0")
	ctx := context.Background()
	var ir *InvalidRecipientError
	srv.Forget("1")
	if _, err := p.Send(ctx, telegramNotification("a", "1", schemas.Content{Text: "x"})); !errors.As(err, &ir) ||
		ir.Targets[0].Token != "1" || !strings.Contains(err.Error(), "chat not found") {
		t.Fatalf("chat not found: %v", err)
	}
	srv.Kick("2")
	if _, err := p.Send(ctx, telegramNotification("b", "2", schemas.Content{Text: "x"})); !errors.As(err, &ir) ||
		!strings.Contains(err.Error(), "kicked") {
		t.Fatalf("kicked: %v", err)
	}
	srv.FailNext(1)
	if _, err := p.Send(ctx, telegramNotification("c", "3", schemas.Content{Text: "x"})); err == nil || IsPermanent(err) {
		t.Fatalf("500: %v", err)
	}
	srv.ThrottleNext(1, 9)
	if _, err := p.Send(ctx, telegramNotification("d", "3", schemas.Content{Text: "x"})); retryAfter(err) != 9*time.Second {
		t.Fatalf("429: %v, want retry after 9s", err)
	}
	// Unescaped MarkdownV2 is the template's fault: Telegram refuses it, permanently.
	_, err := p.Send(ctx, telegramNotification("e", "3", schemas.Content{Markdown: "v1.2 is out!"}))
	if !IsPermanent(err) || errors.As(err, &ir) || !strings.Contains(err.Error(), "can't parse entities") {
		t.Fatalf("bad markdown: %v", err)
	}
	// A transport error does not carry the token (it is in the URL).
	srv.Close()
	_, err = p.Send(ctx, telegramNotification("f", "3", schemas.Content{Text: "x"}))
	wantTransportError(t, err, "AAHdq")
}

func TestTelegramPerChatLimit(t *testing.T) {
	srv := telegramtest.Start(telegramTestToken)
	defer srv.Close()
	p := telegramProviderFor(t, srv, telegramTestToken, "")
	ctx := context.Background()
	if _, err := p.Send(ctx, telegramNotification("a", "9", schemas.Content{Text: "x"})); err != nil {
		t.Fatal(err)
	}
	_, err := p.Send(ctx, telegramNotification("b", "9", schemas.Content{Text: "x"}))
	wantRetryAfter(t, err, 0, time.Second)
	if _, err := p.Send(ctx, telegramNotification("c", "10", schemas.Content{Text: "x"})); err != nil {
		t.Fatalf("another chat: %v", err)
	}
	wantRequests(t, srv, 2)
}

func TestTelegramSettings(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"baseUrl: https://api.telegram.org", "botToken is required"},
		{"botToken: secret-without-id", "botToken must look like"},
		{"botToken: \"1:a\"\nperChatPerMinute: -2", "perChatPerMinute must be >= 0"},
		{"botToken: \"1:a\"\nbaseUrl: api.telegram.org", "baseUrl"},
		{"botToken: \"1:a\"\nparseMode: HTML", "field parseMode not found"},
	} {
		err := wantBuildErr(t, "telegram", tc.yaml, tc.want)
		if err != nil && strings.Contains(err.Error(), "secret-without-id") {
			t.Errorf("the error shows the token: %v", err)
		}
	}
	p := buildProvider(t, "telegram", "telegram", "botToken: \"1:a\"").(*telegramProvider)
	if p.base != "https://api.telegram.org/bot" || p.perMin != 60 {
		t.Fatalf("defaults: %+v", p)
	}
}

// The section documented in docs/CONFIG.md builds.
func TestTelegramDocumentedSettings(t *testing.T) {
	p := buildProvider(t, "telegram", "telegram", `
botToken: "123456:ABC-DEF_ghi"
perChatPerMinute: 60
baseUrl: https://api.telegram.org
timeout: 10s`).(*telegramProvider)
	if p.token != "123456:ABC-DEF_ghi" || p.client.Timeout != 10*time.Second {
		t.Fatalf("%+v", p)
	}
}

func TestTelegramClassify(t *testing.T) {
	n := telegramNotification("x", "5", schemas.Content{Text: "x"})
	now := time.Now()
	var ir *InvalidRecipientError
	var mig *telegramMigrated
	for _, tc := range []struct {
		status int
		body   string
		check  func(string, error) bool
	}{
		{200, `{"ok":true,"result":{"message_id":7}}`, func(id string, err error) bool { return id == "5:7" && err == nil }},
		{429, `{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 34","parameters":{"retry_after":34}}`,
			func(_ string, err error) bool { return retryAfter(err) == 34*time.Second && !IsPermanent(err) }},
		{400, `{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001}}`,
			func(_ string, err error) bool { return errors.As(err, &mig) && mig.to == -1001 }},
		{403, `{"ok":false,"error_code":403,"description":"Forbidden: user is deactivated"}`,
			func(_ string, err error) bool { return errors.As(err, &ir) }},
		{400, `{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}`,
			func(_ string, err error) bool { return errors.As(err, &ir) }},
		{401, `{"ok":false,"error_code":401,"description":"Unauthorized"}`,
			func(_ string, err error) bool { return IsPermanent(err) && !errors.As(err, &ir) }},
		{404, `<html>Not Found</html>`, func(_ string, err error) bool { return IsPermanent(err) && !errors.As(err, &ir) }},
		{502, `<html>Bad Gateway</html>`, func(_ string, err error) bool { return err != nil && !IsPermanent(err) }},
		{200, `{"ok":true,"result":true}`, func(_ string, err error) bool { return IsPermanent(err) }},
	} {
		id, err := telegramClassify(tc.status, nil, []byte(tc.body), n, "5", now)
		if !tc.check(id, err) {
			t.Errorf("%d %s: %q %v", tc.status, tc.body, id, err)
		}
	}
}

func FuzzTelegramClassify(f *testing.F) {
	for _, s := range []string{`{"ok":true,"result":{"message_id":7}}`,
		`{"ok":false,"error_code":429,"parameters":{"retry_after":-5}}`,
		`{"ok":false,"error_code":400,"parameters":{"migrate_to_chat_id":-100}}`,
		`{"ok":false,"error_code":403,"description":"Forbidden"}`, `{"ok":false,"parameters":{"retry_after":1e30}}`, "", "\xff"} {
		f.Add(200, s, "")
		f.Add(400, s, "3")
		f.Add(502, s, "x")
	}
	n := telegramNotification("x", "5", schemas.Content{Text: "x"})
	now := time.Now()
	f.Fuzz(func(t *testing.T, status int, body, ra string) {
		id, err := telegramClassify(status, http.Header{"Retry-After": {ra}}, []byte(body), n, "5", now)
		if err == nil {
			if status < 200 || status > 299 || !strings.HasPrefix(id, "5:") {
				t.Fatalf("HTTP %d %q accepted as %q", status, body, id)
			}
			return
		}
		var rl *RetryLaterError
		var mig *telegramMigrated
		if id != "" || (!IsPermanent(err) && !errors.As(err, &rl) && !errors.As(err, &mig)) {
			t.Fatalf("unclassified: %q %v", id, err)
		}
		if d := retryAfter(err); d < 0 || d > 24*time.Hour {
			t.Fatalf("retry after %s", d)
		}
	})
}
