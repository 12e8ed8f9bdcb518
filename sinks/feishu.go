package sinks

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// Feishu / Lark custom bot ("自定义机器人"): a group's webhook bot.
//
//	feishu:
//	  baseUrl: https://open.feishu.cn      # Lark: https://open.larksuite.com
//	  robots:
//	    ops: {hookId: "8c0e…", secret: "…"}
//	  perRobotPerMinute: 100
//	  perRobotBurst: 5
//	  timeout: 10s
//
// A notification's Address is the robot's name (the profile's
// chat.feishu.robot). The request is POST {baseUrl}/open-apis/bot/v2/hook/<hookId>
// with {"msg_type":"text","content":{"text"}} or, for markdown, an interactive
// card {"msg_type":"interactive","card":{header: the title, elements: one
// markdown element}}. With a secret ("签名校验") the body also carries
// "timestamp" (unix seconds, as a string, accepted for an hour) and
// "sign" = base64(HMAC-SHA256(key=timestamp+"\n"+secret, msg="")). The answer is
// {"code":0,"msg":"success","data":{}} (older: {"StatusCode":0}) or an error
// code in the body. The bot returns no message id: the id recorded is
// "<robot>:<notification id>".

const (
	feishuDefaultBaseURL   = "https://open.feishu.cn"
	feishuDefaultPerMinute = 100 // documented: 100 a minute and 5 a second per bot
	feishuDefaultBurst     = 5
	// feishuMaxContent bounds the text or markdown so that the request stays
	// under the documented 20 KB body limit.
	feishuMaxContent = 18000
)

// FeishuSettings is the `feishu:` section of a provider.
// (PerRobotPerMinute defaults to 100, with a burst of 5).
type FeishuSettings struct {
	GroupRobotSettings `yaml:",inline"`
	Robots             map[string]FeishuRobot `yaml:"robots"`
}

// FeishuRobot is one bot: the id at the end of its webhook URL and, when its
// security setting is "签名校验" (signature), its secret.
type FeishuRobot struct {
	HookID string `yaml:"hookId"`
	Secret string `yaml:"secret"`
}

