// Package tracking makes and checks the signed links notifyd puts in emails
// (the open pixel, click redirects and one-click unsubscribe) and rewrites an
// email's HTML so its links go through them.
//
// A link carries everything the status event it turns into needs (template,
// campaign, channel...), so a click is attributed without looking anything
// up, and an HMAC over all of it means a link cannot be forged or pointed at
// another destination: there is no open redirect.
package tracking

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/notifyd/notifyd/schemas"
)

// Kinds of link.
const (
	Open        = "o" // the email open pixel
	Click       = "c" // a link in the email, redirected
	Unsubscribe = "u" // one-click unsubscribe (RFC 8058)
)

// Bounds on what a link may carry. They keep every valid link's token under
// maxTokenLen, so anything Token makes for a valid Link, Parse accepts.
const (
	maxFieldLen = 256  // each identifier field
	maxURLLen   = 2048 // a click destination, the practical limit of browsers
)

// Link is what a tracking URL says; every field is covered by the signature.
type Link struct {
	Kind           string // Open, Click or Unsubscribe
	NotificationID string
	Tenant         string // "" = default tenant
	UserID         string
	Template       string
	Category       string
	Channel        string
	Campaign       string // may be ""
	URL            string // Click only: the destination, http or https absolute URL
}

// Validate tells whether l may be signed: a known kind, a notification id,
// a user id for Unsubscribe, a tenant in stored form ("" for the default,
// never "default"), bounded printable fields, and a URL exactly when Kind is
// Click, absolute http or https. Parse refuses what Validate refuses.
func (l Link) Validate() error {
	switch l.Kind {
	case Open, Click, Unsubscribe:
	default:
		return fmt.Errorf("unknown link kind %q", l.Kind)
	}
	if l.NotificationID == "" {
		return errors.New("link has no notification id")
	}
	if l.Kind == Unsubscribe && l.UserID == "" {
		return errors.New("unsubscribe link has no user id")
	}
	if l.Tenant != "" && (l.Tenant != schemas.NormTenant(l.Tenant) || !schemas.ValidTenant(l.Tenant)) {
		return fmt.Errorf("link tenant %q is not a stored tenant name", l.Tenant)
	}
	fields := l.fields()
	for i, name := range fieldNames[:len(fieldNames)-1] {
		if err := checkField(name, fields[i], maxFieldLen); err != nil {
			return err
		}
	}
	return l.validateURL()
}

func (l Link) validateURL() error {
	if l.Kind != Click {
		if l.URL != "" {
			return fmt.Errorf("%s link carries a url", kindName(l.Kind))
		}
		return nil
	}
	if err := checkField("url", l.URL, maxURLLen); err != nil {
		return err
	}
	if !isWebURL(l.URL) {
		return errors.New("click url is not an absolute http or https url")
	}
	return nil
}

// isWebURL tells whether s is an absolute http or https URL with a host:
// the only destinations a click may redirect to (never javascript:, data:
// or a path on the tracking host).
func isWebURL(s string) bool {
	u, err := url.Parse(s)
	if err != nil {
		return false
	}
	scheme := strings.ToLower(u.Scheme)
	return (scheme == "http" || scheme == "https") && u.Host != "" && u.Opaque == ""
}

// checkField refuses over-long values, invalid UTF-8 and control characters,
// which have no business in ids or URLs and would end up in status events.
func checkField(name, v string, max int) error {
	if len(v) > max {
		return fmt.Errorf("link %s is %d bytes, over %d", name, len(v), max)
	}
	if !utf8.ValidString(v) {
		return fmt.Errorf("link %s is not valid UTF-8", name)
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("link %s holds control character %U", name, r)
		}
	}
	return nil
}

func kindName(kind string) string {
	switch kind {
	case Open:
		return "open"
	case Click:
		return "click"
	case Unsubscribe:
		return "unsubscribe"
	}
	return fmt.Sprintf("%q", kind)
}

// payloadVersion is the first byte of every encoded payload, so the format
// can change without old links being misread.
const payloadVersion = 1

// fieldNames lists the encoded fields in order; the URL is last.
var fieldNames = [...]string{"notificationId", "tenant", "userId", "template", "category", "channel", "campaign", "url"}

func (l Link) fields() [len(fieldNames)]string {
	return [...]string{l.NotificationID, l.Tenant, l.UserID, l.Template, l.Category, l.Channel, l.Campaign, l.URL}
}

// encode is the payload: the version byte, then each field as a uvarint
// length and its bytes. The kind is not in it: it is in the URL path and in
// the signed message.
func (l Link) encode() []byte {
	fields := l.fields()
	n := 1
	for _, f := range fields {
		n += binary.MaxVarintLen64 + len(f)
	}
	b := make([]byte, 1, n)
	b[0] = payloadVersion
	for _, f := range fields {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

// decodeLink undoes encode. It accepts only the canonical encoding (what
// encode makes of the result), so one link has exactly one payload.
func decodeLink(kind string, b []byte) (Link, error) {
	if len(b) == 0 || b[0] != payloadVersion {
		return Link{}, errors.New("unknown payload version")
	}
	rest := b[1:]
	var fields [len(fieldNames)]string
	for i, name := range fieldNames {
		n, size := binary.Uvarint(rest)
		if size <= 0 || n > uint64(len(rest)-size) {
			return Link{}, fmt.Errorf("payload field %s is truncated", name)
		}
		rest = rest[size:]
		fields[i], rest = string(rest[:n]), rest[n:]
	}
	if len(rest) != 0 {
		return Link{}, errors.New("payload has trailing bytes")
	}
	l := Link{
		Kind: kind, NotificationID: fields[0], Tenant: fields[1], UserID: fields[2], Template: fields[3],
		Category: fields[4], Channel: fields[5], Campaign: fields[6], URL: fields[7],
	}
	if string(l.encode()) != string(b) {
		return Link{}, errors.New("payload is not canonically encoded")
	}
	return l, nil
}
