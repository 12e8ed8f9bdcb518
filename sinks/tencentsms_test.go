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
	"github.com/notifyd/notifyd/sinks/tencentsmstest"
)

const (
	tencentTestID    = "AKIDtencentTestSecretId"
	tencentTestKey   = "tencent-test-secret-key"
	tencentTestApp   = "1400006666"
	tencentTestSign  = "腾讯云"
	tencentTemplate  = "1234567" // two parameters
	tencentTemplate0 = "7654321" // none
)

func startTencentSMS(t *testing.T) *tencentsmstest.Server {
	t.Helper()
	srv := tencentsmstest.Start(tencentTestID, tencentTestKey, tencentTestApp)
	t.Cleanup(srv.Close)
	srv.Approve(tencentTestSign)
	srv.Template(tencentTemplate, 2)
	srv.Template(tencentTemplate0, 0)
	return srv
}

// tencentSMSProviderFor builds a tencentsms provider for srv from YAML, with
// extra settings lines appended.
func tencentSMSProviderFor(t *testing.T, srv *tencentsmstest.Server, key string, extra ...string) Provider {
	t.Helper()
	y := fmt.Sprintf("secretId: %s\nsecretKey: %s\nsmsSdkAppId: \"%s\"\nsignName: %s\nbaseUrl: %s\ntimeout: 2s\n",
		tencentTestID, key, tencentTestApp, tencentTestSign, srv.BaseURL())
	return buildProvider(t, "sms", "tencentsms", y+strings.Join(extra, "\n"))
}

func TestTencentSMSAcceptedWithExactRequest(t *testing.T) {
	srv := startTencentSMS(t)
	p := tencentSMSProviderFor(t, srv, tencentTestKey, "region: ap-nanjing")
	// Values in the order of their keys; the template has two variables.
	n := smsTemplateNotification("tc-ok", "+86 138 0013 8000", tencentTemplate, map[string]string{"2": "5 分钟", "1": "<123456>&"})
	d := deliverThroughSink(t, n, p)
	m := vendorOneAccepted(t, d, srv.Messages())
	if d.Final.ProviderMessageID != m.SerialNo || m.SerialNo == "" {
		t.Fatalf("provider message id %q, server SerialNo %q", d.Final.ProviderMessageID, m.SerialNo)
	}
	want := tencentsmstest.Message{SecretID: tencentTestID, Region: "ap-nanjing", PhoneNumber: "+8613800138000",
		SmsSdkAppID: tencentTestApp, SignName: tencentTestSign, TemplateID: tencentTemplate,
		TemplateParamSet: []string{"<123456>&", "5 分钟"}, SessionContext: "tc-ok", SerialNo: m.SerialNo, At: m.At}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("server got\n%+v\nwant\n%+v", m, want)
	}
}

func TestTencentSMSThrottledThenSent(t *testing.T) {
	srv := startTencentSMS(t)
	srv.FailNext(1, tencentsmstest.RequestLimit) // HTTP 200 with Response.Error
	p := tencentSMSProviderFor(t, srv, tencentTestKey)
	d := deliverThroughSink(t, smsTemplateNotification("tc-retry", "+8613800138001", tencentTemplate0, nil), p)
	wantRetriedThenSent(t, d)
	if n := len(srv.Messages()); n != 1 || srv.Requests() != 2 {
		t.Fatalf("server accepted %d messages of %d requests, want 1 of 2", n, srv.Requests())
	}
}

func TestTencentSMSUnapprovedTemplateFailsPermanently(t *testing.T) {
	srv := startTencentSMS(t)
	p := tencentSMSProviderFor(t, srv, tencentTestKey)
	d := deliverThroughSink(t, smsTemplateNotification("tc-perm", "+8613800138002", "999", nil), p)
	wantFailed(t, d, "FailedOperation.TemplateIncorrectOrUnapproved")
	if srv.Requests() != 1 || len(srv.Messages()) != 0 {
		t.Fatalf("requests %d, accepted %d", srv.Requests(), len(srv.Messages()))
	}
}

