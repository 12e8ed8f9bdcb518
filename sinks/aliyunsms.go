package sinks

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// Alibaba Cloud SMS (Dysmsapi, API version 2017-05-25), action SendSms, an
// RPC-style API called with the V3 request signature (ACS3-HMAC-SHA256):
//
//	POST {baseUrl}/   Content-Type: application/x-www-form-urlencoded
//	x-acs-action: SendSms, x-acs-version: 2017-05-25, x-acs-date (ISO 8601 UTC),
//	x-acs-signature-nonce, x-acs-content-sha256 = hex(sha256(body))
//	Authorization: ACS3-HMAC-SHA256 Credential=<AccessKeyId>,SignedHeaders=<…>,Signature=<hex>
//
// The SendSms parameters PhoneNumbers, SignName, TemplateCode and
// TemplateParam (a JSON object of strings) travel as a form body rather than
// in the query string, which RPC APIs accept too: the body is covered by the
// signature through x-acs-content-sha256, and the template parameters (a
// one-time code, often) stay out of URLs, where proxies and error messages
// would show them.
//
// Alibaba answers HTTP 200 with {"Code":"OK","BizId","RequestId"} when it took
// the message, and HTTP 200 with another Code for most refusals: the answer is
// classified by its Code, the HTTP status only when there is none.

// AliyunSMSSettings is the `aliyunsms:` section of a provider of type aliyunsms.
type AliyunSMSSettings struct {
	AccessKeyID     string `yaml:"accessKeyId"`
	AccessKeySecret string `yaml:"accessKeySecret"`
	// SignName is the approved SMS signature (签名) put before every message.
	SignName string `yaml:"signName"`
	// TemplateCode is the approved template used when the notification's
	// content names none (content.templateId).
	TemplateCode string `yaml:"templateCode"`
	// baseUrl, timeout, perNumberPerMinute, perNumberBurst. Alibaba itself
	// allows one verification code a minute per number and signature.
	SMSVendorSettings `yaml:",inline"`
}

const (
	aliyunSMSDefaultBaseURL = "https://dysmsapi.aliyuncs.com/"
	aliyunSMSAction         = "SendSms"
	aliyunSMSVersion        = "2017-05-25"
	aliyunSignAlgorithm     = "ACS3-HMAC-SHA256"
	aliyunDateFormat        = "2006-01-02T15:04:05Z"
	aliyunFormContentType   = "application/x-www-form-urlencoded"
)

type aliyunSMSProvider struct {
	smsVendor
	s        AliyunSMSSettings
	endpoint *url.URL
}

func init() {
	Register("aliyunsms", Type{Channels: []string{"sms"}, New: newAliyunSMSProvider})
}

func newAliyunSMSProvider(spec Spec) (Provider, error) {
	s, err := smsDecodeSettings[AliyunSMSSettings](spec, "aliyunsms")
	if err != nil {
		return nil, err
	}
	return &aliyunSMSProvider{smsVendor: newSMSVendor(spec, "aliyunsms", s.SMSVendorSettings), s: s,
		endpoint: smsRootEndpoint(s.BaseURL, aliyunSMSDefaultBaseURL)}, nil
}

func (s AliyunSMSSettings) validate() error {
	if err := requireSettings("accessKeyId", s.AccessKeyID, "accessKeySecret", s.AccessKeySecret, "signName", s.SignName); err != nil {
		return err
	}
	return s.checkRootAPI()
}

// aliyunPhone is n's number as Alibaba takes it: digits only, with the
// country code (86… for mainland China, which Alibaba also takes bare).
// Spaces, dashes, dots and parentheses are dropped, a leading + or 00 too.
func aliyunPhone(address string) (string, bool) {
	num := smsStripPhone(address)
	num = strings.TrimPrefix(num, "+")
	if strings.HasPrefix(num, "00") {
		num = num[2:]
	}
	if !smsDigits(num) {
		return "", false
	}
	return num, true
}

