// Package sinks delivers routed notifications: one consumer group per channel,
// a failover chain of providers, retries, a delivery ledger, and the dead-letter
// topic. One file per provider; each registers its type with Register in an
// init function, so adding a provider touches no other file.
package sinks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"gopkg.in/yaml.v3"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/tracking"
)

// Provider hands a notification to one external service.
//
// Send answers with the provider's message id once the provider accepted the
// message, or an error classified by how it was made:
//   - RetryLater(err, after): a retry may succeed (rate limited, 5xx, timeout);
//     after is the provider's Retry-After, 0 if it gave none. A plain error is
//     treated the same way with no hint.
//   - Permanent(err): the same request will fail again (bad credentials,
//     malformed request).
//   - InvalidRecipient(err, targets...): the address, token, subscription or chat
//     no longer exists; the targets are removed from the user's profile. With a
//     message id as well, the provider delivered to the notification's other
//     targets (a push to several devices, one of them gone).
//   - Unsubscribed(err, target): the recipient told the provider to stop (SMS
//     STOP); the user's profile is opted out of the channel.
type Provider interface {
	Name() string
	Send(ctx context.Context, n *schemas.Notification) (messageID string, err error)
}

// PlatformProvider is a provider that serves some of a notification's targets
// (push: fcm or apns; webpush). A channel's chain sends each target through
// the first provider serving its platform that accepts it.
type PlatformProvider interface {
	Provider
	Platforms() []string
}

// Closer is a provider holding resources (connections) to release on shutdown.
type Closer interface{ Close() error }

// Deps are what providers may need from the process.
type Deps struct {
	Log *slog.Logger
	Now func() time.Time // nil = time.Now
	// Producer writes to notifyd's own topics (goka-compatible partitioning);
	// the inbox provider delivers through it.
	Producer *kgo.Client
	// Keys seals what a provider writes to notifyd's own topics (the inbox's
	// messages) for the notification's user.
	Keys processors.Sealer // Tracker signs the email's tracking links and unsubscribe URL; nil: no
	// tracking.
	Tracker *tracking.Signer
}

// Spec is what a provider type builds a provider from.
type Spec struct {
	config.Provider
	Channel string
	Deps
}

// Settings decodes the provider's own configuration section, the key named
// after its type (`twilio:` for type twilio), into v; an unknown key is an error.
func (s Spec) Settings(v any) error {
	node, ok := s.Provider.Settings[s.Type]
	if !ok {
		return fmt.Errorf("the %s section is missing", s.Type)
	}
	raw, err := yaml.Marshal(&node)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", s.Type, err)
	}
	return nil
}

// Now is the clock of the process.
func (d Deps) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

// Type is a kind of provider.
type Type struct {
	// Channels the type can serve; empty = any.
	Channels []string
	New      func(Spec) (Provider, error)
}

var providerTypes = map[string]Type{}

// Register adds a provider type; provider files call it from init.
func Register(name string, t Type) {
	if _, dup := providerTypes[name]; dup {
		panic("sinks: provider type registered twice: " + name)
	}
	providerTypes[name] = t
}

