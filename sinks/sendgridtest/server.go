// Package sendgridtest runs a loopback stand-in for SendGrid's v3 Mail Send
// API: POST /v3/mail/send with `Authorization: Bearer <apiKey>` and the
// documented JSON body. It validates the body as SendGrid does (recipients,
// from, subject, content with text/plain first), answers 202 with an
// X-Message-Id, or SendGrid's error body {"errors":[{"message","field","help"}]},
// and keeps the messages it accepted.
package sendgridtest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"strconv"
	"strings"
	"time"

	"github.com/notifyd/notifyd/sinks/internal/fake"
)

// Message is one message the server accepted.
type Message struct {
	ID         string // the X-Message-Id answered
	To         []string
	From       string
	FromName   string
	ReplyTo    string
	Subject    string
	Text       string
	HTML       string
	Types      []string // the content types, in the order sent
	TemplateID string
	// TemplateData is the dynamic_template_data of the first personalization.
	TemplateData map[string]any
	Categories   []string
	CustomArgs   map[string]string
	At           time.Time
}

// Error is one entry of SendGrid's error body.
type Error struct {
	Message string  `json:"message"`
	Field   *string `json:"field"`
	Help    *string `json:"help"`
}

// Server is a running SendGrid stand-in.
type Server struct {
	*httptest.Server
	APIKey string
	// events signs Event Webhook posts (SendGrid keeps the private key; the
	// customer configures the public one).
	events *ecdsa.PrivateKey

	// Messages, Accepted, Requests, Rejected.
	fake.Recorder[Message]

	throttle    fake.Queue[throttle]
	unavailable fake.Queue[struct{}]
	fail        fake.Queue[failure]
	invalid     fake.Set
}

