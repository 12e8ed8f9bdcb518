// Package tracking makes and checks the links notifyd puts in emails (the
// open pixel, click redirects and one-click unsubscribe) and rewrites an
// email's HTML so its links go through them.
//
// A link carries everything the status event it turns into needs (template,
// campaign, channel...), so a click is attributed without looking anything
// up, on any API instance, with no store to share. Its token is encrypted
// and authenticated (token.go): a recipient, a forwarded email or a proxy
// log learns nothing from it (not the user id, which may be an email
// address, nor the destination), and it cannot be forged or pointed at
// another destination: there is no open redirect.
package tracking

import (
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

// Link is what a tracking URL says; every field is inside its encrypted,
// authenticated token.
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
	if !validKind(l.Kind) {
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

func validKind(kind string) bool {
	return kind == Open || kind == Click || kind == Unsubscribe
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

// fieldNames lists a Link's fields in the order tokens encode them; the URL
// is last.
var fieldNames = [...]string{"notificationId", "tenant", "userId", "template", "category", "channel", "campaign", "url"}

func (l Link) fields() [len(fieldNames)]string {
	return [...]string{l.NotificationID, l.Tenant, l.UserID, l.Template, l.Category, l.Channel, l.Campaign, l.URL}
}
