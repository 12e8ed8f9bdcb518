package sinks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/aliyunsmstest"
)

const (
	aliyunTestKeyID  = "LTAI5tTestKeyId"
	aliyunTestSecret = "aliyun-test-secret"
	aliyunTestSign   = "通知宝"
)

func startAliyunSMS(t *testing.T) *aliyunsmstest.Server {
	t.Helper()
	srv := aliyunsmstest.Start(aliyunTestKeyID, aliyunTestSecret)
	t.Cleanup(srv.Close)
	srv.Approve(aliyunTestSign, "SMS_123456789", "SMS_DEFAULT")
	return srv
}

// aliyunSMSProviderFor builds an aliyunsms provider for srv from YAML, with
// extra settings lines appended.
func aliyunSMSProviderFor(t *testing.T, srv *aliyunsmstest.Server, secret string, extra ...string) Provider {
	t.Helper()
	y := fmt.Sprintf("accessKeyId: %s\naccessKeySecret: %s\nsignName: %s\nbaseUrl: %s\ntimeout: 2s\n",
		aliyunTestKeyID, secret, aliyunTestSign, srv.BaseURL())
	return buildProvider(t, "sms", "aliyunsms", y+strings.Join(extra, "\n"))
}

func smsTemplateNotification(id, to, template string, params map[string]string) *schemas.Notification {
	return &schemas.Notification{ID: id, UserID: "user-" + id, Channel: "sms", Address: to,
		Content: schemas.Content{Text: "fallback text is not sent", TemplateID: template, TemplateParams: params}}
}

func TestAliyunSMSAcceptedWithExactRequest(t *testing.T) {
	srv := startAliyunSMS(t)
	p := aliyunSMSProviderFor(t, srv, aliyunTestSecret)
	params := map[string]string{"code": "123456", "name": "张三 & <Ann>+*~/"}
	d := deliverThroughSink(t, smsTemplateNotification("ali-ok", "+86 138-0013-8000", "SMS_123456789", params), p)
	m := vendorOneAccepted(t, d, srv.Messages())
	if d.Final.ProviderMessageID != m.BizID || m.BizID == "" {
		t.Fatalf("provider message id %q, server BizId %q", d.Final.ProviderMessageID, m.BizID)
	}
	if m.PhoneNumbers != "8613800138000" || m.SignName != aliyunTestSign || m.TemplateCode != "SMS_123456789" ||
		!reflect.DeepEqual(m.TemplateParam, params) || m.AccessKeyID != aliyunTestKeyID {
		t.Fatalf("server got %+v", m)
	}
	if srv.Rejected() != 0 {
		t.Fatalf("%d requests rejected", srv.Rejected())
	}
}

// The section's templateCode serves a notification naming no template; a
// notification without parameters sends no TemplateParam.
func TestAliyunSMSDefaultTemplate(t *testing.T) {
	srv := startAliyunSMS(t)
	p := aliyunSMSProviderFor(t, srv, aliyunTestSecret, "templateCode: SMS_DEFAULT")
	if _, err := p.Send(context.Background(), smsTemplateNotification("ali-def", "13800138000", "", nil)); err != nil {
		t.Fatal(err)
	}
	m := srv.Messages()
	if len(m) != 1 || m[0].TemplateCode != "SMS_DEFAULT" || m[0].TemplateParam != nil || m[0].PhoneNumbers != "13800138000" {
		t.Fatalf("server got %+v", m)
	}
	// No template anywhere: refused before any call.
	p = aliyunSMSProviderFor(t, srv, aliyunTestSecret)
	_, err := p.Send(context.Background(), smsTemplateNotification("ali-none", "13800138000", "", nil))
	if !IsPermanent(err) || !strings.Contains(err.Error(), "templateCode") || srv.Requests() != 1 {
		t.Fatalf("no template: %v (requests %d)", err, srv.Requests())
	}
}

