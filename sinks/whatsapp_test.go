package sinks

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/whatsapptest"
)

const (
	whatsappTestToken   = "EAAGtestTOKEN0123456789abcdef"
	whatsappTestPhoneID = "106540352242922"
)

func whatsappServer(t *testing.T) *whatsapptest.Server {
	t.Helper()
	srv := whatsapptest.Start("v21.0", whatsappTestPhoneID, whatsappTestToken)
	t.Cleanup(srv.Close)
	return srv
}

func whatsappProviderFor(t *testing.T, srv *whatsapptest.Server, token, extra string) Provider {
	t.Helper()
	return buildProvider(t, "whatsapp", "whatsapp", "baseUrl: "+srv.URL+"\nphoneNumberId: \""+whatsappTestPhoneID+
		"\"\naccessToken: "+token+"\n"+extra)
}

func whatsappNotification(id, to string, c schemas.Content) *schemas.Notification {
	return &schemas.Notification{ID: id, UserID: "u-" + id, Channel: "whatsapp", Address: to, Content: c}
}

func TestWhatsAppTemplateAccepted(t *testing.T) {
	srv := whatsappServer(t)
	srv.AddTemplate("order_shipped", "pt_BR", 10)
	p := whatsappProviderFor(t, srv, whatsappTestToken, "")
	// Ten positional parameters: "10" goes after "9", not after "1".
	params := map[string]string{"1": "Ana", "2": "A-42", "3": "c", "4": "d", "5": "e", "6": "f", "7": "g", "8": "h", "9": "i", "10": "j"}
	n := whatsappNotification("wa-ok", "+5511987654321", schemas.Content{TemplateID: "order_shipped", TemplateParams: params,
		Text: "not sent: a template is"})
	n.Locale = "pt-BR"
	d := deliverThroughSink(t, n, p)
	if d.Final.Status != "sent" {
		t.Fatalf("status %s (%s), want sent", d.Final.Status, d.Final.Reason)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("server accepted %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	var texts []string
	for _, p := range m.Params {
		texts = append(texts, p.Text)
	}
	if m.To != "5511987654321" || m.Type != "template" || m.Template != "order_shipped" || m.Language != "pt_BR" ||
		!slices.Equal(texts, []string{"Ana", "A-42", "c", "d", "e", "f", "g", "h", "i", "j"}) || m.Text != "" {
		t.Fatalf("message %+v (params in order %v)", m, texts)
	}
	if d.Final.ProviderMessageID != m.ID || !strings.HasPrefix(m.ID, "wamid.") {
		t.Fatalf("provider message id %q, want %q", d.Final.ProviderMessageID, m.ID)
	}
}

// Free-form text inside the 24 h window; named template parameters; the
// default language.
func TestWhatsAppTextAndNamedParams(t *testing.T) {
	srv := whatsappServer(t)
	srv.OpenWindow("15550001111")
	srv.AddTemplate("welcome", "en_GB", 2)
	p := whatsappProviderFor(t, srv, whatsappTestToken, "defaultLanguage: en-GB")
	ctx := context.Background()
	id, err := p.Send(ctx, whatsappNotification("a", "+1 555 000 1111", schemas.Content{Title: "Your code", Text: "123456"}))
	if err != nil || !strings.HasPrefix(id, "wamid.") {
		t.Fatalf("text: %q %v", id, err)
	}
	id2, err := p.Send(ctx, whatsappNotification("b", "+15550001111", schemas.Content{TemplateID: "welcome",
		TemplateParams: map[string]string{"first_name": "Ana", "city": "Porto"}}))
	if err != nil {
		t.Fatalf("named: %v", err)
	}
	msgs := srv.Messages()
	if len(msgs) != 2 || msgs[0].Type != "text" || msgs[0].Text != "*Your code*\n123456" || msgs[0].ID != id ||
		msgs[1].Language != "en_GB" || msgs[1].ID != id2 ||
		!slices.Equal(msgs[1].Params, []whatsapptest.Param{{Name: "city", Text: "Porto"}, {Name: "first_name", Text: "Ana"}}) {
		t.Fatalf("messages %+v", msgs)
	}
	// Parameters the provider cannot order are refused before calling.
	for _, bad := range []map[string]string{{"1": "a", "3": "c"}, {"1": "a", "name": "b"}, {"01": "a", "1": "b"}} {
		if _, err := p.Send(ctx, whatsappNotification("c", "+15550001111", schemas.Content{TemplateID: "welcome",
			TemplateParams: bad})); !IsPermanent(err) {
			t.Errorf("params %v: %v", bad, err)
		}
	}
	for _, addr := range []string{"", "not-a-number", "+1"} {
		if _, err := p.Send(ctx, whatsappNotification("d", addr, schemas.Content{Text: "x"})); !IsPermanent(err) {
			t.Errorf("address %q: %v", addr, err)
		}
	}
	if _, err := p.Send(ctx, whatsappNotification("e", "+15550001111", schemas.Content{})); !IsPermanent(err) {
		t.Fatalf("no content: %v", err)
	}
	if srv.Requests() != 2 {
		t.Fatalf("requests %d, want 2", srv.Requests())
	}
}

func TestWhatsAppRateLimitIsRetried(t *testing.T) {
	srv := whatsappServer(t)
	srv.AddTemplate("otp", "en_US", 1)
	srv.ThrottleNext(1, 130429)
	p := whatsappProviderFor(t, srv, whatsappTestToken, "")
	d := deliverThroughSink(t, whatsappNotification("wa-429", "+4915112345678",
		schemas.Content{TemplateID: "otp", TemplateParams: map[string]string{"1": "845921"}}), p)
	wantThrottledThenSent(t, d, srv)
}

// Free-form text outside the 24 h window fails permanently, saying why.
func TestWhatsAppOutsideWindowIsPermanent(t *testing.T) {
	srv := whatsappServer(t)
	p := whatsappProviderFor(t, srv, whatsappTestToken, "")
	d := deliverThroughSink(t, whatsappNotification("wa-131047", "+4915112345678", schemas.Content{Text: "hello"}), p)
	wantFailed(t, d, "131047", "24-hour", "template")
	wantServed(t, srv, 0, 1)
	wantNoInvalid(t, d)
}

func TestWhatsAppNotOnWhatsAppIsInvalidRecipient(t *testing.T) {
	srv := whatsappServer(t)
	srv.AddTemplate("otp", "en_US", 1)
	srv.NotOnWhatsApp("33612345678")
	p := whatsappProviderFor(t, srv, whatsappTestToken, "")
	d := deliverThroughSink(t, whatsappNotification("wa-131026", "+33612345678",
		schemas.Content{TemplateID: "otp", TemplateParams: map[string]string{"1": "1"}}), p)
	wantOnlyInvalid(t, d, schemas.InvalidTarget{Platform: "whatsapp", Token: "+33612345678"}, "131026")
}

func TestWhatsAppBadAccessTokenFails(t *testing.T) {
	srv := whatsappServer(t)
	srv.AddTemplate("otp", "en_US", 1)
	p := whatsappProviderFor(t, srv, "EAAGexpiredTOKEN", "")
	d := deliverThroughSink(t, whatsappNotification("wa-190", "+4915112345678",
		schemas.Content{TemplateID: "otp", TemplateParams: map[string]string{"1": "1"}}), p)
	wantRefused(t, d, srv, "EAAGexpired", "error 190", "access token")
}

func TestWhatsAppSendOutcomes(t *testing.T) {
	srv := whatsappServer(t)
	srv.AddTemplate("otp", "en_US", 1)
	p := whatsappProviderFor(t, srv, whatsappTestToken, "")
	ctx := context.Background()
	n := func() *schemas.Notification {
		return whatsappNotification("x", "+4915112345678", schemas.Content{TemplateID: "otp", TemplateParams: map[string]string{"1": "1"}})
	}
	for _, code := range []int{131056, 4, 80007} {
		srv.ThrottleNext(1, code)
		if _, err := p.Send(ctx, n()); err == nil || IsPermanent(err) {
			t.Errorf("rate limit %d: %v", code, err)
		}
	}
	srv.FailNext(1)
	if _, err := p.Send(ctx, n()); err == nil || IsPermanent(err) {
		t.Fatalf("500: %v", err)
	}
	// A template not approved in that language: permanent, with Meta's reason.
	_, err := p.Send(ctx, whatsappNotification("y", "+4915112345678", schemas.Content{TemplateID: "nope"}))
	var ir *InvalidRecipientError
	if !IsPermanent(err) || errors.As(err, &ir) || !strings.Contains(err.Error(), "132001") {
		t.Fatalf("unknown template: %v", err)
	}
	// Wrong parameter count.
	_, err = p.Send(ctx, whatsappNotification("z", "+4915112345678", schemas.Content{TemplateID: "otp"}))
	if !IsPermanent(err) || !strings.Contains(err.Error(), "132000") {
		t.Fatalf("no params: %v", err)
	}
	// Wrong phone number id in settings.
	bad := buildProvider(t, "whatsapp", "whatsapp", "baseUrl: "+srv.URL+"\nphoneNumberId: \"999\"\naccessToken: "+whatsappTestToken)
	if _, err := bad.Send(ctx, n()); !IsPermanent(err) || !strings.Contains(err.Error(), "error 100/33") {
		t.Fatalf("wrong phone number id: %v", err)
	}
	if len(srv.Messages()) != 0 {
		t.Fatalf("accepted %d", len(srv.Messages()))
	}
}

func TestWhatsAppPerRecipientLimit(t *testing.T) {
	srv := whatsappServer(t)
	srv.AddTemplate("otp", "en_US", 1)
	p := whatsappProviderFor(t, srv, whatsappTestToken, "perRecipientPerMinute: 10")
	ctx := context.Background()
	n := whatsappNotification("x", "+4915112345678", schemas.Content{TemplateID: "otp", TemplateParams: map[string]string{"1": "1"}})
	if _, err := p.Send(ctx, n); err != nil {
		t.Fatal(err)
	}
	_, err := p.Send(ctx, n)
	wantRetryAfter(t, err, 5*time.Second, 6*time.Second)
	wantRequests(t, srv, 1)
}

func TestWhatsAppSettings(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"accessToken: t", "phoneNumberId is required"},
		{"phoneNumberId: \"1\"", "accessToken is required"},
		{"phoneNumberId: \"+15551234\"\naccessToken: t", "numeric phone number id"},
		{"phoneNumberId: \"1\"\naccessToken: t\nversion: \"21\"", "version \"21\" must look like v21.0"},
		{"phoneNumberId: \"1\"\naccessToken: t\ndefaultLanguage: English", "defaultLanguage"},
		{"phoneNumberId: \"1\"\naccessToken: t\nperRecipientPerMinute: -1", "perRecipientPerMinute"},
		{"phoneNumberId: \"1\"\naccessToken: t\ntoken: x", "field token not found"},
	} {
		wantBuildErr(t, "whatsapp", tc.yaml, tc.want)
	}
	p := buildProvider(t, "whatsapp", "whatsapp", "phoneNumberId: \"1\"\naccessToken: t").(*whatsappProvider)
	if p.endpoint != "https://graph.facebook.com/v21.0/1/messages" || p.lang != "en_US" || p.limiter != nil {
		t.Fatalf("defaults: %+v", p)
	}
}

