// Package aliyunsmstest runs a fake Alibaba Cloud SMS endpoint (Dysmsapi
// 2017-05-25 SendSms) on loopback. It checks the V3 request signature
// (ACS3-HMAC-SHA256) the way Alibaba's gateway does, recomputing it from the
// request, and keeps the messages it accepted.
package aliyunsmstest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/notifyd/notifyd/sinks/internal/fake"
)

// Message is one accepted SendSms call.
type Message struct {
	AccessKeyID   string
	PhoneNumbers  string
	SignName      string
	TemplateCode  string
	TemplateParam map[string]string // decoded; nil when none was given
	BizID         string
	At            time.Time
}

// Answer is a canned answer: HTTP status, Alibaba Code and Message, and a
// Retry-After header when set.
type Answer struct {
	Status     int
	Code       string
	Message    string
	RetryAfter string
}

// Canned answers as Alibaba gives them.
var (
	// Throttled is the gateway's flow control.
	Throttled = Answer{Status: http.StatusBadRequest, Code: "Throttling.User", Message: "Request was denied due to user flow control."}
	// BusinessLimit is the per-number frequency control (one a minute).
	BusinessLimit = Answer{Status: http.StatusOK, Code: "isv.BUSINESS_LIMIT_CONTROL", Message: "触发分钟级流控Permits:1"}
	// SystemError is a platform failure.
	SystemError = Answer{Status: http.StatusServiceUnavailable, Code: "isp.SYSTEM_ERROR", Message: "isp.SYSTEM_ERROR"}
	// NoBalance is an account out of money.
	NoBalance = Answer{Status: http.StatusOK, Code: "isv.AMOUNT_NOT_ENOUGH", Message: "账户余额不足"}
)

// Server is a fake Dysmsapi endpoint.
type Server struct {
	*httptest.Server

	mu        sync.Mutex
	keys      map[string]string // AccessKeyId → secret
	signs     map[string]bool
	templates map[string]bool
	invalid   fake.Set
	nonces    map[string]bool
	seq       int

	// Messages, Accepted, Requests, Rejected.
	fake.Recorder[Message]
	// FailNext and FailAlways answer the next (or every) signed request
	// with an Answer instead.
	fake.Queue[Answer]
}

