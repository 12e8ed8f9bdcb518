package service_test

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/sinks/apnstest"
	"github.com/notifyd/notifyd/sinks/fcmtest"
	"github.com/notifyd/notifyd/sinks/slacktest"
	"github.com/notifyd/notifyd/sinks/twiliotest"
	"github.com/notifyd/notifyd/sinks/webpushtest"
)

// providerYAML is a provider as the configuration file gives it: name, type,
// and the type's own section.
func providerYAML(t *testing.T, name, typ, section string) config.Provider {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\ntype: %s\n%s:\n", name, typ, typ)
	for _, line := range strings.Split(strings.TrimSpace(section), "\n") {
		b.WriteString("  " + line + "\n")
	}
	var p config.Provider
	if err := yaml.Unmarshal([]byte(b.String()), &p); err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	return p
}

// freeAddr is a loopback address nothing listens on (for a callback URL that
// must be known before the service starts).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// everyChannel is an all-in-one instance with a real provider on every
// channel, each against its local documented-format server.
type everyChannel struct {
	*harness
	twilio  *twiliotest.Server
	fcm     *fcmtest.Server
	apns    *apnstest.Server
	webpush *webpushtest.Server
	slack   *slacktest.Server
	sub     webpushtest.Subscription
	vapid   string
}

const (
	twilioSid, twilioToken = "AC0123456789abcdef0123456789abcdef", "twilio-auth-token-1"
	apnsTeamID, apnsKeyID  = "TEAM123456", "KEY1234567"
	apnsBundle             = "com.example.shop"
	apnsDevice             = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"
)

