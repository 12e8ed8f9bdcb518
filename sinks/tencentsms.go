package sinks

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// Tencent Cloud SMS, API version 2021-01-11, action SendSms, signed with
// TC3-HMAC-SHA256:
//
//	POST {baseUrl}/   Content-Type: application/json; charset=utf-8
//	X-TC-Action: SendSms, X-TC-Version: 2021-01-11, X-TC-Timestamp, X-TC-Region
//	Authorization: TC3-HMAC-SHA256 Credential=<SecretId>/<date>/sms/tc3_request,
//	               SignedHeaders=content-type;host, Signature=<hex>
//	{"PhoneNumberSet":["+86…"],"SmsSdkAppId","SignName","TemplateId","TemplateParamSet":[…],"SessionContext"}
//
// Tencent answers HTTP 200 whatever happened: {"Response":{"Error":{"Code",
// "Message"},"RequestId"}} when it refused the request, otherwise one
// SendStatusSet entry per number whose Code is "Ok" when the number was taken
// (SerialNo is the message id).
//
// Template parameters: a Tencent template numbers its variables {1}, {2}, …
// and TemplateParamSet lists their values in that order. The notification's
// content.templateParams map is turned into that list by sorting its keys
// naturally (runs of digits compared as numbers: "1" < "2" < "10"; other
// text compared as it is), so {"1":"a","2":"b","10":"c"} sends ["a","b","c"].
// When every key is a number they must be 1…n without a gap: a missing "2"
// would shift every later value into the wrong variable.

// TencentSMSSettings is the `tencentsms:` section of a provider of type tencentsms.
type TencentSMSSettings struct {
	SecretID  string `yaml:"secretId"`
	SecretKey string `yaml:"secretKey"`
	// SmsSdkAppID is the SMS application's SdkAppId (starts with 14…).
	SmsSdkAppID string `yaml:"smsSdkAppId"`
	// SignName is the approved signature; required by Tencent for numbers in
	// mainland China, optional for the others.
	SignName string `yaml:"signName"`
	// TemplateID is the approved template used when the notification's
	// content names none (content.templateId).
	TemplateID string `yaml:"templateId"`
	// Region is the X-TC-Region (default ap-guangzhou).
	Region string `yaml:"region"`
	// baseUrl, timeout, perNumberPerMinute, perNumberBurst. Tencent's
	// defaults allow one message per number every 30 seconds.
	SMSVendorSettings `yaml:",inline"`
}

const (
	tencentSMSDefaultBaseURL = "https://sms.tencentcloudapi.com/"
	tencentSMSDefaultRegion  = "ap-guangzhou"
	tencentSMSAction         = "SendSms"
	tencentSMSVersion        = "2021-01-11"
	tencentSMSService        = "sms"
	tencentSignAlgorithm     = "TC3-HMAC-SHA256"
	tencentJSONContentType   = "application/json; charset=utf-8"
)

type tencentSMSProvider struct {
	smsVendor
	s        TencentSMSSettings
	endpoint *url.URL
}

func init() {
	Register("tencentsms", Type{Channels: []string{"sms"}, New: newTencentSMSProvider})
}

func newTencentSMSProvider(spec Spec) (Provider, error) {
	s, err := smsDecodeSettings[TencentSMSSettings](spec, "tencentsms")
	if err != nil {
		return nil, err
	}
	if s.Region == "" {
		s.Region = tencentSMSDefaultRegion
	}
	return &tencentSMSProvider{smsVendor: newSMSVendor(spec, "tencentsms", s.SMSVendorSettings), s: s,
		endpoint: smsRootEndpoint(s.BaseURL, tencentSMSDefaultBaseURL)}, nil
}

func (s TencentSMSSettings) validate() error {
	if err := requireSettings("secretId", s.SecretID, "secretKey", s.SecretKey, "smsSdkAppId", s.SmsSdkAppID); err != nil {
		return err
	}
	return s.checkRootAPI()
}

// tencentPhone is the number as Tencent takes it: E.164 (+86…), or the bare
// national number, which Tencent reads as mainland China. Spaces, dashes,
// dots and parentheses are dropped; a leading 00 becomes +.
func tencentPhone(address string) (string, bool) {
	num := smsStripPhone(address)
	if strings.HasPrefix(num, "00") {
		num = "+" + num[2:]
	}
	if !smsDigits(strings.TrimPrefix(num, "+")) {
		return "", false
	}
	return num, true
}

