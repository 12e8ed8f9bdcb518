// Package feishutest runs a Feishu/Lark custom bot endpoint on loopback:
// POST /open-apis/bot/v2/hook/<hookId> as documented, with the signature
// (timestamp + sign in the body) checked the way Feishu does.
package feishutest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"

	"github.com/notifyd/notifyd/sinks/internal/fake"
)

// MaxBody is the documented limit of a request body.
const MaxBody = 20 << 10

// Message is one message the server accepted.
type Message struct {
	HookID  string
	MsgType string // text | post | interactive | …
	// Text is content.text of a text message.
	Text string
	// Card is the card of an interactive message, decoded.
	Card map[string]any
	// CardTitle and CardMarkdown are the card's header title and the
	// contents of its markdown elements, joined with "\n".
	CardTitle, CardMarkdown string
	Body                    []byte
	At                      time.Time
}

// Server is a Feishu bot endpoint.
//
// Throttle(n) answers the next n valid requests with code 11232 (frequency
// limited); FailWith(19024, …) is a bot whose keyword check refuses every
// message.
type Server struct {
	*httptest.Server
	// Now is the server's clock (default time.Now).
	Now func() time.Time
	// Legacy answers in the older format {"StatusCode":0,"StatusMessage":"success"}.
	Legacy bool

	robots // hook id → secret ("" = no signature check)
}

type robots = fake.Robots[Message]

// Start runs a server on loopback.
func Start() *Server {
	s := &Server{}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// AddBot adds a bot by its hook id and, when not empty, its signature secret.
func (s *Server) AddBot(hookID, secret string) { s.AddToken(hookID, secret) }

// RemoveBot marks a bot as removed from its group: its hook answers code
// 19001 (param invalid: incoming webhook access token invalid).
func (s *Server) RemoveBot(hookID string) { s.RemoveToken(hookID) }

// Sign is the documented signature of timestamp (unix seconds):
// base64(HMAC-SHA256(key=timestamp+"\n"+secret, msg="")).
func Sign(secret, timestamp string) string {
	mac := hmac.New(sha256.New, []byte(timestamp+"\n"+secret))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func (s *Server) answer(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	if s.Legacy && code == 0 {
		_ = json.NewEncoder(w).Encode(map[string]any{"Extra": nil, "StatusCode": 0, "StatusMessage": "success"})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"code": code, "msg": msg, "data": map[string]any{}})
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.Serve(w, r, fake.RobotAnswers{Answer: s.answer, ThrottleCode: 11232,
		ThrottleMsg: "frequency limited psm[lark.oapi.app_platform_runtime]appID[1]", OK: "success"}, s.read)
}

func (s *Server) read(w http.ResponseWriter, r *http.Request, x *fake.Exchange) (msg Message, ok bool) {
	body, err := x.Body, x.Err
	hookID, ok := strings.CutPrefix(r.URL.Path, "/open-apis/bot/v2/hook/")
	if !ok || r.Method != http.MethodPost {
		http.NotFound(w, r)
		return msg, false
	}
	secret, known := x.Secret(hookID)
	if !known {
		x.Reject()
		s.answer(w, 19001, "param invalid: incoming webhook access token invalid")
		return msg, false
	}
	if err != nil || len(body) > MaxBody {
		s.answer(w, 9499, "Bad Request")
		return msg, false
	}
	var m struct {
		Timestamp json.RawMessage `json:"timestamp"`
		Sign      string          `json:"sign"`
		MsgType   string          `json:"msg_type"`
		Content   json.RawMessage `json:"content"`
		Card      json.RawMessage `json:"card"`
	}
	if json.Unmarshal(body, &m) != nil {
		s.answer(w, 9499, "Bad Request")
		return msg, false
	}
	if secret != "" {
		// The timestamp is a string of unix seconds ("1599360473"); a number is accepted too.
		var ts string
		if json.Unmarshal(m.Timestamp, &ts) != nil {
			ts = string(m.Timestamp)
		}
		sec, perr := strconv.ParseInt(ts, 10, 64)
		if perr != nil || s.now().Sub(time.Unix(sec, 0)).Abs() > time.Hour ||
			!hmac.Equal([]byte(m.Sign), []byte(Sign(secret, ts))) {
			x.Reject()
			s.answer(w, 19021, "sign match fail or timestamp is not within one hour from current time")
			return msg, false
		}
	}
	msg = Message{HookID: hookID, MsgType: m.MsgType, Body: body, At: s.now()}
	switch m.MsgType {
	case "text":
		var c struct {
			Text string `json:"text"`
		}
		if json.Unmarshal(m.Content, &c) != nil || c.Text == "" {
			s.answer(w, 19001, "param invalid: text content is empty")
			return msg, false
		}
		msg.Text = c.Text
	case "interactive":
		var card struct {
			Header struct {
				Title struct {
					Content string `json:"content"`
				} `json:"title"`
			} `json:"header"`
			Elements []struct {
				Tag     string `json:"tag"`
				Content string `json:"content"`
			} `json:"elements"`
		}
		if json.Unmarshal(m.Card, &card) != nil || len(card.Elements) == 0 || json.Unmarshal(m.Card, &msg.Card) != nil {
			s.answer(w, 19001, "param invalid: card is empty")
			return msg, false
		}
		var md []string
		for _, e := range card.Elements {
			if e.Tag == "markdown" {
				md = append(md, e.Content)
			}
		}
		msg.CardTitle, msg.CardMarkdown = card.Header.Title.Content, strings.Join(md, "\n")
	case "post", "image", "share_chat":
		if len(m.Content) == 0 {
			s.answer(w, 19001, "param invalid: content is empty")
			return msg, false
		}
	default:
		s.answer(w, 19001, "param invalid: msg_type is invalid")
		return msg, false
	}
	return msg, true
}
