package sinks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/twiliotest"
)

const (
	twilioTestSid   = "AC0123456789abcdef0123456789abcdef"
	twilioTestToken = "auth-token-0123456789abcdef"
	twilioTestFrom  = "+15005550006"
)

func startTwilio(t *testing.T) *twiliotest.Server {
	t.Helper()
	srv := twiliotest.Start(twilioTestSid, twilioTestToken)
	t.Cleanup(srv.Close)
	return srv
}

// twilioSettings is the YAML section for srv, with extra lines appended.
func twilioSettings(srv *twiliotest.Server, extra ...string) string {
	lines := []string{"accountSid: " + twilioTestSid, "authToken: " + twilioTestToken,
		`from: "` + twilioTestFrom + `"`, "baseUrl: " + srv.BaseURL(), "timeout: 3s"}
	return strings.Join(append(lines, extra...), "\n")
}

func sms(id, to, text string) *schemas.Notification {
	return &schemas.Notification{ID: id, UserID: "user-1", Channel: "sms", Address: to, Content: schemas.Content{Text: text}}
}

func TestTwilioAcceptedThroughSink(t *testing.T) {
	srv := startTwilio(t)
	p := buildProvider(t, "sms", "twilio", twilioSettings(srv, "statusCallbackUrl: https://notifyd.example.com/receipts/twilio"))
	d := deliverThroughSink(t, sms("tw-ok", "+14155550100", "Your code is 123456 — ne le partagez pas"), p)
	m := vendorOneAccepted(t, d, srv.Messages())
	if d.Final.ProviderMessageID != m.Sid || !strings.HasPrefix(m.Sid, "SM") {
		t.Fatalf("provider message id %q, server sid %q", d.Final.ProviderMessageID, m.Sid)
	}
	want := twiliotest.Message{Sid: m.Sid, To: "+14155550100", From: twilioTestFrom,
		Body: "Your code is 123456 — ne le partagez pas", StatusCallback: "https://notifyd.example.com/receipts/twilio?n=tw-ok", At: m.At}
	if m != want {
		t.Fatalf("server got %+v\nwant %+v", m, want)
	}
}

func TestTwilioThrottledIsRetriedLater(t *testing.T) {
	srv := startTwilio(t)
	srv.Throttle(1, time.Second)
	p := buildProvider(t, "sms", "twilio", twilioSettings(srv))
	d := deliverThroughSink(t, sms("tw-429", "+14155550101", "hello"), p)
	vendorRetryingBeforeSent(t, d)
	if msgs := srv.Messages(); len(msgs) != 1 || msgs[0].Sid != d.Final.ProviderMessageID {
		t.Fatalf("server accepted %+v, want exactly one with sid %s", msgs, d.Final.ProviderMessageID)
	}
	if srv.Requests() != 2 {
		t.Fatalf("server saw %d requests, want 2 (throttled, then accepted)", srv.Requests())
	}
}

func TestTwilioPermanentFailureThroughSink(t *testing.T) {
	srv := startTwilio(t)
	srv.FailNext(-1, twiliotest.Failure{Status: 400, Code: 21606, Message: "The From phone number is not a valid, SMS-capable inbound phone number"})
	p := buildProvider(t, "sms", "twilio", twilioSettings(srv))
	d := deliverThroughSink(t, sms("tw-perm", "+14155550102", "hello"), p)
	wantFailed(t, d, "21606", "not a valid, SMS-capable")
	if srv.Requests() != 1 {
		t.Fatalf("a permanent failure was retried: %d requests", srv.Requests())
	}
	wantNoInvalid(t, d)
}

func TestTwilioNotMobileIsAnInvalidRecipient(t *testing.T) {
	srv := startTwilio(t)
	srv.NotMobile("+14155550103")
	p := buildProvider(t, "sms", "twilio", twilioSettings(srv))
	d := deliverThroughSink(t, sms("tw-landline", "+14155550103", "hello"), p)
	vendorOnlyInvalid(t, d, "21614", schemas.InvalidTarget{Platform: "sms", Token: "+14155550103"})
	if len(srv.Messages()) != 0 {
		t.Fatal("the server kept a refused message")
	}
}

