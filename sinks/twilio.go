package sinks

import (
	"context"
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // Twilio's documented request signature is HMAC-SHA1
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/notifyd/notifyd/schemas"
)

// Twilio Programmable Messaging: an SMS is a form POST to
// {baseUrl}/2010-04-01/Accounts/{AccountSid}/Messages.json with HTTP Basic
// auth AccountSid:AuthToken; 201 answers the message resource, whose sid is
// the message id. Errors are JSON {"code","message","more_info","status"}.

// TwilioSettings is the `twilio:` section of a provider of type twilio.
type TwilioSettings struct {
	AccountSID string `yaml:"accountSid"`
	AuthToken  string `yaml:"authToken"`
	// From is the sender (E.164 number, short code or alphanumeric id);
	// MessagingServiceSID sends through a Messaging Service. One is required.
	From                string `yaml:"from"`
	MessagingServiceSID string `yaml:"messagingServiceSid"`
	// StatusCallbackURL receives Twilio's delivery status callbacks.
	StatusCallbackURL string `yaml:"statusCallbackUrl"`
	SMSVendorSettings `yaml:",inline"`
}

const (
	twilioDefaultBaseURL = "https://api.twilio.com"
	// TwilioMaxBody is the longest body Twilio accepts, in characters.
	TwilioMaxBody = 1600
)

// Twilio error codes notifyd acts on.
const (
	twilioCodeAuthenticate = 20003 // bad AccountSid or AuthToken
	twilioCodeTooManyReqs  = 20429 // too many concurrent requests
	twilioCodeQueueFull    = 21611 // the From number's queue is full
	twilioCodeInvalidTo    = 21211 // the To number is not a valid phone number
	twilioCodeNotMobile    = 21614 // the To number is not a mobile number
	twilioCodeUnsubscribed = 21610 // the recipient replied STOP
)

type twilioProvider struct {
	smsVendor
	s        TwilioSettings
	endpoint string
}

func init() {
	Register("twilio", Type{Channels: []string{"sms"}, New: newTwilioProvider})
}

func newTwilioProvider(spec Spec) (Provider, error) {
	s, err := smsDecodeSettings[TwilioSettings](spec, "twilio")
	if err != nil {
		return nil, err
	}
	base := strings.TrimRight(s.BaseURL, "/")
	if base == "" {
		base = twilioDefaultBaseURL
	}
	return &twilioProvider{smsVendor: newSMSVendor(spec, "twilio", s.SMSVendorSettings), s: s,
		endpoint: base + "/2010-04-01/Accounts/" + url.PathEscape(s.AccountSID) + "/Messages.json"}, nil
}

func (s TwilioSettings) validate() error {
	if err := requireSettings("accountSid", s.AccountSID, "authToken", s.AuthToken,
		"from or messagingServiceSid", s.From+s.MessagingServiceSID); err != nil {
		return err
	}
	if !strings.HasPrefix(s.AccountSID, "AC") {
		return errors.New("accountSid must be an account SID (AC…)")
	}
	if s.MessagingServiceSID != "" && !strings.HasPrefix(s.MessagingServiceSID, "MG") {
		return errors.New("messagingServiceSid must be a Messaging Service SID (MG…)")
	}
	for key, v := range map[string]string{"baseUrl": s.BaseURL, "statusCallbackUrl": s.StatusCallbackURL} {
		if err := checkHTTPURL(key, v); err != nil {
			return err
		}
	}
	return s.checkNotNegative()
}

// twilioText is the SMS body of n: its text, or its body.
func twilioText(n *schemas.Notification) string {
	if n.Content.Text != "" {
		return n.Content.Text
	}
	return n.Content.Body
}