// Start runs a server on loopback accepting apiKey.
func Start(apiKey string) *Server {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	s := &Server{APIKey: apiKey, events: key}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// BaseURL is the value for the provider's baseUrl setting.
func (s *Server) BaseURL() string { return s.URL }

// Throttle answers the next n requests with 429 "too many requests" and
// SendGrid's rate limit headers, X-RateLimit-Reset wait from now; with
// retryAfter, a Retry-After header as well.
func (s *Server) Throttle(n int, wait time.Duration, retryAfter bool) {
	s.throttle.Set(n, throttle{wait, retryAfter})
}

type throttle struct {
	wait       time.Duration
	retryAfter bool
}

// Unavailable answers the next n requests with 503.
func (s *Server) Unavailable(n int) { s.unavailable.Set(n, struct{}{}) }

// FailNext answers the next n requests (n < 0: every request) with status
// and errs.
func (s *Server) FailNext(n, status int, errs ...Error) { s.fail.Script(n, failure{status, errs}) }

type failure struct {
	status int
	errs   []Error
}

// InvalidAddress makes the server refuse addr as SendGrid refuses an address
// it does not take: 400 "Does not contain a valid address." for the field
// personalizations.0.to.0.email.
func (s *Server) InvalidAddress(addr string) { s.invalid.Add(strings.ToLower(addr)) }

// FieldError is an error about field.
func FieldError(field, message string) Error { return Error{Message: message, Field: &field} }

func writeErrors(w http.ResponseWriter, status int, errs ...Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": errs})
}

type address struct {
	Email string `json:"email"`
	Name  string `json:"name"`
}

type request struct {
	Personalizations []struct {
		To                  []address      `json:"to"`
		Subject             string         `json:"subject"`
		DynamicTemplateData map[string]any `json:"dynamic_template_data"`
	} `json:"personalizations"`
	From    *address `json:"from"`
	ReplyTo *address `json:"reply_to"`
	Subject string   `json:"subject"`
	Content []struct {
		Type  string `json:"type"`
		Value string `json:"value"`
	} `json:"content"`
	TemplateID string            `json:"template_id"`
	Categories []string          `json:"categories"`
	CustomArgs map[string]string `json:"custom_args"`
}

func validEmail(a string) bool {
	p, err := mail.ParseAddress(a)
	return err == nil && p.Address == a
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.CountRequest()
	if r.URL.Path != "/v3/mail/send" {
		writeErrors(w, http.StatusNotFound, Error{Message: "Not Found"})
		return
	}
	if r.Method != http.MethodPost {
		writeErrors(w, http.StatusMethodNotAllowed, Error{Message: "Method Not Allowed"})
		return
	}
	auth := r.Header.Get("Authorization")
	if !strings.HasPrefix(auth, "Bearer ") || !hmac.Equal([]byte(strings.TrimPrefix(auth, "Bearer ")), []byte(s.APIKey)) {
		s.CountRejected()
		writeErrors(w, http.StatusUnauthorized, Error{Message: "The provided authorization grant is invalid, expired, or revoked"})
		return
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		writeErrors(w, http.StatusUnsupportedMediaType, Error{Message: "Content-Type should be application/json."})
		return
	}

	if t, ok := s.throttle.Next(); ok {
		secs := int64((t.wait + time.Second - 1) / time.Second)
		w.Header().Set("X-RateLimit-Limit", "600")
		w.Header().Set("X-RateLimit-Remaining", "0")
		w.Header().Set("X-RateLimit-Reset", strconv.FormatInt(time.Now().Unix()+secs, 10))
		if t.retryAfter {
			w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		}
		writeErrors(w, http.StatusTooManyRequests, Error{Message: "too many requests"})
		return
	}
	if _, ok := s.unavailable.Next(); ok {
		writeErrors(w, http.StatusServiceUnavailable, Error{Message: "Service Unavailable"})
		return
	}
	if f, ok := s.fail.Next(); ok {
		writeErrors(w, f.status, f.errs...)
		return
	}

	raw, err := io.ReadAll(io.LimitReader(r.Body, 30<<20))
	if err != nil {
		writeErrors(w, http.StatusBadRequest, Error{Message: "unreadable body"})
		return
	}
	var req request
	if err := json.Unmarshal(raw, &req); err != nil {
		writeErrors(w, http.StatusBadRequest, Error{Message: "Bad Request"})
		return
	}
	if errs := s.validate(&req); len(errs) > 0 {
		writeErrors(w, http.StatusBadRequest, errs...)
		return
	}
	if r.Context().Err() != nil {
		return
	}
	m := Message{ID: newID(), From: req.From.Email, FromName: req.From.Name, Subject: req.Subject,
		TemplateID: req.TemplateID, TemplateData: req.Personalizations[0].DynamicTemplateData,
		Categories: req.Categories, CustomArgs: req.CustomArgs, At: time.Now()}
	if req.ReplyTo != nil {
		m.ReplyTo = req.ReplyTo.Email
	}
	for _, p := range req.Personalizations {
		for _, to := range p.To {
			m.To = append(m.To, to.Email)
		}
	}
	for _, c := range req.Content {
		m.Types = append(m.Types, c.Type)
		switch c.Type {
		case "text/plain":
			m.Text = c.Value
		case "text/html":
			m.HTML = c.Value
		}
	}
	s.Accept(m)
	w.Header().Set("X-Message-Id", m.ID)
	w.WriteHeader(http.StatusAccepted)
}

// validate checks a Mail Send body as SendGrid documents it.
func (s *Server) validate(req *request) []Error {
	var errs []Error
	if len(req.Personalizations) == 0 {
		return []Error{FieldError("personalizations", "The personalizations field is required and must have at least one personalization.")}
	}
	for i, p := range req.Personalizations {
		if len(p.To) == 0 {
			errs = append(errs, FieldError(fmt.Sprintf("personalizations.%d.to", i), "The to array is required for all personalization objects, and must have at least one email object with a valid email address."))
		}
		for j, to := range p.To {
			if !validEmail(to.Email) || s.invalid.Has(strings.ToLower(to.Email)) {
				errs = append(errs, FieldError(fmt.Sprintf("personalizations.%d.to.%d.email", i, j), "Does not contain a valid address."))
			}
		}
		if req.Subject == "" && p.Subject == "" && req.TemplateID == "" {
			errs = append(errs, FieldError("subject", "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined."))
		}
	}
	if req.From == nil || req.From.Email == "" {
		errs = append(errs, FieldError("from.email", "The from object must be provided for every email send. It is an object that requires the email parameter, but may also contain a name parameter."))
	} else if !validEmail(req.From.Email) {
		errs = append(errs, FieldError("from.email", "The from email does not contain a valid address."))
	}
	if req.ReplyTo != nil && !validEmail(req.ReplyTo.Email) {
		errs = append(errs, FieldError("reply_to.email", "The reply_to email does not contain a valid address."))
	}
	if len(req.Content) == 0 && req.TemplateID == "" {
		errs = append(errs, FieldError("content", "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block. We typically suggest both text/plain and text/html blocks are included, but only one block is required."))
	}
	seen := map[string]bool{}
	for i, c := range req.Content {
		switch {
		case c.Value == "":
			errs = append(errs, FieldError(fmt.Sprintf("content.%d.value", i), "The content value must be a string at least one character in length."))
		case c.Type == "":
			errs = append(errs, FieldError(fmt.Sprintf("content.%d.type", i), "The content type must be provided for each content block."))
		case c.Type == "text/plain" && i != 0:
			errs = append(errs, FieldError(fmt.Sprintf("content.%d.type", i), "The text/plain content type must be first, followed by text/html, followed by any other content."))
		case seen[c.Type]:
			errs = append(errs, FieldError(fmt.Sprintf("content.%d.type", i), "Each content type may only be used once."))
		}
		seen[c.Type] = true
	}
	if req.TemplateID != "" && !strings.HasPrefix(req.TemplateID, "d-") {
		errs = append(errs, FieldError("template_id", "The template_id must be a valid GUID, you provided '"+req.TemplateID+"'."))
	}
	if len(req.Categories) > 10 {
		errs = append(errs, FieldError("categories", "Too many categories. You may only include up to 10 categories per request."))
	}
	return errs
}

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// EventWebhookPublicKey is the Signed Event Webhook's verification key as
// SendGrid's settings show it: base64 DER (SubjectPublicKeyInfo).
func (s *Server) EventWebhookPublicKey() string {
	der, err := x509.MarshalPKIXPublicKey(&s.events.PublicKey)
	if err != nil {
		panic(err)
	}
	return base64.StdEncoding.EncodeToString(der)
}

// Event is one Event Webhook event: event (delivered, bounce, open…),
// the message's custom args (notification_id), sg_message_id, timestamp.
type Event map[string]any

// EventsFor builds an event of type event for an accepted message, with its
// custom arguments, as SendGrid posts them.
func EventsFor(m Message, event string, extra map[string]any) Event {
	ev := Event{"email": m.To[0], "timestamp": time.Now().Unix(), "event": event,
		"sg_message_id": m.ID + ".filter0001.1.0", "sg_event_id": newID()}
	for k, v := range m.CustomArgs {
		ev[k] = v
	}
	for k, v := range extra {
		ev[k] = v
	}
	return ev
}

// PostEvents posts events to url as the Signed Event Webhook does: a JSON
// array, with the ECDSA (P-256, SHA-256, ASN.1 DER, base64) signature of the
// timestamp header followed by the body. It returns the answer's status.
func (s *Server) PostEvents(ctx context.Context, url string, events ...Event) (int, error) {
	body, err := json.Marshal(events)
	if err != nil {
		return 0, err
	}
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	return s.postEvents(ctx, url, body, ts, s.Sign(ts, body))
}

// Sign is the signature header SendGrid sends with body posted at ts.
func (s *Server) Sign(ts string, body []byte) string {
	digest := sha256.Sum256(append([]byte(ts), body...))
	sig, err := ecdsa.SignASN1(rand.Reader, s.events, digest[:])
	if err != nil {
		panic(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

// PostEventsSignedWith posts events with the given signature (a forgery).
func (s *Server) PostEventsSignedWith(ctx context.Context, url, signature string, events ...Event) (int, error) {
	body, err := json.Marshal(events)
	if err != nil {
		return 0, err
	}
	return s.postEvents(ctx, url, body, strconv.FormatInt(time.Now().Unix(), 10), signature)
}

func (s *Server) postEvents(ctx context.Context, url string, body []byte, ts, sig string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Twilio-Email-Event-Webhook-Signature", sig)
	req.Header.Set("X-Twilio-Email-Event-Webhook-Timestamp", ts)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}
