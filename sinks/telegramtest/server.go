// Package telegramtest runs a fake Telegram Bot API on loopback: sendMessage
// at /bot<token>/sendMessage, verifying the token in the path and the
// message as Telegram does, answering with the Bot API's documented
// {"ok":false,"error_code","description","parameters"} errors.
package telegramtest

import (
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"unicode/utf16"

	"github.com/notifyd/notifyd/sinks/internal/fake"
)

// Entity is a MessageEntity of an accepted message.
type Entity struct {
	Type   string `json:"type"`
	Offset int    `json:"offset"`
	Length int    `json:"length"`
}

// Message is one message the server accepted.
type Message struct {
	ChatID    string
	Text      string
	ParseMode string
	Entities  []Entity
	MessageID int64
}

// Server is a fake Bot API.
type Server struct {
	*httptest.Server
	Token string

	// Messages, Accepted, Requests, Rejected; the lock that guards the server.
	fake.Recorder[Message]

	forbidden map[string]string // chat -> 403 description
	notFound  map[string]bool
	migrated  map[string]int64
	throttle  fake.Queue[int] // parameters.retry_after
	fail      fake.Countdown
	permanent string
	nextID    map[string]int64
}

// Start runs a fake Bot API for the bot with token.
func Start(token string) *Server {
	s := &Server{Token: token, forbidden: map[string]string{}, notFound: map[string]bool{},
		migrated: map[string]int64{}, nextID: map[string]int64{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// Block: the user blocked the bot (403 "Forbidden: bot was blocked by the user").
func (s *Server) Block(chat string) { s.forbid(chat, "Forbidden: bot was blocked by the user") }

// Kick: the bot was removed from the group (403 "Forbidden: bot was kicked from the group chat").
func (s *Server) Kick(chat string) { s.forbid(chat, "Forbidden: bot was kicked from the group chat") }

func (s *Server) forbid(chat, desc string) {
	s.Lock()
	defer s.Unlock()
	s.forbidden[chat] = desc
}

// Forget: 400 "Bad Request: chat not found".
func (s *Server) Forget(chat string) {
	s.Lock()
	defer s.Unlock()
	s.notFound[chat] = true
}

// Migrate upgrades the group chat to a supergroup with the id to: messages to
// chat are refused with parameters.migrate_to_chat_id.
func (s *Server) Migrate(chat string, to int64) {
	s.Lock()
	defer s.Unlock()
	s.migrated[chat] = to
}

// ThrottleNext answers the next n authenticated requests with 429 and
// parameters.retry_after = retryAfter.
func (s *Server) ThrottleNext(n, retryAfter int) {
	s.Do(func() { s.throttle.Set(n, retryAfter) })
}

// FailNext answers the next n authenticated requests with 500 Internal Server Error.
func (s *Server) FailNext(n int) {
	s.Do(func() { s.fail = fake.Countdown(n) })
}

// FailPermanently answers every authenticated request with 400 and the
// description (e.g. "Bad Request: message is too long"); empty stops.
func (s *Server) FailPermanently(description string) {
	s.Do(func() { s.permanent = description })
}

func answer(w http.ResponseWriter, status int, v map[string]any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, code int, desc string, params map[string]any) {
	v := map[string]any{"ok": false, "error_code": code, "description": desc}
	if params != nil {
		v["parameters"] = params
	}
	answer(w, code, v)
}

// markdownV2Reserved are the characters MarkdownV2 never reads as markup:
// unescaped, Telegram refuses the message.
const markdownV2Reserved = "#+-={}.!"

func checkMarkdownV2(text string) string {
	escaped := false
	for i, r := range text {
		switch {
		case escaped:
			escaped = false
		case r == '\\':
			escaped = true
		case strings.ContainsRune(markdownV2Reserved, r):
			return fmt.Sprintf("Bad Request: can't parse entities: Character '%c' is reserved and must be escaped with the preceding '\\' (byte offset %d)", r, i)
		}
	}
	return ""
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	s.Begin()
	defer s.Unlock()
	rest, ok := strings.CutPrefix(r.URL.Path, "/bot")
	token, method, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 {
		fail(w, http.StatusNotFound, "Not Found", nil)
		return
	}
	if !fake.Same(token, s.Token) {
		s.Reject()
		fail(w, http.StatusUnauthorized, "Unauthorized", nil)
		return
	}
	if method != "sendMessage" {
		fail(w, http.StatusNotFound, "Not Found: method not found", nil)
		return
	}
	if retryAfter, ok := s.throttle.Next(); ok {
		fail(w, http.StatusTooManyRequests, fmt.Sprintf("Too Many Requests: retry after %d", retryAfter),
			map[string]any{"retry_after": retryAfter})
		return
	}
	if s.fail.Take() {
		fail(w, http.StatusInternalServerError, "Internal Server Error", nil)
		return
	}
	if s.permanent != "" {
		fail(w, http.StatusBadRequest, s.permanent, nil)
		return
	}
	var m struct {
		ChatID    json.RawMessage `json:"chat_id"`
		Text      string          `json:"text"`
		ParseMode string          `json:"parse_mode"`
		Entities  []Entity        `json:"entities"`
	}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if r.Method != http.MethodPost || mt != "application/json" || json.Unmarshal(body, &m) != nil {
		fail(w, http.StatusBadRequest, "Bad Request: invalid request", nil)
		return
	}
	chat := strings.Trim(string(m.ChatID), `"`)
	if chat == "" || chat == "null" {
		fail(w, http.StatusBadRequest, "Bad Request: chat_id is empty", nil)
		return
	}
	if to, ok := s.migrated[chat]; ok {
		fail(w, http.StatusBadRequest, "Bad Request: group chat was upgraded to a supergroup chat",
			map[string]any{"migrate_to_chat_id": to})
		return
	}
	if desc := s.forbidden[chat]; desc != "" {
		fail(w, http.StatusForbidden, desc, nil)
		return
	}
	if s.notFound[chat] {
		fail(w, http.StatusBadRequest, "Bad Request: chat not found", nil)
		return
	}
	if strings.TrimSpace(m.Text) == "" {
		fail(w, http.StatusBadRequest, "Bad Request: message text is empty", nil)
		return
	}
	units := len(utf16.Encode([]rune(m.Text)))
	if units > 4096 {
		fail(w, http.StatusBadRequest, "Bad Request: message is too long", nil)
		return
	}
	switch m.ParseMode {
	case "":
	case "MarkdownV2":
		if desc := checkMarkdownV2(m.Text); desc != "" {
			fail(w, http.StatusBadRequest, desc, nil)
			return
		}
	case "HTML", "Markdown":
	default:
		fail(w, http.StatusBadRequest, "Bad Request: unsupported parse_mode", nil)
		return
	}
	for _, e := range m.Entities {
		if m.ParseMode != "" || e.Offset < 0 || e.Length <= 0 || e.Offset+e.Length > units || e.Type == "" {
			fail(w, http.StatusBadRequest, "Bad Request: can't parse entities: entity "+strconv.Quote(e.Type)+" is out of the text", nil)
			return
		}
	}
	id := s.nextID[chat] + 1
	if !s.AcceptRequest(r, Message{ChatID: chat, Text: m.Text, ParseMode: m.ParseMode, Entities: m.Entities, MessageID: id}) {
		return
	}
	s.nextID[chat] = id
	chatID, _ := strconv.ParseInt(chat, 10, 64)
	answer(w, http.StatusOK, map[string]any{"ok": true, "result": map[string]any{"message_id": id,
		"date": 1764500000, "chat": map[string]any{"id": chatID}, "text": m.Text}})
}