// The section documented in docs/CONFIG.md builds.
func TestWhatsAppDocumentedSettings(t *testing.T) {
	p := buildProvider(t, "whatsapp", "whatsapp", `
phoneNumberId: "106540352242922"
accessToken: EAAG-token
version: v21.0
defaultLanguage: en_US
perRecipientPerMinute: 10
baseUrl: https://graph.facebook.com
timeout: 10s`).(*whatsappProvider)
	if p.endpoint != "https://graph.facebook.com/v21.0/106540352242922/messages" || p.perMin != 10 {
		t.Fatalf("%+v", p)
	}
}

func TestWhatsAppClassify(t *testing.T) {
	n := whatsappNotification("x", "+15550001111", schemas.Content{Text: "x"})
	now := time.Now()
	errBody := func(code int) []byte {
		return []byte(`{"error":{"message":"m","type":"OAuthException","code":` + strconv.Itoa(code) + `,"error_data":{"messaging_product":"whatsapp","details":"d"},"fbtrace_id":"Ab"}}`)
	}
	var ir *InvalidRecipientError
	if id, err := whatsappClassify(200, nil, []byte(`{"messages":[{"id":"wamid.1"}]}`), n, now); id != "wamid.1" || err != nil {
		t.Fatalf("ok: %q %v", id, err)
	}
	for _, code := range []int{130429, 131056, 4, 80007} {
		if _, err := whatsappClassify(400, http.Header{"Retry-After": {"2"}}, errBody(code), n, now); IsPermanent(err) || retryAfter(err) != 2*time.Second {
			t.Errorf("%d: %v", code, err)
		}
	}
	if _, err := whatsappClassify(400, nil, errBody(131026), n, now); !errors.As(err, &ir) || ir.Targets[0].Token != n.Address {
		t.Fatalf("131026: %v", err)
	}
	for _, code := range []int{131047, 190, 132001} {
		_, err := whatsappClassify(400, nil, errBody(code), n, now)
		if !IsPermanent(err) || errors.As(err, &ir) || !strings.Contains(err.Error(), "fbtrace_id Ab") {
			t.Errorf("%d: %v", code, err)
		}
	}
	if _, err := whatsappClassify(503, nil, []byte("<html>"), n, now); err == nil || IsPermanent(err) {
		t.Fatalf("503: %v", err)
	}
	if _, err := whatsappClassify(200, nil, []byte(`{"messages":[]}`), n, now); !IsPermanent(err) {
		t.Fatalf("no id: %v", err)
	}
}