func TestAliyunSMSThrottledThenSent(t *testing.T) {
	srv := startAliyunSMS(t)
	srv.FailNext(1, aliyunsmstest.Throttled) // HTTP 400 Throttling.User: classified by Code
	p := aliyunSMSProviderFor(t, srv, aliyunTestSecret)
	d := deliverThroughSink(t, smsTemplateNotification("ali-retry", "+8613800138001", "SMS_123456789", map[string]string{"code": "1"}), p)
	wantRetriedThenSent(t, d)
	if n := len(srv.Messages()); n != 1 {
		t.Fatalf("server accepted %d messages, want 1", n)
	}
	if srv.Requests() != 2 {
		t.Fatalf("%d requests, want 2", srv.Requests())
	}
}

func TestAliyunSMSUnapprovedTemplateFailsPermanently(t *testing.T) {
	srv := startAliyunSMS(t)
	p := aliyunSMSProviderFor(t, srv, aliyunTestSecret)
	d := deliverThroughSink(t, smsTemplateNotification("ali-perm", "+8613800138002", "SMS_NOT_APPROVED", nil), p)
	wantFailed(t, d, "isv.SMS_TEMPLATE_ILLEGAL")
	if srv.Requests() != 1 || len(srv.Messages()) != 0 {
		t.Fatalf("requests %d, accepted %d: a permanent failure was retried", srv.Requests(), len(srv.Messages()))
	}
}

func TestAliyunSMSInvalidNumberIsRemoved(t *testing.T) {
	srv := startAliyunSMS(t)
	srv.MarkInvalid("8613800000000")
	p := aliyunSMSProviderFor(t, srv, aliyunTestSecret)
	d := deliverThroughSink(t, smsTemplateNotification("ali-invalid", "+8613800000000", "SMS_123456789", nil), p)
	vendorOnlyInvalid(t, d, "isv.MOBILE_NUMBER_ILLEGAL", schemas.InvalidTarget{Platform: "sms", Token: "+8613800000000"})
}

func TestAliyunSMSWrongSecretIsRejected(t *testing.T) {
	srv := startAliyunSMS(t)
	p := aliyunSMSProviderFor(t, srv, "not-the-secret")
	d := deliverThroughSink(t, smsTemplateNotification("ali-badsig", "+8613800138003", "SMS_123456789", map[string]string{"code": "9"}), p)
	wantFailed(t, d, "SignatureDoesNotMatch", "accessKeySecret")
	if strings.Contains(d.Final.Reason, "not-the-secret") {
		t.Fatalf("the reason carries the secret: %q", d.Final.Reason)
	}
	if srv.Rejected() != 1 || len(srv.Messages()) != 0 {
		t.Fatalf("rejected %d, accepted %d", srv.Rejected(), len(srv.Messages()))
	}
}

