// Package wecomtest runs a WeCom group robot endpoint on loopback:
// POST /cgi-bin/webhook/send?key=… as documented, the key checked the way
// WeCom does (it is the robot's only secret).
package wecomtest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/notifyd/notifyd/sinks/internal/fake"
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
//
// Throttle(n) answers the next n valid requests with errcode 45009 (api freq
// out of limit).
type Server struct {
	*httptest.Server

	robots
}

type robots = fake.Robots[Message]

// Start runs a server on loopback.
func Start() *Server {
	s := &Server{}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// AddRobot adds a robot by its webhook key.
func (s *Server) AddRobot(key string) { s.AddToken(key, "") }

// RemoveRobot marks a robot as removed from its group: its key answers
// errcode 93000 (invalid webhook url).
func (s *Server) RemoveRobot(key string) { s.RemoveToken(key) }

func answer(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	_ = json.NewEncoder(w).Encode(map[string]any{"errcode": code, "errmsg": msg})
}

var answers = fake.RobotAnswers{Answer: answer, ThrottleCode: 45009, ThrottleMsg: "api freq out of limit", OK: "ok"}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) { s.Serve(w, r, answers, s.read) }

func (s *Server) read(w http.ResponseWriter, r *http.Request, x *fake.Exchange) (msg Message, ok bool) {
	body, err := x.Body, x.Err
	if r.URL.Path != "/cgi-bin/webhook/send" {
		http.NotFound(w, r)
		return msg, false
	}
	if r.Method != http.MethodPost {
		answer(w, 43004, "require POST method")
		return msg, false
	}
	key := r.URL.Query().Get("key")
	if _, ok := x.Secret(key); !ok {
		x.Reject()
		answer(w, 93000, "invalid webhook url, hint: [1700000000_1_abcdef], from ip: 127.0.0.1")
		return msg, false
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
		return msg, false
	}
	msg = Message{Key: key, MsgType: m.MsgType, Body: body, At: time.Now()}
	limit := 0
	switch {
	case m.MsgType == "text" && m.Text != nil:
		msg.Content, limit = m.Text.Content, MaxText
	case m.MsgType == "markdown" && m.Markdown != nil:
		msg.Content, limit = m.Markdown.Content, MaxMarkdown
	default:
		answer(w, 40008, "invalid message type")
		return msg, false
	}
	if msg.Content == "" {
		answer(w, 44004, "empty content")
		return msg, false
	}
	if len(msg.Content) > limit {
		answer(w, 40058, "content exceed max length")
		return msg, false
	}
	return msg, true
}