func FuzzWhatsAppClassify(f *testing.F) {
	for _, s := range []string{`{"messages":[{"id":"wamid.1"}]}`, `{"error":{"code":131026}}`,
		`{"error":{"code":130429,"error_subcode":2494055,"error_data":{"details":"x"}}}`, `{"error":null}`,
		`{"messages":[{"id":""}]}`, `{"error":{"code":"190"}}`, "", "\xff"} {
		f.Add(200, s, "")
		f.Add(400, s, "1")
		f.Add(500, s, "x")
	}
	n := whatsappNotification("x", "+15550001111", schemas.Content{Text: "x"})
	now := time.Now()
	f.Fuzz(func(t *testing.T, status int, body, ra string) {
		id, err := whatsappClassify(status, http.Header{"Retry-After": {ra}}, []byte(body), n, now)
		if err == nil {
			if status < 200 || status > 299 || id == "" {
				t.Fatalf("HTTP %d %q accepted as %q", status, body, id)
			}
			return
		}
		var rl *RetryLaterError
		if id != "" || (!IsPermanent(err) && !errors.As(err, &rl)) {
			t.Fatalf("unclassified: %q %v", id, err)
		}
		if d := retryAfter(err); d < 0 || d > 24*time.Hour {
			t.Fatalf("retry after %s", d)
		}
	})
}

