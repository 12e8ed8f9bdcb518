package sinks

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/apnstest"
)

const (
	apnsTeam  = "TEAM123456"
	apnsKid   = "KEY1234567"
	apnsTopic = "com.example.shop"
)

var (
	apnsTok1 = strings.Repeat("a1", 32)
	apnsTok2 = strings.Repeat("b2", 32)
)

// apnsClock is a settable clock shared by a provider and the server.
type apnsClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *apnsClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *apnsClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func startAPNs(t *testing.T, now func() time.Time) *apnstest.Server {
	t.Helper()
	srv, err := apnstest.Start(apnstest.Options{TeamID: apnsTeam, KeyID: apnsKid, Topic: apnsTopic, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

// apnsYAML is the provider's section for srv, signing with keyPEM (from a
// .p8 file) and trusting the server's certificate through caFile.
func apnsYAML(t *testing.T, srv *apnstest.Server, keyPEM, extra string) string {
	t.Helper()
	dir := t.TempDir()
	keyFile, caFile := filepath.Join(dir, "AuthKey.p8"), filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(keyFile, []byte(keyPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, srv.CACertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("keyFile: %s\nkeyId: %s\nteamId: %s\ntopic: %s\nbaseUrl: %s\ncaFile: %s\n%s",
		keyFile, apnsKid, apnsTeam, apnsTopic, srv.URL, caFile, extra)
}

func apnsNotification(id string, tokens ...string) *schemas.Notification {
	n := &schemas.Notification{ID: id, UserID: "user-1", Channel: "push", Address: tokens[0], Priority: "high",
		Content: schemas.Content{Title: "Your order shipped", Body: "It is on its way.", Badge: 3, Sound: "default",
			CollapseKey: "order-42", ImageURL: "https://cdn.example.com/p.png", Data: map[string]string{"orderId": "42"}}}
	for _, tok := range tokens {
		n.Targets = append(n.Targets, schemas.Target{Platform: "apns", Token: tok})
	}
	return n
}

// apnsBuild builds the provider from YAML with a clock, as BuildProviders does.
func apnsBuild(t *testing.T, settings string, now func() time.Time) Provider {
	t.Helper()
	ps, err := BuildProviders("push", []config.Provider{providerConfig(t, "apns", settings)}, Deps{Log: discardLog(), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ps[0].(Closer).Close() })
	return ps[0]
}

func TestAPNsAcceptSendsTheDocumentedRequestOverHTTP2(t *testing.T) {
	srv := startAPNs(t, nil)
	p := buildProvider(t, "push", "apns", apnsYAML(t, srv, srv.KeyPEM(), ""))
	if pp, ok := p.(PlatformProvider); !ok || !slices.Equal(pp.Platforms(), []string{"apns"}) {
		t.Fatalf("platforms: %v", p)
	}
	n := apnsNotification("n-apns-1", apnsTok1)
	n.ExpiresAt = time.Now().Add(time.Hour).UnixMilli()
	d := deliverThroughSink(t, n, p)
	if d.Final.Status != processors.StatusSent {
		t.Fatalf("status %s (%s), rejections %+v", d.Final.Status, d.Final.Reason, srv.Rejections())
	}
	pushes := srv.Pushes()
	if len(pushes) != 1 {
		t.Fatalf("server accepted %d pushes, rejections %+v", len(pushes), srv.Rejections())
	}
	got := pushes[0]
	if d.Final.ProviderMessageID != got.ID || got.ID == "" {
		t.Fatalf("provider message id %q, server's apns-id %q", d.Final.ProviderMessageID, got.ID)
	}
	if got.Proto != "HTTP/2.0" || got.Token != apnsTok1 {
		t.Fatalf("proto %s token %s", got.Proto, got.Token)
	}
	for k, want := range map[string]string{"apns-topic": apnsTopic, "apns-push-type": "alert", "apns-priority": "10",
		"apns-collapse-id": "order-42", "apns-expiration": strconv.FormatInt(n.ExpiresAt/1000, 10),
		"Content-Type": "application/json"} {
		if v := got.Header.Get(k); v != want {
			t.Errorf("header %s = %q, want %q", k, v, want)
		}
	}
	if got.APS.Alert != (apnstest.Alert{Title: "Your order shipped", Body: "It is on its way."}) || got.APS.Badge == nil ||
		*got.APS.Badge != 3 || got.APS.Sound != "default" || got.APS.MutableContent != 1 {
		t.Fatalf("aps %+v", got.APS)
	}
	if got.Payload["notificationId"] != "n-apns-1" || got.Payload["orderId"] != "42" ||
		got.Payload["imageUrl"] != "https://cdn.example.com/p.png" || len(got.Payload) != 4 {
		t.Fatalf("payload %s", got.Raw)
	}
	if srv.ProviderTokens() != 1 {
		t.Fatalf("provider tokens %d", srv.ProviderTokens())
	}
}

// Priority, expiration and the data keys that must not override aps, sent
// directly (no sink needed to see the request).
func TestAPNsHeadersFollowPriorityAndExpiry(t *testing.T) {
	srv := startAPNs(t, nil)
	p := buildProvider(t, "push", "apns", apnsYAML(t, srv, srv.KeyPEM(), "environment: development\ntimeout: 5s"))
	n := apnsNotification("n-apns-low", apnsTok1)
	n.Priority, n.ExpiresAt = "low", 1_900_000_000_123
	n.Content = schemas.Content{Text: "plain text", Data: map[string]string{"aps": "hijack", "notificationId": "x", "k": "v"}}
	if _, err := p.Send(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	got := srv.Pushes()[0]
	if got.Header.Get("apns-priority") != "5" || got.Header.Get("apns-expiration") != "1900000000" ||
		got.Header.Get("apns-collapse-id") != "" {
		t.Fatalf("headers %v", got.Header)
	}
	if got.APS.Alert != (apnstest.Alert{Body: "plain text"}) || got.APS.Badge != nil || got.APS.MutableContent != 0 ||
		got.Payload["notificationId"] != "n-apns-low" || got.Payload["k"] != "v" {
		t.Fatalf("payload %s", got.Raw)
	}
}

func TestAPNsRetryLaterOnThrottlingThenSent(t *testing.T) {
	srv := startAPNs(t, nil)
	p := buildProvider(t, "push", "apns", apnsYAML(t, srv, srv.KeyPEM(), ""))
	srv.FailNext(1, http.StatusTooManyRequests, "TooManyRequests", "1")
	d := deliverThroughSink(t, apnsNotification("n-apns-429", apnsTok1), p)
	st := d.Statuses()
	if d.Final.Status != processors.StatusSent || !slices.Contains(st, processors.StatusRetrying) ||
		slices.Index(st, processors.StatusRetrying) > slices.Index(st, processors.StatusSent) {
		t.Fatalf("statuses %v (%s)", st, d.Final.Reason)
	}
	if n := len(srv.Pushes()); n != 1 {
		t.Fatalf("server accepted %d pushes", n)
	}
	if r := srv.Rejections(); len(r) != 1 || r[0].Reason != "TooManyRequests" {
		t.Fatalf("rejections %+v", r)
	}
	// The same provider token served both requests.
	if srv.ProviderTokens() != 1 {
		t.Fatalf("provider tokens %d", srv.ProviderTokens())
	}
}

func TestAPNsPermanentFailureHasTheReason(t *testing.T) {
	srv := startAPNs(t, nil)
	// A bundle id the key's team does not serve.
	settings := strings.Replace(apnsYAML(t, srv, srv.KeyPEM(), ""), "topic: "+apnsTopic, "topic: com.example.other", 1)
	p := buildProvider(t, "push", "apns", settings)
	d := deliverThroughSink(t, apnsNotification("n-apns-topic", apnsTok1, apnsTok2), p)
	wantFailed(t, d, "BadTopic")
	if len(srv.Pushes()) != 0 {
		t.Fatalf("pushes %d", len(srv.Pushes()))
	}
	// A topic error is the same for every device: the second is not tried.
	if r := srv.Rejections(); len(r) != 1 {
		t.Fatalf("rejections %+v", r)
	}
}

func TestAPNsUnregisteredDeviceIsInvalid(t *testing.T) {
	srv := startAPNs(t, nil)
	p := buildProvider(t, "push", "apns", apnsYAML(t, srv, srv.KeyPEM(), ""))
	srv.Unregister(apnsTok1)
	d := deliverThroughSink(t, apnsNotification("n-apns-gone", apnsTok1), p)
	wantInvalid(t, d, schemas.InvalidTarget{Platform: "apns", Token: apnsTok1}, "Unregistered")
	if len(d.Feedback.Invalid) != 1 {
		t.Fatalf("feedback %+v", d.Feedback)
	}
}

func TestAPNsMultiDeviceOneUnregisteredIsSentAndNamesTheGoneToken(t *testing.T) {
	srv := startAPNs(t, nil)
	p := buildProvider(t, "push", "apns", apnsYAML(t, srv, srv.KeyPEM(), ""))
	srv.Unregister(apnsTok2)
	d := deliverThroughSink(t, apnsNotification("n-apns-two", apnsTok1, apnsTok2), p)
	pushes := srv.Pushes()
	if len(pushes) != 1 || pushes[0].Token != apnsTok1 {
		t.Fatalf("pushes %+v; status %s reason %q", pushes, d.Final.Status, d.Final.Reason)
	}
	wantSent(t, d, pushes[0].ID)
	if d.Feedback == nil || len(d.Feedback.Invalid) != 1 ||
		d.Feedback.Invalid[0] != (schemas.InvalidTarget{Platform: "apns", Token: apnsTok2}) {
		t.Fatalf("feedback %+v", d.Feedback)
	}
}

func TestAPNsWrongSigningKeyIsRejected(t *testing.T) {
	srv := startAPNs(t, nil)
	other, err := apnstest.NewKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	// The key inline this time, as a YAML block.
	settings := strings.Replace(apnsYAML(t, srv, other, ""), "keyFile: ", "#keyFile: ", 1) +
		"key: |\n  " + strings.ReplaceAll(strings.TrimSpace(other), "\n", "\n  ") + "\n"
	p := buildProvider(t, "push", "apns", settings)
	d := deliverThroughSink(t, apnsNotification("n-apns-key", apnsTok1), p)
	wantFailed(t, d, "403 InvalidProviderToken")
	if len(srv.Pushes()) != 0 || srv.ProviderTokens() != 0 {
		t.Fatal("the server accepted a token signed by another key")
	}
}

// The provider token is signed once and reused; it is re-signed after
// tokenRefresh by the provider's clock, which the server shares (a new token
// within 20 minutes would be refused with TooManyProviderTokenUpdates, one
// older than an hour with ExpiredProviderToken).
func TestAPNsProviderTokenIsReusedAndRefreshedByAge(t *testing.T) {
	for _, tc := range []struct {
		extra   string
		refresh time.Duration
	}{{"", 50 * time.Minute}, {"tokenRefresh: 20m", 20 * time.Minute}} {
		t.Run(strconv.Quote(tc.extra), func(t *testing.T) {
			clock := &apnsClock{t: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
			srv := startAPNs(t, clock.Now)
			p := apnsBuild(t, apnsYAML(t, srv, srv.KeyPEM(), tc.extra), clock.Now)
			send := func(id string) {
				t.Helper()
				if _, err := p.Send(context.Background(), apnsNotification(id, apnsTok1, apnsTok2)); err != nil {
					t.Fatalf("%s: %v", id, err)
				}
			}
			send("n-1")
			send("n-2")
			clock.Add(tc.refresh - time.Second)
			send("n-3")
			if n := srv.ProviderTokens(); n != 1 {
				t.Fatalf("%d provider tokens before tokenRefresh, want 1", n)
			}
			clock.Add(time.Second)
			send("n-4")
			send("n-5")
			if n := srv.ProviderTokens(); n != 2 {
				t.Fatalf("%d provider tokens after tokenRefresh, want 2", n)
			}
			pushes := srv.Pushes()
			if len(pushes) != 10 || !pushes[6].TokenIssuedAt.Equal(clock.Now()) || !pushes[0].TokenIssuedAt.Equal(pushes[5].TokenIssuedAt) {
				t.Fatalf("%d pushes; iat %v", len(pushes), pushes[6].TokenIssuedAt)
			}
		})
	}
}

// APNs finding the token stale (clock jump): the provider signs anew and the
// same send succeeds; with a clock over an hour behind it fails clearly.
func TestAPNsExpiredProviderTokenIsResignedOnce(t *testing.T) {
	clock := &apnsClock{t: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	srv := startAPNs(t, clock.Now)
	p := apnsBuild(t, apnsYAML(t, srv, srv.KeyPEM(), ""), clock.Now)
	if _, err := p.Send(context.Background(), apnsNotification("n-1", apnsTok1)); err != nil {
		t.Fatal(err)
	}
	srv.ExpireProviderTokens()
	clock.Add(time.Minute)
	if _, err := p.Send(context.Background(), apnsNotification("n-2", apnsTok1)); err != nil {
		t.Fatalf("after ExpiredProviderToken: %v", err)
	}
	if srv.ProviderTokens() != 2 || len(srv.Pushes()) != 2 {
		t.Fatalf("tokens %d pushes %d", srv.ProviderTokens(), len(srv.Pushes()))
	}

	behind := &apnsClock{t: clock.Now().Add(-2 * time.Hour)}
	p2 := apnsBuild(t, apnsYAML(t, srv, srv.KeyPEM(), ""), behind.Now)
	_, err := p2.Send(context.Background(), apnsNotification("n-3", apnsTok1))
	if !IsPermanent(err) || !strings.Contains(err.Error(), "ExpiredProviderToken") {
		t.Fatalf("clock 2 h behind: %v", err)
	}
}

func TestAPNsRefusesLocallyWhatAPNsWouldRefuse(t *testing.T) {
	srv := startAPNs(t, nil)
	p := buildProvider(t, "push", "apns", apnsYAML(t, srv, srv.KeyPEM(), ""))
	ctx := context.Background()

	big := apnsNotification("n-big", apnsTok1)
	big.Content.Data = map[string]string{"blob": strings.Repeat("x", 4100)}
	if _, err := p.Send(ctx, big); !IsPermanent(err) || !strings.Contains(err.Error(), "PayloadTooLarge") {
		t.Fatalf("large payload: %v", err)
	}
	ck := apnsNotification("n-ck", apnsTok1)
	ck.Content.CollapseKey = strings.Repeat("k", 65)
	if _, err := p.Send(ctx, ck); !IsPermanent(err) || !strings.Contains(err.Error(), "BadCollapseId") {
		t.Fatalf("long collapse id: %v", err)
	}
	empty := apnsNotification("n-empty", apnsTok1)
	empty.Content = schemas.Content{}
	if _, err := p.Send(ctx, empty); !IsPermanent(err) {
		t.Fatalf("nothing to show: %v", err)
	}
	fcm := &schemas.Notification{ID: "n-fcm", Channel: "push", Targets: []schemas.Target{{Platform: "fcm", Token: "x"}},
		Content: schemas.Content{Title: "t"}}
	if _, err := p.Send(ctx, fcm); !IsPermanent(err) {
		t.Fatalf("no apns target: %v", err)
	}
	var ir *InvalidRecipientError
	if _, err := p.Send(ctx, apnsNotification("n-nothex", "<a1b2 c3>")); !errors.As(err, &ir) || ir.Targets[0].Token != "<a1b2 c3>" {
		t.Fatalf("non-hex token: %v", err)
	}
	if len(srv.Pushes())+len(srv.Rejections()) != 0 {
		t.Fatalf("the server was called: %+v", srv.Rejections())
	}
	// 503 with Retry-After is a retry with the hint.
	srv.FailNext(1, http.StatusServiceUnavailable, "ServiceUnavailable", "7")
	if _, err := p.Send(ctx, apnsNotification("n-503", apnsTok1)); IsPermanent(err) || retryAfter(err) != 7*time.Second {
		t.Fatalf("503: %v", err)
	}
}

func TestAPNsSettingsValidation(t *testing.T) {
	dir := t.TempDir()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	good := filepath.Join(dir, "good.p8")
	_ = os.WriteFile(good, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	k384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der384, _ := x509.MarshalPKCS8PrivateKey(k384)
	p384 := filepath.Join(dir, "p384.p8")
	_ = os.WriteFile(p384, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der384}), 0o600)
	junk := filepath.Join(dir, "junk.pem")
	_ = os.WriteFile(junk, []byte("not a pem"), 0o600)

	base := map[string]string{"keyFile": good, "keyId": apnsKid, "teamId": apnsTeam, "topic": apnsTopic}
	yamlOf := func(over map[string]string) string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range over {
			if v == "-" {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		var b strings.Builder
		for _, k := range slices.Sorted(func(yield func(string) bool) {
			for k := range m {
				if !yield(k) {
					return
				}
			}
		}) {
			fmt.Fprintf(&b, "%s: %q\n", k, m[k])
		}
		return b.String()
	}
	for _, tc := range []struct {
		over map[string]string
		want string
	}{
		{map[string]string{"keyFile": "-"}, "keyFile or key"},
		{map[string]string{"key": "x"}, "not both"},
		{map[string]string{"keyFile": filepath.Join(dir, "nope.p8")}, "keyFile"},
		{map[string]string{"keyFile": junk}, "not PEM"},
		{map[string]string{"keyFile": p384}, "P-256"},
		{map[string]string{"keyId": "-"}, "keyId must be the 10-character"},
		{map[string]string{"teamId": "short"}, "teamId must be the 10-character"},
		{map[string]string{"topic": "-"}, "topic"},
		{map[string]string{"environment": "staging"}, "environment must be production or development"},
		{map[string]string{"baseUrl": "http://127.0.0.1:1"}, "https"},
		{map[string]string{"tokenRefresh": "10m"}, "tokenRefresh must be between 20m0s and 55m0s"},
		{map[string]string{"tokenRefresh": "61m"}, "tokenRefresh"},
		{map[string]string{"caFile": junk}, "no PEM certificate"},
		{map[string]string{"bundle": "x"}, "field bundle not found"},
	} {
		if err := buildErr(t, "push", "apns", yamlOf(tc.over)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q", tc.over, err, tc.want)
		}
	}
	if err := buildErr(t, "sms", "apns", yamlOf(nil)); err == nil {
		t.Error("apns built for the sms channel")
	}
	ps, err := BuildProviders("push", []config.Provider{providerConfig(t, "apns", yamlOf(nil))}, Deps{})
	if err != nil || ps[0].(*apnsProvider).base != APNsProductionURL || ps[0].(*apnsProvider).refresh != 50*time.Minute {
		t.Fatalf("defaults: %v", err)
	}
	ps, err = BuildProviders("push", []config.Provider{providerConfig(t, "apns", yamlOf(map[string]string{"environment": "development"}))}, Deps{})
	if err != nil || ps[0].(*apnsProvider).base != APNsDevelopmentURL {
		t.Fatalf("development: %v", err)
	}
}

func TestAPNsClassifiesAnswers(t *testing.T) {
	tg := schemas.Target{Platform: "apns", Token: apnsTok1}
	now := time.Now()
	for _, tc := range []struct {
		status int
		body   string
		class  string
	}{
		{410, `{"reason":"Unregistered","timestamp":1700000000000}`, "invalid"},
		{410, `{"reason":"ExpiredToken"}`, "invalid"},
		{400, `{"reason":"BadDeviceToken"}`, "invalid"},
		{400, `{"reason":"DeviceTokenNotForTopic"}`, "invalid"},
		{400, `{"reason":"BadTopic"}`, "permanent"},
		{400, `{"reason":"TopicDisallowed"}`, "permanent"},
		{403, `{"reason":"InvalidProviderToken"}`, "permanent"},
		{403, `{"reason":"ExpiredProviderToken"}`, "permanent"},
		{413, `{"reason":"PayloadTooLarge"}`, "permanent"},
		{429, `{"reason":"TooManyRequests"}`, "retry"},
		{429, `{"reason":"TooManyProviderTokenUpdates"}`, "retry"},
		{500, `{"reason":"InternalServerError"}`, "retry"},
		{503, `{"reason":"ServiceUnavailable"}`, "retry"},
		{503, `<html>`, "retry"},
		{404, ``, "permanent"},
	} {
		_, err := classifyAPNs(tc.status, http.Header{}, []byte(tc.body), tg, now)
		if got := pushOutcome(err); got != tc.class {
			t.Errorf("%d %s: %s (%v), want %s", tc.status, tc.body, got, err, tc.class)
		}
	}
	if id, err := classifyAPNs(200, http.Header{"Apns-Id": {"ID-1"}}, nil, tg, now); id != "ID-1" || err != nil {
		t.Fatalf("200: %q %v", id, err)
	}
}

// pushOutcome names the outcome class of a push provider's answer: ok,
// invalid (recipient), permanent, retry (later), or plain (an unclassified
// error).
func pushOutcome(err error) string {
	var ir *InvalidRecipientError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &ir):
		return "invalid"
	case IsPermanent(err):
		return "permanent"
	}
	var rl *RetryLaterError
	if errors.As(err, &rl) {
		return "retry"
	}
	return "plain"
}

func FuzzAPNsClassify(f *testing.F) {
	f.Add(410, `{"reason":"Unregistered","timestamp":1}`, "")
	f.Add(429, `{"reason":"TooManyRequests"}`, "5")
	f.Add(403, `{"reason":"InvalidProviderToken"}`, "")
	f.Add(200, ``, "")
	f.Add(503, `{"reason":`, "Tue, 01 Dec 2026 10:00:30 GMT")
	f.Add(400, `{"reason":"\u0000\n"}`, "")
	tg := schemas.Target{Platform: "apns", Token: apnsTok1}
	now := time.Now()
	f.Fuzz(func(t *testing.T, status int, body, ra string) {
		h := http.Header{}
		h.Set("Retry-After", ra)
		h.Set("apns-id", "X")
		id, err := classifyAPNs(status, h, []byte(body), tg, now)
		c := pushOutcome(err)
		switch {
		case status == 200:
			if c != "ok" || id != "X" {
				t.Fatalf("200 classified %s", c)
			}
		case c == "ok" || c == "plain":
			t.Fatalf("%d %q classified %s", status, body, c)
		case status == 429 || status >= 500:
			if c != "retry" {
				t.Fatalf("%d %q classified %s", status, body, c)
			}
		case status == 410 && c != "invalid":
			t.Fatalf("410 classified %s", c)
		}
		if err != nil {
			if msg := err.Error(); !strings.HasPrefix(msg, "apns: HTTP "+strconv.Itoa(status)) || strings.ContainsAny(msg, "\n\x00") {
				t.Fatalf("message %q", msg)
			}
		}
	})
}