// The signature covers what is sent: a request changed after signing (a
// proxy rewriting the body, a replayed nonce) is refused.
func TestAliyunSMSSignatureCoversBodyAndNonce(t *testing.T) {
	srv := startAliyunSMS(t)
	body := []byte(aliyunCanonicalQuery(map[string]string{"PhoneNumbers": "8613800138000", "SignName": aliyunTestSign, "TemplateCode": "SMS_123456789"}))
	send := func(b []byte, nonce string, tamper func(*http.Request)) int {
		req, _ := http.NewRequest(http.MethodPost, srv.BaseURL(), strings.NewReader(string(b)))
		req.Header.Set("Content-Type", aliyunFormContentType)
		aliyunSignRequest(req, body, aliyunTestKeyID, aliyunTestSecret, time.Now(), nonce)
		if tamper != nil {
			tamper(req)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readBody(resp)
		return resp.StatusCode
	}
	if c := send(body, "n1", nil); c != 200 {
		t.Fatalf("signed request: HTTP %d", c)
	}
	if c := send(body, "n1", nil); c != 400 {
		t.Fatalf("replayed nonce: HTTP %d, want 400", c)
	}
	if c := send([]byte(strings.Replace(string(body), "8613800138000", "8613900139000", 1)), "n2", nil); c != 400 {
		t.Fatalf("changed body: HTTP %d, want 400", c)
	}
	if c := send(body, "n3", func(r *http.Request) { r.Header.Set("x-acs-action", "SendBatchSms") }); c != 400 {
		t.Fatalf("changed signed header: HTTP %d, want 400", c)
	}
	if len(srv.Messages()) != 1 || srv.Rejected() != 3 {
		t.Fatalf("accepted %d, rejected %d", len(srv.Messages()), srv.Rejected())
	}
}

func TestAliyunSMSPerNumberLimit(t *testing.T) {
	srv := startAliyunSMS(t)
	p := aliyunSMSProviderFor(t, srv, aliyunTestSecret, "perNumberPerMinute: 1", "perNumberBurst: 1")
	ctx := context.Background()
	if _, err := p.Send(ctx, smsTemplateNotification("a1", "+8613800138004", "SMS_123456789", nil)); err != nil {
		t.Fatal(err)
	}
	// The same number written differently is the same number.
	_, err := p.Send(ctx, smsTemplateNotification("a2", "0086 138 0013 8004", "SMS_123456789", nil))
	if IsPermanent(err) || retryAfter(err) <= 0 || retryAfter(err) > time.Minute {
		t.Fatalf("second message to the number within the minute: %v, want retry later within a minute", err)
	}
	if _, err := p.Send(ctx, smsTemplateNotification("a3", "+8613800138005", "SMS_123456789", nil)); err != nil {
		t.Fatalf("another number was limited: %v", err)
	}
	if srv.Requests() != 2 {
		t.Fatalf("%d requests, want 2 (the limited one is not sent)", srv.Requests())
	}
}

func TestAliyunSMSNotANumberIsInvalid(t *testing.T) {
	srv := startAliyunSMS(t)
	p := aliyunSMSProviderFor(t, srv, aliyunTestSecret)
	n := smsTemplateNotification("a-bad", "user@example.com", "SMS_123456789", nil)
	_, err := p.Send(context.Background(), n)
	var ir *InvalidRecipientError
	if !errors.As(err, &ir) || ir.Targets[0] != AddressTarget(n) || srv.Requests() != 0 {
		t.Fatalf("not a number: %v (requests %d)", err, srv.Requests())
	}
}

func TestAliyunSMSSettingsValidation(t *testing.T) {
	vendorSettingsRefused(t, "sms", "aliyunsms", []vendorSettingsCase{
		{"accessKeySecret: s\nsignName: x", "missing accessKeyId"},
		{"accessKeyId: k\nsignName: x", "missing accessKeySecret"},
		{"accessKeyId: k\naccessKeySecret: s", "missing signName"},
		{"accessKeyId: k\naccessKeySecret: s\nsignName: x\nbaseUrl: ftp://x", "not an http(s) URL"},
		{"accessKeyId: k\naccessKeySecret: s\nsignName: x\nbaseUrl: https://x/api", "has a path"},
		{"accessKeyId: k\naccessKeySecret: s\nsignName: x\nperNumberPerMinute: -1", "must not be negative"},
		{"accessKeyId: k\naccessKeySecret: s\nsignName: x\nsecretKey: y", "field secretKey not found"},
	})
	if _, err := BuildProviders("email", []config.Provider{providerConfig(t, "aliyunsms", "accessKeyId: k\naccessKeySecret: s\nsignName: x")},
		Deps{}); err == nil || !strings.Contains(err.Error(), "serves sms") {
		t.Errorf("aliyunsms on email: %v", err)
	}
	p, err := BuildProviders("sms", []config.Provider{providerConfig(t, "aliyunsms", "accessKeyId: k\naccessKeySecret: s\nsignName: x")}, Deps{})
	if err != nil || p[0].(*aliyunSMSProvider).endpoint.String() != aliyunSMSDefaultBaseURL {
		t.Fatalf("defaults: %v", err)
	}
}

func TestAliyunSMSClassify(t *testing.T) {
	n := &schemas.Notification{Channel: "sms", Address: "+8613800138000"}
	now := time.Now()
	type want struct {
		id        string
		class     string // ok, retry, invalid, unsubscribe, permanent
		after     time.Duration
		inMessage string
	}
	for _, tc := range []struct {
		status int
		body   string
		want   want
	}{
		{200, `{"Code":"OK","Message":"OK","BizId":"9006^0","RequestId":"R"}`, want{id: "9006^0", class: "ok"}},
		{200, `{"Code":"isv.BUSINESS_LIMIT_CONTROL","Message":"触发分钟级流控Permits:1"}`, want{class: "retry", after: time.Minute}},
		{200, `{"Code":"isv.BUSINESS_LIMIT_CONTROL","Message":"触发小时级流控Permits:5"}`, want{class: "retry", after: time.Hour}},
		{200, `{"Code":"isv.BUSINESS_LIMIT_CONTROL","Message":"触发天级流控Permits:10"}`, want{class: "retry", after: 24 * time.Hour}},
		{200, `{"Code":"isp.SYSTEM_ERROR","Message":"x"}`, want{class: "retry"}},
		{503, `{"Code":"ServiceUnavailable","Message":"x"}`, want{class: "retry"}},
		{400, `{"Code":"Throttling.User","Message":"x"}`, want{class: "retry"}},
		{500, `{"Code":"SomethingNew","Message":"x"}`, want{class: "retry"}},
		{502, `<html>bad gateway</html>`, want{class: "retry"}},
		{200, `{"Code":"isv.MOBILE_NUMBER_ILLEGAL","Message":"非法手机号"}`, want{class: "invalid", inMessage: "isv.MOBILE_NUMBER_ILLEGAL"}},
		// Documented as a blacklisted keyword in the template variables:
		// the content's fault, the number is kept.
		{200, `{"Code":"isv.BLACK_KEY_CONTROL_LIMIT","Message":"黑名单管控"}`, want{class: "permanent", inMessage: "keyword"}},
		{200, `{"Code":"isv.SMS_SIGNATURE_ILLEGAL","Message":"x"}`, want{class: "permanent", inMessage: "isv.SMS_SIGNATURE_ILLEGAL"}},
		{200, `{"Code":"isv.SMS_TEMPLATE_ILLEGAL","Message":"x"}`, want{class: "permanent", inMessage: "isv.SMS_TEMPLATE_ILLEGAL"}},
		{200, `{"Code":"isv.AMOUNT_NOT_ENOUGH","Message":"x"}`, want{class: "permanent", inMessage: "isv.AMOUNT_NOT_ENOUGH"}},
		{400, `{"Code":"SignatureDoesNotMatch","Message":"x"}`, want{class: "permanent", inMessage: "accessKeySecret"}},
		{404, `{"Code":"InvalidAccessKeyId.NotFound","Message":"x"}`, want{class: "permanent", inMessage: "accessKeyId"}},
		{200, `{"Message":"no code"}`, want{class: "permanent"}},
		{200, ``, want{class: "permanent"}},
		{403, `nope`, want{class: "permanent"}},
	} {
		id, err := classifyAliyunSMS(tc.status, http.Header{}, []byte(tc.body), now, n)
		if got := smsClass(err); got != tc.want.class || id != tc.want.id {
			t.Errorf("%d %s: id %q class %s (%v), want %q %s", tc.status, tc.body, id, got, err, tc.want.id, tc.want.class)
			continue
		}
		if tc.want.after != 0 && retryAfter(err) != tc.want.after {
			t.Errorf("%s: retry after %s, want %s", tc.body, retryAfter(err), tc.want.after)
		}
		if tc.want.inMessage != "" && !strings.Contains(err.Error(), tc.want.inMessage) {
			t.Errorf("%s: %v does not say %q", tc.body, err, tc.want.inMessage)
		}
	}
	// A Retry-After header wins over the code's default.
	_, err := classifyAliyunSMS(503, http.Header{"Retry-After": {"7"}}, []byte(`{"Code":"isp.SYSTEM_ERROR"}`), now, n)
	if retryAfter(err) != 7*time.Second {
		t.Fatalf("Retry-After: %v", err)
	}
}

// smsClass names the outcome class of a provider's error.
func smsClass(err error) string {
	var ir *InvalidRecipientError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &ir) && ir.Unsubscribe:
		return "unsubscribe"
	case errors.As(err, &ir):
		return "invalid"
	case IsPermanent(err):
		return "permanent"
	}
	return "retry"
}