// ProviderTypes lists the registered provider types, sorted.
func ProviderTypes() []string {
	out := make([]string, 0, len(providerTypes))
	for name := range providerTypes {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// BuildProviders builds a channel's failover chain from configuration.
func BuildProviders(channel string, cfgs []config.Provider, deps Deps) ([]Provider, error) {
	var out []Provider
	for _, c := range cfgs {
		t, ok := providerTypes[c.Type]
		if !ok {
			return nil, fmt.Errorf("channel %s provider %s: unknown provider type %q (known: %s)", channel, c.Name, c.Type,
				strings.Join(ProviderTypes(), ", "))
		}
		if len(t.Channels) > 0 && !slices.Contains(t.Channels, channel) {
			return nil, fmt.Errorf("channel %s provider %s: type %s serves %s, not %s", channel, c.Name, c.Type,
				strings.Join(t.Channels, ", "), channel)
		}
		p, err := t.New(Spec{Provider: c, Channel: channel, Deps: deps})
		if err != nil {
			return nil, fmt.Errorf("channel %s provider %s: %w", channel, c.Name, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// Check builds every configured provider once, so a bad provider section
// fails at startup with its path, not at the first send.
func Check(cfg config.Config) error {
	for ch, ps := range cfg.Channels {
		built, err := BuildProviders(ch, ps, Deps{Log: slog.New(slog.DiscardHandler)})
		for _, p := range built {
			if c, ok := p.(Closer); ok {
				_ = c.Close()
			}
		}
		if err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	return nil
}

// ---- outcome classes

// PermanentError is a failure that retrying the same provider cannot fix.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent marks err as not worth retrying on the same provider.
func Permanent(err error) error { return &PermanentError{Err: err} }

// IsPermanent tells whether err is marked permanent (an invalid recipient and
// a refused target are).
func IsPermanent(err error) bool {
	var p *PermanentError
	var ir *InvalidRecipientError
	return errors.As(err, &p) || errors.As(err, &ir) || IsRefusedTarget(err)
}

// RefusedTargetError is a target notifyd will not reach: the address a
// provider was about to dial is loopback, private, link-local, CGNAT… and the
// provider does not allow internal targets (the SSRF guard). It is the
// notification's failure, not the provider's: the notification fails at once,
// no other provider is tried, nothing is retried, and no circuit breaker
// counts it (one hostile endpoint must not delay everyone's deliveries).
type RefusedTargetError struct {
	Err  error      // the provider's refusal (ErrPrivateTarget, …)
	Addr netip.Addr // the address refused
	Kind string     // what it is: loopback, private, link-local, …
}

func (e *RefusedTargetError) Error() string {
	return fmt.Sprintf("%v %s (%s address)", e.Err, e.Addr, e.Kind)
}
func (e *RefusedTargetError) Unwrap() error { return e.Err }

// IsRefusedTarget tells whether err is a target refused by the SSRF guard.
func IsRefusedTarget(err error) bool {
	var r *RefusedTargetError
	return errors.As(err, &r)
}

// RetryLaterError is a transient failure with the provider's Retry-After.
type RetryLaterError struct {
	Err   error
	After time.Duration
}

func (e *RetryLaterError) Error() string {
	if e.After > 0 {
		return fmt.Sprintf("%v (retry after %s)", e.Err, e.After)
	}
	return e.Err.Error()
}
func (e *RetryLaterError) Unwrap() error { return e.Err }

// RetryLater marks err as transient; after is the provider's hint, 0 for none.
func RetryLater(err error, after time.Duration) error {
	return &RetryLaterError{Err: err, After: after}
}

// retryAfter is the Retry-After hint carried by err, or 0.
func retryAfter(err error) time.Duration {
	var r *RetryLaterError
	if errors.As(err, &r) {
		return r.After
	}
	return 0
}

// InvalidRecipientError names targets the provider says do not exist (any
// more): an unregistered device token, an expired web push subscription, a
// number that is not a mobile, a chat the bot was removed from.
type InvalidRecipientError struct {
	Err     error
	Targets []schemas.InvalidTarget
	// Unsubscribe: the recipient opted out at the provider (STOP).
	Unsubscribe bool
}

func (e *InvalidRecipientError) Error() string { return e.Err.Error() }
func (e *InvalidRecipientError) Unwrap() error { return e.Err }

// InvalidRecipient marks err as an invalid recipient whose targets are to be
// removed from the profile.
func InvalidRecipient(err error, targets ...schemas.InvalidTarget) error {
	return &InvalidRecipientError{Err: err, Targets: targets}
}

// Unsubscribed marks err as the recipient's opt-out at the provider.
func Unsubscribed(err error, target schemas.InvalidTarget) error {
	return &InvalidRecipientError{Err: err, Targets: []schemas.InvalidTarget{target}, Unsubscribe: true}
}

// AddressTarget is the invalid target of an address-based channel (sms, chat):
// the notification's address on its channel.
func AddressTarget(n *schemas.Notification) schemas.InvalidTarget {
	return schemas.InvalidTarget{Platform: n.Channel, Token: n.Address}
}

// DeviceTarget is the invalid target of a device or subscription.
func DeviceTarget(t schemas.Target) schemas.InvalidTarget {
	return schemas.InvalidTarget{Platform: t.Platform, Token: t.Token, Endpoint: t.Endpoint}
}

// ParseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date.
func ParseRetryAfter(h string, now time.Time) time.Duration {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0
	}
	if s, err := strconv.Atoi(h); err == nil && s >= 0 {
		return time.Duration(min(s, 86400)) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil && t.After(now) {
		return min(t.Sub(now), 24*time.Hour)
	}
	return 0
}

// HTTPStatus classifies a provider's HTTP answer that carries no more precise
// error: 2xx nil; 408, 425, 429 and 5xx retry later (honouring Retry-After);
// everything else permanent.
func HTTPStatus(resp *http.Response, now time.Time, what string) error {
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		return nil
	case c == http.StatusRequestTimeout || c == http.StatusTooEarly || c == http.StatusTooManyRequests || c >= 500:
		return RetryLater(fmt.Errorf("%s: HTTP %d", what, c), ParseRetryAfter(resp.Header.Get("Retry-After"), now))
	default:
		return Permanent(fmt.Errorf("%s: HTTP %d", what, c))
	}
}

// SendEach sends to every target with send and folds the answers: the ids of
// the accepted targets, joined with ","; the invalid ones to remove (with the
// ids, when some were accepted); a transient failure when none was accepted and
// one may succeed later; otherwise the first permanent failure.
func SendEach(ctx context.Context, targets []schemas.Target, send func(context.Context, schemas.Target) (string, error)) (string, error) {
	if len(targets) == 0 {
		return "", Permanent(errors.New("no target to send to"))
	}
	var ids []string
	var invalid []schemas.InvalidTarget
	var invalidErr, transient, permanent error
	for _, t := range targets {
		id, err := send(ctx, t)
		var ir *InvalidRecipientError
		switch {
		case err == nil:
			ids = append(ids, id)
		case errors.As(err, &ir):
			invalid = append(invalid, ir.Targets...)
			if invalidErr == nil {
				invalidErr = err
			}
		case IsPermanent(err):
			if permanent == nil {
				permanent = err
			}
		default:
			if transient == nil {
				transient = err
			}
		}
	}
	switch {
	case len(ids) > 0 && len(invalid) > 0:
		return strings.Join(ids, ","), &InvalidRecipientError{Err: invalidErr, Targets: invalid}
	case len(ids) > 0:
		return strings.Join(ids, ","), nil
	case transient != nil:
		return "", transient
	case len(invalid) > 0 && permanent == nil:
		return "", &InvalidRecipientError{Err: invalidErr, Targets: invalid}
	case permanent != nil:
		return "", permanent
	}
	return "", Permanent(errors.New("no target accepted"))
}

// servesTargets narrows n to the targets p serves. ok is false when n has
// targets and p serves none of them.
func servesTargets(p Provider, n *schemas.Notification, remaining []schemas.Target) (*schemas.Notification, bool) {
	if len(n.Targets) == 0 {
		return n, true
	}
	mine := remaining
	if pp, ok := p.(PlatformProvider); ok {
		platforms := pp.Platforms()
		mine = nil
		for _, t := range remaining {
			if slices.Contains(platforms, t.Platform) {
				mine = append(mine, t)
			}
		}
	}
	if len(mine) == 0 {
		return nil, false
	}
	sub := *n
	sub.Targets = mine
	return &sub, true
}

// sendTimeout bounds a provider's HTTP calls when its section sets none.
const defaultHTTPTimeout = 10 * time.Second

// newHTTPClient is the client of an HTTP provider: bounded in time, no
// redirects followed, TLS settings from its section.
func newHTTPClient(timeout time.Duration, transport http.RoundTripper) *http.Client {
	if timeout <= 0 {
		timeout = defaultHTTPTimeout
	}
	return &http.Client{Timeout: timeout, Transport: transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// maxResponseBytes bounds what is read of a provider's answer.
const maxResponseBytes = 64 << 10

// readBody reads at most maxResponseBytes of resp's body and closes it.
func readBody(resp *http.Response) []byte {
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBytes))
	return b
}

// ---- receipts

// Receipt is what a provider's callback says about one message it was handed.
// Reason and ProviderMessageID are the provider's free text, as it wrote them:
// the API records them through processors.Redact, like every reason.
type Receipt struct {
	NotificationID    string
	ProviderMessageID string
	// Status is delivered, failed or unsubscribed; "" = nothing to record (an
	// intermediate state such as queued or sending).
	Status string
	Reason string
	At     time.Time
}

// ReceiptProvider is a provider whose service calls back with delivery
// receipts, at POST /v1/receipts/{provider name}. Receipts checks the
// callback's signature the provider's way (ErrBadSignature when it does not
// verify) and reads it.
type ReceiptProvider interface {
	Provider
	Receipts(r *http.Request, body []byte) ([]Receipt, error)
}

// ErrBadSignature is a callback whose signature does not verify.
var ErrBadSignature = errors.New("the callback's signature does not verify")

// ---- settings checks shared by the provider types

// requireSettings names, in one error, the required settings that are empty;
// kv are pairs of key and value: requireSettings("apiKey", s.APIKey, …).
func requireSettings(kv ...string) error {
	var missing []string
	for i := 0; i+1 < len(kv); i += 2 {
		if strings.TrimSpace(kv[i+1]) == "" {
			missing = append(missing, kv[i])
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	return nil
}

// checkHTTPURL accepts "" or an absolute http(s) URL with a host.
func checkHTTPURL(key, v string) error {
	if v == "" {
		return nil
	}
	if u, err := url.Parse(v); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("%s %q is not an http(s) URL", key, v)
	}
	return nil
}

// notNegative refuses negative durations and limits; names lists them for
// the error ("timeout, perNumberPerMinute and perNumberBurst").
func notNegative(names string, vs ...float64) error {
	for _, v := range vs {
		if v < 0 {
			return fmt.Errorf("%s must not be negative", names)
		}
	}
	return nil
}

// ReceiptHandshaker is a receipt provider whose service first checks the
// callback URL with a GET (WhatsApp's hub.challenge): Handshake answers the
// body to send back, or ErrBadSignature when the request is not the provider's.
type ReceiptHandshaker interface {
	ReceiptProvider
	Handshake(r *http.Request) (string, error)
}

// MovedError accompanies an accepted message whose address moved (a Telegram
// group upgraded to a supergroup answers with its new chat id): the provider
// sent to the new address, and the profile's address is rewritten. Send
// returns it with the message id.
type MovedError struct {
	Platform, From, To string
}

func (e *MovedError) Error() string {
	return fmt.Sprintf("%s address moved to a new one", e.Platform)
}

// Moved is the error to return, with the message id, for a moved address.
func Moved(platform, from, to string) error {
	return &MovedError{Platform: platform, From: from, To: to}
}
