package processors

import (
	"encoding/json"
	"regexp"
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

// Scrub removes secrets from text, and every email address (providers quote
// the address they refuse).
func Scrub(text string, secrets []string) string {
	for _, s := range secrets {
		if s != "" {
			text = strings.ReplaceAll(text, s, Redacted)
		}
	}
	return emailLike.ReplaceAllString(text, Redacted)
}

// emailLike finds email addresses in free text (reasons, log lines).
var emailLike = regexp.MustCompile(`[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}`)

// Contacts are the addresses a notification names (email, phone, device
// tokens, endpoints), which no status reason, log line or analytics row may
// carry; reasons quote provider errors, and those quote addresses.
func Contacts(n *schemas.Notification) []string {
	var out []string
	add := func(v string) {
		if len(v) >= minSecretLen {
			out = append(out, v)
		}
	}
	if n.Channel != "webhook" { // a webhook's address names a configured endpoint
		add(n.Address)
	}
	add(n.Recipient.Email)
	add(n.Recipient.Phone)
	for _, t := range n.Targets {
		add(t.Token)
		add(t.Endpoint)
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
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

// Mask shows enough of an address to recognise it in a log line and not
// enough to use it: "a***@example.com", "+141***00", "abcd***" (tokens).
func Mask(addr string) string {
	if addr == "" {
		return ""
	}
	if local, domain, ok := strings.Cut(addr, "@"); ok {
		return firstRunes(local, 1) + "***@" + domain
	}
	r := []rune(addr)
	if len(r) <= 6 {
		return "***"
	}
	return string(r[:4]) + "***" + string(r[len(r)-2:])
}

func firstRunes(s string, n int) string {
	r := []rune(s)
	if len(r) > n {
		r = r[:n]
	}
	return string(r)
}