func TestTwilioStopIsAnUnsubscribe(t *testing.T) {
	srv := startTwilio(t)
	srv.Unsubscribe("+14155550104")
	p := buildProvider(t, "sms", "twilio", twilioSettings(srv))
	d := deliverThroughSink(t, sms("tw-stop", "+14155550104", "hello"), p)
	vendorUnsubscribed(t, d, "21610", "+14155550104")
}

func TestTwilioBadCredentialsFail(t *testing.T) {
	srv := startTwilio(t)
	settings := strings.Replace(twilioSettings(srv), "authToken: "+twilioTestToken, "authToken: wrong-token", 1)
	p := buildProvider(t, "sms", "twilio", settings)
	d := deliverThroughSink(t, sms("tw-auth", "+14155550105", "hello"), p)
	wantFailed(t, d, "authentication failed", "20003")
	if strings.Contains(d.Final.Reason, "wrong-token") {
		t.Fatal("the reason carries the auth token")
	}
	if srv.Rejected() != 1 || len(srv.Messages()) != 0 {
		t.Fatalf("server rejected %d, accepted %d; want 1 and 0", srv.Rejected(), len(srv.Messages()))
	}
}

// Direct sends: the outcome classes of the other answers, without a broker.
func TestTwilioSendClassifiesAnswers(t *testing.T) {
	srv := startTwilio(t)
	p := buildProvider(t, "sms", "twilio", twilioSettings(srv, "messagingServiceSid: MG0123456789abcdef0123456789abcdef"))
	ctx := context.Background()

	// Body is the fallback of Text; a Messaging Service is sent along.
	n := &schemas.Notification{ID: "b", Channel: "sms", Address: "+14155550110", Content: schemas.Content{Body: "from body"}}
	id, err := p.Send(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	m := srv.Messages()[0]
	if id != m.Sid || m.Body != "from body" || m.MessagingServiceSid != "MG0123456789abcdef0123456789abcdef" || m.StatusCallback != "" {
		t.Fatalf("id %q, message %+v", id, m)
	}

	// A notification that expires tells Twilio not to send it later.
	exp := sms("x", "+14155550113", "code 1234")
	exp.ExpiresAt = time.Now().Add(90 * time.Second).UnixMilli()
	if _, err := p.Send(ctx, exp); err != nil {
		t.Fatal(err)
	}
	if vp := srv.Messages()[1].ValidityPeriod; vp != "90" && vp != "89" {
		t.Fatalf("ValidityPeriod %q, want 90 (seconds left)", vp)
	}
	now := time.Now()
	for exp, want := range map[int64]int{0: 0, now.Add(-time.Second).UnixMilli(): 1, now.Add(100 * time.Millisecond).UnixMilli(): 1,
		now.Add(48 * time.Hour).UnixMilli(): 36000} {
		if got := twilioValidityPeriod(exp, now); got != want {
			t.Errorf("twilioValidityPeriod(%d) = %d, want %d", exp, got, want)
		}
	}

	srv.Invalid("+14155550111")
	_, err = p.Send(ctx, sms("i", "+14155550111", "x"))
	var ir *InvalidRecipientError
	if !errors.As(err, &ir) || ir.Unsubscribe || len(ir.Targets) != 1 || ir.Targets[0].Token != "+14155550111" || !strings.Contains(err.Error(), "21211") {
		t.Fatalf("21211: %v", err)
	}

	srv.Unavailable(1)
	if _, err = p.Send(ctx, sms("u", "+14155550112", "x")); err == nil || IsPermanent(err) {
		t.Fatalf("503: want retry later, got %v", err)
	}
	srv.Throttle(1, 7*time.Second)
	if _, err = p.Send(ctx, sms("t", "+14155550112", "x")); retryAfter(err) != 7*time.Second || IsPermanent(err) || !strings.Contains(err.Error(), "20429") {
		t.Fatalf("429: want retry after 7s, got %v", err)
	}

	before := srv.Requests()
	long := strings.Repeat("é", TwilioMaxBody+1)
	if _, err = p.Send(ctx, sms("l", "+14155550112", long)); !IsPermanent(err) || !strings.Contains(err.Error(), "1601 characters") {
		t.Fatalf("over 1600 characters: %v", err)
	}
	if _, err = p.Send(ctx, sms("e", "+14155550112", "")); !IsPermanent(err) {
		t.Fatalf("no text: %v", err)
	}
	if srv.Requests() != before {
		t.Fatal("a message Twilio would refuse was sent")
	}
	if _, err = p.Send(ctx, sms("ok", "+14155550112", strings.Repeat("é", TwilioMaxBody))); err != nil {
		t.Fatalf("1600 characters: %v", err)
	}
}

func TestTwilioPerNumberLimit(t *testing.T) {
	srv := startTwilio(t)
	p := buildProvider(t, "sms", "twilio", twilioSettings(srv, "perNumberPerMinute: 2", "perNumberBurst: 1"))
	ctx := context.Background()
	if _, err := p.Send(ctx, sms("1", "+14155550120", "a")); err != nil {
		t.Fatal(err)
	}
	_, err := p.Send(ctx, sms("2", "+14155550120", "b"))
	if d := retryAfter(err); err == nil || IsPermanent(err) || d <= 0 || d > 30*time.Second {
		t.Fatalf("second message to the number at once: %v (wait %s), want retry later within 30s", err, d)
	}
	if _, err := p.Send(ctx, sms("3", "+14155550121", "c")); err != nil {
		t.Fatalf("another number was limited: %v", err)
	}
	if got := len(srv.Messages()); got != 2 || srv.Requests() != 2 {
		t.Fatalf("server saw %d requests, accepted %d; want 2 and 2 (the limited one not sent)", srv.Requests(), got)
	}
}

func TestTwilioSettingsValidation(t *testing.T) {
	vendorSettingsRefused(t, "sms", "twilio", []vendorSettingsCase{
		{"from: \"+15005550006\"", "missing accountSid, authToken"},
		{"accountSid: AC1\nauthToken: x", "missing from or messagingServiceSid"},
		{"accountSid: XX1\nauthToken: x\nfrom: a", "accountSid must be an account SID"},
		{"accountSid: AC1\nauthToken: x\nmessagingServiceSid: PN1", "messagingServiceSid must be a Messaging Service SID"},
		{"accountSid: AC1\nauthToken: x\nfrom: a\nstatusCallbackUrl: /relative", "statusCallbackUrl"},
		{"accountSid: AC1\nauthToken: x\nfrom: a\nbaseUrl: ftp://x", "baseUrl"},
		{"accountSid: AC1\nauthToken: x\nfrom: a\nperNumberPerMinute: -1", "must not be negative"},
		{"accountSid: AC1\nauthToken: x\nfrom: a\napiKey: k", "field apiKey not found"},
	})
	if _, err := BuildProviders("email", []config.Provider{providerConfig(t, "twilio", "accountSid: AC1\nauthToken: x\nfrom: a")}, Deps{}); err == nil {
		t.Error("twilio was accepted on the email channel")
	}
	p := buildProvider(t, "sms", "twilio", "accountSid: AC1\nauthToken: x\nfrom: a")
	if got := p.(*twilioProvider).endpoint; got != "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json" {
		t.Errorf("default endpoint %s", got)
	}
}

// The example of Twilio's request validation docs, in its two published
// variants (the docs' current numbers, and the twilio-node test fixture);
// the expected signatures were not computed by this code.
func TestTwilioSignatureKnownVectors(t *testing.T) {
	const docURL = "https://mycompany.com/myapp.php?foo=1&bar=2"
	for caller, want := range map[string]string{"+14158675310": "GvWf1cFY/Q7PnoempGyD5oXAezc=", "+14158675309": "RSOYDt4T1cUTdK1PDd93/VVr8B8="} {
		form := url.Values{"CallSid": {"CA1234567890ABCDE"}, "Caller": {caller}, "Digits": {"1234"}, "From": {caller}, "To": {"+18005551212"}}
		if got := TwilioSignature("12345", docURL, form); got != want {
			t.Errorf("signature %s, want %s", got, want)
		}
		if !VerifyTwilioSignature("12345", docURL, form, want) {
			t.Error("the documented signature did not verify")
		}
		if got := twiliotest.Signature("12345", docURL, form); got != want {
			t.Errorf("test server signature %s, want %s", got, want)
		}
		tampered := url.Values{}
		for k, v := range form {
			tampered[k] = slices.Clone(v)
		}
		tampered.Set("Digits", "9999")
		for name, ok := range map[string]bool{
			"tampered param": VerifyTwilioSignature("12345", docURL, tampered, want),
			"other token":    VerifyTwilioSignature("54321", docURL, form, want),
			"other url":      VerifyTwilioSignature("12345", "https://mycompany.com/myapp.php?foo=1", form, want),
			"empty header":   VerifyTwilioSignature("12345", docURL, form, ""),
			"empty token":    VerifyTwilioSignature("", docURL, form, TwilioSignature("", docURL, form)),
		} {
			if ok {
				t.Errorf("%s verified", name)
			}
		}
	}
}

// The test server's status callbacks verify with VerifyTwilioSignature at
// the URL they were sent to, and their statuses map as the receipts endpoint
// needs.
func TestTwilioStatusCallbackFromTestServer(t *testing.T) {
	srv := startTwilio(t)
	type got struct {
		valid  bool
		status string
		sid    string
		code   string
	}
	var mu sync.Mutex
	var calls []got
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		full := "http://" + r.Host + r.URL.RequestURI()
		ok := VerifyTwilioSignature(twilioTestToken, full, r.PostForm, r.Header.Get("X-Twilio-Signature"))
		mu.Lock()
		calls = append(calls, got{ok, TwilioStatus(r.PostForm.Get("MessageStatus")), r.PostForm.Get("MessageSid"), r.PostForm.Get("ErrorCode")})
		mu.Unlock()
		if !ok {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer rcv.Close()
	cb := rcv.URL + "/receipts/twilio?tenant=a%20b"
	p := buildProvider(t, "sms", "twilio", twilioSettings(srv, "statusCallbackUrl: "+cb))
	id, err := p.Send(context.Background(), sms("cb", "+14155550130", "hi"))
	if err != nil {
		t.Fatal(err)
	}
	m := srv.Messages()[0]
	ctx := context.Background()
	for _, st := range []struct{ status, code string }{{"sent", ""}, {"delivered", ""}, {"undelivered", "30003"}} {
		if code, err := srv.SendStatusCallback(ctx, m, st.status, st.code); err != nil || code != http.StatusNoContent {
			t.Fatalf("callback %s: %d %v", st.status, code, err)
		}
	}
	forged := srv.StatusCallbackForm(m, "delivered", "")
	if code, err := srv.PostWithSignature(ctx, cb, forged, twiliotest.Signature("not-the-token", cb, forged)); err != nil || code != http.StatusForbidden {
		t.Fatalf("forged callback: %d %v, want 403", code, err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []got{{true, "", id, ""}, {true, "delivered", id, ""}, {true, "failed", id, "30003"}, {false, "delivered", id, ""}}
	if !slices.Equal(calls, want) {
		t.Fatalf("callbacks %+v\nwant %+v", calls, want)
	}
}

func TestTwilioStatusMapping(t *testing.T) {
	for in, want := range map[string]string{
		"queued": "", "accepted": "", "scheduled": "", "sending": "", "sent": "", "receiving": "", "received": "",
		"delivered": "delivered", "read": "delivered", "Delivered": "delivered",
		"undelivered": "failed", "failed": "failed", "canceled": "failed", "": "", "bogus": "",
	} {
		if got := TwilioStatus(in); got != want {
			t.Errorf("TwilioStatus(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTwilioClassifyBodies(t *testing.T) {
	n := sms("c", "+14155550140", "x")
	now := time.Now()
	h := http.Header{"Retry-After": {"3"}}
	for _, tc := range []struct {
		status int
		body   string
		check  func(id string, err error) bool
	}{
		{201, `{"sid":"SM1","status":"queued"}`, func(id string, err error) bool { return id == "SM1" && err == nil }},
		{200, `{"code":21211,"message":"bad","status":400}`, func(_ string, err error) bool { return asInvalid(err) }},
		{201, `not json`, func(_ string, err error) bool { return IsPermanent(err) }},
		{400, `{"code":21610,"message":"stop","status":400}`, func(_ string, err error) bool {
			var ir *InvalidRecipientError
			return errors.As(err, &ir) && ir.Unsubscribe
		}},
		{401, `{"code":20003,"message":"Authenticate","status":401}`, func(_ string, err error) bool {
			return IsPermanent(err) && strings.Contains(err.Error(), "authentication failed")
		}},
		{429, `{"code":20429,"message":"Too Many Requests","status":429}`, func(_ string, err error) bool { return retryAfter(err) == 3*time.Second }},
		{502, `<html>bad gateway</html>`, func(_ string, err error) bool { return !IsPermanent(err) && retryAfter(err) == 3*time.Second }},
		{400, `{"code":21611,"message":"queue full","status":400}`, func(_ string, err error) bool { return err != nil && !IsPermanent(err) }},
		{404, ``, func(_ string, err error) bool { return IsPermanent(err) }},
	} {
		id, err := classifyTwilio(tc.status, h, []byte(tc.body), now, n)
		if !tc.check(id, err) {
			t.Errorf("HTTP %d %s: %q %v", tc.status, tc.body, id, err)
		}
	}
}

func asInvalid(err error) bool {
	var ir *InvalidRecipientError
	return errors.As(err, &ir) && !ir.Unsubscribe
}

func hasTwilioCode(body string) bool {
	var a twilioAnswer
	return json.Unmarshal([]byte(body), &a) == nil && a.Code != 0
}

func FuzzTwilioClassify(f *testing.F) {
	for _, s := range []string{`{"sid":"SM1"}`, `{"code":21610}`, `{"code":"x"}`, `{"status":"queued","sid":""}`, ``, `[]`, `{"code":20429}`} {
		for _, st := range []int{200, 201, 400, 401, 429, 500} {
			f.Add(st, s, "1")
		}
	}
	n := sms("f", "+14155550150", "x")
	now := time.Now()
	f.Fuzz(func(t *testing.T, status int, body, retry string) {
		h := http.Header{"Retry-After": {retry}}
		id, err := classifyTwilio(status, h, []byte(body), now, n)
		switch {
		case err == nil && id == "":
			t.Fatalf("HTTP %d %q: success without a message id", status, body)
		case err != nil && id != "":
			t.Fatalf("HTTP %d %q: both id %q and error %v", status, body, id, err)
		case err == nil && (status < 200 || status > 299):
			t.Fatalf("HTTP %d %q: an error status succeeded", status, body)
		case err != nil && (status == 429 || status >= 500) && IsPermanent(err) && !hasTwilioCode(body):
			t.Fatalf("HTTP %d %q: a throttle or outage without a code is permanent: %v", status, body, err)
		}
		if d := retryAfter(err); d < 0 || d > 24*time.Hour {
			t.Fatalf("retry after %s", d)
		}
		_ = fmt.Sprint(err)
	})
}

// Twilio's status callbacks read as receipts only with its signature over the
// URL Twilio called (the notification id in its query) and the form.
func TestTwilioReceiptsNeedTheSignature(t *testing.T) {
	srv := startTwilio(t)
	p := buildProvider(t, "sms", "twilio", twilioSettings(srv, "statusCallbackUrl: https://notifyd.example.com/v1/receipts/twilio")).(ReceiptProvider)
	form := url.Values{"MessageSid": {"SM1"}, "MessageStatus": {"delivered"}, "AccountSid": {twilioTestSid}}
	called := "https://notifyd.example.com/v1/receipts/twilio?n=n-1"
	post := func(u, sig string, f url.Values) ([]Receipt, error) {
		r := httptest.NewRequest("POST", u, strings.NewReader(f.Encode()))
		r.Header.Set("X-Twilio-Signature", sig)
		return p.Receipts(r, []byte(f.Encode()))
	}
	rs, err := post(called, TwilioSignature(twilioTestToken, called, form), form)
	if err != nil || len(rs) != 1 || rs[0].NotificationID != "n-1" || rs[0].Status != "delivered" || rs[0].ProviderMessageID != "SM1" {
		t.Fatalf("signed callback: %+v %v", rs, err)
	}
	if _, err := post(called, TwilioSignature("other-token", called, form), form); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("wrong token: %v", err)
	}
	other := "https://notifyd.example.com/v1/receipts/twilio?n=n-2" // the id changed on the way
	if _, err := post(other, TwilioSignature(twilioTestToken, called, form), form); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("changed id: %v", err)
	}
	stop := url.Values{"MessageSid": {"SM1"}, "MessageStatus": {"failed"}, "ErrorCode": {"21610"}}
	rs, err = post(called, TwilioSignature(twilioTestToken, called, stop), stop)
	if err != nil || rs[0].Status != "unsubscribed" {
		t.Fatalf("STOP: %+v %v", rs, err)
	}
}

func FuzzTwilioReceipts(f *testing.F) {
	f.Add("n=n-1", "MessageSid=SM1&MessageStatus=delivered", "sig")
	f.Add("", "%zz", "")
	p := twilioProviderForFuzz(f)
	f.Fuzz(func(t *testing.T, query, body, sig string) {
		r := httptest.NewRequest("POST", "https://notifyd.example.com/v1/receipts/twilio", strings.NewReader(body))
		r.URL.RawQuery = query
		r.Header.Set("X-Twilio-Signature", sig)
		rs, err := p.Receipts(r, []byte(body))
		if err == nil && (len(rs) != 1 || rs[0].NotificationID == "") {
			t.Fatalf("accepted %q %q: %+v", query, body, rs)
		}
	})
}

func twilioProviderForFuzz(f *testing.F) ReceiptProvider {
	var node yaml.Node
	if err := yaml.Unmarshal([]byte("accountSid: "+twilioTestSid+"\nauthToken: "+twilioTestToken+
		"\nfrom: \"+15005550006\"\nstatusCallbackUrl: https://notifyd.example.com/v1/receipts/twilio"), &node); err != nil {
		f.Fatal(err)
	}
	ps, err := BuildProviders("sms", []config.Provider{{Name: "twilio", Type: "twilio", Settings: map[string]yaml.Node{"twilio": *node.Content[0]}}}, Deps{})
	if err != nil {
		f.Fatal(err)
	}
	return ps[0].(ReceiptProvider)
}

// ---- assertions shared by the twilio, aliyunsms, tencentsms and sendgrid tests

// vendorOneAccepted: the delivery was sent and the vendor's stand-in
// accepted exactly one message, which it returns.
func vendorOneAccepted[M any](t *testing.T, d delivery, msgs []M) M {
	t.Helper()
	if d.Final.Status != "sent" {
		t.Fatalf("status %s (%s), want sent", d.Final.Status, d.Final.Reason)
	}
	if len(msgs) != 1 {
		t.Fatalf("server accepted %d messages, want 1", len(msgs))
	}
	return msgs[0]
}

// vendorRetryingBeforeSent: the delivery was retried, then sent.
func vendorRetryingBeforeSent(t *testing.T, d delivery) {
	t.Helper()
	st := d.Statuses()
	if d.Final.Status != "sent" || !slices.Contains(st, "retrying") || slices.Index(st, "retrying") > slices.Index(st, "sent") {
		t.Fatalf("statuses %v (%s), want retrying then sent", st, d.Final.Reason)
	}
}

// vendorOnlyInvalid: the delivery failed with a reason saying reason, and
// its feedback names target, and only it, as invalid, and unsubscribes
// nothing.
func vendorOnlyInvalid(t *testing.T, d delivery, reason string, target schemas.InvalidTarget) {
	t.Helper()
	vendorFailedSaying(t, d, reason)
	if d.Feedback == nil || d.Feedback.Unsubscribe || len(d.Feedback.Invalid) != 1 || d.Feedback.Invalid[0] != target {
		t.Fatalf("feedback %+v, want %+v invalid (not an unsubscribe)", d.Feedback, target)
	}
}

// vendorUnsubscribed: the delivery failed with a reason saying reason, and
// its feedback is an unsubscribe of the number, only it.
func vendorUnsubscribed(t *testing.T, d delivery, reason, number string) {
	t.Helper()
	vendorFailedSaying(t, d, reason)
	if d.Feedback == nil || !d.Feedback.Unsubscribe || len(d.Feedback.Invalid) != 1 || d.Feedback.Invalid[0].Token != number {
		t.Fatalf("feedback %+v, want an unsubscribe of %s", d.Feedback, number)
	}
}

func vendorFailedSaying(t *testing.T, d delivery, reason string) {
	t.Helper()
	if d.Final.Status != "failed" || !strings.Contains(d.Final.Reason, reason) {
		t.Fatalf("final %s %q, want failed saying %q", d.Final.Status, d.Final.Reason, reason)
	}
}

// vendorSettingsCase is a settings section and what its error must say.
type vendorSettingsCase struct{ yaml, want string }

// vendorSettingsRefused: a provider of type typ is refused on channel from
// each section, with an error naming the type and saying the case's want.
func vendorSettingsRefused(t *testing.T, channel, typ string, cases []vendorSettingsCase) {
	t.Helper()
	for _, tc := range cases {
		err := buildErr(t, channel, typ, tc.yaml)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), typ) {
			t.Errorf("%q: %v, want %q", tc.yaml, err, tc.want)
		}
	}
}