func (p *twilioProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	if n.Address == "" {
		return "", Permanent(errors.New("twilio: the notification has no phone number"))
	}
	text := twilioText(n)
	if text == "" {
		return "", Permanent(errors.New("twilio: the notification has no text to send"))
	}
	if c := utf8.RuneCountInString(text); c > TwilioMaxBody {
		return "", Permanent(fmt.Errorf("twilio: the body is %d characters, Twilio takes at most %d", c, TwilioMaxBody))
	}
	if err := p.takeNumber(n.Address, p.now()); err != nil {
		return "", err
	}
	form := url.Values{"To": {n.Address}, "Body": {text}}
	if p.s.From != "" {
		form.Set("From", p.s.From)
	}
	if p.s.MessagingServiceSID != "" {
		form.Set("MessagingServiceSid", p.s.MessagingServiceSID)
	}
	if p.s.StatusCallbackURL != "" {
		form.Set("StatusCallback", twilioCallbackURL(p.s.StatusCallbackURL, n.ID))
	}
	if v := twilioValidityPeriod(n.ExpiresAt, p.now()); v > 0 {
		// Twilio drops a message still queued after this many seconds (error
		// 30036) instead of sending a code that has expired.
		form.Set("ValidityPeriod", strconv.Itoa(v))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return "", Permanent(fmt.Errorf("twilio: %w", err))
	}
	req.SetBasicAuth(p.s.AccountSID, p.s.AuthToken)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "notifyd-twilio/1")
	resp, err := p.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("twilio: %w", err)
	}
	body := readBody(resp)
	return classifyTwilio(resp.StatusCode, resp.Header, body, p.now(), n)
}

// twilioMaxValidity is the longest ValidityPeriod Twilio takes, in seconds.
const twilioMaxValidity = 36000

// twilioValidityPeriod is the ValidityPeriod (seconds) of a notification
// expiring at expiresAt (unix ms; 0 = never): the time left, rounded up,
// between 1 and 36000; 0 to send none.
func twilioValidityPeriod(expiresAt int64, now time.Time) int {
	if expiresAt <= 0 {
		return 0
	}
	left := time.UnixMilli(expiresAt).Sub(now)
	secs := int((left + time.Second - 1) / time.Second)
	return min(max(secs, 1), twilioMaxValidity)
}

// twilioAnswer is what notifyd reads of Twilio's answer: the message resource
// on success, the error fields otherwise.
type twilioAnswer struct {
	Sid      string `json:"sid"`
	Status   any    `json:"status"` // a message status string, or the HTTP status number of an error
	Code     int    `json:"code"`
	Message  string `json:"message"`
	MoreInfo string `json:"more_info"`
}

// classifyTwilio turns Twilio's answer to a message create into a message id
// or a classified error.
func classifyTwilio(status int, h http.Header, body []byte, now time.Time, n *schemas.Notification) (string, error) {
	var a twilioAnswer
	jsonErr := json.Unmarshal(body, &a)
	if status >= 200 && status < 300 {
		if jsonErr == nil && a.Sid != "" && a.Code == 0 {
			return a.Sid, nil
		}
		if jsonErr == nil && a.Code != 0 {
			return "", twilioCodeError(status, h, a, now, n)
		}
		// Accepted or not, nothing says which: not retried (a retry could send
		// it twice), and not silently counted as sent.
		return "", Permanent(fmt.Errorf("twilio: HTTP %d without a message sid", status))
	}
	if jsonErr != nil || a.Code == 0 {
		return "", HTTPStatus(&http.Response{StatusCode: status, Header: h}, now, "twilio")
	}
	return "", twilioCodeError(status, h, a, now, n)
}

func twilioCodeError(status int, h http.Header, a twilioAnswer, now time.Time, n *schemas.Notification) error {
	msg := strings.TrimSpace(a.Message)
	if len(msg) > 300 {
		msg = msg[:300]
	}
	err := fmt.Errorf("twilio: HTTP %d error %d: %s", status, a.Code, msg)
	retry := func() error { return smsRetry(err, h, now, 0) }
	switch a.Code {
	case twilioCodeUnsubscribed:
		return Unsubscribed(err, AddressTarget(n))
	case twilioCodeInvalidTo, twilioCodeNotMobile:
		return InvalidRecipient(err, AddressTarget(n))
	case twilioCodeTooManyReqs, twilioCodeQueueFull:
		return retry()
	case twilioCodeAuthenticate:
		return Permanent(fmt.Errorf("twilio: authentication failed (error %d: %s): check accountSid and authToken", a.Code, msg))
	}
	if status == http.StatusTooManyRequests || status >= 500 || status == http.StatusRequestTimeout {
		return retry()
	}
	return Permanent(err)
}

