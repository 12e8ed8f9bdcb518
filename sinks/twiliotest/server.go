// Package twiliotest runs a loopback stand-in for Twilio's Programmable
// Messaging API: it takes POST /2010-04-01/Accounts/{AccountSid}/Messages.json
// as Twilio documents it (HTTP Basic auth AccountSid:AuthToken, a form body
// with To, From or MessagingServiceSid, Body, StatusCallback), answers 201
// with the message resource, or Twilio's JSON error
// {"code","message","more_info","status"}. It keeps the messages it accepted,
// and can send signed status callbacks (X-Twilio-Signature) for them.
package twiliotest

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // Twilio's documented request signature
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/notifyd/notifyd/sinks/internal/fake"
)

// Message is one message the server accepted.
type Message struct {
	Sid                 string
	To                  string
	From                string
	MessagingServiceSid string
	Body                string
	StatusCallback      string
	ValidityPeriod      string // seconds, "" when not sent
	At                  time.Time
}

// Error codes the server answers with (Twilio's).
const (
	CodeAuthenticate       = 20003
	CodeTooManyRequests    = 20429
	CodeInvalidTo          = 21211
	CodeNotMobile          = 21614
	CodeUnsubscribed       = 21610
	CodeBodyRequired       = 21602
	CodeFromRequired       = 21603
	CodeToRequired         = 21604
	CodeBodyTooLong        = 21617
	CodeInternalError      = 20500
	CodeServiceUnavailable = 20503
)

// Server is a running Twilio stand-in.
type Server struct {
	*httptest.Server
	AccountSid string
	AuthToken  string

	// Messages, Accepted, Requests, Rejected.
	fake.Recorder[Message]

	throttle    fake.Queue[time.Duration] // Retry-After
	unavailable fake.Queue[struct{}]
	fail        fake.Queue[Failure]

	mu      sync.Mutex
	numbers map[string]int // To number -> error code
	client  *http.Client
}

// Failure is an error answer.
type Failure struct {
	Status  int
	Code    int
	Message string
}