// Start runs a server that knows the access key id with secret, and accepts
// the given sign names and template codes (any when none is given).
func Start(keyID, secret string) *Server {
	s := &Server{keys: map[string]string{keyID: secret}, signs: map[string]bool{}, templates: map[string]bool{},
		nonces: map[string]bool{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// URL of the server, as a baseUrl.
func (s *Server) BaseURL() string { return s.Server.URL + "/" }

// Approve makes sign names and template codes known; once one of a kind is
// approved, others of that kind are refused (isv.SMS_SIGNATURE_ILLEGAL,
// isv.SMS_TEMPLATE_ILLEGAL).
func (s *Server) Approve(signName string, templateCodes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if signName != "" {
		s.signs[signName] = true
	}
	for _, t := range templateCodes {
		s.templates[t] = true
	}
}

// MarkInvalid makes numbers (as sent: digits with the country code) answer
// isv.MOBILE_NUMBER_ILLEGAL.
func (s *Server) MarkInvalid(numbers ...string) { s.invalid.Add(numbers...) }

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.CountRequest()
	s.seq++
	reqID := fmt.Sprintf("REQ-%04d", s.seq)
	if err != nil {
		answer(w, reqID, Answer{Status: http.StatusBadRequest, Code: "InvalidParameter", Message: "unreadable body"})
		return
	}
	if a, ok := s.authenticate(r, body); !ok {
		s.CountRejected()
		answer(w, reqID, a)
		return
	}
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		answer(w, reqID, Answer{Status: http.StatusMethodNotAllowed, Code: "UnsupportedHTTPMethod", Message: "This http method is not supported."})
		return
	}
	if r.Header.Get("x-acs-action") != "SendSms" {
		answer(w, reqID, Answer{Status: http.StatusNotFound, Code: "InvalidAction.NotFound", Message: "Specified api is not found, please check your url and method."})
		return
	}
	if r.Header.Get("x-acs-version") != "2017-05-25" {
		answer(w, reqID, Answer{Status: http.StatusBadRequest, Code: "InvalidVersion", Message: "Specified parameter Version is not valid."})
		return
	}
	// An RPC API takes its parameters from the query string and from a form body.
	params, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		answer(w, reqID, Answer{Status: http.StatusBadRequest, Code: "InvalidParameter", Message: "malformed query"})
		return
	}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		form, err := url.ParseQuery(string(body))
		if err != nil {
			answer(w, reqID, Answer{Status: http.StatusBadRequest, Code: "InvalidParameter", Message: "malformed form body"})
			return
		}
		for k, vs := range form {
			params[k] = append(params[k], vs...)
		}
	}
	for _, k := range []string{"PhoneNumbers", "SignName", "TemplateCode"} {
		if params.Get(k) == "" {
			answer(w, reqID, Answer{Status: http.StatusBadRequest, Code: "Missing" + k, Message: k + " is mandatory for this action."})
			return
		}
	}
	if a, ok := s.Next(); ok {
		answer(w, reqID, a)
		return
	}
	m := Message{AccessKeyID: authField(r.Header.Get("Authorization"), "Credential"), PhoneNumbers: params.Get("PhoneNumbers"),
		SignName: params.Get("SignName"), TemplateCode: params.Get("TemplateCode"), At: time.Now()}
	if len(s.signs) > 0 && !s.signs[m.SignName] {
		answer(w, reqID, Answer{Status: http.StatusOK, Code: "isv.SMS_SIGNATURE_ILLEGAL", Message: "该账号下找不到对应签名"})
		return
	}
	if len(s.templates) > 0 && !s.templates[m.TemplateCode] {
		answer(w, reqID, Answer{Status: http.StatusOK, Code: "isv.SMS_TEMPLATE_ILLEGAL", Message: "该账号下找不到对应模板"})
		return
	}
	for _, num := range strings.Split(m.PhoneNumbers, ",") {
		if s.invalid.Has(num) || !validNumber(num) {
			answer(w, reqID, Answer{Status: http.StatusOK, Code: "isv.MOBILE_NUMBER_ILLEGAL", Message: "非法手机号"})
			return
		}
	}
	if tp := params.Get("TemplateParam"); tp != "" {
		if err := json.Unmarshal([]byte(tp), &m.TemplateParam); err != nil {
			answer(w, reqID, Answer{Status: http.StatusOK, Code: "isv.INVALID_JSON_PARAM", Message: "JSON参数不合法,只接受字符串值"})
			return
		}
	}
	m.BizID = fmt.Sprintf("%d^0", 900000000000000000+s.seq)
	s.Accept(m)
	writeJSON(w, http.StatusOK, map[string]string{"Code": "OK", "Message": "OK", "BizId": m.BizID, "RequestId": reqID})
}

// validNumber: digits, optionally +86/0086/86-prefixed for mainland China.
func validNumber(n string) bool { return fake.Digits(strings.TrimPrefix(n, "+"), 5, 20) }

