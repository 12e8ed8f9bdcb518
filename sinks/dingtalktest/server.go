// Package dingtalktest runs a DingTalk custom robot endpoint on loopback:
// POST /robot/send?access_token=…[&timestamp=…&sign=…] as documented, with the
// robot's access token and sign checked the way DingTalk does.
package dingtalktest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"time"
)

// Message is one message the server accepted.
type Message struct {
	Robot   string // the access token it was sent with
	MsgType string // text | markdown
	// Text is text.content of a text message.
	Text string
	// Title and Markdown are markdown.title and markdown.text.
	Title, Markdown string
	Body            []byte
	At              time.Time
}

// Server is a DingTalk robot endpoint.
type Server struct {
	*httptest.Server
	// Now is the server's clock (default time.Now).
	Now func() time.Time

	mu       sync.Mutex
	robots   map[string]string // access token → secret ("" = no sign)
	gone     map[string]bool
	throttle int
	unavail  int
	retryHdr string
	failCode int
	failMsg  string
	messages []Message
	requests int
	rejected int
}

// Start runs a server on loopback.
func Start() *Server {
	s := &Server{robots: map[string]string{}, gone: map[string]bool{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// AddRobot adds a robot with its access token and, when not empty, its
// sign secret (then an unsigned or badly signed request is refused).
func (s *Server) AddRobot(accessToken, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.robots[accessToken] = secret
	delete(s.gone, accessToken)
}

// RemoveRobot marks a robot as removed from its group: its token answers
// errcode 300001.
func (s *Server) RemoveRobot(accessToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gone[accessToken] = true
}

// Throttle answers the next n valid requests with errcode 130101 (send too fast).
func (s *Server) Throttle(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.throttle = n
}

// Unavailable answers the next n requests with HTTP 503 and, when not empty,
// the Retry-After header.
func (s *Server) Unavailable(n int, retryAfter string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unavail, s.retryHdr = n, retryAfter
}

// FailWith answers every valid request with errcode code and errmsg msg
// (code 0 stops it), as a robot whose keyword check refuses every message
// would (310000 "keywords not in content").
func (s *Server) FailWith(code int, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failCode, s.failMsg = code, msg
}

// Messages returns a copy of the accepted messages, in arrival order.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Requests counts every request received.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// Rejected counts the requests refused for their token or sign.
func (s *Server) Rejected() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rejected
}

// Sign is the documented sign of a timestamp (ms), before URL encoding.
func Sign(secret, timestamp string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(timestamp + "\n" + secret))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func answer(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json;charset=utf-8")
	_ = json.NewEncoder(w).Encode(map[string]any{"errcode": code, "errmsg": msg})
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	if s.unavail > 0 {
		s.unavail--
		if s.retryHdr != "" {
			w.Header().Set("Retry-After", s.retryHdr)
		}
		http.Error(w, "service unavailable", http.StatusServiceUnavailable)
		return
	}
	if r.Method != http.MethodPost || r.URL.Path != "/robot/send" {
		http.NotFound(w, r)
		return
	}
	q := r.URL.Query()
	token := q.Get("access_token")
	secret, known := s.robots[token]
	if !known || s.gone[token] {
		s.rejected++
		answer(w, 300001, "token is not exist")
		return
	}
	if secret != "" {
		ts := q.Get("timestamp")
		ms, perr := strconv.ParseInt(ts, 10, 64)
		if perr != nil || s.now().Sub(time.UnixMilli(ms)).Abs() > time.Hour {
			s.rejected++
			answer(w, 310000, "sign not match, more: [timestamp is invalid]")
			return
		}
		// q.Get decoded the URL encoding of the base64 sign once, as DingTalk does.
		if !hmac.Equal([]byte(q.Get("sign")), []byte(Sign(secret, ts))) {
			s.rejected++
			answer(w, 310000, "sign not match, more: [sign not match]")
			return
		}
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" || err != nil {
		answer(w, 43004, "需要POST请求,并且Content-Type为application/json")
		return
	}
	var m struct {
		MsgType string `json:"msgtype"`
		Text    struct {
			Content string `json:"content"`
		} `json:"text"`
		Markdown struct {
			Title string `json:"title"`
			Text  string `json:"text"`
		} `json:"markdown"`
	}
	if json.Unmarshal(body, &m) != nil {
		answer(w, 40035, "缺少参数 json")
		return
	}
	msg := Message{Robot: token, MsgType: m.MsgType, Body: body, At: s.now()}
	switch m.MsgType {
	case "text":
		if m.Text.Content == "" {
			answer(w, 40035, "缺少参数 text.content")
			return
		}
		msg.Text = m.Text.Content
	case "markdown":
		if m.Markdown.Title == "" || m.Markdown.Text == "" {
			answer(w, 40035, "缺少参数 markdown.title or markdown.text")
			return
		}
		msg.Title, msg.Markdown = m.Markdown.Title, m.Markdown.Text
	default:
		answer(w, 40035, "缺少参数 msgtype")
		return
	}
	if s.throttle > 0 {
		s.throttle--
		answer(w, 130101, "send too fast, exceed 20 times per minute")
		return
	}
	if s.failCode != 0 {
		answer(w, s.failCode, s.failMsg)
		return
	}
	if r.Context().Err() != nil { // the sender gave up: not delivered
		return
	}
	s.messages = append(s.messages, msg)
	answer(w, 0, "ok")
}
