// Package dingtalktest runs a DingTalk custom robot endpoint on loopback:
// POST /robot/send?access_token=…[&timestamp=…&sign=…] as documented, with the
// robot's access token and sign checked the way DingTalk does.
package dingtalktest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"mime"
	"net/http"
	"net/http/httptest"
	"strconv"
	"time"

	"github.com/notifyd/notifyd/sinks/internal/fake"
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
//
// Throttle(n) answers the next n valid requests with errcode 130101 (send too
// fast); FailWith(310000, "keywords not in content") is a robot whose keyword
// check refuses every message.
type Server struct {
	*httptest.Server
	// Now is the server's clock (default time.Now).
	Now func() time.Time

	robots // access token → secret ("" = no sign)
}

type robots = fake.Robots[Message]

// Start runs a server on loopback.
func Start() *Server {
	s := &Server{}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// AddRobot adds a robot with its access token and, when not empty, its
// sign secret (then an unsigned or badly signed request is refused).
func (s *Server) AddRobot(accessToken, secret string) { s.AddToken(accessToken, secret) }

// RemoveRobot marks a robot as removed from its group: its token answers
// errcode 300001.
func (s *Server) RemoveRobot(accessToken string) { s.RemoveToken(accessToken) }

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

var answers = fake.RobotAnswers{Answer: answer, ThrottleCode: 130101,
	ThrottleMsg: "send too fast, exceed 20 times per minute", OK: "ok"}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) { s.Serve(w, r, answers, s.read) }

func (s *Server) read(w http.ResponseWriter, r *http.Request, x *fake.Exchange) (msg Message, ok bool) {
	body, err := x.Body, x.Err
	if r.Method != http.MethodPost || r.URL.Path != "/robot/send" {
		http.NotFound(w, r)
		return msg, false
	}
	q := r.URL.Query()
	token := q.Get("access_token")
	secret, known := x.Secret(token)
	if !known {
		x.Reject()
		answer(w, 300001, "token is not exist")
		return msg, false
	}
	if secret != "" {
		ts := q.Get("timestamp")
		ms, perr := strconv.ParseInt(ts, 10, 64)
		if perr != nil || s.now().Sub(time.UnixMilli(ms)).Abs() > time.Hour {
			x.Reject()
			answer(w, 310000, "sign not match, more: [timestamp is invalid]")
			return msg, false
		}
		// q.Get decoded the URL encoding of the base64 sign once, as DingTalk does.
		if !hmac.Equal([]byte(q.Get("sign")), []byte(Sign(secret, ts))) {
			x.Reject()
			answer(w, 310000, "sign not match, more: [sign not match]")
			return msg, false
		}
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" || err != nil {
		answer(w, 43004, "需要POST请求,并且Content-Type为application/json")
		return msg, false
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
		return msg, false
	}
	msg = Message{Robot: token, MsgType: m.MsgType, Body: body, At: s.now()}
	switch m.MsgType {
	case "text":
		if m.Text.Content == "" {
			answer(w, 40035, "缺少参数 text.content")
			return msg, false
		}
		msg.Text = m.Text.Content
	case "markdown":
		if m.Markdown.Title == "" || m.Markdown.Text == "" {
			answer(w, 40035, "缺少参数 markdown.title or markdown.text")
			return msg, false
		}
		msg.Title, msg.Markdown = m.Markdown.Title, m.Markdown.Text
	default:
		answer(w, 40035, "缺少参数 msgtype")
		return msg, false
	}
	return msg, true
}