// TwilioSignature computes Twilio's X-Twilio-Signature of a request to
// fullURL (as Twilio called it, query string included) with form as its POST
// parameters: Base64(HMAC-SHA1(authToken, fullURL + name+value of every
// parameter, sorted by name)). A parameter given several values contributes
// each, in order.
func TwilioSignature(authToken, fullURL string, form url.Values) string {
	names := make([]string, 0, len(form))
	for k := range form {
		names = append(names, k)
	}
	sort.Strings(names)
	mac := hmac.New(sha1.New, []byte(authToken))
	mac.Write([]byte(fullURL))
	for _, k := range names {
		for _, v := range form[k] {
			mac.Write([]byte(k))
			mac.Write([]byte(v))
		}
	}
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// VerifyTwilioSignature tells whether signature (the X-Twilio-Signature
// header) is Twilio's signature of a POST to fullURL with form, under
// authToken; compared in constant time. An empty signature or token never
// verifies.
func VerifyTwilioSignature(authToken, fullURL string, form url.Values, signature string) bool {
	if authToken == "" || signature == "" {
		return false
	}
	want := TwilioSignature(authToken, fullURL, form)
	return hmac.Equal([]byte(want), []byte(strings.TrimSpace(signature)))
}

// TwilioStatus maps the MessageStatus of a Twilio status callback to a
// notifyd delivery status: "delivered" (delivered, read), "failed"
// (undelivered, failed, canceled), or "" for the intermediate ones (queued,
// accepted, scheduled, sending, sent, …) and anything unknown.
func TwilioStatus(messageStatus string) string {
	switch strings.ToLower(strings.TrimSpace(messageStatus)) {
	case "delivered", "read":
		return "delivered"
	case "undelivered", "failed", "canceled":
		return "failed"
	}
	return ""
}

// twilioCallbackURL is the status callback of one message: the configured
// URL with the notification id as the query parameter n. Twilio signs the
// URL it calls, query included, so the id cannot be changed on the way.
func twilioCallbackURL(base, notificationID string) string {
	u, err := url.Parse(base)
	if err != nil {
		return base
	}
	q := u.Query()
	q.Set("n", notificationID)
	u.RawQuery = q.Encode()
	return u.String()
}

// Receipts reads a status callback of Twilio, posted to statusCallbackUrl
// (which must be this provider's /v1/receipts/{name} as Twilio reaches it):
// the X-Twilio-Signature must verify over that URL, the query Twilio called
// with the notification id, and the form. Error 21610 (the recipient replied
// STOP) is an unsubscribe; delivered/read and undelivered/failed are
// receipts; other statuses record nothing.
func (p *twilioProvider) Receipts(r *http.Request, body []byte) ([]Receipt, error) {
	if p.s.StatusCallbackURL == "" {
		return nil, errors.New("twilio: statusCallbackUrl is not configured, so no callback is expected")
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, fmt.Errorf("twilio: the callback is not a form: %w", err)
	}
	base, err := url.Parse(p.s.StatusCallbackURL)
	if err != nil {
		return nil, err
	}
	called := *base
	called.RawQuery = r.URL.RawQuery
	if !VerifyTwilioSignature(p.s.AuthToken, called.String(), form, r.Header.Get("X-Twilio-Signature")) {
		return nil, ErrBadSignature
	}
	id := r.URL.Query().Get("n")
	if id == "" {
		return nil, errors.New("twilio: the callback names no notification (query parameter n)")
	}
	rc := Receipt{NotificationID: id, ProviderMessageID: form.Get("MessageSid"), Status: TwilioStatus(form.Get("MessageStatus")), At: p.now()}
	if code := form.Get("ErrorCode"); code != "" {
		rc.Reason = "twilio error " + code
		if code == "21610" {
			rc.Status, rc.Reason = "unsubscribed", "the recipient replied STOP (twilio error 21610)"
		}
	}
	return []Receipt{rc}, nil
}