func newEveryChannel(t *testing.T) *everyChannel {
	t.Helper()
	e := &everyChannel{harness: newHarness(t)}
	dir := t.TempDir()
	e.twilio = twiliotest.Start(twilioSid, twilioToken)
	t.Cleanup(e.twilio.Close)
	var err error
	if e.fcm, err = fcmtest.Start("shop-project"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.fcm.Close)
	fcmKey, err := e.fcm.WriteKeyFile(dir, e.fcm.KeyJSON())
	if err != nil {
		t.Fatal(err)
	}
	if e.apns, err = apnstest.Start(apnstest.Options{TeamID: apnsTeamID, KeyID: apnsKeyID, Topic: apnsBundle}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.apns.Close)
	apnsKey, apnsCA := filepath.Join(dir, "AuthKey.p8"), filepath.Join(dir, "apns-ca.pem")
	if err := os.WriteFile(apnsKey, []byte(e.apns.KeyPEM()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(apnsCA, e.apns.CACertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	e.webpush = webpushtest.Start()
	t.Cleanup(e.webpush.Close)
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e.vapid = base64.RawURLEncoding.EncodeToString(k.PublicKey().Bytes())
	if e.sub, err = e.webpush.Subscribe(e.vapid); err != nil {
		t.Fatal(err)
	}
	e.slack = slacktest.Start("xoxb-test-token")
	t.Cleanup(e.slack.Close)

	e.cfg.HTTP.Addr = freeAddr(t)
	withInbox(&e.cfg)
	e.cfg.Channels["sms"] = []config.Provider{providerYAML(t, "twilio-main", "twilio", fmt.Sprintf(
		"accountSid: %s\nauthToken: %s\nfrom: \"+15005550006\"\nbaseUrl: %s\nstatusCallbackUrl: http://%s/v1/receipts/twilio-main",
		twilioSid, twilioToken, e.twilio.BaseURL(), e.cfg.HTTP.Addr))}
	e.cfg.Channels["push"] = []config.Provider{
		providerYAML(t, "fcm", "fcm", fmt.Sprintf("credentialsFile: %s\nbaseUrl: %s", fcmKey, e.fcm.URL)),
		providerYAML(t, "apns", "apns", fmt.Sprintf("keyFile: %s\nkeyId: %s\nteamId: %s\ntopic: %s\nbaseUrl: %s\ncaFile: %s",
			apnsKey, apnsKeyID, apnsTeamID, apnsBundle, e.apns.URL, apnsCA)),
	}
	e.cfg.Channels["webpush"] = []config.Provider{providerYAML(t, "webpush", "webpush", fmt.Sprintf(
		"vapidPublicKey: %s\nvapidPrivateKey: %s\nsubject: mailto:ops@example.com\nallowPrivateEndpoints: true",
		e.vapid, base64.RawURLEncoding.EncodeToString(k.Bytes())))}
	e.cfg.Channels["slack"] = []config.Provider{providerYAML(t, "slack", "slack", fmt.Sprintf(
		"baseUrl: %s\nwebhookHosts: [%q]", e.slack.URL, e.slack.Host()))}
	return e
}

func everyChannelTemplate() map[string]any {
	return map[string]any{"category": "orders", "channels": map[string]any{
		"email":   map[string]any{"subject": "Order {{.orderId}} shipped", "text": "Your order {{.orderId}} is on its way", "html": "<p>Order <b>{{.orderId}}</b></p>"},
		"sms":     map[string]any{"text": "Order {{.orderId}} shipped"},
		"push":    map[string]any{"title": "Shipped", "body": "Order {{.orderId}} is on its way", "sound": "default", "badge": 1, "data": map[string]any{"orderId": "{{.orderId}}"}},
		"webpush": map[string]any{"title": "Shipped (web)", "body": "Order {{.orderId}}", "actionUrl": "https://shop.example/o/{{.orderId}}"},
		"inapp":   map[string]any{"title": "Shipped (inbox)", "body": "Order {{.orderId}} left the warehouse"},
		"slack":   map[string]any{"markdown": "*Order {{.orderId}}* shipped"},
	}}
}

// One notification to a user with email, SMS, two push devices (Android and
// iOS), a web push subscription, an inbox and Slack: each receives exactly its
// channel's rendered content, and the status shows every channel's state.
// Then providers' answers act on the profile: an unregistered device token is
// removed, an SMS receipt records delivered, and a STOP opts the user out of
// SMS — receipts are taken only with Twilio's signature and for notifications
// notifyd sent.
func TestOneNotificationOnEveryChannel(t *testing.T) {
	e := newEveryChannel(t)
	e.start()
	slackHook := e.slack.NewWebhook("#orders")
	e.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", everyChannelTemplate())
	e.mustCall(http.StatusOK, "PUT", "/v1/profiles/omni", map[string]any{"email": "omni@example.com", "phone": "+14155550100",
		"devices": []any{
			map[string]any{"platform": "fcm", "token": "fcm-token-android"},
			map[string]any{"platform": "apns", "token": apnsDevice},
			map[string]any{"platform": "webpush", "subscription": map[string]any{"endpoint": e.sub.Endpoint,
				"keys": map[string]any{"p256dh": e.sub.P256dh, "auth": e.sub.Auth}}},
		},
		"chat": map[string]any{"slack": map[string]any{"webhookUrl": slackHook}}})
	id := e.send(map[string]any{"template": "order-shipped", "data": map[string]any{"orderId": "A-17"},
		"recipients": []any{map[string]any{"userId": "omni"}}})["omni"]
	channels := []string{"email", "inapp", "push", "slack", "sms", "webpush"}
	st := e.waitChannels(id, channels, processors.StatusSent)

	if m := e.smtp.WaitFor(1, 10*time.Second); len(m) != 1 || !strings.Contains(string(m[0].Data), "Subject: Order A-17 shipped") ||
		!strings.Contains(string(m[0].Data), "Your order A-17 is on its way") {
		t.Fatalf("email %v", m)
	}
	if m := e.twilio.Messages(); len(m) != 1 || m[0].Body != "Order A-17 shipped" || m[0].To != "+14155550100" {
		t.Fatalf("sms %+v", m)
	}
	if m := e.fcm.Messages(); len(m) != 1 || m[0].Token != "fcm-token-android" || m[0].Notification.Title != "Shipped" ||
		m[0].Notification.Body != "Order A-17 is on its way" || m[0].Data["orderId"] != "A-17" {
		t.Fatalf("fcm %+v", m)
	}
	if p := e.apns.Pushes(); len(p) != 1 || p[0].Token != apnsDevice || p[0].APS.Alert.Title != "Shipped" ||
		p[0].APS.Alert.Body != "Order A-17 is on its way" || p[0].APS.Sound != "default" || p[0].APS.Badge == nil || *p[0].APS.Badge != 1 {
		t.Fatalf("apns %+v", p)
	}
	wp := e.webpush.Messages()
	var plain map[string]any
	if len(wp) != 1 || json.Unmarshal(wp[0].Plaintext, &plain) != nil || plain["title"] != "Shipped (web)" ||
		plain["body"] != "Order A-17" || plain["actionUrl"] != "https://shop.example/o/A-17" || plain["id"] != id {
		t.Fatalf("webpush %+v %s", wp, wp[0].Plaintext)
	}
	if m := e.slack.Messages(); len(m) != 1 || !m[0].Webhook || m[0].Text != "*Order A-17* shipped" {
		t.Fatalf("slack %+v", m)
	}
	_, feed := e.userCall("GET", "/v1/inbox/omni/messages", e.token("omni"), nil)
	if ms := feed["messages"].([]any); len(ms) != 1 || ms[0].(map[string]any)["title"] != "Shipped (inbox)" ||
		ms[0].(map[string]any)["body"] != "Order A-17 left the warehouse" {
		t.Fatalf("inbox %v", feed)
	}
	providers := map[string]string{}
	for _, h := range st["history"].([]any) {
		if m := h.(map[string]any); m["status"] == processors.StatusSent {
			providers[m["channel"].(string)], _ = m["provider"].(string)
		}
	}
	if providers["push"] != "fcm+apns" || providers["sms"] != "twilio-main" || providers["inapp"] != "inbox" {
		t.Fatalf("providers per channel %v", providers)
	}

	// The SMS delivery receipt, signed by Twilio: delivered. A forged one and
	// one for a notification notifyd never sent record nothing.
	sms := e.twilio.Messages()[0]
	cb, _ := url.Parse(sms.StatusCallback)
	if cb.Query().Get("n") != id {
		t.Fatalf("status callback %q does not name the notification", sms.StatusCallback)
	}
	ctx := context.Background()
	form := e.twilio.StatusCallbackForm(sms, "delivered", "")
	if code, err := e.twilio.PostWithSignature(ctx, sms.StatusCallback, form, "forged="); err != nil || code != http.StatusForbidden {
		t.Fatalf("forged callback: %d %v", code, err)
	}
	unknown := strings.Replace(sms.StatusCallback, "n="+url.QueryEscape(id), "n=never-sent", 1)
	if code, err := e.twilio.PostSigned(ctx, unknown, form); err != nil || code != http.StatusNotFound {
		t.Fatalf("callback for an unknown notification: %d %v", code, err)
	}
	if code, err := e.twilio.SendStatusCallback(ctx, sms, "delivered", ""); err != nil || code != http.StatusOK {
		t.Fatalf("callback: %d %v", code, err)
	}
	e.waitHistory(id, "sms", processors.StatusDelivered)

	// The Android token is gone: the next push goes to the iPhone, is sent,
	// and the token leaves the profile. The user replies STOP to the SMS.
	e.fcm.Unregister("fcm-token-android")
	if code, err := e.twilio.SendStatusCallback(ctx, sms, "failed", "21610"); err != nil || code != http.StatusOK {
		t.Fatalf("STOP callback: %d %v", code, err)
	}
	e.waitHistory(id, "sms", processors.StatusUnsubscribed)
	e.waitProfile("omni", func(p map[string]any) bool {
		cats, _ := p["preferences"].(map[string]any)["categories"].(map[string]any)
		star, _ := cats["*"].(map[string]any)
		return star["sms"] == false
	})
	id2 := e.send(map[string]any{"template": "order-shipped", "data": map[string]any{"orderId": "A-18"},
		"channels": []any{"push", "sms"}, "recipients": []any{map[string]any{"userId": "omni"}}})["omni"]
	st2 := e.waitChannels(id2, []string{"push"}, processors.StatusSent)
	if st2["channels"].(map[string]any)["sms"] != processors.StatusSuppressed {
		t.Fatalf("sms after STOP: %v", st2["channels"])
	}
	var pushReason string
	for _, h := range st2["history"].([]any) {
		if m := h.(map[string]any); m["channel"] == "push" && m["status"] == processors.StatusSent {
			pushReason, _ = m["reason"].(string)
		}
	}
	if !strings.Contains(pushReason, "removed from the profile: fcm") {
		t.Fatalf("push sent event does not say the token was removed: %q", pushReason)
	}
	e.waitProfile("omni", func(p map[string]any) bool {
		devices := p["devices"].([]any)
		return len(devices) == 2 && !strings.Contains(fmt.Sprint(devices), "fcm-token-android")
	})
	if n := len(e.apns.Pushes()); n != 2 {
		t.Fatalf("%d pushes to the iPhone, want 2", n)
	}
	if n := len(e.twilio.Messages()); n != 1 {
		t.Fatalf("%d SMS, want 1 (the user said STOP)", n)
	}
}

// waitChannels polls a notification until every one of channels has status want.
func (h *harness) waitChannels(id string, channels []string, want string) map[string]any {
	h.t.Helper()
	var last map[string]any
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		code, out := h.call("GET", "/v1/notifications/"+id, nil)
		last = out
		if code != http.StatusOK {
			continue
		}
		chs, _ := out["channels"].(map[string]any)
		done := true
		for _, ch := range channels {
			done = done && chs[ch] == want
		}
		if done {
			return out
		}
	}
	h.t.Fatalf("notification %s: channels %v never all %q; last: %v", id, channels, want, last)
	return nil
}

// waitHistory polls a notification until its history has status on channel.
func (h *harness) waitHistory(id, channel, status string) {
	h.t.Helper()
	var last map[string]any
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		_, last = h.call("GET", "/v1/notifications/"+id, nil)
		hist, _ := last["history"].([]any)
		for _, e := range hist {
			if m := e.(map[string]any); m["channel"] == channel && m["status"] == status {
				return
			}
		}
	}
	h.t.Fatalf("notification %s: no %s %s in its history: %v", id, channel, status, last)
}

// waitProfile polls a profile until cond holds.
func (h *harness) waitProfile(user string, cond func(map[string]any) bool) {
	h.t.Helper()
	var last map[string]any
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		_, last = h.call("GET", "/v1/profiles/"+user, nil)
		if last != nil && cond(last) {
			return
		}
	}
	h.t.Fatalf("profile %s never matched; last: %v", user, last)
}
