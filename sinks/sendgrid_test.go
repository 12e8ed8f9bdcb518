package sinks

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/sendgridtest"
)

const sendGridTestKey = "SG.test-key.0123456789abcdef"

func startSendGrid(t *testing.T) *sendgridtest.Server {
	t.Helper()
	srv := sendgridtest.Start(sendGridTestKey)
	t.Cleanup(srv.Close)
	return srv
}

func sendGridSettings(srv *sendgridtest.Server, extra ...string) string {
	lines := []string{"apiKey: " + sendGridTestKey, "fromEmail: noreply@example.com", "fromName: Example Shop",
		"baseUrl: " + srv.BaseURL(), "timeout: 3s"}
	return strings.Join(append(lines, extra...), "\n")
}

func sgEmail(id, to string) *schemas.Notification {
	return &schemas.Notification{ID: id, UserID: "user-1", Channel: "email", Address: to,
		Content: schemas.Content{Subject: "Your order shipped", Text: "It is on its way.", HTML: "<p>It is on its way.</p>"}}
}

func TestSendGridAcceptedThroughSink(t *testing.T) {
	srv := startSendGrid(t)
	p := buildProvider(t, "email", "sendgrid", sendGridSettings(srv, "replyTo: support@example.com", "categories: [orders]"))
	d := deliverThroughSink(t, sgEmail("sg-ok", "ada@example.org"), p)
	m := vendorOneAccepted(t, d, srv.Messages())
	if d.Final.ProviderMessageID != m.ID || m.ID == "" {
		t.Fatalf("provider message id %q, server X-Message-Id %q", d.Final.ProviderMessageID, m.ID)
	}
	want := sendgridtest.Message{ID: m.ID, To: []string{"ada@example.org"}, From: "noreply@example.com", FromName: "Example Shop",
		ReplyTo: "support@example.com", Subject: "Your order shipped", Text: "It is on its way.", HTML: "<p>It is on its way.</p>",
		Types: []string{"text/plain", "text/html"}, Categories: []string{"orders"},
		CustomArgs: map[string]string{"notification_id": "sg-ok"}, At: m.At}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("server got %+v\nwant %+v", m, want)
	}
}

func TestSendGridThrottledIsRetriedLater(t *testing.T) {
	srv := startSendGrid(t)
	srv.Throttle(1, time.Second, false) // SendGrid's own answer: X-RateLimit-Reset, no Retry-After
	p := buildProvider(t, "email", "sendgrid", sendGridSettings(srv))
	d := deliverThroughSink(t, sgEmail("sg-429", "ada@example.org"), p)
	vendorRetryingBeforeSent(t, d)
	if msgs := srv.Messages(); len(msgs) != 1 || msgs[0].ID != d.Final.ProviderMessageID {
		t.Fatalf("server accepted %+v, want exactly one with id %s", msgs, d.Final.ProviderMessageID)
	}
	if srv.Requests() != 2 {
		t.Fatalf("server saw %d requests, want 2", srv.Requests())
	}
}

func TestSendGridPermanentFailureThroughSink(t *testing.T) {
	srv := startSendGrid(t)
	srv.FailNext(-1, http.StatusRequestEntityTooLarge, sendgridtest.Error{Message: "The JSON payload you have included in your request is too large."})
	p := buildProvider(t, "email", "sendgrid", sendGridSettings(srv))
	d := deliverThroughSink(t, sgEmail("sg-perm", "ada@example.org"), p)
	wantFailed(t, d, "HTTP 413", "payload you have included")
	if srv.Requests() != 1 {
		t.Fatalf("a permanent failure was retried: %d requests", srv.Requests())
	}
	wantNoInvalid(t, d)
}

func TestSendGridInvalidAddressIsAnInvalidRecipient(t *testing.T) {
	srv := startSendGrid(t)
	srv.InvalidAddress("nobody@invalid.example")
	p := buildProvider(t, "email", "sendgrid", sendGridSettings(srv))
	d := deliverThroughSink(t, sgEmail("sg-invalid", "nobody@invalid.example"), p)
	vendorOnlyInvalid(t, d, "Does not contain a valid address", schemas.InvalidTarget{Platform: "email", Token: "nobody@invalid.example"})
	if len(srv.Messages()) != 0 {
		t.Fatal("the server kept a refused message")
	}
}

func TestSendGridBadAPIKeyFails(t *testing.T) {
	srv := startSendGrid(t)
	settings := strings.Replace(sendGridSettings(srv), "apiKey: "+sendGridTestKey, "apiKey: SG.wrong", 1)
	p := buildProvider(t, "email", "sendgrid", settings)
	d := deliverThroughSink(t, sgEmail("sg-auth", "ada@example.org"), p)
	wantFailed(t, d, "HTTP 401", "API key was refused", "authorization grant is invalid")
	if strings.Contains(d.Final.Reason, "SG.wrong") {
		t.Fatal("the reason carries the API key")
	}
	if srv.Rejected() != 1 || len(srv.Messages()) != 0 {
		t.Fatalf("rejected %d, accepted %d", srv.Rejected(), len(srv.Messages()))
	}
}

