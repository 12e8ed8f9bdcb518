package sinks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

// Telegram sends with the Bot API's sendMessage:
// POST {baseUrl}/bot<token>/sendMessage, JSON {"chat_id","text","parse_mode"}.
//
// Text: content.markdown, when set, is sent with parse_mode MarkdownV2; it is
// the template author's job to escape it as Telegram requires (every one of
// _*[]()~`>#+-=|{}.! outside markup preceded by a backslash), or Telegram
// answers 400 "can't parse entities" (a permanent failure). Otherwise
// content.text, else content.body, is sent as plain text (no parse_mode).
// content.title, when set, is a bold first line: escaped and wrapped in * in
// MarkdownV2, a "bold" entity over it in plain text.
//
// Answers: {"ok":true,"result":{"message_id"}} → message id
// "<chat_id>:<message_id>"; {"ok":false,"error_code","description",
// "parameters"}: 429 with parameters.retry_after → retry after that delay;
// parameters.migrate_to_chat_id (the group became a supergroup) → sent once
// more to the new chat in the same Send, the message id naming the new chat
// (and a warning logged: the profile's chat id should be updated); 403 (bot
// blocked by the user, kicked from the group, user deactivated) and 400 "chat
// not found" → invalid recipient; 401/404 (bad token) → permanent; 5xx →
// retry later.
//
// Limits: one message a second per chat (perChatPerMinute, default 60) on
// this instance; the bot's overall ~30 messages a second is the provider's
// rateLimit.
type telegramProvider struct {
	name    string
	base    string // {baseUrl}/bot
	token   string
	limiter *KeyLimiter
	perMin  float64
	client  *http.Client
	deps    Deps
	log     *slog.Logger
}

// telegramSettings is the `telegram:` section of a provider.
type telegramSettings struct {
	// BaseURL of the Bot API (default https://api.telegram.org).
	BaseURL string `yaml:"baseUrl"`
	// BotToken from @BotFather (<bot id>:<secret>); required.
	BotToken string `yaml:"botToken"`
	// PerChatPerMinute bounds the messages to one chat (default 60; 0 = no limit).
	PerChatPerMinute *float64 `yaml:"perChatPerMinute"`
	// Timeout of one HTTP call (default 10s).
	Timeout time.Duration `yaml:"timeout"`
}

const telegramDefaultBaseURL = "https://api.telegram.org"

var telegramTokenRE = regexp.MustCompile(`^[0-9]+:[A-Za-z0-9_-]+$`)

func init() {
	Register("telegram", Type{Channels: []string{"telegram"}, New: newTelegramProvider})
}

func newTelegramProvider(s Spec) (Provider, error) {
	var cfg telegramSettings
	if err := s.Settings(&cfg); err != nil {
		return nil, err
	}
	if cfg.BotToken == "" {
		return nil, errors.New("telegram: botToken is required")
	}
	if !telegramTokenRE.MatchString(cfg.BotToken) {
		return nil, errors.New("telegram: botToken must look like <bot id>:<secret> as @BotFather gives it")
	}
	base, err := chatBaseURL("telegram", cfg.BaseURL, telegramDefaultBaseURL)
	if err != nil {
		return nil, err
	}
	perMin, err := chatPerMinute("telegram", "perChatPerMinute", cfg.PerChatPerMinute, 60)
	if err != nil {
		return nil, err
	}
	if err := chatTimeout("telegram", cfg.Timeout); err != nil {
		return nil, err
	}
	return &telegramProvider{name: s.Name, base: base + "/bot", token: cfg.BotToken,
		limiter: NewKeyLimiter(perMin, 1), perMin: perMin, client: newHTTPClient(cfg.Timeout, nil), deps: s.Deps, log: chatLog(s)}, nil
}

func (p *telegramProvider) Name() string { return p.name }

// telegramEntity is a MessageEntity: offset and length in UTF-16 code units.
type telegramEntity struct {
	Type   string `json:"type"`
	Offset int    `json:"offset"`
	Length int    `json:"length"`
}

// telegramRequest is the sendMessage body.
type telegramRequest struct {
	ChatID    string           `json:"chat_id"`
	Text      string           `json:"text"`
	ParseMode string           `json:"parse_mode,omitempty"`
	Entities  []telegramEntity `json:"entities,omitempty"`
}

