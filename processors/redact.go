package processors

import (
	"encoding/json"
	"sort"
	"strings"

	"github.com/notifyd/notifyd/schemas"
)

// Redacted replaces what a one-time code's notification must not show.
const Redacted = "[redacted]"

// minSecretLen: data values shorter than this are not scrubbed from text (a
// "1" would erase every digit of a reason); one-time codes are 4+ characters.
const minSecretLen = 4

// Secrets are the values of a one-time code's data (the code among them),
// longest first, that must appear in no log line, status reason, dead letter
// or analytics row. A notification that is not an OTP has none.
func Secrets(otp bool, data string) []string {
	if !otp || data == "" {
		return nil
	}
	var m map[string]any
	d := json.NewDecoder(strings.NewReader(data))
	d.UseNumber()
	if d.Decode(&m) != nil {
		return nil
	}
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case string:
			if len(x) >= minSecretLen {
				out = append(out, x)
			}
		case json.Number:
			if len(x) >= minSecretLen {
				out = append(out, x.String())
			}
		case map[string]any:
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(m)
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// Scrub removes secrets from text.
func Scrub(text string, secrets []string) string {
	for _, s := range secrets {
		text = strings.ReplaceAll(text, s, Redacted)
	}
	return text
}

// RedactNotification is n as a dead letter or a log may carry it: for a
// one-time code its data and rendered content are replaced (a code is useless
// after its expiry anyway, so nothing is lost that a replay could use).
func RedactNotification(n *schemas.Notification) *schemas.Notification {
	if !n.OTP {
		return n
	}
	c := *n
	if c.Data != "" {
		c.Data = `{"redacted":true}`
	}
	secrets := Secrets(true, n.Data)
	r := func(s string) string {
		if s == "" {
			return s
		}
		return Redacted
	}
	c.Content = schemas.Content{Subject: Scrub(n.Content.Subject, secrets), HTML: r(n.Content.HTML), Text: r(n.Content.Text),
		Title: Scrub(n.Content.Title, secrets), Body: r(n.Content.Body), Markdown: r(n.Content.Markdown),
		Endpoint: n.Content.Endpoint, TemplateID: n.Content.TemplateID}
	if len(n.Content.TemplateParams) > 0 {
		c.Content.TemplateParams = map[string]string{}
		for k := range n.Content.TemplateParams {
			c.Content.TemplateParams[k] = Redacted
		}
	}
	if len(n.Content.Data) > 0 {
		c.Content.Data = map[string]string{}
		for k, v := range n.Content.Data {
			c.Content.Data[k] = Scrub(v, secrets)
		}
	}
	c.LastError = Scrub(n.LastError, secrets)
	return &c
}

// RedactRecord redacts a record about to be dead-lettered when it is a one-time
// code's Notification or SendRequest; other records are returned as they are.
func RedactRecord(value []byte) []byte {
	name, err := schemas.RecordName(value)
	if err != nil {
		return value
	}
	switch name {
	case "notifyd.Notification":
		n, err := schemas.NotificationCodec.Decode(value)
		if err != nil || !n.OTP {
			return value
		}
		if b, err := schemas.NotificationCodec.Encode(RedactNotification(n)); err == nil {
			return b
		}
		return nil
	case "notifyd.SendRequest":
		r, err := schemas.SendRequestCodec.Decode(value)
		if err != nil || !r.OTP {
			return value
		}
		c := *r
		c.Data = `{"redacted":true}`
		if b, err := schemas.SendRequestCodec.Encode(&c); err == nil {
			return b
		}
		return nil
	}
	return value
}
