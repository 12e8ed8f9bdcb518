// Package slacktest runs a fake Slack on loopback: incoming webhooks
// (/services/T…/B…/secret) and the Web API's chat.postMessage, verifying the
// webhook's secret path and the bot token as Slack does and answering with
// Slack's documented error bodies.
package slacktest

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/notifyd/notifyd/sinks/internal/fake"
)

// Message is one message Slack accepted.
type Message struct {
	Channel string // the channel posted to (a webhook's own channel)
	Webhook bool   // posted through an incoming webhook
	Text    string
	Mrkdwn  bool
	TS      string // the message's ts (the API's message id)
	ReqID   string // X-Slack-Req-Id of the answer
}

type webhook struct {
	channel string
	secret  string
	gone    string // error code answered when revoked/archived
}

// Server is a fake Slack.
type Server struct {
	*httptest.Server
	BotToken string

	// Messages, Accepted, Requests, Rejected; the lock that guards the server.
	fake.Recorder[Message]

	webhooks  map[string]*webhook // by B… id
	gone      map[string]string   // channel -> chat.postMessage error
	throttle  fake.Queue[int]     // Retry-After seconds
	fail      fake.Countdown
	permanent string
	seq       int
}

// Start runs a fake Slack whose Web API accepts botToken.
func Start(botToken string) *Server {
	s := &Server{BotToken: botToken, webhooks: map[string]*webhook{}, gone: map[string]string{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// Host is the server's host:port (for the provider's webhookHosts).
func (s *Server) Host() string {
	u, _ := url.Parse(s.URL)
	return u.Host
}

func randomSecret(n int) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// NewWebhook creates an incoming webhook posting to channel and returns its URL.
func (s *Server) NewWebhook(channel string) string {
	s.Lock()
	defer s.Unlock()
	s.seq++
	id := fmt.Sprintf("B%08d", s.seq)
	w := &webhook{channel: channel, secret: randomSecret(24)}
	s.webhooks[id] = w
	return s.URL + "/services/T0TEST0001/" + id + "/" + w.secret
}

// RevokeWebhook removes the webhook at rawURL: Slack answers 404 no_service.
func (s *Server) RevokeWebhook(rawURL string) {
	s.Lock()
	defer s.Unlock()
	if w := s.webhookOf(rawURL); w != nil {
		w.gone = "no_service"
	}
}

func (s *Server) webhookOf(rawURL string) *webhook {
	parts := strings.Split(strings.TrimPrefix(rawURL, s.URL), "/")
	if len(parts) == 5 {
		return s.webhooks[parts[3]]
	}
	return nil
}

// ArchiveChannel archives channel: chat.postMessage answers is_archived and
// its webhooks 410 channel_is_archived.
func (s *Server) ArchiveChannel(channel string) {
	s.closeChannel(channel, "is_archived", "channel_is_archived")
}

// RemoveChannel deletes channel: channel_not_found.
func (s *Server) RemoveChannel(channel string) {
	s.closeChannel(channel, "channel_not_found", "channel_not_found")
}

// closeChannel makes chat.postMessage to channel answer apiCode and its
// webhooks hookCode.
func (s *Server) closeChannel(channel, apiCode, hookCode string) {
	s.Lock()
	defer s.Unlock()
	s.gone[channel] = apiCode
	for _, w := range s.webhooks {
		if w.channel == channel {
			w.gone = hookCode
		}
	}
}

// KickBot removes the bot from channel: not_in_channel.
func (s *Server) KickBot(channel string) {
	s.Lock()
	defer s.Unlock()
	s.gone[channel] = "not_in_channel"
}

// ThrottleNext answers the next n authenticated requests with HTTP 429,
// Retry-After: retryAfter seconds (and {"ok":false,"error":"ratelimited"} on the API).
func (s *Server) ThrottleNext(n, retryAfter int) {
	s.Do(func() { s.throttle.Set(n, retryAfter) })
}

// FailNext answers the next n authenticated requests with a server error
// (webhook: 500 rollup_error; API: 503 service_unavailable).
func (s *Server) FailNext(n int) {
	s.Do(func() { s.fail = fake.Countdown(n) })
}

// FailPermanently answers every authenticated request with the error code
// (API: {"ok":false,"error":code}; webhook: 400 or 403 with the code as body,
// as Slack's webhook errors are). Empty stops.
func (s *Server) FailPermanently(code string) {
	s.Do(func() { s.permanent = code })
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	s.Begin()
	defer s.Unlock()
	reqID := "R" + randomSecret(10)
	w.Header().Set("X-Slack-Req-Id", reqID)
	switch {
	case strings.HasPrefix(r.URL.Path, "/services/"):
		s.serveWebhook(w, r, body, reqID)
	case r.URL.Path == "/api/chat.postMessage":
		s.serveAPI(w, r, body, reqID)
	default:
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, "not_found")
	}
}

func isJSON(r *http.Request) bool {
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && mt == "application/json" && (params["charset"] == "" || strings.EqualFold(params["charset"], "utf-8"))
}

func plain(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/html")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// webhookStatus is the HTTP status Slack documents for a webhook error code.
func webhookStatus(code string) int {
	switch code {
	case "action_prohibited", "posting_to_general_channel_denied", "invalid_token":
		return http.StatusForbidden
	case "channel_not_found", "no_service", "no_team", "team_disabled":
		return http.StatusNotFound
	case "channel_is_archived":
		return http.StatusGone
	case "rollup_error":
		return http.StatusInternalServerError
	}
	return http.StatusBadRequest
}

func (s *Server) serveWebhook(w http.ResponseWriter, r *http.Request, body []byte, reqID string) {
	parts := strings.Split(r.URL.Path, "/") // "", services, T…, B…, secret
	if r.Method != http.MethodPost {
		plain(w, http.StatusMethodNotAllowed, "invalid_method")
		return
	}
	var hook *webhook
	if len(parts) == 5 && parts[2] == "T0TEST0001" {
		hook = s.webhooks[parts[3]]
	}
	if hook == nil {
		s.Reject()
		plain(w, http.StatusNotFound, "no_service")
		return
	}
	if !fake.Same(parts[4], hook.secret) {
		s.Reject()
		plain(w, http.StatusForbidden, "invalid_token")
		return
	}
	if hook.gone != "" {
		plain(w, webhookStatus(hook.gone), hook.gone)
		return
	}
	if retryAfter, ok := s.throttle.Next(); ok {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
		plain(w, http.StatusTooManyRequests, "rate_limited")
		return
	}
	if s.fail.Take() {
		plain(w, http.StatusInternalServerError, "rollup_error")
		return
	}
	if s.permanent != "" {
		plain(w, webhookStatus(s.permanent), s.permanent)
		return
	}
	var m struct {
		Text   *string `json:"text"`
		Mrkdwn *bool   `json:"mrkdwn"`
	}
	if !isJSON(r) || json.Unmarshal(body, &m) != nil {
		plain(w, http.StatusBadRequest, "invalid_payload")
		return
	}
	if m.Text == nil || strings.TrimSpace(*m.Text) == "" {
		plain(w, http.StatusBadRequest, "missing_text_or_fallback_or_attachments")
		return
	}
	if s.AcceptRequest(r, Message{Channel: hook.channel, Webhook: true, Text: *m.Text,
		Mrkdwn: m.Mrkdwn == nil || *m.Mrkdwn, ReqID: reqID}) {
		plain(w, http.StatusOK, "ok")
	}
}

func apiAnswer(w http.ResponseWriter, status int, v map[string]any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func apiError(w http.ResponseWriter, code string) {
	apiAnswer(w, http.StatusOK, map[string]any{"ok": false, "error": code})
}

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request, body []byte, reqID string) {
	if r.Method != http.MethodPost {
		apiError(w, "invalid_request_method")
		return
	}
	auth := r.Header.Get("Authorization")
	if auth == "" {
		s.Reject()
		apiError(w, "not_authed")
		return
	}
	if !fake.Bearer(r, s.BotToken) {
		s.Reject()
		apiError(w, "invalid_auth")
		return
	}
	if retryAfter, ok := s.throttle.Next(); ok {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
		apiAnswer(w, http.StatusTooManyRequests, map[string]any{"ok": false, "error": "ratelimited"})
		return
	}
	if s.fail.Take() {
		apiAnswer(w, http.StatusServiceUnavailable, map[string]any{"ok": false, "error": "service_unavailable"})
		return
	}
	if s.permanent != "" {
		apiError(w, s.permanent)
		return
	}
	var m struct {
		Channel string `json:"channel"`
		Text    string `json:"text"`
		Mrkdwn  *bool  `json:"mrkdwn"`
		Blocks  []any  `json:"blocks"`
	}
	if !isJSON(r) || json.Unmarshal(body, &m) != nil {
		apiError(w, "invalid_json")
		return
	}
	if m.Channel == "" {
		apiError(w, "channel_not_found")
		return
	}
	if code := s.gone[m.Channel]; code != "" {
		apiError(w, code)
		return
	}
	if strings.TrimSpace(m.Text) == "" && len(m.Blocks) == 0 {
		apiError(w, "no_text")
		return
	}
	if len(m.Text) > 40000 {
		apiError(w, "msg_too_long")
		return
	}
	ts := fmt.Sprintf("%d.%06d", time.Now().Unix(), s.seq+1)
	if !s.AcceptRequest(r, Message{Channel: m.Channel, Text: m.Text, Mrkdwn: m.Mrkdwn == nil || *m.Mrkdwn,
		TS: ts, ReqID: reqID}) {
		return
	}
	s.seq++
	apiAnswer(w, http.StatusOK, map[string]any{"ok": true, "channel": m.Channel, "ts": ts,
		"message": map[string]any{"type": "message", "text": m.Text, "ts": ts}})
}
