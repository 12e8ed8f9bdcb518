package sinks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// WeCom (企业微信) group robot ("群机器人"): a group's webhook robot.
//
//	wecom:
//	  baseUrl: https://qyapi.weixin.qq.com
//	  robots:
//	    ops: {key: "693a91f6-…"}
//	  perRobotPerMinute: 20
//	  perRobotBurst: 1
//	  timeout: 10s
//
// A notification's Address is the robot's name (the profile's
// chat.wecom.robot). The request is POST {baseUrl}/cgi-bin/webhook/send?key=K
// with {"msgtype":"text","text":{"content"}} or
// {"msgtype":"markdown","markdown":{"content"}}; there is no signature, the key
// is the secret. The answer is {"errcode":0,"errmsg":"ok"} or an error code
// in the body. The robot returns no message id: the id recorded is
// "<robot>:<notification id>".

const (
	weComDefaultBaseURL   = "https://qyapi.weixin.qq.com"
	weComDefaultPerMinute = 20 // documented: 20 messages a minute per robot
	weComThrottleWait     = time.Minute
	// Documented content limits, in UTF-8 bytes.
	weComMaxText     = 2048
	weComMaxMarkdown = 4096
)

// WeComSettings is the `wecom:` section of a provider.
type WeComSettings struct {
	BaseURL string                `yaml:"baseUrl"`
	Robots  map[string]WeComRobot `yaml:"robots"`
	// PerRobotPerMinute bounds the messages a minute to one robot on this
	// instance (default 20; 0 = no limit).
	PerRobotPerMinute *float64      `yaml:"perRobotPerMinute"`
	PerRobotBurst     int           `yaml:"perRobotBurst"`
	Timeout           time.Duration `yaml:"timeout"`
}

// WeComRobot is one robot: the key of its webhook URL.
type WeComRobot struct {
	Key string `yaml:"key"`
}

type weComProvider struct {
	name    string
	baseURL string
	robots  map[string]WeComRobot
	limit   *KeyLimiter
	client  *http.Client
	now     func() time.Time
}

func init() {
	Register("wecom", Type{Channels: []string{"wecom"}, New: newWeComProvider})
}

func newWeComProvider(s Spec) (Provider, error) {
	var c WeComSettings
	if err := s.Settings(&c); err != nil {
		return nil, err
	}
	base, err := groupRobotBaseURL("wecom", c.BaseURL, weComDefaultBaseURL)
	if err != nil {
		return nil, err
	}
	if len(c.Robots) == 0 {
		return nil, errors.New("wecom: robots is empty: name at least one robot with its key")
	}
	for name, r := range c.Robots {
		if err := groupRobotName("wecom", name); err != nil {
			return nil, err
		}
		if err := groupRobotCredential("wecom", name, "key", r.Key); err != nil {
			return nil, err
		}
	}
	limit, err := groupRobotLimiter("wecom", c.PerRobotPerMinute, c.PerRobotBurst, weComDefaultPerMinute, 1)
	if err != nil {
		return nil, err
	}
	if c.Timeout < 0 {
		return nil, errors.New("wecom: timeout is negative")
	}
	return &weComProvider{name: s.Name, baseURL: base, robots: c.Robots, limit: limit,
		client: newHTTPClient(c.Timeout, nil), now: s.Deps.now}, nil
}

func (p *weComProvider) Name() string { return p.name }

type weComContent struct {
	Content string `json:"content"`
}

type weComMessage struct {
	MsgType  string        `json:"msgtype"`
	Text     *weComContent `json:"text,omitempty"`
	Markdown *weComContent `json:"markdown,omitempty"`
}

// weComBody is the message for c: markdown when it has markdown (the title,
// when set, first in bold), text otherwise; cut to the documented limits.
func weComBody(c schemas.Content) ([]byte, error) {
	var m weComMessage
	if c.Markdown != "" {
		md := c.Markdown
		if c.Title != "" {
			md = "**" + c.Title + "**\n" + md
		}
		m = weComMessage{MsgType: "markdown", Markdown: &weComContent{Content: groupRobotTruncate(md, weComMaxMarkdown)}}
	} else {
		text := groupRobotText(c)
		if text == "" {
			return nil, Permanent(errors.New("wecom: the notification has no text, body, title nor markdown to send"))
		}
		m = weComMessage{MsgType: "text", Text: &weComContent{Content: groupRobotTruncate(text, weComMaxText)}}
	}
	return json.Marshal(m)
}

func (p *weComProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	robot, ok := p.robots[n.Address]
	if !ok {
		return "", InvalidRecipient(fmt.Errorf("wecom: the profile names robot %q, which is not configured in provider %s (robots: %s)",
			n.Address, p.name, groupRobotNames(p.robots)), AddressTarget(n))
	}
	body, err := weComBody(n.Content)
	if err != nil {
		return "", err
	}
	if d := p.limit.Take(n.Address, p.now()); d > 0 {
		return "", RetryLater(fmt.Errorf("wecom robot %q: over %s's limit of messages a minute per robot", n.Address, p.name), d)
	}
	u := p.baseURL + "/cgi-bin/webhook/send?" + url.Values{"key": {robot.Key}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return "", Permanent(fmt.Errorf("wecom robot %q: %v", n.Address, groupRobotURLError(err)))
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	resp, err := p.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("wecom robot %q: POST /cgi-bin/webhook/send: %v", n.Address, groupRobotURLError(err))
	}
	raw := readBody(resp)
	if err := classifyWeCom(resp.StatusCode, resp.Header, raw, n.Address, p.now()); err != nil {
		return "", err
	}
	return n.Address + ":" + n.ID, nil
}

// classifyWeCom reads WeCom's answer: nil when errcode is 0.
func classifyWeCom(status int, h http.Header, body []byte, robot string, now time.Time) error {
	var a struct {
		ErrCode *int64 `json:"errcode"`
		ErrMsg  string `json:"errmsg"`
	}
	parsed := json.Unmarshal(body, &a) == nil && a.ErrCode != nil
	what := fmt.Sprintf("wecom robot %q", robot)
	if parsed && *a.ErrCode != 0 {
		what = fmt.Sprintf("%s: errcode %d: %s", what, *a.ErrCode, groupRobotClip(a.ErrMsg))
	}
	if parsed && *a.ErrCode == 45009 { // api freq out of limit
		return RetryLater(errors.New(what+" (robot throttled)"), max(weComThrottleWait, ParseRetryAfter(h.Get("Retry-After"), now)))
	}
	if err := groupRobotHTTP(status, h, now, what); err != nil {
		return err
	}
	if !parsed {
		return fmt.Errorf("%s: unreadable answer (HTTP %d, %d bytes)", what, status, len(body))
	}
	switch *a.ErrCode {
	case 0:
		return nil
	case -1: // system busy
		return RetryLater(errors.New(what), 0)
	case 93000: // invalid webhook url: wrong key or robot removed
		return Permanent(fmt.Errorf("%s (the key of robot %q is invalid or the robot was removed from its group: fix robots.%s in the wecom settings)",
			what, robot, robot))
	case 40008, 44004:
		return Permanent(errors.New(what + " (message rejected: invalid message type or empty content)"))
	default:
		return Permanent(errors.New(what))
	}
}
