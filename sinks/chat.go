package sinks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/notifyd/notifyd/schemas"
)

// Shared by the chat and group-robot providers: the group robots (dingtalk.go,
// wecom.go, feishu.go) share their settings, construction and sending; the
// chat APIs (slack.go, telegram.go, whatsapp.go) their settings checks; all
// of them how a message's text is made of a notification's content.

// GroupRobotSettings are the settings every group-robot provider has besides
// its robots, inlined in its section.
type GroupRobotSettings struct {
	BaseURL string `yaml:"baseUrl"`
	// PerRobotPerMinute bounds the messages a minute to one robot on this
	// instance (0 = no limit; the default is the provider's documented one).
	PerRobotPerMinute *float64      `yaml:"perRobotPerMinute"`
	PerRobotBurst     int           `yaml:"perRobotBurst"`
	Timeout           time.Duration `yaml:"timeout"`
}

// groupRobotKind is what a group-robot provider type is.
type groupRobotKind struct {
	typ        string // the provider type: dingtalk
	noun       string // robot | bot
	credential string // the robot's required key: accessToken
	baseURL    string // the default baseUrl
	perMinute  float64
	burst      int
	// limitWhat names the per-robot limit in the error of a message over it.
	limitWhat string
}

// groupRobot is the state every group-robot provider has.
type groupRobot struct {
	kind    groupRobotKind
	name    string
	baseURL string
	limit   *KeyLimiter
	client  *http.Client
	now     func() time.Time
}

// newGroupRobot checks the settings c and the robots (key returns a robot's
// required credential and its optional secret) of a provider of kind k.
func newGroupRobot[R any](s Spec, k groupRobotKind, c GroupRobotSettings, robots map[string]R,
	key func(R) (credential, secret string)) (groupRobot, error) {
	base, err := groupRobotBaseURL(k.typ, c.BaseURL, k.baseURL)
	if err != nil {
		return groupRobot{}, err
	}
	if len(robots) == 0 {
		return groupRobot{}, fmt.Errorf("%s: robots is empty: name at least one %s with its %s", k.typ, k.noun, k.credential)
	}
	for name, r := range robots {
		if err := groupRobotName(k.typ, name); err != nil {
			return groupRobot{}, err
		}
		credential, secret := key(r)
		if err := groupRobotCredential(k.typ, name, k.credential, credential); err != nil {
			return groupRobot{}, err
		}
		if secret != "" && strings.TrimSpace(secret) != secret {
			return groupRobot{}, fmt.Errorf("%s: robots.%s.secret has leading or trailing spaces", k.typ, name)
		}
	}
	limit, err := groupRobotLimiter(k.typ, c.PerRobotPerMinute, c.PerRobotBurst, k.perMinute, k.burst)
	if err != nil {
		return groupRobot{}, err
	}
	if c.Timeout < 0 {
		return groupRobot{}, fmt.Errorf("%s: timeout is negative", k.typ)
	}
	return groupRobot{kind: k, name: s.Name, baseURL: base, limit: limit,
		client: newHTTPClient(c.Timeout, nil), now: s.Deps.now}, nil
}

func (g *groupRobot) Name() string { return g.name }

// groupRobotOf is the robot n is addressed to: an invalid recipient when the
// provider has none of that name.
func groupRobotOf[R any](g *groupRobot, robots map[string]R, n *schemas.Notification) (R, error) {
	r, ok := robots[n.Address]
	if !ok {
		return r, InvalidRecipient(fmt.Errorf("%s: the profile names %s %q, which is not configured in provider %s (robots: %s)",
			g.kind.typ, g.kind.noun, n.Address, g.name, groupRobotNames(robots)), AddressTarget(n))
	}
	return r, nil
}

// take is a retry-later error when n's robot is over its limit at now.
func (g *groupRobot) take(n *schemas.Notification, now time.Time) error {
	if d := g.limit.Take(n.Address, now); d > 0 {
		return RetryLater(fmt.Errorf("%s %s %q: over %s's limit of %s", g.kind.typ, g.kind.noun, n.Address, g.name, g.kind.limitWhat), d)
	}
	return nil
}

// post sends the JSON body to u (path names it in errors, without the
// robot's token) and reads the answer with classify: the id recorded is
// "<robot>:<notification id>", as robots return no message id.
func (g *groupRobot) post(ctx context.Context, n *schemas.Notification, u, path string, body []byte,
	classify func(status int, h http.Header, body []byte, robot string, now time.Time) error) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return "", Permanent(fmt.Errorf("%s %s %q: %v", g.kind.typ, g.kind.noun, n.Address, groupRobotURLError(err)))
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	resp, err := g.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("%s %s %q: POST %s: %v", g.kind.typ, g.kind.noun, n.Address, path, groupRobotURLError(err))
	}
	raw := readBody(resp)
	if err := classify(resp.StatusCode, resp.Header, raw, n.Address, g.now()); err != nil {
		return "", err
	}
	return n.Address + ":" + n.ID, nil
}

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
	text := chatPlainText(c)
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

// chatBaseURL checks the baseUrl setting v of a chat API provider typ (def
// when empty) and returns it without trailing slashes.
func chatBaseURL(typ, v, def string) (string, error) {
	if v == "" {
		v = def
	}
	base, err := url.Parse(v)
	if err != nil || (base.Scheme != "https" && base.Scheme != "http") || base.Host == "" {
		return "", fmt.Errorf("%s: baseUrl %q is not an http(s) URL", typ, v)
	}
	return strings.TrimRight(v, "/"), nil
}

// chatPerMinute is the per-minute limit setting key (nil = def, 0 = no limit).
func chatPerMinute(typ, key string, v *float64, def float64) (float64, error) {
	perMin := def
	if v != nil {
		perMin = *v
	}
	if perMin < 0 {
		return 0, fmt.Errorf("%s: %s must be >= 0, got %v", typ, key, perMin)
	}
	return perMin, nil
}

// chatTimeout checks the timeout setting.
func chatTimeout(typ string, d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("%s: timeout must be >= 0, got %s", typ, d)
	}
	return nil
}

// chatLog is the provider's logger: s.Log, or one that discards.
func chatLog(s Spec) *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// chatTitle is the notification's title on one line.
func chatTitle(c schemas.Content) string { return strings.Join(strings.Fields(c.Title), " ") }

// chatPlainText is the plain text of c: Text, else Body.
func chatPlainText(c schemas.Content) string {
	if c.Text != "" {
		return c.Text
	}
	return c.Body
}

// chatBoldTitled is body under title in bold (*title*, as Slack, WhatsApp and
// Telegram's MarkdownV2 write it); either alone when the other is empty.
func chatBoldTitled(title, body string) string {
	switch {
	case title == "":
		return body
	case body == "":
		return "*" + title + "*"
	}
	return "*" + title + "*\n" + body
}
