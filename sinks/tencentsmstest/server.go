// Package tencentsmstest runs a fake Tencent Cloud SMS endpoint (SendSms,
// API version 2021-01-11) on loopback. It checks the TC3-HMAC-SHA256
// signature the way Tencent Cloud API does, recomputing it from the request,
// and keeps the messages it accepted.
package tencentsmstest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/notifyd/notifyd/sinks/internal/fake"
)

// Message is one number of an accepted SendSms call.
type Message struct {
	SecretID         string
	Region           string
	PhoneNumber      string
	SmsSdkAppID      string
	SignName         string
	TemplateID       string
	TemplateParamSet []string
	SessionContext   string
	SerialNo         string
	At               time.Time
}

// Answer is a canned answer. With ErrorCode, the request fails
// (Response.Error); with StatusCode, every number of it gets that code in
// SendStatusSet. Status is the HTTP status (Tencent answers 200).
type Answer struct {
	Status     int
	ErrorCode  string
	StatusCode string
	Message    string
}

// Canned answers as Tencent gives them.
var (
	RequestLimit   = Answer{ErrorCode: "RequestLimitExceeded", Message: "请求的次数超过了频率限制。"}
	InternalError  = Answer{ErrorCode: "InternalError", Message: "内部错误。"}
	ThirtySecLimit = Answer{StatusCode: "LimitExceeded.PhoneNumberThirtySecondLimit", Message: "单个手机号30秒内下发短信条数超过设定的上限"}
	NoBalance      = Answer{ErrorCode: "FailedOperation.InsufficientBalanceInSmsPackage", Message: "套餐包余量不足"}
)

// Server is a fake SendSms endpoint.
type Server struct {
	*httptest.Server

	mu          sync.Mutex
	keys        map[string]string // SecretId → SecretKey
	appID       string
	signs       map[string]bool
	templates   map[string]int // TemplateId → number of parameters
	invalid     fake.Set
	blacklisted fake.Set
	seq         int

	// Messages, Accepted, Requests, Rejected.
	fake.Recorder[Message]
	// FailNext and FailAlways answer the next (or every) authenticated request
	// with an Answer instead.
	fake.Queue[Answer]
}

