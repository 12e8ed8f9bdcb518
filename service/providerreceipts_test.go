package service_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/sinks/sendgridtest"
	"github.com/notifyd/notifyd/sinks/whatsapptest"
)

// SendGrid's Signed Event Webhook posted to /v1/receipts/{provider}: events
// of notifyd's messages become delivered / opened / clicked / unsubscribed
// (a spam report opts the user out of email); a forged post records nothing
// (403); events of messages notifyd did not send are skipped, and a post of
// only those answers 404.
func TestSendGridEventWebhookReceipts(t *testing.T) {
	sg := sendgridtest.Start("SG.test-key")
	t.Cleanup(sg.Close)
	h := newHarness(t)
	h.cfg.Channels["email"] = []config.Provider{providerYAML(t, "sendgrid", "sendgrid", fmt.Sprintf(
		"apiKey: SG.test-key\nfromEmail: no-reply@example.com\nbaseUrl: %s\neventWebhookPublicKey: %s", sg.URL, sg.EventWebhookPublicKey()))}
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("orders"))
	h.mustCall(http.StatusOK, "PUT", "/v1/profiles/sg-user", map[string]any{"email": "sg@example.com"})
	id := h.send(map[string]any{"template": "order-shipped", "data": map[string]any{"orderId": 7, "eta": "now"},
		"recipients": []any{map[string]any{"userId": "sg-user"}}})["sg-user"]
	h.waitStatus(id, processors.StatusSent)
	m := sg.Messages()
	if len(m) != 1 || m[0].CustomArgs["notification_id"] != id {
		t.Fatalf("sendgrid got %+v", m)
	}
	url := h.base + "/v1/receipts/sendgrid"
	ctx := context.Background()
	if code, err := sg.PostEventsSignedWith(ctx, url, "MEUCIQ==", sendgridtest.EventsFor(m[0], "delivered", nil)); err != nil || code != http.StatusForbidden {
		t.Fatalf("forged events: %d %v", code, err)
	}
	stranger := sendgridtest.EventsFor(m[0], "delivered", map[string]any{"notification_id": "not-ours"})
	if code, err := sg.PostEvents(ctx, url, stranger); err != nil || code != http.StatusNotFound {
		t.Fatalf("events of unknown notifications only: %d %v", code, err)
	}
	code, err := sg.PostEvents(ctx, url, sendgridtest.EventsFor(m[0], "processed", nil), sendgridtest.EventsFor(m[0], "delivered", nil),
		sendgridtest.EventsFor(m[0], "open", nil), sendgridtest.EventsFor(m[0], "click", nil), stranger,
		sendgridtest.EventsFor(m[0], "spamreport", nil))
	if err != nil || code != http.StatusOK {
		t.Fatalf("events: %d %v", code, err)
	}
	for _, st := range []string{processors.StatusDelivered, processors.StatusOpened, processors.StatusClicked, processors.StatusUnsubscribed} {
		h.waitHistory(id, "email", st)
	}
	h.waitProfile("sg-user", func(p map[string]any) bool {
		cats, _ := p["preferences"].(map[string]any)["categories"].(map[string]any)
		star, _ := cats["*"].(map[string]any)
		return star["email"] == false
	})
}