// Start runs a server on loopback for one account.
func Start(accountSid, authToken string) *Server {
	s := &Server{AccountSid: accountSid, AuthToken: authToken, numbers: map[string]int{},
		client: &http.Client{Timeout: 5 * time.Second}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// BaseURL is the value for the provider's baseUrl setting.
func (s *Server) BaseURL() string { return s.URL }

// Throttle answers the next n requests with 429, Twilio error 20429, and a
// Retry-After of retryAfter (whole seconds; none when 0).
func (s *Server) Throttle(n int, retryAfter time.Duration) { s.throttle.Set(n, retryAfter) }

// Unavailable answers the next n requests with 503, Twilio error 20503.
func (s *Server) Unavailable(n int) { s.unavailable.Set(n, struct{}{}) }

// FailNext answers the next n requests (n < 0: every request) with f.
func (s *Server) FailNext(n int, f Failure) { s.fail.Script(n, f) }

// Unsubscribe makes number answer 21610 (the recipient replied STOP).
func (s *Server) Unsubscribe(number string) { s.setNumber(number, CodeUnsubscribed) }

// NotMobile makes number answer 21614 (not a mobile number).
func (s *Server) NotMobile(number string) { s.setNumber(number, CodeNotMobile) }

// Invalid makes number answer 21211 (not a valid phone number).
func (s *Server) Invalid(number string) { s.setNumber(number, CodeInvalidTo) }

func (s *Server) setNumber(number string, code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.numbers[number] = code
}

var e164 = regexp.MustCompile(`^\+[1-9][0-9]{1,14}$`)

func writeError(w http.ResponseWriter, status, code int, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"code": code, "message": message,
		"more_info": fmt.Sprintf("https://www.twilio.com/docs/errors/%d", code), "status": status})
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.CountRequest()
	want := "/2010-04-01/Accounts/" + s.AccountSid + "/Messages.json"
	if r.URL.Path != want {
		writeError(w, http.StatusNotFound, 20404, "The requested resource "+r.URL.Path+" was not found")
		return
	}
	if r.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, 20004, "Method not allowed")
		return
	}
	user, pass, ok := r.BasicAuth()
	if !ok || !hmac.Equal([]byte(user), []byte(s.AccountSid)) || !hmac.Equal([]byte(pass), []byte(s.AuthToken)) {
		s.CountRejected()
		w.Header().Set("WWW-Authenticate", `Basic realm="Twilio API"`)
		writeError(w, http.StatusUnauthorized, CodeAuthenticate, "Authenticate")
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		writeError(w, http.StatusBadRequest, 20001, "Content-Type must be application/x-www-form-urlencoded")
		return
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeError(w, http.StatusBadRequest, 20001, "unreadable body")
		return
	}
	form, err := url.ParseQuery(string(raw))
	if err != nil {
		writeError(w, http.StatusBadRequest, 20001, "malformed form body")
		return
	}

	if wait, ok := s.throttle.Next(); ok {
		if wait > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(wait.Round(time.Second)/time.Second)))
		}
		writeError(w, http.StatusTooManyRequests, CodeTooManyRequests, "Too Many Requests")
		return
	}
	if _, ok := s.unavailable.Next(); ok {
		writeError(w, http.StatusServiceUnavailable, CodeServiceUnavailable, "Service unavailable")
		return
	}
	if f, ok := s.fail.Next(); ok {
		writeError(w, f.Status, f.Code, f.Message)
		return
	}

	to, from, svc, body := form.Get("To"), form.Get("From"), form.Get("MessagingServiceSid"), form.Get("Body")
	switch {
	case to == "":
		writeError(w, http.StatusBadRequest, CodeToRequired, "A 'To' phone number is required.")
		return
	case from == "" && svc == "":
		writeError(w, http.StatusBadRequest, CodeFromRequired, "A 'From' phone number is required.")
		return
	case body == "":
		writeError(w, http.StatusBadRequest, CodeBodyRequired, "Message body is required.")
		return
	case utf8.RuneCountInString(body) > 1600:
		writeError(w, http.StatusBadRequest, CodeBodyTooLong, "The concatenated message body exceeds the 1600 character limit.")
		return
	case !e164.MatchString(to):
		writeError(w, http.StatusBadRequest, CodeInvalidTo, fmt.Sprintf("The 'To' number %s is not a valid phone number.", to))
		return
	}
	if cb := form.Get("StatusCallback"); cb != "" {
		if u, err := url.Parse(cb); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			writeError(w, http.StatusBadRequest, 21609, "Invalid StatusCallback url")
			return
		}
	}
	if vp := form.Get("ValidityPeriod"); vp != "" {
		if v, err := strconv.Atoi(vp); err != nil || v < 1 || v > 36000 {
			writeError(w, http.StatusBadRequest, 90007, "Invalid validity period value")
			return
		}
	}
	s.mu.Lock()
	code := s.numbers[to]
	s.mu.Unlock()
	switch code {
	case CodeUnsubscribed:
		writeError(w, http.StatusBadRequest, code, "Attempt to send to unsubscribed recipient")
		return
	case CodeNotMobile:
		writeError(w, http.StatusBadRequest, code, fmt.Sprintf("To number: %s, is not a mobile number", to))
		return
	case CodeInvalidTo:
		writeError(w, http.StatusBadRequest, code, fmt.Sprintf("The 'To' number %s is not a valid phone number.", to))
		return
	}
	if r.Context().Err() != nil { // the client gave up: not accepted
		return
	}
	m := Message{Sid: newSid("SM"), To: to, From: from, MessagingServiceSid: svc, Body: body,
		StatusCallback: form.Get("StatusCallback"), ValidityPeriod: form.Get("ValidityPeriod"), At: time.Now()}
	s.Accept(m)
	now := m.At.UTC().Format(time.RFC1123Z)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"sid": m.Sid, "account_sid": s.AccountSid, "to": m.To, "from": nullable(m.From),
		"messaging_service_sid": nullable(m.MessagingServiceSid), "body": m.Body, "status": "queued",
		"num_segments": "1", "direction": "outbound-api", "api_version": "2010-04-01",
		"date_created": now, "date_updated": now, "date_sent": nil, "error_code": nil, "error_message": nil,
		"uri": "/2010-04-01/Accounts/" + s.AccountSid + "/Messages/" + m.Sid + ".json",
	})
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func newSid(prefix string) string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// Signature is Twilio's X-Twilio-Signature of a POST to fullURL with form:
// Base64(HMAC-SHA1(authToken, fullURL + name+value of each parameter sorted
// by name)). Computed here independently of the sinks package.
func Signature(authToken, fullURL string, form url.Values) string {
	var b strings.Builder
	b.WriteString(fullURL)
	keys := make([]string, 0, len(form))
	for k := range form {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range form[k] {
			b.WriteString(k + v)
		}
	}
	mac := hmac.New(sha1.New, []byte(authToken))
	mac.Write([]byte(b.String()))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// StatusCallbackForm is the form Twilio posts to a message's StatusCallback
// when its status changes to status; errorCode is set for failed and
// undelivered ("" for none).
func (s *Server) StatusCallbackForm(m Message, status, errorCode string) url.Values {
	f := url.Values{
		"AccountSid": {s.AccountSid}, "ApiVersion": {"2010-04-01"},
		"MessageSid": {m.Sid}, "SmsSid": {m.Sid}, "MessageStatus": {status}, "SmsStatus": {status},
		"To": {m.To},
	}
	if m.From != "" {
		f.Set("From", m.From)
	}
	if m.MessagingServiceSid != "" {
		f.Set("MessagingServiceSid", m.MessagingServiceSid)
	}
	if errorCode != "" {
		f.Set("ErrorCode", errorCode)
	}
	return f
}

// PostSigned POSTs form to callbackURL as Twilio does, signed with the
// server's auth token in X-Twilio-Signature, and returns the HTTP status of
// the answer.
func (s *Server) PostSigned(ctx context.Context, callbackURL string, form url.Values) (int, error) {
	return s.post(ctx, callbackURL, form, Signature(s.AuthToken, callbackURL, form))
}

// SendStatusCallback sends the status callback of m (to m.StatusCallback)
// for status, signed as Twilio signs it; errorCode is "" or Twilio's
// delivery error code (30003, 30005, …). It returns the answer's HTTP status.
func (s *Server) SendStatusCallback(ctx context.Context, m Message, status, errorCode string) (int, error) {
	if m.StatusCallback == "" {
		return 0, fmt.Errorf("twiliotest: message %s has no StatusCallback", m.Sid)
	}
	return s.PostSigned(ctx, m.StatusCallback, s.StatusCallbackForm(m, status, errorCode))
}

// PostWithSignature POSTs form to callbackURL with the given signature header
// (to test that a receiver refuses a forged or stale one).
func (s *Server) PostWithSignature(ctx context.Context, callbackURL string, form url.Values, signature string) (int, error) {
	return s.post(ctx, callbackURL, form, signature)
}

func (s *Server) post(ctx context.Context, callbackURL string, form url.Values, signature string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, callbackURL, strings.NewReader(form.Encode()))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	req.Header.Set("User-Agent", "TwilioProxy/1.1")
	if signature != "" {
		req.Header.Set("X-Twilio-Signature", signature)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, nil
}
