// Package wecomtest runs a WeCom group robot endpoint on loopback:
// POST /cgi-bin/webhook/send?key=… as documented, the key checked the way
// WeCom does (it is the robot's only secret).
package wecomtest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"
)

// Documented content limits, in UTF-8 bytes.
const (
	MaxText     = 2048
	MaxMarkdown = 4096
)

// Message is one message the server accepted.
type Message struct {
	Key     string // the robot's key it was sent with
	MsgType string // text | markdown
	Content string // text.content or markdown.content
	Body    []byte
	At      time.Time
}

// Server is a WeCom robot endpoint.
type Server struct {
	*httptest.Server

	mu       sync.Mutex
	keys     map[string]bool
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
	s := &Server{keys: map[string]bool{}, gone: map[string]bool{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// AddRobot adds a robot by its webhook key.
func (s *Server) AddRobot(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[key] = true
	delete(s.gone, key)
}

// RemoveRobot marks a robot as removed from its group: its key answers
// errcode 93000 (invalid webhook url).
func (s *Server) RemoveRobot(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gone[key] = true
}

// Throttle answers the next n valid requests with errcode 45009 (api freq out of limit).
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
// (code 0 stops it).
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

// Rejected counts the requests refused for their key.
func (s *Server) Rejected() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rejected
}

func answer(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	_ = json.NewEncoder(w).Encode(map[string]any{"errcode": code, "errmsg": msg})
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
	if r.URL.Path != "/cgi-bin/webhook/send" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		answer(w, 43004, "require POST method")
		return
	}
	key := r.URL.Query().Get("key")
	if !s.keys[key] || s.gone[key] {
		s.rejected++
		answer(w, 93000, "invalid webhook url, hint: [1700000000_1_abcdef], from ip: 127.0.0.1")
		return
	}
	var m struct {
		MsgType string `json:"msgtype"`
		Text    *struct {
			Content string `json:"content"`
		} `json:"text"`
		Markdown *struct {
			Content string `json:"content"`
		} `json:"markdown"`
	}
	if err != nil || json.Unmarshal(body, &m) != nil {
		answer(w, 40008, "invalid message type")
		return
	}
	msg := Message{Key: key, MsgType: m.MsgType, Body: body, At: time.Now()}
	limit := 0
	switch {
	case m.MsgType == "text" && m.Text != nil:
		msg.Content, limit = m.Text.Content, MaxText
	case m.MsgType == "markdown" && m.Markdown != nil:
		msg.Content, limit = m.Markdown.Content, MaxMarkdown
	default:
		answer(w, 40008, "invalid message type")
		return
	}
	if msg.Content == "" {
		answer(w, 44004, "empty content")
		return
	}
	if len(msg.Content) > limit {
		answer(w, 40058, "content exceed max length")
		return
	}
	if s.throttle > 0 {
		s.throttle--
		answer(w, 45009, "api freq out of limit")
		return
	}
	if s.failCode != 0 {
		answer(w, s.failCode, s.failMsg)
		return
	}
	if r.Context().Err() != nil {
		return
	}
	s.messages = append(s.messages, msg)
	answer(w, 0, "ok")
}