// Direct sends: the other answers and bodies, without a broker.
func TestSendGridSendClassifiesAnswers(t *testing.T) {
	srv := startSendGrid(t)
	p := buildProvider(t, "email", "sendgrid", sendGridSettings(srv))
	ctx := context.Background()

	// HTML only; a dynamic template without content.
	n := sgEmail("h", "a@example.org")
	n.Content.Text = ""
	if _, err := p.Send(ctx, n); err != nil {
		t.Fatal(err)
	}
	tpl := &schemas.Notification{ID: "tpl", Channel: "email", Address: "b@example.org",
		Content: schemas.Content{TemplateID: "d-0123456789abcdef", TemplateParams: map[string]string{"name": "Ada"}}}
	if _, err := p.Send(ctx, tpl); err != nil {
		t.Fatal(err)
	}
	msgs := srv.Messages()
	if !slices.Equal(msgs[0].Types, []string{"text/html"}) || msgs[0].Text != "" {
		t.Fatalf("html only: %+v", msgs[0])
	}
	if msgs[1].TemplateID != "d-0123456789abcdef" || msgs[1].TemplateData["name"] != "Ada" || len(msgs[1].Types) != 0 {
		t.Fatalf("template: %+v", msgs[1])
	}

	srv.Unavailable(1)
	if _, err := p.Send(ctx, sgEmail("u", "a@example.org")); err == nil || IsPermanent(err) {
		t.Fatalf("503: %v", err)
	}
	srv.Throttle(1, 9*time.Second, true)
	if _, err := p.Send(ctx, sgEmail("t", "a@example.org")); retryAfter(err) != 9*time.Second || IsPermanent(err) {
		t.Fatalf("429 with Retry-After 9: %v", err)
	}
	srv.FailNext(1, http.StatusForbidden, sendgridtest.FieldError("from", "The from address does not match a verified Sender Identity."))
	if _, err := p.Send(ctx, sgEmail("f", "a@example.org")); !IsPermanent(err) || !strings.Contains(err.Error(), "verified Sender Identity") {
		t.Fatalf("403: %v", err)
	}
	srv.FailNext(1, http.StatusBadRequest, sendgridtest.FieldError("personalizations.0", "Each email address in the personalization block should be unique."))
	_, err := p.Send(ctx, sgEmail("d", "a@example.org"))
	var ir *InvalidRecipientError
	if !IsPermanent(err) || errors.As(err, &ir) || !strings.Contains(err.Error(), "should be unique. (personalizations.0)") {
		t.Fatalf("other 400: %v", err)
	}
	// A malformed address SendGrid refuses on its own.
	if _, err := p.Send(ctx, sgEmail("m", "not-an-address")); !errors.As(err, &ir) || ir.Targets[0].Token != "not-an-address" {
		t.Fatalf("malformed address: %v", err)
	}

	before := srv.Requests()
	empty := sgEmail("e", "a@example.org")
	empty.Content.Text, empty.Content.HTML = "", ""
	if _, err := p.Send(ctx, empty); !IsPermanent(err) || !strings.Contains(err.Error(), "neither text nor html") {
		t.Fatalf("no content: %v", err)
	}
	noSubject := sgEmail("s", "a@example.org")
	noSubject.Content.Subject = ""
	if _, err := p.Send(ctx, noSubject); !IsPermanent(err) {
		t.Fatalf("no subject: %v", err)
	}
	if srv.Requests() != before {
		t.Fatal("a message SendGrid would refuse was sent")
	}
}

func TestSendGridClassifyRateLimitReset(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	n := sgEmail("c", "a@example.org")
	h := http.Header{"X-Ratelimit-Reset": {strconv.FormatInt(now.Unix()+30, 10)}}
	if _, err := classifySendGrid(429, h, []byte(`{"errors":[{"field":null,"message":"too many requests"}]}`), now, n); retryAfter(err) != 30*time.Second ||
		!strings.Contains(err.Error(), "too many requests") {
		t.Fatalf("429 with X-RateLimit-Reset in 30s: %v", err)
	}
	h.Set("Retry-After", "5")
	if _, err := classifySendGrid(429, h, nil, now, n); retryAfter(err) != 5*time.Second {
		t.Fatalf("Retry-After first: %v", err)
	}
	if id, err := classifySendGrid(202, http.Header{"X-Message-Id": {"abc"}}, nil, now, n); id != "abc" || err != nil {
		t.Fatalf("202: %q %v", id, err)
	}
}