// aliyunTemplateParam is the TemplateParam of n: its template parameters as
// a JSON object of strings ("" when it has none).
func aliyunTemplateParam(params map[string]string) (string, error) {
	if len(params) == 0 {
		return "", nil
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(params); err != nil { // map keys come out sorted
		return "", err
	}
	return strings.TrimSuffix(b.String(), "\n"), nil
}

func (p *aliyunSMSProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	phone, template, err := p.addressee(n, aliyunPhone, p.s.TemplateCode,
		"aliyunsms: no template code: Alibaba sends only approved templates; set the content's templateId or aliyunsms.templateCode")
	if err != nil {
		return "", err
	}
	param, err := aliyunTemplateParam(n.Content.TemplateParams)
	if err != nil {
		return "", Permanent(fmt.Errorf("aliyunsms: template parameters: %w", err))
	}
	now := p.now()
	if err := p.takeNumber(phone, now); err != nil {
		return "", err
	}
	form := map[string]string{"PhoneNumbers": phone, "SignName": p.s.SignName, "TemplateCode": template}
	if param != "" {
		form["TemplateParam"] = param
	}
	body := []byte(aliyunCanonicalQuery(form))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.endpoint.String(), bytes.NewReader(body))
	if err != nil {
		return "", Permanent(fmt.Errorf("aliyunsms: %w", err))
	}
	req.Header.Set("Content-Type", aliyunFormContentType)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "notifyd-aliyunsms/1")
	nonce, err := aliyunNonce()
	if err != nil {
		return "", fmt.Errorf("aliyunsms: nonce: %w", err)
	}
	aliyunSignRequest(req, body, p.s.AccessKeyID, p.s.AccessKeySecret, now, nonce)
	resp, err := p.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("aliyunsms: %w", smsTransportError(err))
	}
	answer := readBody(resp)
	return classifyAliyunSMS(resp.StatusCode, resp.Header, answer, p.now(), n)
}

func aliyunNonce() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// aliyunSignRequest sets the x-acs-* headers of req, whose body is body, and
// its Authorization, following the V3 signature:
//
//	CanonicalRequest = Method \n CanonicalURI \n CanonicalQueryString \n
//	                   CanonicalHeaders \n SignedHeaders \n hex(sha256(body))
//	StringToSign     = "ACS3-HMAC-SHA256" \n hex(sha256(CanonicalRequest))
//	Signature        = hex(HMAC-SHA256(AccessKeySecret, StringToSign))
//
// CanonicalURI is "/" for RPC APIs; CanonicalQueryString the query parameters
// sorted by name, name and value RFC 3986-encoded, joined name=value with &;
// CanonicalHeaders the lowercase name:trimmed value\n of host, content-type
// and every x-acs-* header, sorted by name; SignedHeaders their names joined
// with ";".
func aliyunSignRequest(req *http.Request, body []byte, keyID, secret string, now time.Time, nonce string) {
	sum := sha256.Sum256(body)
	payloadHash := hex.EncodeToString(sum[:])
	req.Header.Set("x-acs-action", aliyunSMSAction)
	req.Header.Set("x-acs-version", aliyunSMSVersion)
	req.Header.Set("x-acs-date", now.UTC().Format(aliyunDateFormat))
	req.Header.Set("x-acs-signature-nonce", nonce)
	req.Header.Set("x-acs-content-sha256", payloadHash)

	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	headers := map[string]string{"host": host}
	for name, vs := range req.Header {
		l := strings.ToLower(name)
		if l == "content-type" || strings.HasPrefix(l, "x-acs-") {
			headers[l] = strings.TrimSpace(strings.Join(vs, ","))
		}
	}
	names := make([]string, 0, len(headers))
	for name := range headers {
		names = append(names, name)
	}
	sort.Strings(names)
	var canonHeaders strings.Builder
	for _, name := range names {
		canonHeaders.WriteString(name + ":" + headers[name] + "\n")
	}
	signed := strings.Join(names, ";")
	query := map[string]string{}
	for k, vs := range req.URL.Query() {
		if len(vs) > 0 {
			query[k] = vs[0]
		}
	}
	path := req.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	canonical := strings.Join([]string{req.Method, path, aliyunCanonicalQuery(query),
		canonHeaders.String(), signed, payloadHash}, "\n")
	crHash := sha256.Sum256([]byte(canonical))
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(aliyunSignAlgorithm + "\n" + hex.EncodeToString(crHash[:])))
	req.Header.Set("Authorization", aliyunSignAlgorithm+" Credential="+keyID+",SignedHeaders="+signed+
		",Signature="+hex.EncodeToString(mac.Sum(nil)))
}

// aliyunCanonicalQuery is params sorted by name, each name and value
// percent-encoded per RFC 3986 (only A-Z a-z 0-9 - _ . ~ left as they are, a
// space as %20), joined name=value with &.
func aliyunCanonicalQuery(params map[string]string) string {
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, k := range names {
		parts = append(parts, aliyunPercentEncode(k)+"="+aliyunPercentEncode(params[k]))
	}
	return strings.Join(parts, "&")
}