func TestTencentSMSInvalidNumberIsRemoved(t *testing.T) {
	srv := startTencentSMS(t)
	srv.MarkInvalid("+8613800000000")
	p := tencentSMSProviderFor(t, srv, tencentTestKey)
	d := deliverThroughSink(t, smsTemplateNotification("tc-invalid", "+8613800000000", tencentTemplate0, nil), p)
	vendorOnlyInvalid(t, d, "InvalidParameterValue.IncorrectPhoneNumber", schemas.InvalidTarget{Platform: "sms", Token: "+8613800000000"})
}

func TestTencentSMSBlacklistedNumberUnsubscribes(t *testing.T) {
	srv := startTencentSMS(t)
	srv.Blacklist("+8613800000001")
	p := tencentSMSProviderFor(t, srv, tencentTestKey)
	d := deliverThroughSink(t, smsTemplateNotification("tc-stop", "+8613800000001", tencentTemplate0, nil), p)
	vendorUnsubscribed(t, d, "FailedOperation.PhoneNumberInBlacklist", "+8613800000001")
}

func TestTencentSMSWrongSecretIsRejected(t *testing.T) {
	srv := startTencentSMS(t)
	p := tencentSMSProviderFor(t, srv, "not-the-key")
	d := deliverThroughSink(t, smsTemplateNotification("tc-badsig", "+8613800138003", tencentTemplate0, nil), p)
	wantFailed(t, d, "AuthFailure.SignatureFailure", "secretKey")
	if strings.Contains(d.Final.Reason, "not-the-key") {
		t.Fatalf("the reason carries the secret key: %q", d.Final.Reason)
	}
	if srv.Rejected() != 1 || len(srv.Messages()) != 0 {
		t.Fatalf("rejected %d, accepted %d", srv.Rejected(), len(srv.Messages()))
	}
}

// The signature covers the body, the host and the date: any of them changed
// after signing is refused.
func TestTencentSMSSignatureCoversRequest(t *testing.T) {
	srv := startTencentSMS(t)
	body := []byte(`{"PhoneNumberSet":["+8613800138000"],"SmsSdkAppId":"` + tencentTestApp + `","SignName":"` + tencentTestSign +
		`","TemplateId":"` + tencentTemplate0 + `"}`)
	host := strings.TrimPrefix(srv.URL, "http://")
	send := func(b []byte, signedAt time.Time, signedHost string) int {
		req, _ := http.NewRequest(http.MethodPost, srv.BaseURL(), strings.NewReader(string(b)))
		req.Header.Set("Content-Type", tencentJSONContentType)
		req.Header.Set("X-TC-Action", "SendSms")
		req.Header.Set("X-TC-Version", "2021-01-11")
		req.Header.Set("X-TC-Region", "ap-guangzhou")
		req.Header.Set("X-TC-Timestamp", fmt.Sprint(time.Now().Unix()))
		req.Header.Set("Authorization", tencentAuthorization(tencentTestID, tencentTestKey, signedHost, body, signedAt))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var a tencentSMSAnswer
		_ = json.Unmarshal(readBody(resp), &a)
		if a.Response.Error != nil {
			return 1
		}
		return 0
	}
	if send(body, time.Now(), host) != 0 {
		t.Fatal("a signed request was refused")
	}
	if send([]byte(strings.Replace(string(body), "138001", "139001", 1)), time.Now(), host) == 0 {
		t.Fatal("a changed body was accepted")
	}
	if send(body, time.Now(), "sms.tencentcloudapi.com") == 0 {
		t.Fatal("a signature for another host was accepted")
	}
	if send(body, time.Now().Add(-48*time.Hour), host) == 0 {
		t.Fatal("a signature of another day was accepted")
	}
	if len(srv.Messages()) != 1 || srv.Rejected() != 3 {
		t.Fatalf("accepted %d, rejected %d", len(srv.Messages()), srv.Rejected())
	}
}