// Keys and values are encoded as RFC 3986 says: unreserved characters as
// they are, everything else %XX in upper case, a space %20 (not +).
func TestAliyunSMSCanonicalQueryEncoding(t *testing.T) {
	got := aliyunCanonicalQuery(map[string]string{"b": "a b*c~d+e/f", "A": "张", "a": ""})
	if want := "A=%E5%BC%A0&a=&b=a%20b%2Ac~d%2Be%2Ff"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func FuzzAliyunSMSClassify(f *testing.F) {
	for _, s := range []string{`{"Code":"OK","BizId":"1^0"}`, `{"Code":"isv.BUSINESS_LIMIT_CONTROL","Message":"天"}`,
		`{"Code":"isv.MOBILE_NUMBER_ILLEGAL"}`, `{"Code":null}`, `[]`, `{"Code":1}`, ``, `{"Code":"Throttling"}`} {
		f.Add(200, s)
		f.Add(503, s)
	}
	n := &schemas.Notification{Channel: "sms", Address: "+8613800138000"}
	now := time.Now()
	f.Fuzz(func(t *testing.T, status int, body string) {
		id, err := classifyAliyunSMS(status, http.Header{}, []byte(body), now, n)
		var a aliyunSMSAnswer
		if err == nil && (json.Unmarshal([]byte(body), &a) != nil || a.Code != "OK") {
			t.Fatalf("accepted an answer without Code OK: %q", body)
		}
		if err != nil && id != "" {
			t.Fatalf("an id with an error: %q %v", id, err)
		}
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty reason")
			}
			if d := retryAfter(err); d < 0 || d > 24*time.Hour {
				t.Fatalf("retry after %s", d)
			}
		}
	})
}