// WhatsApp status webhooks at /v1/receipts/{provider}: Meta's subscription
// check is answered only with the verify token; statuses signed with the app
// secret (X-Hub-Signature-256) of messages notifyd sent become delivered and
// opened (read); a forged one records nothing.
func TestWhatsAppStatusWebhookReceipts(t *testing.T) {
	wa := whatsapptest.Start("v21.0", "106540352242922", "wa-access-token")
	t.Cleanup(wa.Close)
	wa.AddTemplate("order_update", "en_US", 1)
	h := newHarness(t)
	h.cfg.Channels["whatsapp"] = []config.Provider{providerYAML(t, "whatsapp", "whatsapp", fmt.Sprintf(
		"phoneNumberId: \"106540352242922\"\naccessToken: wa-access-token\nbaseUrl: %s\nappSecret: wa-app-secret\nverifyToken: wa-verify",
		wa.URL))}
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/wa-order", map[string]any{"channels": map[string]any{
		"whatsapp": map[string]any{"templateId": "order_update", "templateParams": map[string]any{"1": "{{.orderId}}"}}}})
	id := h.send(map[string]any{"template": "wa-order", "data": map[string]any{"orderId": "A-9"},
		"recipients": []any{map[string]any{"userId": "wa-user", "phone": "+14155550100"}}})["wa-user"]
	h.waitStatus(id, processors.StatusSent)
	m := wa.Messages()
	if len(m) != 1 || m[0].CallbackData != id || m[0].Params[0].Text != "A-9" {
		t.Fatalf("whatsapp got %+v", m)
	}
	url := h.base + "/v1/receipts/whatsapp"
	ctx := context.Background()
	if code, body, err := whatsapptest.VerifySubscription(ctx, url, "wa-verify", "1158201444"); err != nil || code != http.StatusOK || body != "1158201444" {
		t.Fatalf("subscription check: %d %q %v", code, body, err)
	}
	if code, _, err := whatsapptest.VerifySubscription(ctx, url, "guess", "1"); err != nil || code != http.StatusForbidden {
		t.Fatalf("subscription check with a wrong token: %d %v", code, err)
	}
	if code, err := wa.PostStatus(ctx, url, "not-the-secret", m[0], "delivered", 0); err != nil || code != http.StatusForbidden {
		t.Fatalf("forged status: %d %v", code, err)
	}
	for _, st := range []string{"sent", "delivered", "read"} {
		if code, err := wa.PostStatus(ctx, url, "wa-app-secret", m[0], st, 0); err != nil || code != http.StatusOK {
			t.Fatalf("status %s: %d %v", st, code, err)
		}
	}
	h.waitHistory(id, "whatsapp", processors.StatusDelivered)
	h.waitHistory(id, "whatsapp", processors.StatusOpened)
	stranger := m[0]
	stranger.CallbackData = "not-ours"
	if code, err := wa.PostStatus(ctx, url, "wa-app-secret", stranger, "delivered", 0); err != nil || code != http.StatusNotFound {
		t.Fatalf("status of a message notifyd did not send: %d %v", code, err)
	}
}

