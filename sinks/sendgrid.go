package sinks

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/mail"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/tracking"
)

// SendGrid v3 Mail Send: POST {baseUrl}/v3/mail/send with
// `Authorization: Bearer <apiKey>` and a JSON body; 202 with the message id
// in X-Message-Id. Errors are JSON {"errors":[{"message","field","help"}]}.

// SendGridSettings is the `sendgrid:` section of a provider of type sendgrid.
type SendGridSettings struct {
	APIKey    string `yaml:"apiKey"`
	FromEmail string `yaml:"fromEmail"`
	FromName  string `yaml:"fromName"`
	// ReplyTo is the reply-to address (optional).
	ReplyTo string `yaml:"replyTo"`
	// Categories tag every message (SendGrid statistics), at most 10.
	Categories []string      `yaml:"categories"`
	BaseURL    string        `yaml:"baseUrl"` // https://api.sendgrid.com; https://api.eu.sendgrid.com for EU subusers
	Timeout    time.Duration `yaml:"timeout"`
	// EventWebhookPublicKey is the verification key of the Signed Event
	// Webhook (base64 DER, as SendGrid's settings show it); with it, events
	// posted to /v1/receipts/{name} become receipts. Unsigned events are refused.
	EventWebhookPublicKey string `yaml:"eventWebhookPublicKey"`
}

const sendGridDefaultBaseURL = "https://api.sendgrid.com"

type sendGridProvider struct {
	name     string
	s        SendGridSettings
	endpoint string
	client   *http.Client
	now      func() time.Time
	events   *ecdsa.PublicKey // nil: no event webhook
	tracker  *tracking.Signer // nil: no tracking
}

func init() {
	Register("sendgrid", Type{Channels: []string{"email"}, New: newSendGridProvider})
}

func newSendGridProvider(spec Spec) (Provider, error) {
	s, err := smsDecodeSettings[SendGridSettings](spec, "sendgrid")
	if err != nil {
		return nil, err
	}
	base := strings.TrimRight(s.BaseURL, "/")
	if base == "" {
		base = sendGridDefaultBaseURL
	}
	p := &sendGridProvider{name: spec.Name, s: s, endpoint: base + "/v3/mail/send", tracker: spec.Tracker,
		client: newHTTPClient(s.Timeout, nil), now: spec.Deps.now}
	if s.EventWebhookPublicKey != "" {
		if p.events, err = parseSendGridKey(s.EventWebhookPublicKey); err != nil {
			return nil, fmt.Errorf("sendgrid: eventWebhookPublicKey: %w", err)
		}
	}
	return p, nil
}

// parseSendGridKey reads the Signed Event Webhook's verification key: a
// base64 DER SubjectPublicKeyInfo of a P-256 key (PEM armour accepted).
func parseSendGridKey(v string) (*ecdsa.PublicKey, error) {
	v = strings.TrimSpace(v)
	v = strings.TrimPrefix(v, "-----BEGIN PUBLIC KEY-----")
	v = strings.TrimSuffix(v, "-----END PUBLIC KEY-----")
	der, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(v), ""))
	if err != nil {
		return nil, fmt.Errorf("not base64: %w", err)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, err
	}
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok || k.Curve != elliptic.P256() {
		return nil, errors.New("not an ECDSA P-256 key")
	}
	return k, nil
}

// SendGrid's Signed Event Webhook headers.
const (
	SendGridSignatureHeader = "X-Twilio-Email-Event-Webhook-Signature"
	SendGridTimestampHeader = "X-Twilio-Email-Event-Webhook-Timestamp"
)

// sendGridEvent is one event of SendGrid's Event Webhook; notification_id is
// the custom argument every message carries.
type sendGridEvent struct {
	Event          string `json:"event"`
	NotificationID string `json:"notification_id"`
	SGMessageID    string `json:"sg_message_id"`
	Timestamp      int64  `json:"timestamp"`
	Reason         string `json:"reason"`
}

// sendGridEventStatus maps an Event Webhook event to a receipt status ("" =
// nothing to record: processed, deferred).
var sendGridEventStatus = map[string]string{"delivered": "delivered", "bounce": "failed", "dropped": "failed",
	"open": "opened", "click": "clicked", "unsubscribe": "unsubscribed", "group_unsubscribe": "unsubscribed",
	"spamreport": "unsubscribed"}

// maxSendGridEvents bounds the events of one callback.
const maxSendGridEvents = 1000

