package sinks

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/webpushtest"
)

// vapidKeys is a fresh VAPID key pair, base64url as web-push generate-vapid-keys prints it.
func vapidKeys(t *testing.T) (public, private string) {
	t.Helper()
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(k.PublicKey().Bytes()), base64.RawURLEncoding.EncodeToString(k.Bytes())
}

// webpushYAML is the provider section for the key pair, reaching the loopback test service.
func webpushYAML(public, private string, extra ...string) string {
	return strings.Join(append([]string{"vapidPublicKey: " + public, "vapidPrivateKey: " + private,
		"subject: mailto:ops@example.com", "allowPrivateEndpoints: true", "timeout: 3s"}, extra...), "\n")
}

// webpushEnv is a push service, a browser subscribed with the provider's
// VAPID key, and the provider built from configuration.
type webpushEnv struct {
	srv    *webpushtest.Server
	sub    webpushtest.Subscription
	p      Provider
	public string
}

func newWebpushEnv(t *testing.T, extra ...string) *webpushEnv {
	t.Helper()
	srv := webpushtest.Start()
	t.Cleanup(srv.Close)
	public, private := vapidKeys(t)
	sub, err := srv.Subscribe(public)
	if err != nil {
		t.Fatal(err)
	}
	return &webpushEnv{srv: srv, sub: sub, public: public, p: buildProvider(t, "webpush", "webpush", webpushYAML(public, private, extra...))}
}

func webpushTarget(s webpushtest.Subscription) schemas.Target {
	return schemas.Target{Platform: "webpush", Endpoint: s.Endpoint, P256dh: s.P256dh, Auth: s.Auth}
}

func webpushNotification(id string, targets ...schemas.Target) *schemas.Notification {
	return &schemas.Notification{ID: id, UserID: "user-" + id, Channel: "webpush", Address: targets[0].Endpoint, Targets: targets,
		Content: schemas.Content{Title: "Order shipped", Body: "It is on its way \"today\" <b>&</b> é",
			ActionURL: "https://shop.example/orders/1", ImageURL: "https://shop.example/box.png",
			CollapseKey: "order-1", Data: map[string]string{"orderId": "1", "kind": "shipping"}}}
}

// Accepted by the push service: the browser decrypts exactly the JSON message,
// with TTL from the expiry, Urgency from the priority, Topic from the collapse
// key, the VAPID key and subject of the settings; the message ids are the
// Location answers, one per subscription.
func TestWebPushAcceptDeliversTheExactDecryptedMessage(t *testing.T) {
	e := newWebpushEnv(t)
	second, err := e.srv.Subscribe(e.public)
	if err != nil {
		t.Fatal(err)
	}
	n := webpushNotification("wp-accept", webpushTarget(e.sub), webpushTarget(second))
	n.Priority = "high"
	n.ExpiresAt = time.Now().Add(time.Hour).UnixMilli()
	d := deliverThroughSink(t, n, e.p)
	if d.Final.Status != "sent" {
		t.Fatalf("status %s (%s), want sent", d.Final.Status, d.Final.Reason)
	}
	msgs := e.srv.Messages()
	if len(msgs) != 2 {
		t.Fatalf("%d messages accepted, want 2 (rejections %v)", len(msgs), e.srv.Rejections())
	}
	const want = `{"id":"wp-accept","title":"Order shipped","body":"It is on its way \"today\" \u003cb\u003e\u0026\u003c/b\u003e é",` +
		`"actionUrl":"https://shop.example/orders/1","imageUrl":"https://shop.example/box.png","data":{"kind":"shipping","orderId":"1"}}`
	for i, m := range msgs {
		if string(m.Plaintext) != want {
			t.Errorf("message %d plaintext\n got %s\nwant %s", i, m.Plaintext, want)
		}
		if m.TTL < 3590 || m.TTL > 3600 {
			t.Errorf("TTL %d, want the hour left to the expiry", m.TTL)
		}
		if m.Urgency != "high" || m.Topic != "order-1" || m.VAPIDKey != e.public || m.Subject != "mailto:ops@example.com" {
			t.Errorf("headers: urgency %q topic %q key %q sub %q", m.Urgency, m.Topic, m.VAPIDKey, m.Subject)
		}
	}
	if got := []string{msgs[0].Endpoint, msgs[1].Endpoint}; !slices.Contains(got, e.sub.Endpoint) || !slices.Contains(got, second.Endpoint) {
		t.Errorf("endpoints %v", got)
	}
	if ids := strings.Split(d.Final.ProviderMessageID, ","); len(ids) != 2 || !slices.Contains(ids, msgs[0].Location) || !slices.Contains(ids, msgs[1].Location) {
		t.Errorf("provider message id %q, want the Locations %s and %s", d.Final.ProviderMessageID, msgs[0].Location, msgs[1].Location)
	}
}