// Bad input at the provider callback endpoint: an unknown provider, a
// provider that takes no callbacks, an oversized body and a signed body that
// is not events all get a clear error and record nothing.
func TestProviderCallbacksRefuseBadInput(t *testing.T) {
	sg := sendgridtest.Start("SG.test-key")
	t.Cleanup(sg.Close)
	h := newHarness(t)
	h.cfg.Channels["email"] = []config.Provider{providerYAML(t, "sendgrid", "sendgrid", fmt.Sprintf(
		"apiKey: SG.test-key\nfromEmail: no-reply@example.com\nbaseUrl: %s\neventWebhookPublicKey: %s", sg.URL, sg.EventWebhookPublicKey()))}
	h.start()
	post := func(path string, body []byte, header ...string) (int, map[string]any) {
		req, _ := http.NewRequest("POST", h.base+path, bytes.NewReader(body))
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	for _, c := range []struct {
		path   string
		body   []byte
		header []string
		want   int
	}{
		{"/v1/receipts/nobody", []byte("x"), nil, http.StatusNotFound},
		{"/v1/receipts/hook-main", []byte("x"), nil, http.StatusNotFound}, // a webhook provider takes no callbacks
		{"/v1/receipts/sendgrid", bytes.Repeat([]byte("a"), 100<<10), nil, http.StatusRequestEntityTooLarge},
		{"/v1/receipts/sendgrid", []byte(`{"not":"an array"}`), []string{"X-Twilio-Email-Event-Webhook-Timestamp", "1",
			"X-Twilio-Email-Event-Webhook-Signature", sg.Sign("1", []byte(`{"not":"an array"}`))}, http.StatusBadRequest},
		{"/v1/receipts/sendgrid", []byte(`[]`), nil, http.StatusForbidden},
	} {
		code, out := post(c.path, c.body, c.header...)
		if code != c.want || out["error"] == nil {
			t.Errorf("POST %s (%d bytes): %d %v, want %d with an error", c.path, len(c.body), code, out, c.want)
		}
	}
	if code, _ := h.call("GET", "/v1/receipts/sendgrid", nil); code != http.StatusNotFound {
		t.Errorf("GET check of a provider without one: %d", code)
	}
}

// Receipts count only for notifications notifyd sent, of the caller's
// tenant, and only from the provider that sent them: a correctly signed
// SendGrid event about a mail smtp-main sent records nothing (404), and so
// does a receipt through the API naming another provider (403) or an
// unknown id (404). The right provider's receipt is recorded.
func TestReceiptsOnlyForKnownNotificationsFromTheirProvider(t *testing.T) {
	sg := sendgridtest.Start("SG.test-key")
	t.Cleanup(sg.Close)
	h := newHarness(t)
	h.cfg.Channels["email"] = append(h.cfg.Channels["email"], providerYAML(t, "sendgrid", "sendgrid", fmt.Sprintf(
		"apiKey: SG.test-key\nfromEmail: no-reply@example.com\nbaseUrl: %s\neventWebhookPublicKey: %s", sg.URL, sg.EventWebhookPublicKey())))
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("orders"))
	id := h.send(map[string]any{"template": "order-shipped", "data": map[string]any{"orderId": 7, "eta": "now"},
		"recipients": []any{map[string]any{"userId": "r1", "email": "r1@example.com"}}})["r1"]
	h.waitStatus(id, processors.StatusSent) // by smtp-main, the first of the chain

	forged := sendgridtest.EventsFor(sendgridtest.Message{To: []string{"r1@example.com"}, ID: "sg-x"}, "delivered",
		map[string]any{"notification_id": id})
	if code, err := sg.PostEvents(context.Background(), h.base+"/v1/receipts/sendgrid", forged); err != nil || code != http.StatusNotFound {
		t.Fatalf("sendgrid's signed event about smtp-main's mail: %d %v, want 404", code, err)
	}
	receipt := func(nid, channel, provider string) map[string]any {
		return map[string]any{"receipts": []any{map[string]any{"notificationId": nid, "channel": channel, "provider": provider, "status": "delivered"}}}
	}
	for _, c := range []struct {
		body  map[string]any
		code  int
		field string
	}{
		{receipt(id, "email", "sendgrid"), http.StatusForbidden, "receipts[0].provider"},
		{receipt(id, "sms", "smtp-main"), http.StatusForbidden, "receipts[0].provider"},
		{receipt("no-such-notification", "email", "smtp-main"), http.StatusNotFound, "receipts[0].notificationId"},
	} {
		code, out := h.call("POST", "/v1/receipts", c.body)
		if e, _ := out["error"].(map[string]any); code != c.code || e == nil || e["field"] != c.field {
			t.Fatalf("%v: %d %v, want %d naming %s", c.body, code, out, c.code, c.field)
		}
	}
	h.mustCall(http.StatusNotFound, "GET", "/v1/notifications/no-such-notification", nil)
	st := h.mustCall(http.StatusOK, "GET", "/v1/notifications/"+id, nil)
	if st["status"] != processors.StatusSent {
		t.Fatalf("a refused receipt changed the status: %v", st)
	}
	h.mustCall(http.StatusAccepted, "POST", "/v1/receipts", receipt(id, "email", "smtp-main"))
	st = h.waitStatus(id, processors.StatusDelivered)
	if st["template"] != "order-shipped" {
		t.Fatalf("status %v", st)
	}
}
