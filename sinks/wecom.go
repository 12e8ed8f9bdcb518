package sinks

import (
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
// (PerRobotPerMinute defaults to 20).
type WeComSettings struct {
	GroupRobotSettings `yaml:",inline"`
	Robots             map[string]WeComRobot `yaml:"robots"`
}

// WeComRobot is one robot: the key of its webhook URL.
type WeComRobot struct {
	Key string `yaml:"key"`
}

type weComProvider struct {
	groupRobot
	robots map[string]WeComRobot
}

var weComKind = groupRobotKind{typ: "wecom", noun: "robot", credential: "key", baseURL: weComDefaultBaseURL,
	perMinute: weComDefaultPerMinute, burst: 1, limitWhat: "messages a minute per robot"}

func init() {
	Register("wecom", Type{Channels: []string{"wecom"}, New: newWeComProvider})
}

func newWeComProvider(s Spec) (Provider, error) {
	var c WeComSettings
	if err := s.Settings(&c); err != nil {
		return nil, err
	}
	g, err := newGroupRobot(s, weComKind, c.GroupRobotSettings, c.Robots, func(r WeComRobot) (string, string) { return r.Key, "" })
	if err != nil {
		return nil, err
	}
	return &weComProvider{groupRobot: g, robots: c.Robots}, nil
}

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
	robot, err := groupRobotOf(&p.groupRobot, p.robots, n)
	if err != nil {
		return "", err
	}
	body, err := weComBody(n.Content)
	if err != nil {
		return "", err
	}
	if err := p.take(n, p.now()); err != nil {
		return "", err
	}
	u := p.baseURL + "/cgi-bin/webhook/send?" + url.Values{"key": {robot.Key}}.Encode()
	return p.post(ctx, n, u, "/cgi-bin/webhook/send", body, classifyWeCom)
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