func aliyunPercentEncode(s string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

// aliyunSMSAnswer is what notifyd reads of Alibaba's answer.
type aliyunSMSAnswer struct {
	Code      string `json:"Code"`
	Message   string `json:"Message"`
	BizID     string `json:"BizId"`
	RequestID string `json:"RequestId"`
}

// Alibaba error codes notifyd acts on (the others are permanent, or retried
// when the HTTP status is 5xx).
const (
	aliyunCodeOK                = "OK"
	aliyunCodeBusinessLimit     = "isv.BUSINESS_LIMIT_CONTROL" // per-number frequency control
	aliyunCodeDayLimit          = "isv.DAY_LIMIT_CONTROL"      // the account's daily quota
	aliyunCodeMobileIllegal     = "isv.MOBILE_NUMBER_ILLEGAL"
	aliyunCodeBlackKey          = "isv.BLACK_KEY_CONTROL_LIMIT" // a template variable holds a blacklisted keyword
	aliyunCodeSignatureMismatch = "SignatureDoesNotMatch"
	aliyunCodeKeyNotFound       = "InvalidAccessKeyId.NotFound"
)

// classifyAliyunSMS turns Alibaba's answer to SendSms into the BizId or a
// classified error.
func classifyAliyunSMS(status int, h http.Header, body []byte, now time.Time, n *schemas.Notification) (string, error) {
	var a aliyunSMSAnswer
	if err := json.Unmarshal(body, &a); err != nil || a.Code == "" {
		if status >= 200 && status < 300 {
			// Sent or not, nothing says which: not retried (a retry could
			// send it twice), and not counted as sent.
			return "", Permanent(fmt.Errorf("aliyunsms: HTTP %d without a Code", status))
		}
		return "", HTTPStatus(&http.Response{StatusCode: status, Header: h}, now, "aliyunsms")
	}
	if a.Code == aliyunCodeOK {
		if a.BizID != "" {
			return a.BizID, nil
		}
		return a.RequestID, nil
	}
	msg := smsClip(a.Message)
	err := fmt.Errorf("aliyunsms: %s: %s (HTTP %d, request %s)", a.Code, msg, status, smsClip(a.RequestID))
	retry := func(def time.Duration) error { return smsRetry(err, h, now, def) }
	switch code := a.Code; {
	case code == aliyunCodeMobileIllegal || code == "isv.PHONE_NUMBER_ILLEGAL":
		return "", InvalidRecipient(err, AddressTarget(n))
	case code == aliyunCodeBusinessLimit:
		return "", retry(aliyunLimitWait(a.Message))
	case code == aliyunCodeDayLimit:
		return "", retry(time.Hour)
	case code == aliyunCodeBlackKey:
		// Documented as a blacklisted keyword in the template variables: the
		// content, not the recipient, so the number is kept.
		return "", Permanent(fmt.Errorf("%w: a template parameter holds a keyword Alibaba refuses", err))
	case code == aliyunCodeSignatureMismatch || code == aliyunCodeKeyNotFound || strings.HasPrefix(code, "InvalidAccessKeyId") ||
		code == "IncompleteSignature" || code == "isp.RAM_PERMISSION_DENY" || code == "Forbidden.RAM":
		return "", Permanent(fmt.Errorf("aliyunsms: authentication failed (%s: %s): check accessKeyId and accessKeySecret", code, msg))
	case strings.HasPrefix(code, "isp."), strings.HasPrefix(code, "Throttling"), code == "ServiceUnavailable",
		code == "InternalError", code == "isv.QPS_LIMIT_CONTROL", strings.HasPrefix(code, "SignatureNonceUsed"):
		// isp.* are the platform's own failures; a used nonce is a fresh
		// one away from going through.
		return "", retry(0)
	case status >= 500 || status == http.StatusTooManyRequests:
		return "", retry(0)
	}
	return "", Permanent(err)
}

// aliyunLimitWait reads the window of a BUSINESS_LIMIT_CONTROL answer
// ("触发分钟级流控", "触发小时级流控", "触发天级流控").
func aliyunLimitWait(msg string) time.Duration {
	l := strings.ToLower(msg)
	switch {
	case strings.Contains(l, "天") || strings.Contains(l, "day"):
		return 24 * time.Hour
	case strings.Contains(l, "小时") || strings.Contains(l, "hour"):
		return time.Hour
	}
	return time.Minute
}