// Start runs a server that knows secretID with secretKey and the SMS
// application appID.
func Start(secretID, secretKey, appID string) *Server {
	s := &Server{keys: map[string]string{secretID: secretKey}, appID: appID, signs: map[string]bool{},
		templates: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// BaseURL of the server.
func (s *Server) BaseURL() string { return s.Server.URL + "/" }

// Approve makes a sign name known; once one is approved, others are refused
// (FailedOperation.SignatureIncorrectOrUnapproved).
func (s *Server) Approve(signName string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.signs[signName] = true
}

// Template makes a template known with its number of parameters; once one
// is, others are refused (FailedOperation.TemplateIncorrectOrUnapproved), and
// a TemplateParamSet of another length too
// (InvalidParameterValue.TemplateParameterFormatError).
func (s *Server) Template(id string, params int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.templates[id] = params
}

// MarkInvalid makes numbers (E.164) answer InvalidParameterValue.IncorrectPhoneNumber.
func (s *Server) MarkInvalid(numbers ...string) { s.invalid.Add(numbers...) }

// Blacklist makes numbers answer FailedOperation.PhoneNumberInBlacklist (the
// recipient unsubscribed).
func (s *Server) Blacklist(numbers ...string) { s.blacklisted.Add(numbers...) }

type sendSms struct {
	PhoneNumberSet   []string `json:"PhoneNumberSet"`
	SmsSdkAppID      string   `json:"SmsSdkAppId"`
	SignName         string   `json:"SignName"`
	TemplateID       string   `json:"TemplateId"`
	TemplateParamSet []string `json:"TemplateParamSet"`
	SessionContext   string   `json:"SessionContext"`
	ExtendCode       string   `json:"ExtendCode"`
	SenderID         string   `json:"SenderId"`
}

type sendStatus struct {
	SerialNo       string `json:"SerialNo"`
	PhoneNumber    string `json:"PhoneNumber"`
	Fee            int    `json:"Fee"`
	SessionContext string `json:"SessionContext"`
	Code           string `json:"Code"`
	Message        string `json:"Message"`
	IsoCode        string `json:"IsoCode"`
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.CountRequest()
	s.seq++
	reqID := fmt.Sprintf("00000000-0000-4000-8000-%012d", s.seq)
	if err != nil {
		fail(w, reqID, Answer{ErrorCode: "InvalidParameter", Message: "unreadable body"})
		return
	}
	secretID, a, ok := s.authenticate(r, body)
	if !ok {
		s.CountRejected()
		fail(w, reqID, a)
		return
	}
	if r.Header.Get("X-TC-Action") != "SendSms" {
		fail(w, reqID, Answer{ErrorCode: "InvalidAction", Message: "接口不存在。"})
		return
	}
	if r.Header.Get("X-TC-Version") != "2021-01-11" {
		fail(w, reqID, Answer{ErrorCode: "NoSuchVersion", Message: "接口版本不存在。"})
		return
	}
	region := r.Header.Get("X-TC-Region")
	if region == "" {
		fail(w, reqID, Answer{ErrorCode: "MissingParameter", Message: "The request is missing a required parameter `Region`."})
		return
	}
	var req sendSms
	if err := json.Unmarshal(body, &req); err != nil {
		fail(w, reqID, Answer{ErrorCode: "FailedOperation.FailResolvePacket", Message: "请求包解析失败"})
		return
	}
	if len(req.PhoneNumberSet) == 0 || req.SmsSdkAppID == "" || req.TemplateID == "" {
		fail(w, reqID, Answer{ErrorCode: "MissingParameter", Message: "PhoneNumberSet, SmsSdkAppId and TemplateId are required."})
		return
	}
	if req.SmsSdkAppID != s.appID {
		fail(w, reqID, Answer{ErrorCode: "UnauthorizedOperation.SmsSdkAppIdVerifyFail", Message: "SmsSdkAppId 校验失败"})
		return
	}
	if a, ok := s.Always(); ok {
		fail(w, reqID, a)
		return
	}
	if q, ok := s.Pop(); ok {
		if q.StatusCode != "" {
			var set []sendStatus
			for _, num := range req.PhoneNumberSet {
				set = append(set, sendStatus{PhoneNumber: num, SessionContext: req.SessionContext, Code: q.StatusCode, Message: q.Message})
			}
			writeJSON(w, q.Status, map[string]any{"Response": map[string]any{"SendStatusSet": set, "RequestId": reqID}})
			return
		}
		fail(w, reqID, q)
		return
	}
	if len(s.signs) > 0 && !s.signs[req.SignName] {
		fail(w, reqID, Answer{ErrorCode: "FailedOperation.SignatureIncorrectOrUnapproved", Message: "签名未审批或格式错误"})
		return
	}
	if len(s.templates) > 0 {
		n, ok := s.templates[req.TemplateID]
		if !ok {
			fail(w, reqID, Answer{ErrorCode: "FailedOperation.TemplateIncorrectOrUnapproved", Message: "模板未审批或内容不匹配"})
			return
		}
		if n != len(req.TemplateParamSet) {
			fail(w, reqID, Answer{ErrorCode: "InvalidParameterValue.TemplateParameterFormatError", Message: "验证码模板参数格式错误"})
			return
		}
	}
	set := make([]sendStatus, 0, len(req.PhoneNumberSet))
	for _, num := range req.PhoneNumberSet {
		st := sendStatus{PhoneNumber: num, SessionContext: req.SessionContext, IsoCode: "CN"}
		e164 := num
		if !strings.HasPrefix(e164, "+") {
			e164 = "+86" + e164
		}
		switch {
		case s.invalid.Has(e164) || !validNumber(e164):
			st.Code, st.Message = "InvalidParameterValue.IncorrectPhoneNumber", "手机号格式错误"
		case s.blacklisted.Has(e164):
			st.Code, st.Message = "FailedOperation.PhoneNumberInBlacklist", "手机号在免打扰名单库中"
		default:
			st.Code, st.Message, st.Fee = "Ok", "send success", 1
			st.SerialNo = fmt.Sprintf("3369:%020d", 10000000000+s.seq)
			s.Accept(Message{SecretID: secretID, Region: region, PhoneNumber: num, SmsSdkAppID: req.SmsSdkAppID,
				SignName: req.SignName, TemplateID: req.TemplateID, TemplateParamSet: req.TemplateParamSet,
				SessionContext: req.SessionContext, SerialNo: st.SerialNo, At: time.Now()})
		}
		set = append(set, st)
	}
	writeJSON(w, http.StatusOK, map[string]any{"Response": map[string]any{"SendStatusSet": set, "RequestId": reqID}})
}

func validNumber(e164 string) bool { return fake.Digits(strings.TrimPrefix(e164, "+"), 6, 16) }

func fail(w http.ResponseWriter, reqID string, a Answer) {
	status := a.Status
	if status == 0 {
		status = http.StatusOK
	}
	writeJSON(w, status, map[string]any{"Response": map[string]any{
		"Error": map[string]string{"Code": a.ErrorCode, "Message": a.Message}, "RequestId": reqID}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	if status == 0 {
		status = http.StatusOK
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// authenticate checks the TC3-HMAC-SHA256 signature of r as documented; on
// failure it returns Tencent's error answer.
func (s *Server) authenticate(r *http.Request, body []byte) (string, Answer, bool) {
	invalidAuth := Answer{ErrorCode: "AuthFailure.InvalidAuthorization", Message: "Authorization 不符合腾讯云标准。"}
	if r.Method != http.MethodPost {
		return "", Answer{ErrorCode: "InvalidParameter", Message: "only POST is served here"}, false
	}
	ct := r.Header.Get("Content-Type")
	if !strings.HasPrefix(strings.ToLower(ct), "application/json") {
		return "", Answer{ErrorCode: "InvalidParameter", Message: "Content-Type must be application/json with TC3-HMAC-SHA256"}, false
	}
	auth, ok := strings.CutPrefix(r.Header.Get("Authorization"), "TC3-HMAC-SHA256 ")
	if !ok {
		return "", invalidAuth, false
	}
	fields := map[string]string{}
	for _, part := range strings.Split(auth, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return "", invalidAuth, false
		}
		fields[k] = v
	}
	cred := strings.Split(fields["Credential"], "/")
	if len(cred) != 4 || cred[2] != "sms" || cred[3] != "tc3_request" || fields["SignedHeaders"] == "" || fields["Signature"] == "" {
		return "", invalidAuth, false
	}
	secretID, date := cred[0], cred[1]
	secretKey, ok := s.keys[secretID]
	if !ok {
		return "", Answer{ErrorCode: "AuthFailure.SecretIdNotFound", Message: "密钥不存在。"}, false
	}
	tsHeader := r.Header.Get("X-TC-Timestamp")
	ts, err := strconv.ParseInt(tsHeader, 10, 64)
	if err != nil {
		return "", Answer{ErrorCode: "InvalidParameter", Message: "X-TC-Timestamp is not a Unix timestamp"}, false
	}
	if d := time.Since(time.Unix(ts, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return "", Answer{ErrorCode: "AuthFailure.SignatureExpire", Message: "签名过期。Timestamp 和服务器时间相差不得超过五分钟。"}, false
	}
	if time.Unix(ts, 0).UTC().Format("2006-01-02") != date {
		return "", Answer{ErrorCode: "AuthFailure.SignatureFailure", Message: "Credential date is not the date of X-TC-Timestamp."}, false
	}
	signed := strings.Split(fields["SignedHeaders"], ";")
	if !slices.Contains(signed, "content-type") || !slices.Contains(signed, "host") {
		return "", invalidAuth, false
	}
	var canonHeaders strings.Builder
	for _, name := range signed {
		v := r.Header.Get(name)
		if name == "host" {
			v = r.Host
		}
		canonHeaders.WriteString(strings.ToLower(name) + ":" + strings.ToLower(strings.TrimSpace(v)) + "\n")
	}
	payload := sha256.Sum256(body)
	canonical := "POST\n/\n" + r.URL.RawQuery + "\n" + canonHeaders.String() + "\n" + fields["SignedHeaders"] + "\n" +
		hex.EncodeToString(payload[:])
	ch := sha256.Sum256([]byte(canonical))
	toSign := "TC3-HMAC-SHA256\n" + tsHeader + "\n" + date + "/sms/tc3_request\n" + hex.EncodeToString(ch[:])
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	key := mac(mac(mac([]byte("TC3"+secretKey), date), "sms"), "tc3_request")
	if want := hex.EncodeToString(mac(key, toSign)); !hmac.Equal([]byte(want), []byte(fields["Signature"])) {
		return "", Answer{ErrorCode: "AuthFailure.SignatureFailure",
			Message: "The provided credentials could not be validated. Please check your signature is correct."}, false
	}
	return secretID, Answer{}, true
}
