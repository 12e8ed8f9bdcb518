package sinks

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

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
type DingTalkSettings struct {
	BaseURL string                   `yaml:"baseUrl"`
	Robots  map[string]DingTalkRobot `yaml:"robots"`
	// PerRobotPerMinute bounds the messages a minute to one robot on this
	// instance (default 20; 0 = no limit).
	PerRobotPerMinute *float64      `yaml:"perRobotPerMinute"`
	PerRobotBurst     int           `yaml:"perRobotBurst"`
	Timeout           time.Duration `yaml:"timeout"`
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
	name    string
	baseURL string
	robots  map[string]DingTalkRobot
	limit   *KeyLimiter
	client  *http.Client
	now     func() time.Time
}

func init() {
	Register("dingtalk", Type{Channels: []string{"dingtalk"}, New: newDingTalkProvider})
}

func newDingTalkProvider(s Spec) (Provider, error) {
	var c DingTalkSettings
	if err := s.Settings(&c); err != nil {
		return nil, err
	}
	base, err := groupRobotBaseURL("dingtalk", c.BaseURL, dingTalkDefaultBaseURL)
	if err != nil {
		return nil, err
	}
	if len(c.Robots) == 0 {
		return nil, errors.New("dingtalk: robots is empty: name at least one robot with its accessToken")
	}
	for name, r := range c.Robots {
		if err := groupRobotName("dingtalk", name); err != nil {
			return nil, err
		}
		if err := groupRobotCredential("dingtalk", name, "accessToken", r.AccessToken); err != nil {
			return nil, err
		}
		if r.Secret != "" && strings.TrimSpace(r.Secret) != r.Secret {
			return nil, fmt.Errorf("dingtalk: robots.%s.secret has leading or trailing spaces", name)
		}
	}
	limit, err := groupRobotLimiter("dingtalk", c.PerRobotPerMinute, c.PerRobotBurst, dingTalkDefaultPerMinute, 1)
	if err != nil {
		return nil, err
	}
	if c.Timeout < 0 {
		return nil, errors.New("dingtalk: timeout is negative")
	}
	return &dingTalkProvider{name: s.Name, baseURL: base, robots: c.Robots, limit: limit,
		client: newHTTPClient(c.Timeout, nil), now: s.Deps.now}, nil
}

func (p *dingTalkProvider) Name() string { return p.name }

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
	robot, ok := p.robots[n.Address]
	if !ok {
		return "", InvalidRecipient(fmt.Errorf("dingtalk: the profile names robot %q, which is not configured in provider %s (robots: %s)",
			n.Address, p.name, groupRobotNames(p.robots)), AddressTarget(n))
	}
	body, err := dingTalkBody(n.Content)
	if err != nil {
		return "", err
	}
	now := p.now()
	if d := p.limit.Take(n.Address, now); d > 0 {
		return "", RetryLater(fmt.Errorf("dingtalk robot %q: over %s's limit of messages a minute per robot", n.Address, p.name), d)
	}
	q := url.Values{"access_token": {robot.AccessToken}}
	if robot.Secret != "" {
		ts := now.UnixMilli()
		q.Set("timestamp", strconv.FormatInt(ts, 10))
		q.Set("sign", DingTalkSign(robot.Secret, ts))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.baseURL+"/robot/send?"+q.Encode(), bytes.NewReader(body))
	if err != nil {
		return "", Permanent(fmt.Errorf("dingtalk robot %q: %v", n.Address, groupRobotURLError(err)))
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	resp, err := p.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("dingtalk robot %q: POST /robot/send: %v", n.Address, groupRobotURLError(err))
	}
	raw := readBody(resp)
	if err := classifyDingTalk(resp.StatusCode, resp.Header, raw, n.Address, p.now()); err != nil {
		return "", err
	}
	return n.Address + ":" + n.ID, nil
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

// ---- shared by the group robot providers (dingtalk.go, wecom.go, feishu.go)

