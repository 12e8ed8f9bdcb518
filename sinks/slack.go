package sinks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

// Slack posts chat messages in one of two ways, chosen per notification by its
// address:
//
//   - Incoming webhook: the address is the webhook URL
//     (https://hooks.slack.com/services/T…/B…/secret). Only hosts listed in
//     webhookHosts are called (a profile cannot point notifyd at an internal
//     service). Body {"text","mrkdwn":true}; HTTP 200 "ok" is success; a
//     revoked webhook or a gone channel (404 no_service / channel_not_found,
//     410 channel_is_archived, 403 invalid_token, no_team, team_disabled) is
//     an invalid recipient; 429 (Retry-After) and 5xx are retried.
//   - Bot token: any other address is a channel id, posted with
//     chat.postMessage and `Authorization: Bearer xoxb-…`. Slack answers HTTP
//     200 with {"ok":false,"error"} on failure: ratelimited (or HTTP 429) is
//     retried after Retry-After; channel_not_found, is_archived and
//     not_in_channel are invalid recipients; invalid_auth, not_authed,
//     token_revoked (and the other credential errors) fail permanently. The
//     message id is the message's `ts`.
//
// Text: content.markdown when set (Slack mrkdwn, the template author's job),
// else content.text, else content.body, with &, < and > escaped as Slack
// requires of plain text; content.title, when set, is a bold first line.
// Slack accepts about one message a second per channel: perChannelPerMinute
// (default 60) bounds each channel or webhook on this instance.
type slackProvider struct {
	name     string
	apiURL   string // {baseUrl}/api/chat.postMessage
	token    string
	hosts    map[string]bool
	limiter  *KeyLimiter
	perMin   float64
	client   *http.Client
	deps     Deps
	log      *slog.Logger
	hasToken bool
}

// slackSettings is the `slack:` section of a provider.
type slackSettings struct {
	// BaseURL of the Web API (default https://slack.com).
	BaseURL string `yaml:"baseUrl"`
	// BotToken (xoxb-…) for chat.postMessage; needed only for channel-id addresses.
	BotToken string `yaml:"botToken"`
	// WebhookHosts are the hosts (host or host:port) webhook URLs may point at
	// (default [hooks.slack.com]).
	WebhookHosts []string `yaml:"webhookHosts"`
	// PerChannelPerMinute bounds the messages to one channel or webhook
	// (default 60, one a second, as Slack documents; 0 = no limit).
	PerChannelPerMinute *float64 `yaml:"perChannelPerMinute"`
	// Timeout of one HTTP call (default 10s).
	Timeout time.Duration `yaml:"timeout"`
}

const (
	slackDefaultBaseURL     = "https://slack.com"
	slackDefaultWebhookHost = "hooks.slack.com"
)

func init() {
	Register("slack", Type{Channels: []string{"slack"}, New: newSlackProvider})
}

func newSlackProvider(s Spec) (Provider, error) {
	var cfg slackSettings
	if err := s.Settings(&cfg); err != nil {
		return nil, err
	}
	base, err := chatBaseURL("slack", cfg.BaseURL, slackDefaultBaseURL)
	if err != nil {
		return nil, err
	}
	if cfg.BotToken != "" && !strings.HasPrefix(cfg.BotToken, "xox") {
		return nil, errors.New("slack: botToken must be a Slack token (xoxb-…)")
	}
	if len(cfg.WebhookHosts) == 0 {
		cfg.WebhookHosts = []string{slackDefaultWebhookHost}
	}
	hosts := map[string]bool{}
	for _, h := range cfg.WebhookHosts {
		h = strings.ToLower(strings.TrimSpace(h))
		if h == "" || strings.ContainsAny(h, "/?#@ ") {
			return nil, fmt.Errorf("slack: webhookHosts entry %q must be a host or host:port, without scheme or path", h)
		}
		hosts[h] = true
	}
	perMin, err := chatPerMinute("slack", "perChannelPerMinute", cfg.PerChannelPerMinute, 60)
	if err != nil {
		return nil, err
	}
	if err := chatTimeout("slack", cfg.Timeout); err != nil {
		return nil, err
	}
	return &slackProvider{name: s.Name, apiURL: base + "/api/chat.postMessage",
		token: cfg.BotToken, hasToken: cfg.BotToken != "", hosts: hosts, perMin: perMin,
		limiter: NewKeyLimiter(perMin, 1), client: newHTTPClient(cfg.Timeout, nil), deps: s.Deps, log: chatLog(s)}, nil
}

func (p *slackProvider) Name() string { return p.name }