// telegramEscapeMarkdownV2 escapes plain text for MarkdownV2.
func telegramEscapeMarkdownV2(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune("\\_*[]()~`>#+-=|{}.!", r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// telegramMessage builds the sendMessage body of n for chat.
func telegramMessage(n *schemas.Notification, chat string) telegramRequest {
	c := n.Content
	title := chatTitle(c)
	req := telegramRequest{ChatID: chat}
	if c.Markdown != "" {
		req.ParseMode = "MarkdownV2"
		req.Text = c.Markdown
		if title != "" {
			req.Text = "*" + telegramEscapeMarkdownV2(title) + "*\n" + c.Markdown
		}
		return req
	}
	body := chatPlainText(c)
	req.Text = body
	if title != "" {
		req.Text = title
		if body != "" {
			req.Text += "\n" + body
		}
		req.Entities = []telegramEntity{{Type: "bold", Offset: 0, Length: len(utf16.Encode([]rune(title)))}}
	}
	return req
}

// telegramMigrated is a group that became a supergroup with a new chat id.
type telegramMigrated struct{ to int64 }

func (e *telegramMigrated) Error() string {
	return fmt.Sprintf("telegram: the group was upgraded to a supergroup, chat id %d", e.to)
}

// telegramAnswer is a Bot API answer.
type telegramAnswer struct {
	OK     bool `json:"ok"`
	Result struct {
		MessageID int64 `json:"message_id"`
	} `json:"result"`
	ErrorCode   int    `json:"error_code"`
	Description string `json:"description"`
	Parameters  struct {
		RetryAfter      int   `json:"retry_after"`
		MigrateToChatID int64 `json:"migrate_to_chat_id"`
	} `json:"parameters"`
}

// telegramClip is a bounded, single-line rendering of a description.
func telegramClip(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

// telegramClassify classifies a sendMessage answer for chat: the message id,
// or an outcome error (*telegramMigrated when the chat moved).
func telegramClassify(status int, h http.Header, body []byte, n *schemas.Notification, chat string, now time.Time) (string, error) {
	var a telegramAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		switch {
		case status == http.StatusUnauthorized || status == http.StatusNotFound:
			return "", Permanent(fmt.Errorf("telegram sendMessage: HTTP %d: the bot token is invalid or revoked", status))
		case status >= 200 && status < 300:
			return "", Permanent(fmt.Errorf("telegram sendMessage: unreadable answer (HTTP %d)", status))
		}
		return "", HTTPStatus(&http.Response{StatusCode: status, Header: h}, now, "telegram sendMessage")
	}
	if a.OK && status >= 200 && status < 300 {
		return chat + ":" + strconv.FormatInt(a.Result.MessageID, 10), nil
	}
	code := a.ErrorCode
	if code == 0 {
		code = status
	}
	desc := telegramClip(a.Description)
	lower := strings.ToLower(desc)
	switch {
	case a.Parameters.MigrateToChatID != 0:
		return "", &telegramMigrated{to: a.Parameters.MigrateToChatID}
	case code == http.StatusTooManyRequests || a.Parameters.RetryAfter > 0:
		after := time.Duration(min(max(a.Parameters.RetryAfter, 0), 86400)) * time.Second
		if after == 0 {
			after = ParseRetryAfter(h.Get("Retry-After"), now)
		}
		return "", RetryLater(fmt.Errorf("telegram sendMessage: %d %s", code, desc), after)
	case code == http.StatusUnauthorized || code == http.StatusNotFound:
		return "", Permanent(fmt.Errorf("telegram sendMessage: %d %s: the bot token is invalid or revoked", code, desc))
	case code == http.StatusForbidden:
		return "", InvalidRecipient(fmt.Errorf("telegram sendMessage: %d %s", code, desc), AddressTarget(n))
	case code == http.StatusBadRequest && (strings.Contains(lower, "chat not found") ||
		strings.Contains(lower, "peer_id_invalid") || strings.Contains(lower, "group chat was deactivated")):
		return "", InvalidRecipient(fmt.Errorf("telegram sendMessage: %d %s", code, desc), AddressTarget(n))
	case code >= 500 || status >= 500 || code == http.StatusRequestTimeout:
		return "", RetryLater(fmt.Errorf("telegram sendMessage: %d %s", code, desc), ParseRetryAfter(h.Get("Retry-After"), now))
	case a.OK:
		return "", Permanent(fmt.Errorf("telegram sendMessage: ok answer with HTTP %d", status))
	default:
		return "", Permanent(fmt.Errorf("telegram sendMessage: %d %s", code, desc))
	}
}

func (p *telegramProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	chat := strings.TrimSpace(n.Address)
	if chat == "" {
		return "", Permanent(errors.New("telegram: the notification has no chat id"))
	}
	if m := telegramMessage(n, chat); strings.TrimSpace(m.Text) == "" {
		return "", Permanent(errors.New("telegram: the notification has no text (markdown, text, body or title)"))
	}
	if d := p.limiter.Take(chat, p.deps.now()); d > 0 {
		return "", RetryLater(fmt.Errorf("telegram chat %s: over %v messages a minute", chat, p.perMin), d)
	}
	id, err := p.send(ctx, n, chat)
	var mig *telegramMigrated
	if !errors.As(err, &mig) {
		return id, err
	}
	to := strconv.FormatInt(mig.to, 10)
	p.log.Info("telegram group upgraded to a supergroup: sending to the new chat id, which replaces the old in the profile",
		"provider", p.name, "notification", n.ID, "from", processors.Mask(chat), "to", processors.Mask(to))
	id, err = p.send(ctx, n, to)
	if errors.As(err, &mig) {
		return "", Permanent(fmt.Errorf("telegram: chat %s migrated to %s, which migrated again", chat, to))
	}
	if err != nil {
		return id, err
	}
	// Sent to the new chat: the profile's chat id is rewritten (MovedError).
	return id, Moved("telegram", chat, to)
}

func (p *telegramProvider) send(ctx context.Context, n *schemas.Notification, chat string) (string, error) {
	b, err := json.Marshal(telegramMessage(n, chat))
	if err != nil {
		return "", Permanent(fmt.Errorf("telegram: encoding the message: %w", err))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.base+p.token+"/sendMessage", bytes.NewReader(b))
	if err != nil {
		return "", Permanent(errors.New("telegram: cannot build the request (check baseUrl)"))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "notifyd-telegram/1")
	resp, err := p.client.Do(req)
	if err != nil {
		// The URL carries the bot token: never put it in an error.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", fmt.Errorf("telegram sendMessage: %w", err)
	}
	body := readBody(resp)
	return telegramClassify(resp.StatusCode, resp.Header, body, n, chat, p.deps.now())
}