// Receipts reads a post of SendGrid's Signed Event Webhook: the ECDSA
// signature (base64 DER) over the timestamp header followed by the raw body
// must verify with eventWebhookPublicKey. Events of messages notifyd did not
// send (no notification_id) are skipped.
func (p *sendGridProvider) Receipts(r *http.Request, body []byte) ([]Receipt, error) {
	if p.events == nil {
		return nil, errors.New("sendgrid: eventWebhookPublicKey is not configured, so no event webhook is expected")
	}
	sig, err := base64.StdEncoding.DecodeString(r.Header.Get(SendGridSignatureHeader))
	if err != nil || len(sig) == 0 {
		return nil, ErrBadSignature
	}
	digest := sha256.Sum256(append([]byte(r.Header.Get(SendGridTimestampHeader)), body...))
	if !ecdsa.VerifyASN1(p.events, digest[:], sig) {
		return nil, ErrBadSignature
	}
	var events []sendGridEvent
	if err := json.Unmarshal(body, &events); err != nil {
		return nil, fmt.Errorf("sendgrid: events are not a JSON array of events: %w", err)
	}
	if len(events) > maxSendGridEvents {
		return nil, fmt.Errorf("sendgrid: %d events in one post, at most %d", len(events), maxSendGridEvents)
	}
	var out []Receipt
	for _, ev := range events {
		if ev.NotificationID == "" {
			continue
		}
		rc := Receipt{NotificationID: ev.NotificationID, ProviderMessageID: ev.SGMessageID,
			Status: sendGridEventStatus[ev.Event], At: time.Unix(ev.Timestamp, 0)}
		if ev.Timestamp <= 0 {
			rc.At = p.now()
		}
		if ev.Reason != "" {
			rc.Reason = "sendgrid " + ev.Event + ": " + ev.Reason
		}
		out = append(out, rc)
	}
	return out, nil
}

func (s SendGridSettings) validate() error {
	if err := requireSettings("apiKey", s.APIKey, "fromEmail", s.FromEmail); err != nil {
		return err
	}
	for key, v := range map[string]string{"fromEmail": s.FromEmail, "replyTo": s.ReplyTo} {
		if v == "" {
			continue
		}
		if a, err := mail.ParseAddress(v); err != nil || a.Address != v {
			return fmt.Errorf("%s %q is not a bare email address", key, v)
		}
	}
	if err := checkHTTPURL("baseUrl", s.BaseURL); err != nil {
		return err
	}
	if len(s.Categories) > 10 {
		return errors.New("at most 10 categories")
	}
	return notNegative("timeout", float64(s.Timeout))
}

func (p *sendGridProvider) Name() string { return p.name }

type sendGridAddress struct {
	Email string `json:"email"`
	Name  string `json:"name,omitempty"`
}

type sendGridContent struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

type sendGridPersonalization struct {
	To                  []sendGridAddress `json:"to"`
	DynamicTemplateData map[string]string `json:"dynamic_template_data,omitempty"`
}

type sendGridMail struct {
	Personalizations []sendGridPersonalization `json:"personalizations"`
	From             sendGridAddress           `json:"from"`
	ReplyTo          *sendGridAddress          `json:"reply_to,omitempty"`
	Subject          string                    `json:"subject,omitempty"`
	Content          []sendGridContent         `json:"content,omitempty"`
	TemplateID       string                    `json:"template_id,omitempty"`
	Categories       []string                  `json:"categories,omitempty"`
	CustomArgs       map[string]string         `json:"custom_args,omitempty"`
	Headers          map[string]string         `json:"headers,omitempty"`
}