// A 429 with Retry-After is retried later and then accepted once. The message
// has no expiry (TTL = the ttl setting), a low priority and a collapse key
// that is no valid Topic (hashed).
func TestWebPushRetriesAfterThrottling(t *testing.T) {
	e := newWebpushEnv(t, "ttl: 2h")
	e.srv.Throttle(1, time.Second)
	n := webpushNotification("wp-retry", webpushTarget(e.sub))
	n.Priority = "low"
	n.Content.CollapseKey = "order #1 / shipped (a key far longer than thirty-two characters)"
	d := deliverThroughSink(t, n, e.p)
	wantRetriedThenSent(t, d)
	rej := e.srv.Rejections()
	if len(rej) != 1 || rej[0].Status != http.StatusTooManyRequests {
		t.Fatalf("rejections %v, want the one 429", rej)
	}
	msgs := e.srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages accepted, want exactly 1", len(msgs))
	}
	sum := sha256.Sum256([]byte(n.Content.CollapseKey))
	if m := msgs[0]; m.TTL != 7200 || m.Urgency != "low" || m.Topic != base64.RawURLEncoding.EncodeToString(sum[:24]) {
		t.Fatalf("TTL %d urgency %q topic %q", m.TTL, m.Urgency, m.Topic)
	}
}

// A message larger than the push service takes (413) fails permanently, with
// a dead letter and a reason saying so.
func TestWebPushPayloadTooLargeFailsPermanently(t *testing.T) {
	e := newWebpushEnv(t, "maxPayload: 16384")
	n := webpushNotification("wp-large", webpushTarget(e.sub))
	n.Content.Body = strings.Repeat("a", 5000)
	d := deliverThroughSink(t, n, e.p)
	wantFailed(t, d, "payload too large", "413")
	if len(e.srv.Messages()) != 0 {
		t.Fatalf("messages %d", len(e.srv.Messages()))
	}
	if r := e.srv.Rejections(); len(r) != 1 || r[0].Status != http.StatusRequestEntityTooLarge {
		t.Fatalf("rejections %v", r)
	}
}

// An expired subscription (410) fails and is named in the feedback, so the
// profile drops it.
func TestWebPushGoneSubscriptionIsInvalidRecipient(t *testing.T) {
	e := newWebpushEnv(t)
	e.srv.Expire(e.sub.Endpoint)
	d := deliverThroughSink(t, webpushNotification("wp-gone", webpushTarget(e.sub)), e.p)
	if d.Final.Status != "failed" || !strings.Contains(d.Final.Reason, "410") {
		t.Fatalf("final %s %q, want failed with HTTP 410", d.Final.Status, d.Final.Reason)
	}
	if d.Feedback == nil || len(d.Feedback.Invalid) != 1 || d.Feedback.Invalid[0].Endpoint != e.sub.Endpoint ||
		d.Feedback.Invalid[0].Platform != "webpush" {
		t.Fatalf("feedback %+v, want the subscription invalid", d.Feedback)
	}
}