func TestTencentSMSPerNumberLimit(t *testing.T) {
	srv := startTencentSMS(t)
	p := tencentSMSProviderFor(t, srv, tencentTestKey, "perNumberPerMinute: 2", "perNumberBurst: 1")
	ctx := context.Background()
	if _, err := p.Send(ctx, smsTemplateNotification("t1", "+8613800138004", tencentTemplate0, nil)); err != nil {
		t.Fatal(err)
	}
	_, err := p.Send(ctx, smsTemplateNotification("t2", "0086-138-0013-8004", tencentTemplate0, nil))
	if IsPermanent(err) || retryAfter(err) <= 0 || retryAfter(err) > 30*time.Second {
		t.Fatalf("second message to the number: %v, want retry later within 30s", err)
	}
	if srv.Requests() != 1 {
		t.Fatalf("%d requests, want 1", srv.Requests())
	}
}

func TestTencentSMSTemplateParamOrder(t *testing.T) {
	for _, tc := range []struct {
		in   map[string]string
		want []string
		err  string
	}{
		{nil, []string{}, ""},
		{map[string]string{"1": "a"}, []string{"a"}, ""},
		{map[string]string{"10": "j", "2": "b", "1": "a", "3": "c", "4": "d", "5": "e", "6": "f", "7": "g", "8": "h", "9": "i"},
			[]string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}, ""},
		{map[string]string{"p10": "z", "p2": "b", "p1": "a"}, []string{"a", "b", "z"}, ""},
		{map[string]string{"code": "1", "minutes": "5"}, []string{"1", "5"}, ""},
		{map[string]string{"1": "a", "3": "c"}, nil, "parameter 2 is missing"},
		{map[string]string{"2": "b"}, nil, "parameter 1 is missing"},
	} {
		got, err := TencentTemplateParamSet(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%v: %q %v, want %q", tc.in, got, err, tc.want)
		}
	}
	if !naturalLess("a2", "a10") || naturalLess("a10", "a2") || !naturalLess("1", "01") || naturalLess("x", "x") {
		t.Fatal("naturalLess")
	}
}