// mail is the Mail Send body of n. text/plain comes before text/html, as
// SendGrid requires. A notification naming a SendGrid dynamic template
// (Content.TemplateID "d-…") sends its TemplateParams as the template's data.
func (p *sendGridProvider) mail(n *schemas.Notification) (*sendGridMail, error) {
	m := &sendGridMail{
		Personalizations: []sendGridPersonalization{{To: []sendGridAddress{{Email: n.Address}}}},
		From:             sendGridAddress{Email: p.s.FromEmail, Name: p.s.FromName},
		Subject:          n.Content.Subject,
		Categories:       p.s.Categories,
		CustomArgs:       map[string]string{"notification_id": n.ID},
	}
	if p.s.ReplyTo != "" {
		m.ReplyTo = &sendGridAddress{Email: p.s.ReplyTo}
	}
	if n.Content.Text != "" {
		m.Content = append(m.Content, sendGridContent{Type: "text/plain", Value: n.Content.Text})
	}
	html, unsubscribe, err := trackedEmail(p.tracker, n)
	if err != nil {
		return nil, err
	}
	if unsubscribe != "" { // RFC 8058 one-click unsubscribe
		m.Headers = map[string]string{"List-Unsubscribe": "<" + unsubscribe + ">", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
	}
	if html != "" {
		m.Content = append(m.Content, sendGridContent{Type: "text/html", Value: html})
	}
	if strings.HasPrefix(n.Content.TemplateID, "d-") {
		m.TemplateID = n.Content.TemplateID
		m.Personalizations[0].DynamicTemplateData = n.Content.TemplateParams
		return m, nil
	}
	if len(m.Content) == 0 {
		return nil, Permanent(errors.New("sendgrid: the notification has neither text nor html content"))
	}
	if m.Subject == "" {
		return nil, Permanent(errors.New("sendgrid: the notification has no subject"))
	}
	return m, nil
}

func (p *sendGridProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	if n.Address == "" {
		return "", Permanent(errors.New("sendgrid: the notification has no email address"))
	}
	m, err := p.mail(n)
	if err != nil {
		return "", err
	}
	body, err := json.Marshal(m)
	if err != nil {
		return "", Permanent(fmt.Errorf("sendgrid: %w", err))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.endpoint, bytes.NewReader(body))
	if err != nil {
		return "", Permanent(fmt.Errorf("sendgrid: %w", err))
	}
	req.Header.Set("Authorization", "Bearer "+p.s.APIKey)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "notifyd-sendgrid/1")
	resp, err := p.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("sendgrid: %w", err)
	}
	answer := readBody(resp)
	return classifySendGrid(resp.StatusCode, resp.Header, answer, p.now(), n)
}

type sendGridErrors struct {
	Errors []struct {
		Message string `json:"message"`
		Field   any    `json:"field"` // a string, or null
	} `json:"errors"`
}

// sendGridRecipientField is the field of an error about a To address.
var sendGridRecipientField = regexp.MustCompile(`^personalizations\.\d+\.to\.\d+\.email$`)

// classifySendGrid turns SendGrid's answer to a Mail Send into a message id
// or a classified error.
func classifySendGrid(status int, h http.Header, body []byte, now time.Time, n *schemas.Notification) (string, error) {
	if status >= 200 && status < 300 {
		// 202 queued; 200 only in sandbox mode (validated, not sent).
		return h.Get("X-Message-Id"), nil
	}
	var e sendGridErrors
	_ = json.Unmarshal(body, &e)
	var msgs []string
	recipient := false
	for _, x := range e.Errors {
		field, _ := x.Field.(string)
		m := strings.TrimSpace(x.Message)
		if field != "" {
			m += " (" + field + ")"
		}
		if len(m) > 300 {
			m = m[:300]
		}
		msgs = append(msgs, m)
		if sendGridRecipientField.MatchString(field) {
			recipient = true
		}
		if len(msgs) == 5 {
			break
		}
	}
	detail := ""
	if len(msgs) > 0 {
		detail = ": " + strings.Join(msgs, "; ")
	}
	err := fmt.Errorf("sendgrid: HTTP %d%s", status, detail)
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return "", Permanent(fmt.Errorf("sendgrid: HTTP %d, the API key was refused (check apiKey, its mail.send scope, and the verified sender)%s", status, detail))
	case status == http.StatusTooManyRequests || status >= 500 || status == http.StatusRequestTimeout:
		after := ParseRetryAfter(h.Get("Retry-After"), now)
		if after == 0 {
			after = sendGridRateLimitReset(h.Get("X-RateLimit-Reset"), now)
		}
		return "", RetryLater(err, after)
	case status == http.StatusBadRequest && recipient:
		return "", InvalidRecipient(err, AddressTarget(n))
	}
	return "", Permanent(err)
}

// sendGridRateLimitReset is the wait until X-RateLimit-Reset (unix seconds),
// at most a day; 0 when absent or past.
func sendGridRateLimitReset(v string, now time.Time) time.Duration {
	sec, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || sec <= now.Unix() {
		return 0
	}
	if sec-now.Unix() > 86400 {
		return 24 * time.Hour
	}
	return time.Unix(sec, 0).Sub(now)
}
