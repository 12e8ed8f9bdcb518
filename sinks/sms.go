package sinks

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// What the SMS vendors (twilio, aliyunsms, tencentsms) share: the settings
// every section has, the client, clock and per-number limiter of a provider,
// and the handling of numbers, templates and answers the vendors agree on.

// SMSVendorSettings are the keys every SMS vendor's section has, embedded
// inline (`yaml:",inline"`) in TwilioSettings, AliyunSMSSettings and
// TencentSMSSettings.
type SMSVendorSettings struct {
	BaseURL string        `yaml:"baseUrl"`
	Timeout time.Duration `yaml:"timeout"`
	// PerNumberPerMinute bounds the messages to one recipient number a minute
	// on this instance (0 = no limit), PerNumberBurst at once.
	PerNumberPerMinute float64 `yaml:"perNumberPerMinute"`
	PerNumberBurst     int     `yaml:"perNumberBurst"`
}

// checkRootAPI checks the settings of a vendor whose API is called at "/"
// of baseUrl (aliyunsms, tencentsms): baseUrl has no path, and the timeout
// and limits are not negative.
func (s SMSVendorSettings) checkRootAPI() error {
	if err := smsBaseURLCheck(s.BaseURL); err != nil {
		return err
	}
	return s.checkNotNegative()
}

// checkNotNegative refuses a negative timeout or per-number limit.
func (s SMSVendorSettings) checkNotNegative() error {
	return notNegative("timeout, perNumberPerMinute and perNumberBurst",
		float64(s.Timeout), s.PerNumberPerMinute, float64(s.PerNumberBurst))
}

// smsVendor is the part of an SMS provider that is not the vendor's own: its
// name, HTTP client, per-number limiter and clock.
type smsVendor struct {
	name      string
	what      string // the type, which starts every error
	perMinute float64
	client    *http.Client
	perTo     *KeyLimiter
	now       func() time.Time
}

// smsDecodeSettings decodes and validates the section of a provider of type
// what (the SMS vendors, and sendgrid); an error names the type.
func smsDecodeSettings[S interface{ validate() error }](spec Spec, what string) (S, error) {
	var s S
	if err := spec.Settings(&s); err != nil {
		return s, err
	}
	if err := s.validate(); err != nil {
		return s, fmt.Errorf("%s: %w", what, err)
	}
	return s, nil
}

func newSMSVendor(spec Spec, what string, s SMSVendorSettings) smsVendor {
	return smsVendor{name: spec.Name, what: what, perMinute: s.PerNumberPerMinute,
		client: newHTTPClient(s.Timeout, nil),
		perTo:  NewKeyLimiter(s.PerNumberPerMinute, s.PerNumberBurst),
		now:    spec.Deps.now}
}

func (v *smsVendor) Name() string { return v.name }

// takeNumber takes a message to number at now from the per-number limit, or
// says to retry when the number is over it.
func (v *smsVendor) takeNumber(number string, now time.Time) error {
	if d := v.perTo.Take(number, now); d > 0 {
		return RetryLater(fmt.Errorf("%s: over the per-number limit of %g a minute", v.what, v.perMinute), d)
	}
	return nil
}

// smsRootEndpoint is the endpoint of an API called at "/" of baseUrl (def
// when empty); base was validated by smsBaseURLCheck.
func smsRootEndpoint(base, def string) *url.URL {
	if base == "" {
		base = def
	}
	u, _ := url.Parse(base) // validated
	u.Path, u.RawPath, u.RawQuery, u.Fragment = "/", "", "", ""
	return u
}

// smsBaseURLCheck accepts an empty baseUrl (the default) or an absolute
// http(s) URL without a path beyond "/" (both APIs are called at "/").
func smsBaseURLCheck(v string) error {
	if err := checkHTTPURL("baseUrl", v); err != nil || v == "" {
		return err
	}
	if u, _ := url.Parse(v); u.Path != "" && u.Path != "/" {
		return fmt.Errorf("baseUrl %q has a path; the API is called at /", v)
	}
	return nil
}

// addressee is n's number as parse reads it and its template (def when n
// names none), or why it cannot be sent: a notification without a number
// fails, one whose address is not a number names it invalid, and one without
// a template fails saying missing (the vendors send only approved templates).
func (v *smsVendor) addressee(n *schemas.Notification, parse func(string) (string, bool), def, missing string) (string, string, error) {
	phone, ok := parse(n.Address)
	switch {
	case !ok && n.Address == "":
		return "", "", Permanent(fmt.Errorf("%s: the notification has no phone number", v.what))
	case !ok:
		return "", "", InvalidRecipient(fmt.Errorf("%s: the address is not a phone number", v.what), AddressTarget(n))
	}
	template := n.Content.TemplateID
	if template == "" {
		template = def
	}
	if template == "" {
		return "", "", Permanent(errors.New(missing))
	}
	return phone, template, nil
}

// smsStripPhone drops the formatting characters people put in numbers.
func smsStripPhone(address string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case ' ', '-', '.', '(', ')', '\t':
			return -1
		}
		return r
	}, strings.TrimSpace(address))
}

// smsDigits tells whether num is 5 to 20 ASCII digits.
func smsDigits(num string) bool {
	if len(num) < 5 || len(num) > 20 {
		return false
	}
	for _, c := range num {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// smsTransportError is err without the request's URL (an url.Error prints it).
func smsTransportError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}

// smsRetry retries err after the answer's Retry-After, or def without one.
func smsRetry(err error, h http.Header, now time.Time, def time.Duration) error {
	after := ParseRetryAfter(h.Get("Retry-After"), now)
	if after == 0 {
		after = def
	}
	return RetryLater(err, after)
}

// smsClip bounds a provider's text put in an error.
func smsClip(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 300 {
		s = strings.ToValidUTF8(s[:300], "")
	}
	return s
}