func TestTencentSMSSettingsValidation(t *testing.T) {
	vendorSettingsRefused(t, "sms", "tencentsms", []vendorSettingsCase{
		{"secretKey: s\nsmsSdkAppId: \"1400\"", "missing secretId"},
		{"secretId: i\nsmsSdkAppId: \"1400\"", "missing secretKey"},
		{"secretId: i\nsecretKey: s", "missing smsSdkAppId"},
		{"secretId: i\nsecretKey: s\nsmsSdkAppId: \"1400\"\nbaseUrl: not a url", "not an http(s) URL"},
		{"secretId: i\nsecretKey: s\nsmsSdkAppId: \"1400\"\nperNumberBurst: -2", "must not be negative"},
		{"secretId: i\nsecretKey: s\nsmsSdkAppId: \"1400\"\naccessKeyId: k", "field accessKeyId not found"},
	})
	ps, err := BuildProviders("sms", []config.Provider{providerConfig(t, "tencentsms", "secretId: i\nsecretKey: s\nsmsSdkAppId: \"1400\"")}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if p := ps[0].(*tencentSMSProvider); p.endpoint.String() != tencentSMSDefaultBaseURL || p.s.Region != "ap-guangzhou" {
		t.Fatalf("defaults: %s %s", p.endpoint, p.s.Region)
	}
}

func TestTencentSMSClassify(t *testing.T) {
	n := &schemas.Notification{Channel: "sms", Address: "+8613800138000"}
	now := time.Now()
	status := func(code string) string {
		return `{"Response":{"SendStatusSet":[{"SerialNo":"","PhoneNumber":"+8613800138000","Fee":0,"Code":"` + code + `","Message":"m"}],"RequestId":"r"}}`
	}
	errorAnswer := func(code string) string {
		return `{"Response":{"Error":{"Code":"` + code + `","Message":"m"},"RequestId":"r"}}`
	}
	for _, tc := range []struct {
		status int
		body   string
		id     string
		class  string
		after  time.Duration
	}{
		{200, `{"Response":{"SendStatusSet":[{"SerialNo":"5000:1","Fee":1,"Code":"Ok","Message":"send success"}],"RequestId":"r"}}`, "5000:1", "ok", 0},
		{200, errorAnswer("RequestLimitExceeded"), "", "retry", 0},
		{200, errorAnswer("RequestLimitExceeded.UinLimitExceeded"), "", "retry", 0},
		{200, errorAnswer("InternalError.Timeout"), "", "retry", 0},
		{200, errorAnswer("AuthFailure.SignatureFailure"), "", "permanent", 0},
		{200, errorAnswer("AuthFailure.SecretIdNotFound"), "", "permanent", 0},
		{200, errorAnswer("FailedOperation.InsufficientBalanceInSmsPackage"), "", "permanent", 0},
		{200, errorAnswer("FailedOperation.PhoneNumberInBlacklist"), "", "unsubscribe", 0},
		{200, status("InvalidParameterValue.IncorrectPhoneNumber"), "", "invalid", 0},
		{200, status("FailedOperation.PhoneNumberInBlacklist"), "", "unsubscribe", 0},
		{200, status("LimitExceeded.PhoneNumberThirtySecondLimit"), "", "retry", 30 * time.Second},
		{200, status("LimitExceeded.PhoneNumberOneHourLimit"), "", "retry", time.Hour},
		{200, status("LimitExceeded.PhoneNumberDailyLimit"), "", "retry", 24 * time.Hour},
		{200, status("FailedOperation.ContainSensitiveWord"), "", "permanent", 0},
		{200, `{"Response":{"RequestId":"r"}}`, "", "permanent", 0},
		{200, `not json`, "", "permanent", 0},
		{502, `<html>`, "", "retry", 0},
		{404, ``, "", "permanent", 0},
	} {
		id, err := classifyTencentSMS(tc.status, http.Header{}, []byte(tc.body), now, n)
		if got := smsClass(err); got != tc.class || id != tc.id {
			t.Errorf("%d %s: id %q class %s (%v), want %q %s", tc.status, tc.body, id, got, err, tc.id, tc.class)
			continue
		}
		if tc.after != 0 && retryAfter(err) != tc.after {
			t.Errorf("%s: retry after %s, want %s", tc.body, retryAfter(err), tc.after)
		}
		var ir *InvalidRecipientError
		if errors.As(err, &ir) && (len(ir.Targets) != 1 || ir.Targets[0] != AddressTarget(n)) {
			t.Errorf("%s: targets %v", tc.body, ir.Targets)
		}
	}
}

func FuzzTencentSMSClassify(f *testing.F) {
	for _, s := range []string{`{"Response":{"SendStatusSet":[{"SerialNo":"1","Code":"Ok"}]}}`,
		`{"Response":{"Error":{"Code":"InternalError"}}}`, `{"Response":{"SendStatusSet":[]}}`, `{"Response":null}`,
		`{"Response":{"Error":null,"SendStatusSet":[{"Code":5}]}}`, ``} {
		f.Add(200, s)
		f.Add(500, s)
	}
	n := &schemas.Notification{Channel: "sms", Address: "+8613800138000"}
	now := time.Now()
	f.Fuzz(func(t *testing.T, status int, body string) {
		id, err := classifyTencentSMS(status, http.Header{}, []byte(body), now, n)
		var a tencentSMSAnswer
		if err == nil && (json.Unmarshal([]byte(body), &a) != nil || len(a.Response.SendStatusSet) == 0 ||
			a.Response.SendStatusSet[0].Code != "Ok") {
			t.Fatalf("accepted an answer without an Ok status: %q", body)
		}
		if err != nil && (id != "" || err.Error() == "") {
			t.Fatalf("id %q with error %v", id, err)
		}
		if d := retryAfter(err); d < 0 || d > 24*time.Hour {
			t.Fatalf("retry after %s", d)
		}
	})
}