// slackEscape escapes the three characters Slack reads as control sequences
// in message text.
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// slackText is the message text of n: markdown as given, plain text escaped,
// the title a bold first line.
func slackText(n *schemas.Notification) string {
	c := n.Content
	body := c.Markdown
	if body == "" {
		body = slackEscape(chatPlainText(c))
	}
	return chatBoldTitled(slackEscape(chatTitle(c)), body)
}

// slackIsWebhook tells whether a Slack address is a webhook URL rather than a
// channel id.
func slackIsWebhook(addr string) bool { return strings.Contains(addr, "://") }

// webhookURL checks a webhook address against the allowed hosts. Errors name
// the host only: the path is the webhook's secret.
func (p *slackProvider) webhookURL(addr string) (*url.URL, error) {
	u, err := url.Parse(addr)
	if err != nil {
		return nil, Permanent(errors.New("slack webhook: the address is not a valid URL"))
	}
	host := strings.ToLower(u.Host)
	if u.User != nil || host == "" {
		return nil, Permanent(errors.New("slack webhook: the URL has no host or carries credentials"))
	}
	if !p.hosts[host] && !(u.Port() == "443" && p.hosts[strings.ToLower(u.Hostname())]) {
		return nil, Permanent(fmt.Errorf("slack webhook: host %q is not in webhookHosts", host))
	}
	switch u.Scheme {
	case "https":
	case "http":
		// Plain HTTP only to a loopback listener (a local relay or a test).
		ip := net.ParseIP(u.Hostname())
		if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, Permanent(fmt.Errorf("slack webhook: refusing plain http to %q", host))
		}
	default:
		return nil, Permanent(fmt.Errorf("slack webhook: scheme %q is not https", u.Scheme))
	}
	return u, nil
}

// slackNetErr is a transport error without the request URL (a webhook's URL
// is its secret).
func slackNetErr(what string, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Errorf("%s: %w", what, err)
}

func (p *slackProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	text := slackText(n)
	if strings.TrimSpace(text) == "" {
		return "", Permanent(errors.New("slack: the notification has no text (markdown, text, body or title)"))
	}
	addr := strings.TrimSpace(n.Address)
	if addr == "" {
		return "", Permanent(errors.New("slack: the notification has no address (webhook URL or channel id)"))
	}
	if slackIsWebhook(addr) {
		return p.sendWebhook(ctx, n, addr, text)
	}
	return p.sendAPI(ctx, n, addr, text)
}

func (p *slackProvider) post(ctx context.Context, target string, auth bool, body any) (*http.Response, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, Permanent(fmt.Errorf("slack: encoding the message: %w", err))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(b))
	if err != nil {
		return nil, Permanent(errors.New("slack: cannot build the request"))
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("User-Agent", "notifyd-slack/1")
	if auth {
		req.Header.Set("Authorization", "Bearer "+p.token)
	}
	return p.client.Do(req)
}

func (p *slackProvider) sendWebhook(ctx context.Context, n *schemas.Notification, addr, text string) (string, error) {
	u, err := p.webhookURL(addr)
	if err != nil {
		return "", err
	}
	now := p.deps.now()
	if d := p.limiter.Take("webhook "+u.Host+u.Path, now); d > 0 {
		return "", RetryLater(fmt.Errorf("slack webhook on %s: over %v messages a minute", u.Host, p.perMin), d)
	}
	resp, err := p.post(ctx, u.String(), false, map[string]any{"text": text, "mrkdwn": true})
	if err != nil {
		if IsPermanent(err) {
			return "", err
		}
		return "", slackNetErr("slack webhook", err)
	}
	body := readBody(resp)
	return slackClassifyWebhook(resp.StatusCode, resp.Header, body, n, p.deps.now())
}

func (p *slackProvider) sendAPI(ctx context.Context, n *schemas.Notification, channel, text string) (string, error) {
	if !p.hasToken {
		return "", Permanent(fmt.Errorf("slack: address %q is a channel id but the provider has no botToken (set slack.botToken or use a webhook URL)", channel))
	}
	now := p.deps.now()
	if d := p.limiter.Take("channel "+channel, now); d > 0 {
		return "", RetryLater(fmt.Errorf("slack channel %s: over %v messages a minute", channel, p.perMin), d)
	}
	resp, err := p.post(ctx, p.apiURL, true, map[string]any{"channel": channel, "text": text, "mrkdwn": true})
	if err != nil {
		if IsPermanent(err) {
			return "", err
		}
		return "", slackNetErr("slack chat.postMessage", err)
	}
	body := readBody(resp)
	id, err := slackClassifyAPI(resp.StatusCode, resp.Header, body, n, p.deps.now())
	if err != nil && IsPermanent(err) {
		p.log.Debug("slack chat.postMessage refused", "provider", p.name, "channel", processors.Mask(channel), "err", err)
	}
	return id, err
}