// TencentTemplateParamSet orders template parameters for Tencent's
// TemplateParamSet: values by their keys sorted naturally (see above). When
// every key is a number, they must run 1…n.
func TencentTemplateParamSet(params map[string]string) ([]string, error) {
	keys := make([]string, 0, len(params))
	numeric := true
	for k := range params {
		keys = append(keys, k)
		if n, err := strconv.Atoi(k); err != nil || n < 1 || strconv.Itoa(n) != k {
			numeric = false
		}
	}
	sort.Slice(keys, func(i, j int) bool { return naturalLess(keys[i], keys[j]) })
	if numeric {
		for i, k := range keys {
			if k != strconv.Itoa(i+1) {
				return nil, fmt.Errorf("template parameters are numbered %s: parameter %d is missing", strings.Join(keys, ","), i+1)
			}
		}
	}
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = params[k]
	}
	return out, nil
}

// naturalLess compares a and b with runs of ASCII digits compared as numbers.
func naturalLess(a, b string) bool {
	isDigit := func(c byte) bool { return c >= '0' && c <= '9' }
	for a != "" && b != "" {
		if isDigit(a[0]) && isDigit(b[0]) {
			i, j := 0, 0
			for i < len(a) && isDigit(a[i]) {
				i++
			}
			for j < len(b) && isDigit(b[j]) {
				j++
			}
			na, nb := strings.TrimLeft(a[:i], "0"), strings.TrimLeft(b[:j], "0")
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			if i != j { // same value, fewer leading zeros first
				return i < j
			}
			a, b = a[i:], b[j:]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

// tencentSendSms is the SendSms request body.
type tencentSendSms struct {
	PhoneNumberSet   []string `json:"PhoneNumberSet"`
	SmsSdkAppID      string   `json:"SmsSdkAppId"`
	SignName         string   `json:"SignName,omitempty"`
	TemplateID       string   `json:"TemplateId"`
	TemplateParamSet []string `json:"TemplateParamSet,omitempty"`
	// SessionContext comes back in the answer and the status callbacks: the
	// notification's id.
	SessionContext string `json:"SessionContext,omitempty"`
}

func (p *tencentSMSProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	phone, template, err := p.addressee(n, tencentPhone, p.s.TemplateID,
		"tencentsms: no template id: Tencent sends only approved templates; set the content's templateId or tencentsms.templateId")
	if err != nil {
		return "", err
	}
	params, err := TencentTemplateParamSet(n.Content.TemplateParams)
	if err != nil {
		return "", Permanent(fmt.Errorf("tencentsms: %w", err))
	}
	now := p.now()
	if err := p.takeNumber(phone, now); err != nil {
		return "", err
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(tencentSendSms{PhoneNumberSet: []string{phone}, SmsSdkAppID: p.s.SmsSdkAppID,
		SignName: p.s.SignName, TemplateID: template, TemplateParamSet: params, SessionContext: n.ID}); err != nil {
		return "", Permanent(fmt.Errorf("tencentsms: %w", err))
	}
	body := bytes.TrimSuffix(b.Bytes(), []byte("\n"))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.endpoint.String(), bytes.NewReader(body))
	if err != nil {
		return "", Permanent(fmt.Errorf("tencentsms: %w", err))
	}
	req.Header.Set("Content-Type", tencentJSONContentType)
	req.Header.Set("User-Agent", "notifyd-tencentsms/1")
	req.Header.Set("X-TC-Action", tencentSMSAction)
	req.Header.Set("X-TC-Version", tencentSMSVersion)
	req.Header.Set("X-TC-Region", p.s.Region)
	req.Header.Set("X-TC-Timestamp", strconv.FormatInt(now.Unix(), 10))
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	req.Header.Set("Authorization", tencentAuthorization(p.s.SecretID, p.s.SecretKey, host, body, now))
	resp, err := p.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("tencentsms: %w", smsTransportError(err))
	}
	answer := readBody(resp)
	return classifyTencentSMS(resp.StatusCode, resp.Header, answer, p.now(), n)
}

// tencentAuthorization signs a POST of body to host at now with TC3-HMAC-SHA256:
//
//	CanonicalRequest = "POST\n/\n\n" + "content-type:application/json; charset=utf-8\nhost:<host>\n" +
//	                   "\ncontent-type;host\n" + hex(sha256(body))
//	StringToSign     = "TC3-HMAC-SHA256\n" + timestamp + "\n" + date + "/sms/tc3_request\n" + hex(sha256(CanonicalRequest))
//	kDate = HMAC("TC3"+SecretKey, date); kService = HMAC(kDate, "sms"); kSigning = HMAC(kService, "tc3_request")
//	Signature = hex(HMAC(kSigning, StringToSign))
//
// with date the UTC date (YYYY-MM-DD) of the timestamp, header names and
// values lowercased and trimmed.
func tencentAuthorization(secretID, secretKey, host string, body []byte, now time.Time) string {
	ts := now.Unix()
	date := time.Unix(ts, 0).UTC().Format("2006-01-02")
	payload := sha256.Sum256(body)
	canonHeaders := "content-type:" + strings.ToLower(tencentJSONContentType) + "\n" + "host:" + strings.ToLower(strings.TrimSpace(host)) + "\n"
	signed := "content-type;host"
	canonical := "POST\n/\n\n" + canonHeaders + "\n" + signed + "\n" + hex.EncodeToString(payload[:])
	crHash := sha256.Sum256([]byte(canonical))
	scope := date + "/" + tencentSMSService + "/tc3_request"
	toSign := tencentSignAlgorithm + "\n" + strconv.FormatInt(ts, 10) + "\n" + scope + "\n" + hex.EncodeToString(crHash[:])
	hm := func(key []byte, msg string) []byte {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(msg))
		return m.Sum(nil)
	}
	kSigning := hm(hm(hm([]byte("TC3"+secretKey), date), tencentSMSService), "tc3_request")
	sig := hex.EncodeToString(hm(kSigning, toSign))
	return tencentSignAlgorithm + " Credential=" + secretID + "/" + scope + ", SignedHeaders=" + signed + ", Signature=" + sig
}

// tencentSMSAnswer is what notifyd reads of Tencent's answer.
type tencentSMSAnswer struct {
	Response struct {
		Error *struct {
			Code    string `json:"Code"`
			Message string `json:"Message"`
		} `json:"Error"`
		SendStatusSet []struct {
			SerialNo    string `json:"SerialNo"`
			PhoneNumber string `json:"PhoneNumber"`
			Code        string `json:"Code"`
			Message     string `json:"Message"`
		} `json:"SendStatusSet"`
		RequestID string `json:"RequestId"`
	} `json:"Response"`
}

// classifyTencentSMS turns Tencent's answer to SendSms (one number) into the
// SerialNo or a classified error.
func classifyTencentSMS(status int, h http.Header, body []byte, now time.Time, n *schemas.Notification) (string, error) {
	var a tencentSMSAnswer
	jsonErr := json.Unmarshal(body, &a)
	r := a.Response
	switch {
	case jsonErr == nil && r.Error != nil && r.Error.Code != "":
		return "", tencentCodeError(r.Error.Code, r.Error.Message, r.RequestID, status, h, now, n)
	case jsonErr == nil && len(r.SendStatusSet) > 0:
		s := r.SendStatusSet[0]
		if s.Code == "Ok" {
			if s.SerialNo != "" {
				return s.SerialNo, nil
			}
			return r.RequestID, nil
		}
		if s.Code == "" {
			return "", Permanent(fmt.Errorf("tencentsms: HTTP %d, a send status without a code (request %s)", status, smsClip(r.RequestID)))
		}
		return "", tencentCodeError(s.Code, s.Message, r.RequestID, status, h, now, n)
	case status >= 200 && status < 300:
		// Sent or not, nothing says which: not retried (a retry could send
		// it twice), and not counted as sent.
		return "", Permanent(fmt.Errorf("tencentsms: HTTP %d without an error or a send status", status))
	}
	return "", HTTPStatus(&http.Response{StatusCode: status, Header: h}, now, "tencentsms")
}

// Tencent error codes notifyd acts on.
const (
	tencentCodeIncorrectPhone = "InvalidParameterValue.IncorrectPhoneNumber"
	tencentCodeBlacklisted    = "FailedOperation.PhoneNumberInBlacklist" // the number opted out (unsubscribed or complained)
)

func tencentCodeError(code, message, requestID string, status int, h http.Header, now time.Time, n *schemas.Notification) error {
	msg := smsClip(message)
	err := fmt.Errorf("tencentsms: %s: %s (request %s)", code, msg, smsClip(requestID))
	retry := func(def time.Duration) error { return smsRetry(err, h, now, def) }
	switch {
	case code == tencentCodeIncorrectPhone:
		return InvalidRecipient(err, AddressTarget(n))
	case code == tencentCodeBlacklisted:
		return Unsubscribed(err, AddressTarget(n))
	case code == "LimitExceeded.PhoneNumberThirtySecondLimit":
		return retry(30 * time.Second)
	case code == "LimitExceeded.PhoneNumberOneHourLimit":
		return retry(time.Hour)
	case code == "LimitExceeded.PhoneNumberDailyLimit" || code == "LimitExceeded.PhoneNumberSameContentDailyLimit":
		return retry(24 * time.Hour)
	case strings.HasPrefix(code, "LimitExceeded."):
		return retry(time.Minute)
	case strings.HasPrefix(code, "RequestLimitExceeded") || strings.HasPrefix(code, "InternalError") ||
		code == "ResourceUnavailable" || strings.HasPrefix(code, "ResourceUnavailable."):
		return retry(0)
	case strings.HasPrefix(code, "AuthFailure"):
		return Permanent(fmt.Errorf("tencentsms: authentication failed (%s: %s): check secretId and secretKey", code, msg))
	case status >= 500 || status == http.StatusTooManyRequests:
		return retry(0)
	}
	return Permanent(err)
}