// A chain of the two vendors: Alibaba down, Tencent takes the message.
func TestSMSFailsOverBetweenVendors(t *testing.T) {
	ali := startAliyunSMS(t)
	ali.FailAlways(&aliyunsmstest.SystemError) // HTTP 503 isp.SYSTEM_ERROR
	tc := startTencentSMS(t)
	p1 := aliyunSMSProviderFor(t, ali, aliyunTestSecret, "templateCode: SMS_DEFAULT")
	p2 := tencentSMSProviderFor(t, tc, tencentTestKey, "templateId: \"1234567\"")
	n := smsTemplateNotification("sms-failover", "+8613800138006", "SMS_123456789", map[string]string{"1": "424242", "2": "5"})
	n.Content.TemplateID = "" // each vendor's own default template
	d := deliverThroughSink(t, n, p1, p2)
	if d.Final.Status != "sent" || d.Final.Provider != p2.Name() {
		t.Fatalf("status %s by %q (%s), want sent by %s", d.Final.Status, d.Final.Provider, d.Final.Reason, p2.Name())
	}
	if len(ali.Messages()) != 0 || ali.Requests() == 0 {
		t.Fatalf("alibaba accepted %d of %d requests", len(ali.Messages()), ali.Requests())
	}
	m := tc.Messages()
	if len(m) != 1 || d.Final.ProviderMessageID != m[0].SerialNo || !reflect.DeepEqual(m[0].TemplateParamSet, []string{"424242", "5"}) {
		t.Fatalf("tencent accepted %+v, id %q", m, d.Final.ProviderMessageID)
	}
}