// A VAPID key pair that is not the one the browser subscribed with: the push
// service refuses it (403) and the failure says to check the VAPID keys.
func TestWebPushWrongVAPIDKeyIsRejected(t *testing.T) {
	srv := webpushtest.Start()
	defer srv.Close()
	subscribed, _ := vapidKeys(t)
	sub, err := srv.Subscribe(subscribed)
	if err != nil {
		t.Fatal(err)
	}
	public, private := vapidKeys(t)
	p := buildProvider(t, "webpush", "webpush", webpushYAML(public, private))
	d := deliverThroughSink(t, webpushNotification("wp-badkey", webpushTarget(sub)), p)
	wantFailed(t, d, "HTTP 403", "VAPID", "applicationServerKey")
	wantNoInvalid(t, d)
	if len(srv.Messages()) != 0 {
		t.Fatalf("messages %d", len(srv.Messages()))
	}
}

// The provider's encryption reproduces the RFC 8291 §5 example byte for byte
// given its salt and application server key.
func TestWebPushEncryptReproducesRFC8291Example(t *testing.T) {
	dec := func(s string) []byte {
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	as, err := ecdh.P256().NewPrivateKey(dec("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"))
	if err != nil {
		t.Fatal(err)
	}
	ua, err := ecdh.P256().NewPublicKey(dec("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := webpushEncrypt(rand.Reader, []byte("When I grow up, I want to be a watermelon"), ua, dec("BTBZMqHH6r4Tts7J_aSIgg"),
		dec("DGv6ra1nlYgDCS1FRnbzlw"), as)
	if err != nil {
		t.Fatal(err)
	}
	const want = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
	if s := base64.RawURLEncoding.EncodeToString(got); s != want {
		t.Fatalf("body\n got %s\nwant %s", s, want)
	}
}

func TestWebPushSettingsValidation(t *testing.T) {
	public, private := vapidKeys(t)
	otherPublic, _ := vapidKeys(t)
	for _, tc := range []struct{ yaml, want string }{
		{"subject: mailto:a@b.c", "vapidPrivateKey is required"},
		{"vapidPrivateKey: " + private, "subject is required"},
		{"vapidPrivateKey: " + private + "\nsubject: ops@example.com", "must be a mailto: address or an https: URL"},
		{"vapidPrivateKey: " + private + "\nsubject: http://example.com", "must be a mailto: address or an https: URL"},
		{"vapidPrivateKey: abc\nsubject: mailto:a@b.c", "not a base64url 32-byte P-256 private key"},
		{"vapidPrivateKey: " + private + "\nvapidPublicKey: " + otherPublic + "\nsubject: mailto:a@b.c", "not the public key of vapidPrivateKey"},
		{"vapidPrivateKey: " + private + "\nvapidPublicKey: xyz\nsubject: mailto:a@b.c", "vapidPublicKey is not a base64url"},
		{"vapidPrivateKey: " + private + "\nsubject: mailto:a@b.c\nmaxPayload: 50", "maxPayload 50 leaves no room"},
		{"vapidPrivateKey: " + private + "\nsubject: mailto:a@b.c\nttl: -1s", "ttl must not be negative"},
		{"vapidPrivateKey: " + private + "\nsubject: mailto:a@b.c\nvapidKey: x", "field vapidKey not found"},
	} {
		if err := buildErr(t, "webpush", "webpush", tc.yaml); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.yaml, err, tc.want)
		}
	}
	if err := buildErr(t, "push", "webpush", webpushYAML(public, private)); err == nil ||
		!strings.Contains(err.Error(), "serves webpush, not push") {
		t.Errorf("wrong channel: %v", err)
	}
	// The public key may be left out (derived), padded keys and an https subject are fine.
	p, err := BuildProviders("webpush", []config.Provider{providerConfig(t, "webpush",
		"vapidPrivateKey: "+private+"=\nsubject: https://example.com/contact")}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if wp := p[0].(*webpushProvider); wp.publicKey != public || wp.ttl != 24*time.Hour || wp.maxPayload != 4096 {
		t.Fatalf("derived %q ttl %s max %d", wp.publicKey, wp.ttl, wp.maxPayload)
	}
	if pp, ok := p[0].(PlatformProvider); !ok || !slices.Equal(pp.Platforms(), []string{"webpush"}) {
		t.Fatal("not a PlatformProvider of webpush")
	}
}

// Checks made before anything is sent: a message larger than maxPayload, an
// expired notification, malformed subscription keys, and (by default) an
// endpoint on a private address or over plain http.
func TestWebPushRefusesBeforeSending(t *testing.T) {
	var hits atomic.Int32
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { hits.Add(1); w.WriteHeader(201) }))
	defer ts.Close()
	public, private := vapidKeys(t)
	strict := buildProvider(t, "webpush", "webpush", "vapidPrivateKey: "+private+"\nvapidPublicKey: "+public+"\nsubject: mailto:a@b.c")
	lax := buildProvider(t, "webpush", "webpush", webpushYAML(public, private))
	browser, _ := ecdh.P256().GenerateKey(rand.Reader)
	good := schemas.Target{Platform: "webpush", Endpoint: ts.URL + "/push/1",
		P256dh: base64.RawURLEncoding.EncodeToString(browser.PublicKey().Bytes()), Auth: base64.RawURLEncoding.EncodeToString(make([]byte, 16))}
	https := good
	https.Endpoint = strings.Replace(ts.URL, "http://", "https://", 1) + "/push/1"
	badKey := good
	badKey.P256dh = base64.RawURLEncoding.EncodeToString([]byte("not a point"))
	ctx := context.Background()

	big := webpushNotification("big", good)
	big.Content.Body = strings.Repeat("x", 4000)
	if _, err := lax.Send(ctx, big); !IsPermanent(err) || !strings.Contains(err.Error(), "payload too large") {
		t.Errorf("oversized: %v", err)
	}
	expired := webpushNotification("old", good)
	expired.ExpiresAt = time.Now().Add(-time.Second).UnixMilli()
	if _, err := lax.Send(ctx, expired); !IsPermanent(err) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired: %v", err)
	}
	var ir *InvalidRecipientError
	if _, err := lax.Send(ctx, webpushNotification("badkey", badKey)); !errors.As(err, &ir) || ir.Targets[0].Endpoint != badKey.Endpoint {
		t.Errorf("malformed p256dh: %v", err)
	}
	if _, err := strict.Send(ctx, webpushNotification("plain", good)); !IsPermanent(err) || !strings.Contains(err.Error(), "plain http") {
		t.Errorf("http endpoint: %v", err)
	}
	if _, err := strict.Send(ctx, webpushNotification("private", https)); !IsPermanent(err) || !errors.Is(err, errWebpushPrivateEndpoint) {
		t.Errorf("loopback endpoint: %v", err)
	}
	if _, err := lax.Send(ctx, &schemas.Notification{ID: "none", Channel: "webpush", Targets: []schemas.Target{{Platform: "fcm", Token: "t"}}}); !IsPermanent(err) {
		t.Errorf("no webpush target: %v", err)
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("%d requests reached the endpoint", n)
	}
}