func TestSendGridSettingsValidation(t *testing.T) {
	vendorSettingsRefused(t, "email", "sendgrid", []vendorSettingsCase{
		{"fromName: x", "missing apiKey, fromEmail"},
		{"apiKey: k", "missing fromEmail"},
		{"apiKey: k\nfromEmail: Shop <a@example.com>", "fromEmail"},
		{"apiKey: k\nfromEmail: a@example.com\nreplyTo: nope", "replyTo"},
		{"apiKey: k\nfromEmail: a@example.com\nbaseUrl: api.sendgrid.com", "baseUrl"},
		{"apiKey: k\nfromEmail: a@example.com\ncategories: [a,b,c,d,e,f,g,h,i,j,k]", "at most 10 categories"},
		{"apiKey: k\nfromEmail: a@example.com\nfrom: a@example.com", "field from not found"},
	})
	if _, err := BuildProviders("sms", []config.Provider{providerConfig(t, "sendgrid", "apiKey: k\nfromEmail: a@example.com")}, Deps{}); err == nil {
		t.Error("sendgrid was accepted on the sms channel")
	}
	p := buildProvider(t, "email", "sendgrid", "apiKey: k\nfromEmail: a@example.com")
	if got := p.(*sendGridProvider).endpoint; got != "https://api.sendgrid.com/v3/mail/send" {
		t.Errorf("default endpoint %s", got)
	}
}

func FuzzSendGridClassify(f *testing.F) {
	for _, s := range []string{`{"errors":[{"message":"Does not contain a valid address.","field":"personalizations.0.to.0.email"}]}`,
		`{"errors":[{"message":"x","field":null}]}`, `{"errors":[{"field":5}]}`, `{"errors":{}}`, ``, `null`} {
		for _, st := range []int{202, 400, 401, 403, 413, 429, 500} {
			f.Add(st, s, "1", "1800000030")
		}
	}
	n := sgEmail("f", "a@example.org")
	now := time.Unix(1_800_000_000, 0)
	f.Fuzz(func(t *testing.T, status int, body, retry, reset string) {
		h := http.Header{"Retry-After": {retry}, "X-Ratelimit-Reset": {reset}, "X-Message-Id": {"id"}}
		id, err := classifySendGrid(status, h, []byte(body), now, n)
		ok := status >= 200 && status < 300
		if ok != (err == nil) || (ok && id != "id") || (!ok && id != "") {
			t.Fatalf("HTTP %d %q: %q %v", status, body, id, err)
		}
		if (status == 429 || status >= 500) && IsPermanent(err) {
			t.Fatalf("HTTP %d is permanent: %v", status, err)
		}
		var ir *InvalidRecipientError
		if errors.As(err, &ir) {
			if status != 400 || !strings.Contains(body, ".email") || len(ir.Targets) != 1 || ir.Targets[0].Token != n.Address {
				t.Fatalf("HTTP %d %q: invalid recipient %v", status, body, err)
			}
		}
		if d := retryAfter(err); d < 0 || d > 24*time.Hour {
			t.Fatalf("retry after %s", d)
		}
	})
}

// Any post to the event webhook either fails (bad signature, not events) or
// yields receipts that name a notification, whatever the body.
func FuzzSendGridReceipts(f *testing.F) {
	srv := sendgridtest.Start("SG.k")
	defer srv.Close()
	p := buildSendGridForFuzz(f, srv.EventWebhookPublicKey())
	f.Add([]byte(`[{"event":"delivered","notification_id":"n1","timestamp":1}]`), "MEUCIQ==", "1")
	f.Add([]byte(`not json`), "", "")
	f.Fuzz(func(t *testing.T, body []byte, sig, ts string) {
		post := func(sig string) ([]Receipt, error) {
			r := httptest.NewRequest("POST", "/v1/receipts/sendgrid", bytes.NewReader(body))
			r.Header.Set(SendGridSignatureHeader, sig)
			r.Header.Set(SendGridTimestampHeader, ts)
			return p.Receipts(r, body)
		}
		if rs, err := post(sig); err == nil {
			t.Fatalf("unsigned body accepted: %q → %+v", body, rs)
		}
		rs, err := post(srv.Sign(ts, body)) // signed: read as events, or refused as not events
		if err != nil {
			if errors.Is(err, ErrBadSignature) {
				t.Fatalf("a signed body was refused as unsigned: %v", err)
			}
			return
		}
		for _, rc := range rs {
			if rc.NotificationID == "" {
				t.Fatalf("a receipt names no notification: %+v", rc)
			}
		}
	})
}

func buildSendGridForFuzz(f *testing.F, key string) ReceiptProvider {
	var node yaml.Node
	if err := yaml.Unmarshal([]byte("apiKey: SG.k\nfromEmail: a@example.com\neventWebhookPublicKey: "+key), &node); err != nil {
		f.Fatal(err)
	}
	ps, err := BuildProviders("email", []config.Provider{{Name: "sendgrid", Type: "sendgrid",
		Settings: map[string]yaml.Node{"sendgrid": *node.Content[0]}}}, Deps{})
	if err != nil {
		f.Fatal(err)
	}
	return ps[0].(ReceiptProvider)
}
