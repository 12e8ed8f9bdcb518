// Package whatsapptest runs a fake WhatsApp Business Cloud API on loopback:
// POST /{version}/{phoneNumberId}/messages with a Bearer access token,
// checking the token, the phone number id, the message format and the
// registered templates, answering with Graph API error bodies
// ({"error":{"message","type","code","error_subcode","error_data","fbtrace_id"}}).
package whatsapptest

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/notifyd/notifyd/sinks/internal/fake"
)

// Param is one template body parameter.
type Param struct {
	Name string // parameter_name of a named parameter
	Text string
}

// Message is one message the server accepted.
type Message struct {
	ID       string // wamid
	To       string
	Type     string // template | text
	Template string
	Language string
	Params   []Param
	Text     string
	// CallbackData is the biz_opaque_callback_data, returned in status webhooks.
	CallbackData string
}

// Server is a fake Cloud API for one business phone number.
type Server struct {
	*httptest.Server
	Version       string
	PhoneNumberID string
	Token         string

	// Messages, Accepted, Requests, Rejected; the lock that guards the server.
	fake.Recorder[Message]

	templates map[string]int // name/lang -> parameter count
	notWA     map[string]bool
	window    map[string]bool
	throttle  fake.Queue[int] // the rate limit code
	fail      fake.Countdown
	permanent *graphError
}

type graphError struct {
	status  int
	code    int
	subcode int
	msg     string
	details string
}