// One subscription gone and one accepted: the message id of the accepted one
// and the gone one named for removal.
func TestWebPushPartialDeliveryNamesTheGoneSubscription(t *testing.T) {
	e := newWebpushEnv(t)
	gone, err := e.srv.Subscribe(e.public)
	if err != nil {
		t.Fatal(err)
	}
	e.srv.Expire(gone.Endpoint)
	id, err := e.p.Send(context.Background(), webpushNotification("partial", webpushTarget(e.sub), webpushTarget(gone)))
	var ir *InvalidRecipientError
	msgs := e.srv.Messages()
	if len(msgs) != 1 || id != msgs[0].Location || !errors.As(err, &ir) || len(ir.Targets) != 1 || ir.Targets[0].Endpoint != gone.Endpoint {
		t.Fatalf("id %q err %v messages %d", id, err, len(msgs))
	}
}

func TestWebPushClassify(t *testing.T) {
	now := time.Now()
	tg := schemas.Target{Platform: "webpush", Endpoint: "https://push.example/s/1"}
	h := http.Header{}
	h.Set("Location", "https://push.example/m/7")
	h.Set("Retry-After", "30")
	if id, err := classifyWebpush(201, h, nil, now, tg, "n1"); id != "https://push.example/m/7" || err != nil {
		t.Errorf("201: %q %v", id, err)
	}
	if id, err := classifyWebpush(202, http.Header{}, nil, now, tg, "n1"); id != "n1" || err != nil {
		t.Errorf("202 without Location: %q %v", id, err)
	}
	for _, c := range []int{429, 500, 503} {
		if _, err := classifyWebpush(c, h, nil, now, tg, "n1"); IsPermanent(err) || retryAfter(err) != 30*time.Second {
			t.Errorf("%d: %v (after %s)", c, err, retryAfter(err))
		}
	}
	for _, c := range []int{404, 410} {
		var ir *InvalidRecipientError
		if _, err := classifyWebpush(c, h, nil, now, tg, "n1"); !errors.As(err, &ir) || ir.Targets[0] != DeviceTarget(tg) {
			t.Errorf("%d: %v", c, err)
		}
	}
	fcm := []byte("the key in the authorization header does not correspond to the sender ID used to subscribe this user.\nmore")
	if _, err := classifyWebpush(403, h, fcm, now, tg, "n1"); !IsPermanent(err) || !strings.Contains(err.Error(), "does not correspond to the sender ID") ||
		strings.Contains(err.Error(), "more") {
		t.Errorf("403 text: %v", err)
	}
	autopush := []byte(`{"code":401,"errno":109,"error":"Unauthorized","message":"Request did not validate"}`)
	if _, err := classifyWebpush(401, h, autopush, now, tg, "n1"); !IsPermanent(err) || !strings.Contains(err.Error(), "errno 109: Unauthorized: Request did not validate") {
		t.Errorf("401 json: %v", err)
	}
	if _, err := classifyWebpush(413, h, nil, now, tg, "n1"); !IsPermanent(err) || !strings.Contains(err.Error(), "payload too large") {
		t.Errorf("413: %v", err)
	}
	if _, err := classifyWebpush(400, h, []byte("<html>\x00"), now, tg, "n1"); !IsPermanent(err) || strings.Contains(err.Error(), "html") {
		t.Errorf("400 html: %v", err)
	}
}