// slackWebhookGone are the incoming-webhook answers saying the webhook or its
// channel no longer exists.
var slackWebhookGone = map[string]bool{"no_service": true, "no_team": true, "team_disabled": true,
	"channel_not_found": true, "channel_is_archived": true, "invalid_token": true}

// slackClip is a bounded, single-line rendering of an answer body.
func slackClip(b []byte) string {
	s := strings.Join(strings.Fields(string(b)), " ")
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

// slackClassifyWebhook classifies an incoming webhook's answer. The message
// id is Slack's request id (webhooks return no message ts).
func slackClassifyWebhook(status int, h http.Header, body []byte, n *schemas.Notification, now time.Time) (string, error) {
	code := slackClip(body)
	switch {
	case status >= 200 && status < 300:
		return h.Get("X-Slack-Req-Id"), nil
	case slackWebhookGone[code] || status == http.StatusNotFound || status == http.StatusGone:
		return "", InvalidRecipient(fmt.Errorf("slack webhook: HTTP %d %s: the webhook was revoked or its channel is gone", status, code), AddressTarget(n))
	case status == http.StatusTooManyRequests || code == "rate_limited":
		return "", RetryLater(fmt.Errorf("slack webhook: HTTP %d %s", status, code), ParseRetryAfter(h.Get("Retry-After"), now))
	case status == http.StatusRequestTimeout || status >= 500:
		return "", RetryLater(fmt.Errorf("slack webhook: HTTP %d %s", status, code), ParseRetryAfter(h.Get("Retry-After"), now))
	default:
		return "", Permanent(fmt.Errorf("slack webhook: HTTP %d %s", status, code))
	}
}

// slackAPIAnswer is a Web API answer.
type slackAPIAnswer struct {
	OK      bool   `json:"ok"`
	Error   string `json:"error"`
	TS      string `json:"ts"`
	Channel string `json:"channel"`
}

var (
	slackAPIGone = map[string]bool{"channel_not_found": true, "is_archived": true, "not_in_channel": true,
		"channel_is_archived": true}
	slackAPIAuth = map[string]bool{"invalid_auth": true, "not_authed": true, "token_revoked": true,
		"token_expired": true, "account_inactive": true, "missing_scope": true, "not_allowed_token_type": true,
		"no_permission": true, "ekm_access_denied": true, "team_access_not_granted": true}
	slackAPITransient = map[string]bool{"internal_error": true, "fatal_error": true, "service_unavailable": true,
		"request_timeout": true, "ratelimited": true, "rate_limited": true}
)

// slackClassifyAPI classifies a chat.postMessage answer; the message id is
// the message's ts.
func slackClassifyAPI(status int, h http.Header, body []byte, n *schemas.Notification, now time.Time) (string, error) {
	var a slackAPIAnswer
	parsed := json.Unmarshal(body, &a) == nil
	after := ParseRetryAfter(h.Get("Retry-After"), now)
	errCode := slackClip([]byte(a.Error))
	switch {
	case status == http.StatusTooManyRequests || errCode == "ratelimited" || errCode == "rate_limited":
		return "", RetryLater(fmt.Errorf("slack chat.postMessage: rate limited (HTTP %d %s)", status, errCode), after)
	case !parsed:
		if status >= 200 && status < 300 {
			return "", Permanent(fmt.Errorf("slack chat.postMessage: unreadable answer (HTTP %d): %s", status, slackClip(body)))
		}
		return "", HTTPStatus(&http.Response{StatusCode: status, Header: h}, now, "slack chat.postMessage")
	case a.OK && status >= 200 && status < 300:
		return a.TS, nil
	case slackAPIGone[errCode]:
		return "", InvalidRecipient(fmt.Errorf("slack chat.postMessage: %s: the channel is gone or the bot is not in it", errCode), AddressTarget(n))
	case slackAPIAuth[errCode]:
		return "", Permanent(fmt.Errorf("slack chat.postMessage: %s: the bot token is invalid, revoked or lacks chat:write", errCode))
	case slackAPITransient[errCode] || status >= 500 || status == http.StatusRequestTimeout:
		return "", RetryLater(fmt.Errorf("slack chat.postMessage: HTTP %d %s", status, errCode), after)
	case errCode == "":
		return "", Permanent(fmt.Errorf("slack chat.postMessage: HTTP %d, ok=%v without an error", status, a.OK))
	default:
		return "", Permanent(fmt.Errorf("slack chat.postMessage: %s", errCode))
	}
}