// FeishuSign is the sign of a request at timestamp (unix seconds):
// base64(HMAC-SHA256(key=timestamp+"\n"+secret, msg="")).
func FeishuSign(secret string, timestamp int64) string {
	mac := hmac.New(sha256.New, []byte(strconv.FormatInt(timestamp, 10)+"\n"+secret))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

type feishuProvider struct {
	groupRobot
	robots map[string]FeishuRobot
}

var feishuKind = groupRobotKind{typ: "feishu", noun: "bot", credential: "hookId", baseURL: feishuDefaultBaseURL,
	perMinute: feishuDefaultPerMinute, burst: feishuDefaultBurst, limitWhat: "messages per bot"}

func init() {
	Register("feishu", Type{Channels: []string{"feishu"}, New: newFeishuProvider})
}

func newFeishuProvider(s Spec) (Provider, error) {
	var c FeishuSettings
	if err := s.Settings(&c); err != nil {
		return nil, err
	}
	g, err := newGroupRobot(s, feishuKind, c.GroupRobotSettings, c.Robots,
		func(r FeishuRobot) (string, string) { return r.HookID, r.Secret })
	if err != nil {
		return nil, err
	}
	return &feishuProvider{groupRobot: g, robots: c.Robots}, nil
}

// feishuMessage is a request body.
type feishuMessage struct {
	Timestamp string          `json:"timestamp,omitempty"`
	Sign      string          `json:"sign,omitempty"`
	MsgType   string          `json:"msg_type"`
	Content   *feishuText     `json:"content,omitempty"`
	Card      *feishuCardBody `json:"card,omitempty"`
}

type feishuText struct {
	Text string `json:"text"`
}

type feishuCardBody struct {
	Config   map[string]bool  `json:"config"`
	Header   *feishuHeader    `json:"header,omitempty"`
	Elements []feishuMarkdown `json:"elements"`
}

type feishuHeader struct {
	Title feishuPlainText `json:"title"`
}

type feishuPlainText struct {
	Tag     string `json:"tag"`
	Content string `json:"content"`
}

type feishuMarkdown struct {
	Tag     string `json:"tag"`
	Content string `json:"content"`
}

// feishuMessageFor is the message for c: an interactive card with a
// markdown element (and the title as its header) when c has markdown, text
// otherwise.
func feishuMessageFor(c schemas.Content) (feishuMessage, error) {
	if c.Markdown != "" {
		card := &feishuCardBody{Config: map[string]bool{"wide_screen_mode": true},
			Elements: []feishuMarkdown{{Tag: "markdown", Content: groupRobotTruncate(c.Markdown, feishuMaxContent)}}}
		if c.Title != "" {
			card.Header = &feishuHeader{Title: feishuPlainText{Tag: "plain_text", Content: groupRobotTruncate(c.Title, 512)}}
		}
		return feishuMessage{MsgType: "interactive", Card: card}, nil
	}
	text := groupRobotText(c)
	if text == "" {
		return feishuMessage{}, Permanent(errors.New("feishu: the notification has no text, body, title nor markdown to send"))
	}
	return feishuMessage{MsgType: "text", Content: &feishuText{Text: groupRobotTruncate(text, feishuMaxContent)}}, nil
}

func (p *feishuProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	robot, err := groupRobotOf(&p.groupRobot, p.robots, n)
	if err != nil {
		return "", err
	}
	m, err := feishuMessageFor(n.Content)
	if err != nil {
		return "", err
	}
	now := p.now()
	if err := p.take(n, now); err != nil {
		return "", err
	}
	if robot.Secret != "" {
		ts := now.Unix()
		m.Timestamp = strconv.FormatInt(ts, 10)
		m.Sign = FeishuSign(robot.Secret, ts)
	}
	body, err := json.Marshal(m)
	if err != nil {
		return "", Permanent(fmt.Errorf("feishu bot %q: %w", n.Address, err))
	}
	u := p.baseURL + "/open-apis/bot/v2/hook/" + url.PathEscape(robot.HookID)
	return p.post(ctx, n, u, "/open-apis/bot/v2/hook/…", body, classifyFeishu)
}

// classifyFeishu reads Feishu's answer: nil when code (or the older
// StatusCode) is 0.
func classifyFeishu(status int, h http.Header, body []byte, robot string, now time.Time) error {
	var a struct {
		Code          *int64 `json:"code"`
		Msg           string `json:"msg"`
		StatusCode    *int64 `json:"StatusCode"`
		StatusMessage string `json:"StatusMessage"`
	}
	var code *int64
	var msg string
	if json.Unmarshal(body, &a) == nil {
		code, msg = a.Code, a.Msg
		if code == nil {
			code, msg = a.StatusCode, a.StatusMessage
		}
	}
	what := fmt.Sprintf("feishu bot %q", robot)
	if code != nil && *code != 0 {
		what = fmt.Sprintf("%s: code %d: %s", what, *code, groupRobotClip(msg))
	}
	if code != nil && (*code == 9499 || *code == 11232) { // too many requests / frequency limited, whatever the HTTP status
		return RetryLater(errors.New(what+" (bot throttled)"), ParseRetryAfter(h.Get("Retry-After"), now))
	}
	if err := groupRobotHTTP(status, h, now, what); err != nil {
		return err
	}
	if code == nil {
		return fmt.Errorf("%s: unreadable answer (HTTP %d, %d bytes)", what, status, len(body))
	}
	switch *code {
	case 0:
		return nil
	case 19021:
		return Permanent(errors.New(what + " (signature refused: check robots." + robot + ".secret and the clock)"))
	case 19022, 19024:
		return Permanent(errors.New(what + " (the bot's security settings refused the message: IP allow-list or keyword)"))
	case 19001:
		return Permanent(fmt.Errorf("%s (invalid request; an invalid hookId means robots.%s is wrong or the bot was removed from its group)", what, robot))
	default:
		return Permanent(errors.New(what))
	}
}