// Any webhook body, signed or not: an unsigned one is refused, a signed one
// is read as statuses or refused as not JSON, and every receipt names a
// notification.
func FuzzWhatsAppReceipts(f *testing.F) {
	p := buildProvider(f, "whatsapp", "whatsapp", "phoneNumberId: \""+whatsappTestPhoneID+"\"\naccessToken: t\nappSecret: s3cret")
	f.Add([]byte(`{"entry":[{"changes":[{"value":{"statuses":[{"id":"w","status":"read","biz_opaque_callback_data":"n1","timestamp":"1"}]}}]}]}`), "sha256=00")
	f.Add([]byte(`[]`), "")
	f.Fuzz(func(t *testing.T, body []byte, sig string) {
		post := func(sig string) ([]Receipt, error) {
			r := httptest.NewRequest("POST", "/v1/receipts/whatsapp", bytes.NewReader(body))
			r.Header.Set("X-Hub-Signature-256", sig)
			return p.(ReceiptProvider).Receipts(r, body)
		}
		if _, err := post(sig); err == nil && !strings.HasPrefix(sig, "sha256=") {
			t.Fatalf("accepted without a sha256= signature: %q", sig)
		}
		mac := hmac.New(sha256.New, []byte("s3cret"))
		mac.Write(body)
		rs, err := post("sha256=" + hex.EncodeToString(mac.Sum(nil)))
		if errors.Is(err, ErrBadSignature) {
			t.Fatalf("a signed body was refused: %v", err)
		}
		for _, rc := range rs {
			if rc.NotificationID == "" {
				t.Fatalf("a receipt names no notification: %+v", rc)
			}
		}
	})
}
