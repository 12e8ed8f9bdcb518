package sinks

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/smtptest"
	"github.com/notifyd/notifyd/sinks/webhooktest"
)

func emailNotification(to string) *schemas.Notification {
	return &schemas.Notification{ID: "n-1", Channel: "email", Address: to,
		Content: schemas.Content{Subject: "Héllo 你好", Text: "plain body", HTML: "<p>html body</p>"}}
}

func TestSMTPWithSTARTTLSAndAuth(t *testing.T) {
	srv, err := smtptest.Start(smtptest.Options{User: "mailer", Pass: "s3cret", STARTTLS: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cfg := config.Provider{Name: "smtp-tls", Type: "smtp", SMTP: config.SMTP{Host: srv.Host, Port: srv.Port,
		From: "noreply@example.com", TLS: "starttls", InsecureSkipVerify: true, Username: "mailer", Password: "s3cret"}}
	p, err := newSMTPProvider(cfg, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.(Closer).Close()
	ctx := context.Background()
	for i := 0; i < 3; i++ { // pooled connection reused
		id, err := p.Send(ctx, emailNotification("to@example.com"))
		if err != nil || id == "" {
			t.Fatalf("send %d: %q %v", i, id, err)
		}
	}
	msgs := srv.WaitFor(3, 5*time.Second)
	if len(msgs) != 3 || msgs[0].To[0] != "to@example.com" || msgs[0].From != "noreply@example.com" {
		t.Fatalf("messages %+v", msgs)
	}
	raw := string(msgs[0].Data)
	if !strings.Contains(raw, "multipart/alternative") || !strings.Contains(raw, "text/html") {
		t.Fatalf("not a text+html alternative:\n%s", raw)
	}

	// Wrong password: the server refuses, and it is not retried forever.
	cfg.SMTP.Password = "wrong"
	bad, _ := newSMTPProvider(cfg, Deps{})
	if _, err := bad.Send(ctx, emailNotification("to@example.com")); err == nil {
		t.Fatal("send with a wrong password succeeded")
	}
	// Without TLS the server refuses AUTH; mandatory STARTTLS must not fall back to plain.
	plain, err := smtptest.Start(smtptest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	cfg.SMTP.Host, cfg.SMTP.Port, cfg.SMTP.Password = plain.Host, plain.Port, "s3cret"
	noTLS, _ := newSMTPProvider(cfg, Deps{})
	if _, err := noTLS.Send(ctx, emailNotification("to@example.com")); err == nil {
		t.Fatal("starttls policy sent over a server without STARTTLS")
	}
}

func TestSMTPRejectedRecipientIsPermanent(t *testing.T) {
	srv, err := smtptest.Start(smtptest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.RejectRcpt = func(to string) error {
		if strings.HasPrefix(to, "gone@") {
			return errors.New("mailbox unavailable")
		}
		return nil
	}
	p, _ := newSMTPProvider(config.Provider{Name: "s", SMTP: config.SMTP{Host: srv.Host, Port: srv.Port, From: "a@example.com"}}, Deps{})
	_, err = p.Send(context.Background(), emailNotification("gone@example.com"))
	if err == nil || !IsPermanent(err) {
		t.Fatalf("550 must be permanent, got %v", err)
	}
	if _, err := p.Send(context.Background(), emailNotification("ok@example.com")); err != nil {
		t.Fatalf("the connection must be usable after a refused recipient: %v", err)
	}
}

func newTestWebhook(t *testing.T, url, secret string, allowPrivate bool) Provider {
	t.Helper()
	p, err := newWebhookProvider(config.Provider{Name: "wh", Type: "webhook", Webhook: config.Webhook{
		AllowPrivateTargets: allowPrivate, Timeout: 5 * time.Second,
		Endpoints: map[string]config.Endpoint{"default": {URL: url, Secret: secret}}}}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWebhookIsSignedAndVerifiable(t *testing.T) {
	rc := webhooktest.Start("endpoint-secret")
	defer rc.Close()
	p := newTestWebhook(t, rc.URL, "endpoint-secret", true)
	n := &schemas.Notification{ID: "n-9", EventID: "e", UserID: "u", Template: "t", Channel: "webhook", Address: "default",
		Content: schemas.Content{Body: `{"orderId": "9"}`}}
	if _, err := p.Send(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	d := rc.Deliveries()
	if len(d) != 1 || d[0].ID != "n-9" || string(d[0].Body) != `{"orderId": "9"}` {
		t.Fatalf("deliveries %+v", d)
	}
	// The same provider with another secret fails verification at the receiver.
	wrong := newTestWebhook(t, rc.URL, "other-secret", true)
	if _, err := wrong.Send(context.Background(), n); err == nil || !IsPermanent(err) {
		t.Fatalf("401 from the receiver must be a permanent error, got %v", err)
	}
	if rc.Rejected() != 1 {
		t.Fatalf("receiver rejected %d", rc.Rejected())
	}
	// A template body that renders to invalid JSON is refused before sending.
	n.Content.Body = `{"orderId": }`
	if _, err := p.Send(context.Background(), n); err == nil || !IsPermanent(err) {
		t.Fatalf("invalid JSON body: %v", err)
	}
	// Without a template body, notifyd sends its own JSON payload.
	n.Content.Body = ""
	n.Data = `{"k":"v"}`
	if _, err := p.Send(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	if body := string(rc.Deliveries()[1].Body); !strings.Contains(body, `"id":"n-9"`) || !strings.Contains(body, `"data":{"k":"v"}`) {
		t.Fatalf("default payload %s", body)
	}
}

func TestSignMatchesDocumentedScheme(t *testing.T) {
	body := []byte(`{"a":1}`)
	sig := Sign([]byte("k"), 1700000000, body)
	if !webhooktest.Verify([]byte("k"), "1700000000", sig, body, time.Unix(1700000000, 0)) {
		t.Fatal("signature does not verify")
	}
	if webhooktest.Verify([]byte("k"), "1700000000", sig, []byte(`{"a":2}`), time.Unix(1700000000, 0)) {
		t.Fatal("tampered body verifies")
	}
	if webhooktest.Verify([]byte("k"), "1700000000", sig, body, time.Unix(1700000000+3600, 0)) {
		t.Fatal("replayed an hour later verifies")
	}
}

func TestWebhookRefusesPrivateTargets(t *testing.T) {
	var hits atomic.Int32
	rc := webhooktest.Start("s")
	defer rc.Close()
	rc.Hook = func(*http.Request, []byte) int { hits.Add(1); return 0 }
	p := newTestWebhook(t, rc.URL, "s", false) // rc listens on 127.0.0.1
	n := &schemas.Notification{ID: "n", Channel: "webhook", Address: "default"}
	_, err := p.Send(context.Background(), n)
	if !errors.Is(err, ErrPrivateTarget) || !IsPermanent(err) {
		t.Fatalf("want a permanent ErrPrivateTarget, got %v", err)
	}
	if hits.Load() != 0 {
		t.Fatal("the private target was reached")
	}
	unknown := &schemas.Notification{ID: "n", Channel: "webhook", Address: "nope"}
	if _, err := p.Send(context.Background(), unknown); err == nil || !IsPermanent(err) {
		t.Fatalf("unknown endpoint: %v", err)
	}
}

func TestWebhookStatusClassification(t *testing.T) {
	rc := webhooktest.Start("s")
	defer rc.Close()
	var code atomic.Int32
	rc.Hook = func(*http.Request, []byte) int { return int(code.Load()) }
	p := newTestWebhook(t, rc.URL, "s", true)
	n := &schemas.Notification{ID: "n", Channel: "webhook", Address: "default"}
	for _, c := range []struct {
		code      int
		permanent bool
	}{{500, false}, {503, false}, {429, false}, {408, false}, {400, true}, {404, true}, {410, true}} {
		code.Store(int32(c.code))
		_, err := p.Send(context.Background(), n)
		if err == nil || IsPermanent(err) != c.permanent {
			t.Errorf("HTTP %d: err %v, permanent=%v want %v", c.code, err, IsPermanent(err), c.permanent)
		}
	}
}

func TestPrivateAddrCoversInternalRanges(t *testing.T) {
	for _, ip := range []string{"127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1"} {
		if !privateAddr(mustAddr(t, ip)) {
			t.Errorf("%s is not treated as private", ip)
		}
	}
	for _, ip := range []string{"93.184.216.34", "2606:2800:220:1::1"} {
		if privateAddr(mustAddr(t, ip)) {
			t.Errorf("%s treated as private", ip)
		}
	}
}

func configFor(name, url string) config.Provider {
	return config.Provider{Name: name, Type: "webhook", Webhook: config.Webhook{AllowPrivateTargets: true,
		Endpoints: map[string]config.Endpoint{"default": {URL: url, Secret: "s"}}}}
}

func TestSMTPWithImplicitTLS(t *testing.T) {
	srv, err := smtptest.Start(smtptest.Options{User: "mailer", Pass: "s3cret", TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cfg := config.Provider{Name: "smtps", Type: "smtp", SMTP: config.SMTP{Host: srv.Host, Port: srv.Port,
		From: "noreply@example.com", TLS: "tls", InsecureSkipVerify: true, Username: "mailer", Password: "s3cret"}}
	p, err := newSMTPProvider(cfg, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Send(context.Background(), emailNotification("to@example.com")); err != nil {
		t.Fatalf("send over implicit TLS: %v", err)
	}
	if n := len(srv.WaitFor(1, 5*time.Second)); n != 1 {
		t.Fatalf("%d messages", n)
	}
	// Certificate checks are on unless turned off: the self-signed certificate is refused.
	cfg.SMTP.InsecureSkipVerify = false
	strict, _ := newSMTPProvider(cfg, Deps{})
	if _, err := strict.Send(context.Background(), emailNotification("to@example.com")); err == nil {
		t.Fatal("an unverifiable certificate was accepted")
	}
}
