package sinks

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
)

// Webhook request headers. The signature is HMAC-SHA256 with the endpoint's
// secret over "<timestamp>.<body>", hex encoded, prefixed "v1=".
const (
	HeaderSignature = "X-Notifyd-Signature"
	HeaderTimestamp = "X-Notifyd-Timestamp"
	HeaderID        = "X-Notifyd-Notification-Id"
)

// Sign computes the signature header value for a body sent at ts (unix seconds).
func Sign(secret []byte, ts int64, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(strconv.FormatInt(ts, 10)))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "v1=" + hex.EncodeToString(mac.Sum(nil))
}

// webhookProvider POSTs JSON to a customer endpoint, signed with its secret.
type webhookProvider struct {
	name      string
	endpoints map[string]config.Endpoint
	client    *http.Client
	now       func() time.Time
	// guard names why an address may not be dialled ("" = it may); nil
	// allows every address (allowPrivateTargets). Tests narrow it to let one
	// loopback receiver through.
	guard func(netip.AddrPort) string
}

// ErrPrivateTarget is a webhook pointing at a loopback or private address.
var ErrPrivateTarget = errors.New("refusing private, loopback or link-local webhook target")

func init() {
	Register("webhook", Type{Channels: []string{"webhook"}, New: func(s Spec) (Provider, error) { return newWebhookProvider(s.Provider, s.Deps) }})
}

func newWebhookProvider(c config.Provider, _ Deps) (Provider, error) {
	timeout := c.Webhook.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	p := &webhookProvider{name: c.Name, endpoints: c.Webhook.Endpoints, now: time.Now}
	if !c.Webhook.AllowPrivateTargets {
		p.guard = internalTarget
	}
	dialer := guardDialer(timeout, p.refuses, ErrPrivateTarget)
	transport := &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: 64,
		IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: timeout, Proxy: nil}
	p.client = &http.Client{Transport: transport, Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return p, nil
}

func (p *webhookProvider) refuses(ap netip.AddrPort) string {
	if p.guard == nil {
		return ""
	}
	return p.guard(ap)
}

// guardedDialer dials with timeout; unless allowPrivate, it refuses loopback,
// private, link-local and CGNAT addresses with a *RefusedTargetError wrapping
// refusal. For targets that come from outside (customer webhooks, browsers'
// push endpoints).
func guardedDialer(timeout time.Duration, allowPrivate bool, refusal error) *net.Dialer {
	if allowPrivate {
		return &net.Dialer{Timeout: timeout}
	}
	return guardDialer(timeout, internalTarget, refusal)
}

// guardDialer dials with timeout and refuses every address refuses names a
// reason for, with a *RefusedTargetError wrapping refusal. The check is on the
// address actually dialled (after DNS, before connect), so DNS cannot point a
// public name at an internal service, and the refusal is classified where it
// happens: the sink fails the notification without counting it against the
// provider.
func guardDialer(timeout time.Duration, refuses func(netip.AddrPort) string, refusal error) *net.Dialer {
	return &net.Dialer{Timeout: timeout, Control: func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return err
		}
		if kind := refuses(ap); kind != "" {
			return &RefusedTargetError{Err: refusal, Addr: ap.Addr().Unmap(), Kind: kind}
		}
		return nil
	}}
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// internalTarget names the kind of an internal address, "" for a public one.
func internalTarget(ap netip.AddrPort) string {
	a := ap.Addr().Unmap()
	switch {
	case a.IsLoopback():
		return "loopback"
	case a.IsPrivate():
		return "private"
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast():
		return "link-local"
	case a.IsUnspecified():
		return "unspecified"
	case a.IsMulticast(), a.IsInterfaceLocalMulticast():
		return "multicast"
	case cgnat.Contains(a):
		return "CGNAT"
	}
	return ""
}

func privateAddr(a netip.Addr) bool { return internalTarget(netip.AddrPortFrom(a, 0)) != "" }

func (p *webhookProvider) Name() string { return p.name }

// webhookPayload is the body sent when the template gives none.
type webhookPayload struct {
	ID       string          `json:"id"`
	EventID  string          `json:"eventId"`
	UserID   string          `json:"userId"`
	Template string          `json:"template"`
	Category string          `json:"category,omitempty"`
	Priority string          `json:"priority,omitempty"`
	Content  schemas.Content `json:"content"`
	Data     json.RawMessage `json:"data,omitempty"`
}

func (p *webhookProvider) body(n *schemas.Notification) ([]byte, error) {
	if n.Content.Body != "" {
		if !json.Valid([]byte(n.Content.Body)) {
			return nil, Permanent(fmt.Errorf("webhook body rendered from template %s is not valid JSON", n.Template))
		}
		return []byte(n.Content.Body), nil
	}
	pl := webhookPayload{ID: n.ID, EventID: n.EventID, UserID: n.UserID, Template: n.Template,
		Category: n.Category, Priority: n.Priority, Content: n.Content}
	if n.Data != "" && json.Valid([]byte(n.Data)) {
		pl.Data = json.RawMessage(n.Data)
	}
	return json.Marshal(pl)
}

func (p *webhookProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	ep, ok := p.endpoints[n.Address]
	if !ok {
		return "", Permanent(fmt.Errorf("webhook endpoint %q is not configured for provider %s", n.Address, p.name))
	}
	body, err := p.body(n)
	if err != nil {
		return "", err
	}
	ts := p.now().Unix()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader(body))
	if err != nil {
		return "", Permanent(fmt.Errorf("webhook %s: %w", n.Address, err))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "notifyd-webhook/1")
	req.Header.Set(HeaderID, n.ID)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	req.Header.Set(HeaderSignature, Sign([]byte(ep.Secret), ts, body))
	resp, err := p.client.Do(req)
	if err != nil {
		var refused *RefusedTargetError
		if errors.As(err, &refused) {
			// The notification's failure, not the provider's (and without
			// the URL, which may carry a token).
			return "", fmt.Errorf("webhook %s: %w; allowPrivateTargets is off", n.Address, refused)
		}
		return "", fmt.Errorf("webhook %s: %w", n.Address, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return resp.Header.Get("X-Request-Id"), nil
	case resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return "", fmt.Errorf("webhook %s: HTTP %d", n.Address, resp.StatusCode)
	default:
		return "", Permanent(fmt.Errorf("webhook %s: HTTP %d", n.Address, resp.StatusCode))
	}
}
