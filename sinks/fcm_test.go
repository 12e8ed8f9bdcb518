package sinks

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/fcmtest"
)

// fcmServer starts the FCM stand-in for the test.
func fcmServer(t *testing.T) *fcmtest.Server {
	t.Helper()
	srv, err := fcmtest.Start("notifyd-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

// fcmProviderFor builds the fcm provider for srv from YAML, with key (the
// server's own key when nil) in a key file.
func fcmProviderFor(t *testing.T, srv *fcmtest.Server, key []byte) Provider {
	t.Helper()
	path, err := srv.WriteKeyFile(t.TempDir(), key)
	if err != nil {
		t.Fatal(err)
	}
	return buildProvider(t, "push", "fcm", fmt.Sprintf("credentialsFile: %s\nbaseUrl: %s\ntimeout: 5s", path, srv.URL))
}

func fcmPush(id string, tokens ...string) *schemas.Notification {
	n := &schemas.Notification{ID: id, UserID: "u-" + id, Channel: "push", Content: schemas.Content{Title: "Order shipped", Body: "It is on its way."}}
	for _, tok := range tokens {
		n.Targets = append(n.Targets, schemas.Target{Platform: "fcm", Token: tok})
	}
	if len(tokens) > 0 {
		n.Address = tokens[0]
	}
	return n
}

// (a) The message FCM gets is the documented one, the message name is the
// provider message id, and the access token came from the JWT exchange.
func TestFCMDeliversTheDocumentedMessage(t *testing.T) {
	srv := fcmServer(t)
	p := fcmProviderFor(t, srv, nil)
	n := fcmPush("n-fcm-1", "dev-a:APA91b_tok-1")
	n.Priority = "high"
	n.ExpiresAt = time.Now().Add(time.Hour).UnixMilli()
	n.Content.ImageURL = "https://cdn.example.com/box.png"
	n.Content.Sound = "chime"
	n.Content.Badge = 3
	n.Content.CollapseKey = "order-42"
	n.Content.ActionURL = "https://shop.example.com/orders/42"
	n.Content.Data = map[string]string{"orderId": "42"}
	d := deliverThroughSink(t, n, p)
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("server accepted %d messages, want 1; status %s (%s)", len(msgs), d.Final.Status, d.Final.Reason)
	}
	m := msgs[0]
	wantSent(t, d, m.Name)
	if !strings.HasPrefix(m.Name, "projects/notifyd-test/messages/") {
		t.Fatalf("the server named the message %q", m.Name)
	}
	if m.Token != "dev-a:APA91b_tok-1" {
		t.Fatalf("token %q", m.Token)
	}
	if m.Notification == nil || *m.Notification != (fcmtest.Notification{Title: "Order shipped", Body: "It is on its way.", Image: "https://cdn.example.com/box.png"}) {
		t.Fatalf("notification %+v", m.Notification)
	}
	wantData := map[string]string{"orderId": "42", "notificationId": "n-fcm-1", "actionUrl": "https://shop.example.com/orders/42"}
	if len(m.Data) != len(wantData) {
		t.Fatalf("data %v, want %v", m.Data, wantData)
	}
	for k, v := range wantData {
		if m.Data[k] != v {
			t.Fatalf("data %v, want %v", m.Data, wantData)
		}
	}
	a := m.Android
	if a == nil || a.Priority != "high" || a.CollapseKey != "order-42" || a.Notification == nil || a.Notification.Sound != "chime" {
		t.Fatalf("android %+v", a)
	}
	ttl, err := strconv.Atoi(strings.TrimSuffix(a.TTL, "s"))
	if err != nil || ttl < 3590 || ttl > 3600 {
		t.Fatalf("android ttl %q, want about 3600s", a.TTL)
	}
	ap := m.APNS
	if ap == nil || ap.Payload == nil || ap.Payload.Aps.Badge == nil || *ap.Payload.Aps.Badge != 3 || ap.Payload.Aps.SoundName() != "chime" {
		t.Fatalf("apns %+v", ap)
	}
	if ap.Headers["apns-priority"] != "10" || ap.Headers["apns-collapse-id"] != "order-42" ||
		ap.Headers["apns-expiration"] != strconv.FormatInt(n.ExpiresAt/1000, 10) {
		t.Fatalf("apns headers %v", ap.Headers)
	}
	if m.Webpush == nil || m.Webpush.FcmOptions == nil || m.Webpush.FcmOptions.Link != n.Content.ActionURL {
		t.Fatalf("webpush %+v", m.Webpush)
	}
	if srv.TokenRequests() != 1 || len(srv.TokenRejections()) != 0 {
		t.Fatalf("token requests %d, rejections %v", srv.TokenRequests(), srv.TokenRejections())
	}
}

// (b) A 503 with Retry-After is retried, and the message goes out once.
func TestFCMRetriesAfterUnavailable(t *testing.T) {
	srv := fcmServer(t)
	p := fcmProviderFor(t, srv, nil)
	srv.FailNext(1, fcmtest.Unavailable("1"))
	d := deliverThroughSink(t, fcmPush("n-fcm-retry", "tok-retry"), p)
	wantRetriedThenSent(t, d)
	if st := d.Statuses(); st[len(st)-1] != "sent" {
		t.Fatalf("statuses %v, want retrying then sent", st)
	}
	if got := len(srv.Messages()); got != 1 || srv.Requests() != 2 {
		t.Fatalf("server accepted %d of %d requests, want 1 of 2", got, srv.Requests())
	}
	wantSent(t, d, srv.Messages()[0].Name)
}

// (c) FCM refusing the message (a reserved data key) fails it, with FCM's
// code and message as the reason, and a dead letter.
func TestFCMPermanentFailure(t *testing.T) {
	srv := fcmServer(t)
	p := fcmProviderFor(t, srv, nil)
	n := fcmPush("n-fcm-perm", "tok-perm")
	n.Content.Data = map[string]string{"from": "shop"}
	d := deliverThroughSink(t, n, p)
	wantFailed(t, d, "INVALID_ARGUMENT", "Invalid data payload key: from")
	wantNoInvalid(t, d)
	if len(srv.Messages()) != 0 || srv.Requests() != 1 {
		t.Fatalf("server accepted %d of %d requests, want 0 of 1 (no retry)", len(srv.Messages()), srv.Requests())
	}
}

// (d) An unregistered token fails the notification and is removed.
func TestFCMInvalidRecipient(t *testing.T) {
	srv := fcmServer(t)
	p := fcmProviderFor(t, srv, nil)
	srv.Unregister("tok-gone")
	d := deliverThroughSink(t, fcmPush("n-fcm-gone", "tok-gone"), p)
	wantInvalid(t, d, schemas.InvalidTarget{Platform: "fcm", Token: "tok-gone"}, "UNREGISTERED")
	if len(d.Feedback.Invalid) != 1 {
		t.Fatalf("feedback %+v, want tok-gone invalid", d.Feedback)
	}
}

// Two devices, one gone: sent to the other, and the gone one removed. The key
// comes inline (credentialsJson), the project from the key.
func TestFCMMultiDeviceOneUnregistered(t *testing.T) {
	srv := fcmServer(t)
	p := buildProvider(t, "push", "fcm", fmt.Sprintf("credentialsJson: |\n  %s\nbaseUrl: %s",
		strings.ReplaceAll(string(srv.KeyJSON()), "\n", "\n  "), srv.URL))
	srv.Unregister("tok-old")
	n := fcmPush("n-fcm-multi", "tok-old", "tok-new")
	d := deliverThroughSink(t, n, p)
	if d.Final.Status != "sent" {
		t.Fatalf("status %s (%s), want sent", d.Final.Status, d.Final.Reason)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 || msgs[0].Token != "tok-new" || !strings.Contains(d.Final.ProviderMessageID, msgs[0].Name) {
		t.Fatalf("accepted %+v, provider message id %q", msgs, d.Final.ProviderMessageID)
	}
	if d.Feedback == nil || !slices.Contains(d.Feedback.Invalid, schemas.InvalidTarget{Platform: "fcm", Token: "tok-old"}) {
		t.Fatalf("feedback %+v, want tok-old invalid", d.Feedback)
	}
}

// (e) A key the token endpoint does not know: invalid_grant, failed with a
// clear reason, nothing sent.
func TestFCMBadCredential(t *testing.T) {
	srv := fcmServer(t)
	foreign, err := srv.ForeignKeyJSON()
	if err != nil {
		t.Fatal(err)
	}
	p := fcmProviderFor(t, srv, foreign)
	d := deliverThroughSink(t, fcmPush("n-fcm-badkey", "tok-a"), p)
	wantFailed(t, d, "invalid_grant", "Invalid JWT Signature")
	if srv.Requests() != 0 || len(srv.Messages()) != 0 || srv.AuthRejected() != 0 {
		t.Fatalf("messages:send reached without a token: %d", srv.Requests())
	}
	if rej := srv.TokenRejections(); len(rej) == 0 || rej[0] != "Invalid JWT Signature." {
		t.Fatalf("token endpoint rejections %v", rej)
	}
}

// The access token is fetched once and reused; a token FCM refuses is
// replaced and the message sent with the new one.
func TestFCMTokenCachedAndReplacedWhenRefused(t *testing.T) {
	srv := fcmServer(t)
	p := fcmProviderFor(t, srv, nil)
	ctx := context.Background()
	for i := range 3 {
		if _, err := p.Send(ctx, fcmPush(fmt.Sprint("n-", i), "tok-a")); err != nil {
			t.Fatal(err)
		}
	}
	if srv.TokenRequests() != 1 {
		t.Fatalf("token requests %d for 3 sends, want 1", srv.TokenRequests())
	}
	srv.RevokeTokens()
	id, err := p.Send(ctx, fcmPush("n-after-revoke", "tok-a"))
	if err != nil || id == "" {
		t.Fatalf("send after revocation: %q %v", id, err)
	}
	if srv.TokenRequests() != 2 || srv.AuthRejected() != 1 || len(srv.Messages()) != 4 {
		t.Fatalf("token requests %d, auth rejected %d, messages %d", srv.TokenRequests(), srv.AuthRejected(), len(srv.Messages()))
	}
	// A token refused again right after the refresh is a credentials problem.
	srv.FailAlways(&fcmtest.Failure{HTTP: 401, Status: "UNAUTHENTICATED", Message: "Request had invalid authentication credentials."})
	_, err = p.Send(ctx, fcmPush("n-401", "tok-a"))
	if !IsPermanent(err) || !strings.Contains(err.Error(), "UNAUTHENTICATED") {
		t.Fatalf("persistent 401: %v", err)
	}
}

// Oversized messages are refused before any call, as permanent.
func TestFCMRefusesOversizedPayload(t *testing.T) {
	srv := fcmServer(t)
	p := fcmProviderFor(t, srv, nil)
	n := fcmPush("n-big", "tok-a")
	n.Content.Body = strings.Repeat("x", 4000)
	n.Content.Data = map[string]string{"k": strings.Repeat("y", 200)}
	_, err := p.Send(context.Background(), n)
	if !IsPermanent(err) || !strings.Contains(err.Error(), "4096-byte") {
		t.Fatalf("oversized: %v", err)
	}
	if srv.Requests() != 0 {
		t.Fatal("an oversized message was posted")
	}
	n.Content.Body = strings.Repeat("x", 3000)
	if _, err := p.Send(context.Background(), n); err != nil {
		t.Fatalf("a 3.3 kB message: %v", err)
	}
}

// Settings errors are clear, and come at build time.
func TestFCMSettingsValidation(t *testing.T) {
	srv := fcmServer(t)
	dir := t.TempDir()
	keyPath, err := srv.WriteKeyFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	noProject := write("noproject.json", strings.Replace(string(srv.KeyJSON()), `"project_id": "notifyd-test"`, `"project_id": ""`, 1))
	notRSA := write("notrsa.json", `{"type":"service_account","project_id":"p","client_email":"a@p.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}`)
	user := write("user.json", `{"type":"authorized_user","client_id":"x","client_secret":"y","refresh_token":"z"}`)
	for _, tc := range []struct{ yaml, want string }{
		{"projectId: p", "credentialsFile or credentialsJson"},
		{"credentialsFile: " + keyPath + "\ncredentialsJson: '{}'", "not both"},
		{"credentialsFile: " + filepath.Join(dir, "missing.json"), "no such file"},
		{"credentialsJson: 'not json'", "not a JSON service-account key"},
		{"credentialsFile: " + user, `type "authorized_user"`},
		{"credentialsFile: " + notRSA, "private_key is not"},
		{"credentialsFile: " + noProject, "projectId is required"},
		{"credentialsFile: " + keyPath + "\nbaseUrl: fcm.googleapis.com", "baseUrl"},
		{"credentialsFile: " + keyPath + "\napiKey: x", "field apiKey not found"},
	} {
		err := buildErr(t, "push", "fcm", tc.yaml)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.yaml, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Errorf("%q: the error quotes the key: %v", tc.yaml, err)
		}
	}
	if err := buildErr(t, "sms", "fcm", "credentialsFile: "+keyPath); err == nil {
		t.Error("fcm built for the sms channel")
	}
	p := buildProvider(t, "push", "fcm", "credentialsFile: "+noProject+"\nprojectId: other-project")
	if got := p.(*fcmProvider).sendURL; got != "https://fcm.googleapis.com/v1/projects/other-project/messages:send" {
		t.Errorf("send url %s", got)
	}
	if pp, ok := p.(PlatformProvider); !ok || !slices.Equal(pp.Platforms(), []string{"fcm"}) {
		t.Error("fcm does not serve the fcm platform")
	}
}

// fcmBody is an FCM error answer.
func fcmBody(code int, status, errorCode, msg string) []byte {
	details := ""
	if errorCode != "" {
		details = fmt.Sprintf(`,"details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":%q}]`, errorCode)
	}
	return fmt.Appendf(nil, `{"error":{"code":%d,"message":%q,"status":%q%s}}`, code, msg, status, details)
}

func TestFCMClassify(t *testing.T) {
	now := time.Now()
	tg := schemas.Target{Platform: "fcm", Token: "tok"}
	// The classes of pushOutcome.
	const (
		sent      = "ok"
		retry     = "retry"
		permanent = "permanent"
		gone      = "invalid"
	)
	for _, tc := range []struct {
		name       string
		status     int
		retryAfter string
		body       []byte
		want       string
		after      time.Duration
		reason     string
	}{
		{"accepted", 200, "", []byte(`{"name":"projects/p/messages/0:1%ab"}`), sent, 0, ""},
		{"unregistered", 404, "", fcmBody(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."), gone, 0, "UNREGISTERED"},
		{"sender mismatch", 403, "", fcmBody(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"), gone, 0, "SENDER_ID_MISMATCH"},
		{"bad token", 400, "", fcmBody(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"), gone, 0, "registration token"},
		{"bad token field", 400, "", []byte(`{"error":{"code":400,"message":"Invalid value","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"message.token","description":"Invalid registration token"}]}]}}`), gone, 0, "INVALID_ARGUMENT"},
		{"bad ttl", 400, "", fcmBody(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Invalid value at 'message.android.ttl'"), permanent, 0, "message.android.ttl"},
		{"quota default", 429, "", fcmBody(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded"), retry, time.Minute, "QUOTA_EXCEEDED"},
		{"quota retry-after", 429, "7", fcmBody(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded"), retry, 7 * time.Second, ""},
		{"unavailable", 503, "3", fcmBody(503, "UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable."), retry, 3 * time.Second, "UNAVAILABLE"},
		{"internal", 500, "", fcmBody(500, "INTERNAL", "INTERNAL", "Internal error"), retry, 0, "INTERNAL"},
		{"html 502", 502, "", []byte("<html>Bad Gateway</html>"), retry, 0, "HTTP 502"},
		{"third party auth", 401, "", fcmBody(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "Auth error from APNS or Web Push Service"), permanent, 0, "APNs certificate"},
		{"unauthenticated", 401, "", fcmBody(401, "UNAUTHENTICATED", "", "Request had invalid authentication credentials."), permanent, 0, "UNAUTHENTICATED"},
		{"permission", 403, "", fcmBody(403, "PERMISSION_DENIED", "", "Permission denied"), permanent, 0, "cloudmessaging.messages.create"},
		{"error in a 200", 200, "", fcmBody(503, "UNAVAILABLE", "UNAVAILABLE", "busy"), retry, 0, "UNAVAILABLE"},
		{"unknown 4xx", 418, "", []byte("teapot"), permanent, 0, "HTTP 418"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			if tc.retryAfter != "" {
				h.Set("Retry-After", tc.retryAfter)
			}
			id, err := fcmClassify(tc.status, h, tc.body, tg, now)
			var ir *InvalidRecipientError
			if errors.As(err, &ir) && (len(ir.Targets) != 1 || ir.Targets[0] != DeviceTarget(tg)) {
				t.Fatalf("invalid targets %+v", ir.Targets)
			}
			got := pushOutcome(err)
			if got != tc.want {
				t.Fatalf("class %s (%v), want %s", got, err, tc.want)
			}
			if got == sent && id != "projects/p/messages/0:1%ab" {
				t.Fatalf("id %q", id)
			}
			if got == retry && retryAfter(err) != tc.after {
				t.Fatalf("retry after %s, want %s", retryAfter(err), tc.after)
			}
			if tc.reason != "" && !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("reason %q lacks %q", err, tc.reason)
			}
		})
	}
}

func FuzzFCMClassify(f *testing.F) {
	f.Add(200, []byte(`{"name":"projects/p/messages/1"}`), "")
	f.Add(404, fcmBody(404, "NOT_FOUND", "UNREGISTERED", "gone"), "")
	f.Add(429, fcmBody(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "q"), "Tue, 01 Dec 2026 10:00:30 GMT")
	f.Add(400, []byte(`{"error":{"details":[1,{"@type":5},{"fieldViolations":"x"}]}}`), "x")
	f.Add(200, []byte(`{"error":{"code":999}}`), "")
	f.Add(0, []byte{0xff, 0xfe}, "-1")
	tg := schemas.Target{Platform: "fcm", Token: "tok"}
	f.Fuzz(func(t *testing.T, status int, body []byte, ra string) {
		h := http.Header{}
		h.Set("Retry-After", ra)
		id, err := fcmClassify(status, h, body, tg, time.Now())
		if err == nil {
			if status < 200 || status >= 300 || id == "" {
				t.Fatalf("HTTP %d accepted with id %q", status, id)
			}
			return
		}
		if id != "" {
			t.Fatalf("an error with an id: %q %v", id, err)
		}
		var ir *InvalidRecipientError
		if errors.As(err, &ir) && (len(ir.Targets) != 1 || ir.Targets[0] != DeviceTarget(tg)) {
			t.Fatalf("invalid targets %+v", ir.Targets)
		}
		if a := retryAfter(err); a < 0 || a > 24*time.Hour {
			t.Fatalf("retry after %s", a)
		}
		if !strings.HasPrefix(err.Error(), "fcm: ") || strings.ContainsAny(err.Error(), "\n\r") {
			t.Fatalf("reason %q", err)
		}
	})
}