// groupRobotBaseURL checks a baseUrl setting, the default when empty.
func groupRobotBaseURL(typ, v, def string) (string, error) {
	if v == "" {
		return def, nil
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%s: baseUrl %q is not an http(s) URL like %s", typ, v, def)
	}
	return strings.TrimRight(v, "/"), nil
}

// groupRobotName checks a robot's name: what profiles name it by.
func groupRobotName(typ, name string) error {
	if name == "" || strings.TrimSpace(name) != name || len(name) > 128 {
		return fmt.Errorf("%s: robot name %q must be non-empty, at most 128 bytes, without leading or trailing spaces", typ, name)
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return fmt.Errorf("%s: robot name %q has a control character", typ, name)
		}
	}
	return nil
}

// groupRobotCredential checks a robot's required credential.
func groupRobotCredential(typ, name, key, v string) error {
	switch {
	case v == "":
		return fmt.Errorf("%s: robots.%s.%s is required", typ, name, key)
	case strings.Contains(v, "://") || strings.ContainsAny(v, "/?&#= \t\r\n"):
		return fmt.Errorf("%s: robots.%s.%s must be the token of the webhook URL, not the URL or a part with /?&#= or spaces", typ, name, key)
	}
	return nil
}

// groupRobotLimiter is the per-robot limiter: perMinute nil = the default, 0 = none.
func groupRobotLimiter(typ string, perMinute *float64, burst int, defPerMinute float64, defBurst int) (*KeyLimiter, error) {
	pm := defPerMinute
	if perMinute != nil {
		pm = *perMinute
	}
	if pm < 0 {
		return nil, fmt.Errorf("%s: perRobotPerMinute is negative", typ)
	}
	if burst < 0 {
		return nil, fmt.Errorf("%s: perRobotBurst is negative", typ)
	}
	if burst == 0 {
		burst = defBurst
	}
	return NewKeyLimiter(pm, burst), nil
}

func groupRobotNames[R any](robots map[string]R) string {
	names := make([]string, 0, len(robots))
	for n := range robots {
		names = append(names, n)
	}
	if len(names) > 10 {
		return fmt.Sprintf("%d configured", len(names))
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// groupRobotText is the plain text of c: Text, else Body, with the Title on
// the first line.
func groupRobotText(c schemas.Content) string {
	text := c.Text
	if text == "" {
		text = c.Body
	}
	switch {
	case c.Title == "":
		return text
	case text == "":
		return c.Title
	}
	return c.Title + "\n" + text
}

// groupRobotTitle is the title of a markdown message: the Title, else the
// markdown's first non-empty line without its heading marks.
func groupRobotTitle(c schemas.Content) string {
	if c.Title != "" {
		return c.Title
	}
	for _, line := range strings.Split(c.Markdown, "\n") {
		line = strings.TrimSpace(strings.TrimLeft(strings.TrimSpace(line), "#>*-"))
		if line != "" {
			return groupRobotTruncate(line, 128)
		}
	}
	return "notification"
}

// groupRobotTruncate cuts s to at most n bytes on a rune boundary.
func groupRobotTruncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// groupRobotClip bounds an error message of the provider for a reason.
func groupRobotClip(s string) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) > 300 {
		return groupRobotTruncate(s, 300) + "…"
	}
	return s
}

// groupRobotHTTP classifies the HTTP status: 408/425/429/5xx retry later
// (honouring Retry-After), other non-2xx permanent; what names the failure.
func groupRobotHTTP(status int, h http.Header, now time.Time, what string) error {
	resp := &http.Response{StatusCode: status, Header: h}
	if resp.Header == nil {
		resp.Header = http.Header{}
	}
	return HTTPStatus(resp, now, what)
}

// groupRobotURLError is err without the request URL, which holds the robot's
// token: only the cause is kept.
func groupRobotURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return fmt.Errorf("timeout: %v", ue.Err)
		}
		return ue.Err
	}
	return err
}