func FuzzWebPushClassify(f *testing.F) {
	f.Add(201, "https://push.example/m/1", "30", []byte(""))
	f.Add(410, "", "", []byte(`{"code":410,"errno":106,"error":"Gone","message":"expired"}`))
	f.Add(429, "", "Tue, 01 Dec 2026 10:00:30 GMT", []byte("slow down"))
	f.Add(403, "", "", []byte("\xff\xfe bad \x00 utf8\n"))
	f.Add(400, "", "", []byte(`{"errno":"x","error":{"a":1}}`))
	now := time.Now()
	tg := schemas.Target{Platform: "webpush", Endpoint: "https://push.example/s/1"}
	f.Fuzz(func(t *testing.T, status int, location, retry string, body []byte) {
		h := http.Header{}
		h.Set("Location", location)
		h.Set("Retry-After", retry)
		id, err := classifyWebpush(status, h, body, now, tg, "fallback")
		var ir *InvalidRecipientError
		switch {
		case status >= 200 && status < 300:
			if err != nil || id == "" {
				t.Fatalf("%d: %q %v", status, id, err)
			}
		case status == 404 || status == 410:
			if !errors.As(err, &ir) || len(ir.Targets) != 1 {
				t.Fatalf("%d: %v", status, err)
			}
		case status == 429 || status >= 500 || status == 408 || status == 425:
			if err == nil || IsPermanent(err) || retryAfter(err) < 0 || retryAfter(err) > 24*time.Hour {
				t.Fatalf("%d: %v", status, err)
			}
		default:
			if !IsPermanent(err) || errors.As(err, &ir) {
				t.Fatalf("%d: %v", status, err)
			}
		}
		if err != nil && (len(err.Error()) > 1000 || !strings.Contains(err.Error(), "HTTP "+strconv.Itoa(status))) {
			t.Fatalf("reason %q", err)
		}
	})
}