// Start runs a fake Cloud API at /{version}/{phoneNumberID}/messages
// accepting the access token.
func Start(version, phoneNumberID, token string) *Server {
	s := &Server{Version: version, PhoneNumberID: phoneNumberID, Token: token,
		templates: map[string]int{}, notWA: map[string]bool{}, window: map[string]bool{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// AddTemplate registers an approved template in language with params body
// parameters.
func (s *Server) AddTemplate(name, language string, params int) {
	s.Lock()
	defer s.Unlock()
	s.templates[name+"/"+language] = params
}

// NotOnWhatsApp marks a number (digits) as unable to receive: 131026.
func (s *Server) NotOnWhatsApp(number string) {
	s.Lock()
	defer s.Unlock()
	s.notWA[number] = true
}

// OpenWindow: the user wrote within 24 hours, free-form text is accepted.
// Text to any other number is refused with 131047.
func (s *Server) OpenWindow(number string) {
	s.Lock()
	defer s.Unlock()
	s.window[number] = true
}

// ThrottleNext answers the next n authenticated requests with the rate
// limit code (130429 throughput, 131056 pair rate, 4, 80007), HTTP 400 as
// the Cloud API does.
func (s *Server) ThrottleNext(n, code int) {
	s.Do(func() { s.throttle.Set(n, code) })
}

// FailNext answers the next n authenticated requests with HTTP 500, code 131000.
func (s *Server) FailNext(n int) {
	s.Do(func() { s.fail = fake.Countdown(n) })
}

// FailPermanently answers every authenticated request with the error (e.g.
// 400, 131009 "Parameter value is not valid"); status 0 stops.
func (s *Server) FailPermanently(status, code int, message string) {
	s.Lock()
	defer s.Unlock()
	if status == 0 {
		s.permanent = nil
		return
	}
	s.permanent = &graphError{status: status, code: code, msg: message}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (e graphError) write(w http.ResponseWriter) {
	typ := "OAuthException"
	body := map[string]any{"message": e.msg, "type": typ, "code": e.code, "fbtrace_id": "A" + randomHex(8)}
	if e.subcode != 0 {
		body["error_subcode"] = e.subcode
	}
	if e.details != "" {
		body["error_data"] = map[string]any{"messaging_product": "whatsapp", "details": e.details}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": body})
}

var digits = regexp.MustCompile(`^[0-9]{6,15}$`)

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	s.Begin()
	defer s.Unlock()
	if !fake.Bearer(r, s.Token) {
		s.Reject()
		graphError{status: http.StatusUnauthorized, code: 190,
			msg: "Invalid OAuth access token - Cannot parse access token"}.write(w)
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) != 3 || parts[0] != s.Version || parts[2] != "messages" || r.Method != http.MethodPost {
		graphError{status: http.StatusBadRequest, code: 100, msg: "Unknown path components: " + r.URL.Path}.write(w)
		return
	}
	if parts[1] != s.PhoneNumberID {
		graphError{status: http.StatusBadRequest, code: 100, subcode: 33,
			msg: fmt.Sprintf("Unsupported post request. Object with ID '%s' does not exist, cannot be loaded due to missing permissions, or does not support this operation.", parts[1])}.write(w)
		return
	}
	if code, ok := s.throttle.Next(); ok {
		msg := map[int]string{130429: "Rate limit hit", 131056: "(Business Account, Consumer Account) pair rate limit hit",
			4: "(#4) Application request limit reached", 80007: "Rate limit issues"}[code]
		graphError{status: http.StatusBadRequest, code: code, msg: msg, details: msg}.write(w)
		return
	}
	if s.fail.Take() {
		graphError{status: http.StatusInternalServerError, code: 131000, msg: "Something went wrong"}.write(w)
		return
	}
	if s.permanent != nil {
		s.permanent.write(w)
		return
	}
	var m struct {
		MessagingProduct string `json:"messaging_product"`
		To               string `json:"to"`
		Type             string `json:"type"`
		CallbackData     string `json:"biz_opaque_callback_data"`
		Template         *struct {
			Name     string `json:"name"`
			Language struct {
				Code string `json:"code"`
			} `json:"language"`
			Components []struct {
				Type       string `json:"type"`
				Parameters []struct {
					Type          string `json:"type"`
					ParameterName string `json:"parameter_name"`
					Text          string `json:"text"`
				} `json:"parameters"`
			} `json:"components"`
		} `json:"template"`
		Text *struct {
			Body string `json:"body"`
		} `json:"text"`
	}
	invalid := func(msg string) {
		graphError{status: http.StatusBadRequest, code: 100, msg: "(#100) " + msg}.write(w)
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/json" || json.Unmarshal(body, &m) != nil {
		invalid("Invalid JSON body")
		return
	}
	if m.MessagingProduct != "whatsapp" {
		invalid("The parameter messaging_product is required.")
		return
	}
	if !digits.MatchString(m.To) {
		invalid("Invalid parameter: to")
		return
	}
	msg := Message{To: m.To, Type: m.Type, CallbackData: m.CallbackData}
	switch m.Type {
	case "template":
		if m.Template == nil || m.Template.Name == "" || m.Template.Language.Code == "" {
			invalid("The parameter template['name'] and template['language']['code'] are required.")
			return
		}
		msg.Template, msg.Language = m.Template.Name, m.Template.Language.Code
		for _, c := range m.Template.Components {
			if c.Type != "body" {
				invalid("Invalid component type " + c.Type)
				return
			}
			for _, p := range c.Parameters {
				if p.Type != "text" {
					invalid("Invalid parameter type " + p.Type)
					return
				}
				msg.Params = append(msg.Params, Param{Name: p.ParameterName, Text: p.Text})
			}
		}
		want, ok := s.templates[msg.Template+"/"+msg.Language]
		if !ok {
			graphError{status: http.StatusNotFound, code: 132001, msg: "Template name does not exist in the translation",
				details: fmt.Sprintf("template name (%s) does not exist in %s", msg.Template, msg.Language)}.write(w)
			return
		}
		if want != len(msg.Params) {
			graphError{status: http.StatusBadRequest, code: 132000, msg: "Number of parameters does not match the expected number of params",
				details: fmt.Sprintf("body: number of localizable_params (%d) does not match the expected number of params (%d)", len(msg.Params), want)}.write(w)
			return
		}
	case "text":
		if m.Text == nil || strings.TrimSpace(m.Text.Body) == "" {
			invalid("The parameter text['body'] is required.")
			return
		}
		msg.Text = m.Text.Body
	default:
		invalid("Unsupported message type " + m.Type)
		return
	}
	if s.notWA[m.To] {
		graphError{status: http.StatusBadRequest, code: 131026, msg: "Message Undeliverable",
			details: "Message Undeliverable."}.write(w)
		return
	}
	if m.Type == "text" && !s.window[m.To] {
		graphError{status: http.StatusBadRequest, code: 131047, msg: "Re-engagement message",
			details: "Message failed to send because more than 24 hours have passed since the customer last replied to this number."}.write(w)
		return
	}
	msg.ID = "wamid.HBgL" + strings.ToUpper(randomHex(12))
	if !s.AcceptRequest(r, msg) {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"messaging_product": "whatsapp",
		"contacts": []any{map[string]any{"input": m.To, "wa_id": m.To}},
		"messages": []any{map[string]any{"id": msg.ID, "message_status": "accepted"}}})
}

// PostStatus posts a status webhook about an accepted message to url, as
// Meta does: the WhatsApp Business Account payload, signed with the app's
// secret in X-Hub-Signature-256 (a wrong appSecret makes a forgery). errCode,
// when not 0, is the failure's error code. It returns the answer's status.
func (s *Server) PostStatus(ctx context.Context, url, appSecret string, m Message, status string, errCode int) (int, error) {
	st := map[string]any{"id": m.ID, "status": status, "timestamp": strconv.FormatInt(time.Now().Unix(), 10),
		"recipient_id": m.To, "biz_opaque_callback_data": m.CallbackData}
	if errCode != 0 {
		st["errors"] = []any{map[string]any{"code": errCode, "title": "Message undeliverable"}}
	}
	body, err := json.Marshal(map[string]any{"object": "whatsapp_business_account", "entry": []any{map[string]any{
		"id": "WABA_ID", "changes": []any{map[string]any{"field": "messages", "value": map[string]any{
			"messaging_product": "whatsapp", "metadata": map[string]any{"phone_number_id": s.PhoneNumberID},
			"statuses": []any{st}}}}}}})
	if err != nil {
		return 0, err
	}
	mac := hmac.New(sha256.New, []byte(appSecret))
	mac.Write(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// VerifySubscription makes Meta's webhook subscription check against url
// and returns the answer's status and body (the challenge when accepted).
func VerifySubscription(ctx context.Context, url, verifyToken, challenge string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"?hub.mode=subscribe&hub.verify_token="+verifyToken+
		"&hub.challenge="+challenge, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b), nil
}