func answer(w http.ResponseWriter, reqID string, a Answer) {
	if a.RetryAfter != "" {
		w.Header().Set("Retry-After", a.RetryAfter)
	}
	status := a.Status
	if status == 0 {
		status = http.StatusOK
	}
	writeJSON(w, status, map[string]string{"Code": a.Code, "Message": a.Message, "RequestId": reqID, "HostId": "dysmsapi.aliyuncs.com"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json;charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// authField reads one field of an ACS3 Authorization header
// ("ACS3-HMAC-SHA256 Credential=…,SignedHeaders=…,Signature=…").
func authField(auth, name string) string {
	rest, ok := strings.CutPrefix(auth, "ACS3-HMAC-SHA256 ")
	if !ok {
		return ""
	}
	for _, part := range strings.Split(rest, ",") {
		if k, v, ok := strings.Cut(strings.TrimSpace(part), "="); ok && k == name {
			return v
		}
	}
	return ""
}

// authenticate checks the V3 signature of r as documented; on failure it
// returns Alibaba's answer.
func (s *Server) authenticate(r *http.Request, body []byte) (Answer, bool) {
	auth := r.Header.Get("Authorization")
	keyID, signedList, sig := authField(auth, "Credential"), authField(auth, "SignedHeaders"), authField(auth, "Signature")
	if keyID == "" || signedList == "" || sig == "" {
		return Answer{Status: http.StatusBadRequest, Code: "IncompleteSignature",
			Message: "The request signature does not conform to Aliyun standards."}, false
	}
	secret, ok := s.keys[keyID]
	if !ok {
		return Answer{Status: http.StatusNotFound, Code: "InvalidAccessKeyId.NotFound", Message: "Specified access key is not found."}, false
	}
	date, err := time.Parse("2006-01-02T15:04:05Z", r.Header.Get("x-acs-date"))
	if err != nil {
		return Answer{Status: http.StatusBadRequest, Code: "InvalidTimeStamp.Format", Message: "Specified time stamp or date value is not well formatted."}, false
	}
	if d := time.Since(date); d > 15*time.Minute || d < -15*time.Minute {
		return Answer{Status: http.StatusBadRequest, Code: "InvalidTimeStamp.Expired", Message: "Specified time stamp or date value is expired."}, false
	}
	nonce := r.Header.Get("x-acs-signature-nonce")
	if nonce == "" {
		return Answer{Status: http.StatusBadRequest, Code: "MissingSignatureNonce", Message: "SignatureNonce is mandatory for this action."}, false
	}
	sum := sha256.Sum256(body)
	if r.Header.Get("x-acs-content-sha256") != hex.EncodeToString(sum[:]) {
		return Answer{Status: http.StatusBadRequest, Code: "SignatureDoesNotMatch",
			Message: "Specified signature does not match our calculation: x-acs-content-sha256 is not the hash of the body."}, false
	}
	signed := strings.Split(signedList, ";")
	if !sort.StringsAreSorted(signed) {
		return Answer{Status: http.StatusBadRequest, Code: "SignatureDoesNotMatch", Message: "SignedHeaders are not sorted."}, false
	}
	// Every common header present must be signed: host and each x-acs-*.
	must := []string{"host"}
	for name := range r.Header {
		if l := strings.ToLower(name); strings.HasPrefix(l, "x-acs-") {
			must = append(must, l)
		}
	}
	for _, name := range must {
		if !slices.Contains(signed, name) {
			return Answer{Status: http.StatusBadRequest, Code: "SignatureDoesNotMatch",
				Message: "Header " + name + " is not in SignedHeaders."}, false
		}
	}
	var canonHeaders strings.Builder
	for _, name := range signed {
		var v string
		if name == "host" {
			v = r.Host
		} else {
			v = strings.Join(r.Header.Values(name), ",")
		}
		canonHeaders.WriteString(name + ":" + strings.TrimSpace(v) + "\n")
	}
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return Answer{Status: http.StatusBadRequest, Code: "SignatureDoesNotMatch", Message: "malformed query"}, false
	}
	names := make([]string, 0, len(query))
	for k := range query {
		names = append(names, k)
	}
	sort.Strings(names)
	var cq []string
	for _, k := range names {
		cq = append(cq, rfc3986(k)+"="+rfc3986(query.Get(k)))
	}
	path := r.URL.EscapedPath()
	if path == "" {
		path = "/"
	}
	canonical := r.Method + "\n" + path + "\n" + strings.Join(cq, "&") + "\n" + canonHeaders.String() + "\n" +
		signedList + "\n" + r.Header.Get("x-acs-content-sha256")
	ch := sha256.Sum256([]byte(canonical))
	stringToSign := "ACS3-HMAC-SHA256\n" + hex.EncodeToString(ch[:])
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(stringToSign))
	if want := hex.EncodeToString(mac.Sum(nil)); !hmac.Equal([]byte(want), []byte(sig)) {
		return Answer{Status: http.StatusBadRequest, Code: "SignatureDoesNotMatch",
			Message: "Specified signature does not match our calculation. server string to sign is:" + strconv.Quote(stringToSign)}, false
	}
	if s.nonces[nonce] {
		return Answer{Status: http.StatusBadRequest, Code: "SignatureNonceUsed", Message: "Specified signature nonce was used already."}, false
	}
	s.nonces[nonce] = true
	return Answer{}, true
}

// rfc3986 percent-encodes everything but A-Z a-z 0-9 - _ . ~, in upper-case hex.
func rfc3986(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', c == '.', c == '~':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
