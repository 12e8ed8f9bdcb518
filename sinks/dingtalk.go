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

// DingTalk custom robot ("自定义机器人"): a group's webhook robot.
//
//	dingtalk:
//	  baseUrl: https://oapi.dingtalk.com
//	  robots:
//	    ops: {accessToken: "…", secret: "SEC…"}
//	  perRobotPerMinute: 20
//	  perRobotBurst: 1
//	  timeout: 10s
//
// A notification's Address is the robot's name (the profile's
// chat.dingtalk.robot). The request is
//
//	POST {baseUrl}/robot/send?access_token=T&timestamp=MS&sign=S
//
// where, with a secret ("加签"), S = urlencode(base64(HMAC-SHA256(key=secret,
// msg=MS+"\n"+secret))) and MS the unix time in milliseconds (accepted for an
// hour). The answer is HTTP 200 {"errcode":0,"errmsg":"ok"} or an error code in
// the body. The robot returns no message id: the id recorded is
// "<robot>:<notification id>".

const (
	dingTalkDefaultBaseURL   = "https://oapi.dingtalk.com"
	dingTalkDefaultPerMinute = 20 // documented: 20 messages a minute per robot
	// dingTalkThrottleWait is the wait after DingTalk's "send too fast" answer:
	// the robot is throttled for the rest of the minute (longer when repeated).
	dingTalkThrottleWait = time.Minute
)

// DingTalkSettings is the `dingtalk:` section of a provider.
// (PerRobotPerMinute defaults to 20).
type DingTalkSettings struct {
	GroupRobotSettings `yaml:",inline"`
	Robots             map[string]DingTalkRobot `yaml:"robots"`
}

// DingTalkRobot is one robot: the access_token of its webhook URL and, when
// its security setting is "加签" (sign), its SEC… secret.
type DingTalkRobot struct {
	AccessToken string `yaml:"accessToken"`
	Secret      string `yaml:"secret"`
}

// DingTalkSign is the sign query parameter for a timestamp in milliseconds,
// before URL encoding: base64(HMAC-SHA256(key=secret, msg=timestamp+"\n"+secret)).
func DingTalkSign(secret string, timestampMillis int64) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(strconv.FormatInt(timestampMillis, 10) + "\n" + secret))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

type dingTalkProvider struct {
	groupRobot
	robots map[string]DingTalkRobot
}

var dingTalkKind = groupRobotKind{typ: "dingtalk", noun: "robot", credential: "accessToken", baseURL: dingTalkDefaultBaseURL,
	perMinute: dingTalkDefaultPerMinute, burst: 1, limitWhat: "messages a minute per robot"}

func init() {
	Register("dingtalk", Type{Channels: []string{"dingtalk"}, New: newDingTalkProvider})
}

func newDingTalkProvider(s Spec) (Provider, error) {
	var c DingTalkSettings
	if err := s.Settings(&c); err != nil {
		return nil, err
	}
	g, err := newGroupRobot(s, dingTalkKind, c.GroupRobotSettings, c.Robots,
		func(r DingTalkRobot) (string, string) { return r.AccessToken, r.Secret })
	if err != nil {
		return nil, err
	}
	return &dingTalkProvider{groupRobot: g, robots: c.Robots}, nil
}

// dingTalkMessage is the body of a text or markdown message.
type dingTalkMessage struct {
	MsgType string `json:"msgtype"`
	Text    *struct {
		Content string `json:"content"`
	} `json:"text,omitempty"`
	Markdown *struct {
		Title string `json:"title"`
		Text  string `json:"text"`
	} `json:"markdown,omitempty"`
}

// dingTalkBody is the message for n's content: markdown when it has
// markdown (titled with its title or the first line), text otherwise.
func dingTalkBody(c schemas.Content) ([]byte, error) {
	var m dingTalkMessage
	if c.Markdown != "" {
		m.MsgType = "markdown"
		m.Markdown = &struct {
			Title string `json:"title"`
			Text  string `json:"text"`
		}{Title: groupRobotTitle(c), Text: c.Markdown}
	} else {
		text := groupRobotText(c)
		if text == "" {
			return nil, Permanent(errors.New("dingtalk: the notification has no text, body, title nor markdown to send"))
		}
		m.MsgType = "text"
		m.Text = &struct {
			Content string `json:"content"`
		}{Content: text}
	}
	return json.Marshal(m)
}

func (p *dingTalkProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	robot, err := groupRobotOf(&p.groupRobot, p.robots, n)
	if err != nil {
		return "", err
	}
	body, err := dingTalkBody(n.Content)
	if err != nil {
		return "", err
	}
	now := p.now()
	if err := p.take(n, now); err != nil {
		return "", err
	}
	q := url.Values{"access_token": {robot.AccessToken}}
	if robot.Secret != "" {
		ts := now.UnixMilli()
		q.Set("timestamp", strconv.FormatInt(ts, 10))
		q.Set("sign", DingTalkSign(robot.Secret, ts))
	}
	return p.post(ctx, n, p.baseURL+"/robot/send?"+q.Encode(), "/robot/send", body, classifyDingTalk)
}

// classifyDingTalk reads DingTalk's answer: nil when errcode is 0.
func classifyDingTalk(status int, h http.Header, body []byte, robot string, now time.Time) error {
	var a struct {
		ErrCode *int64 `json:"errcode"`
		ErrMsg  string `json:"errmsg"`
	}
	parsed := json.Unmarshal(body, &a) == nil && a.ErrCode != nil
	what := fmt.Sprintf("dingtalk robot %q", robot)
	if parsed && *a.ErrCode != 0 {
		what = fmt.Sprintf("%s: errcode %d: %s", what, *a.ErrCode, groupRobotClip(a.ErrMsg))
	}
	if parsed && (*a.ErrCode == 130101 || *a.ErrCode == 410100) { // send too fast: throttled for a minute
		return RetryLater(errors.New(what+" (robot throttled)"), max(dingTalkThrottleWait, ParseRetryAfter(h.Get("Retry-After"), now)))
	}
	if err := groupRobotHTTP(status, h, now, what); err != nil {
		return err
	}
	if !parsed {
		// Not DingTalk's answer (a proxy's page?): most likely not sent.
		return fmt.Errorf("%s: unreadable answer (HTTP %d, %d bytes)", what, status, len(body))
	}
	switch *a.ErrCode {
	case 0:
		return nil
	case -1: // system busy
		return RetryLater(errors.New(what), 0)
	case 310000:
		return Permanent(errors.New(what + " (the robot's security check refused the message: sign/secret, keyword or IP allow-list)"))
	case 300001, 400013: // token is not exist, robot removed
		return Permanent(fmt.Errorf("%s (the access token of robot %q is invalid or the robot was removed from its group: fix robots.%s in the dingtalk settings)",
			what, robot, robot))
	default:
		return Permanent(errors.New(what))
	}
}
