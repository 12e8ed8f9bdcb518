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
	dialer := guardedDialer(timeout, c.Webhook.AllowPrivateTargets, ErrPrivateTarget)
	transport := &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: 64,
		IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: timeout, Proxy: nil}
	return &webhookProvider{name: c.Name, endpoints: c.Webhook.Endpoints, now: time.Now,
		client: &http.Client{Transport: transport, Timeout: timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}, nil
}

// guardedDialer dials with timeout; unless allowPrivate, it refuses loopback,
// private, link-local and CGNAT addresses with refusal. The check is on the
// address actually dialled, so DNS cannot point a public name at an internal
// service. For targets that come from outside (customer webhooks, browsers'
// push endpoints).
func guardedDialer(timeout time.Duration, allowPrivate bool, refusal error) *net.Dialer {
	dialer := &net.Dialer{Timeout: timeout}
	if allowPrivate {
		return dialer
	}
	dialer.Control = func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return err
		}
		if privateAddr(ap.Addr()) {
			return fmt.Errorf("%w: %s", refusal, ap.Addr())
		}
		return nil
	}
	return dialer
}

func privateAddr(a netip.Addr) bool {
	a = a.Unmap()
	cgnat := netip.MustParsePrefix("100.64.0.0/10")
	return a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsUnspecified() || a.IsMulticast() || a.IsInterfaceLocalMulticast() || cgnat.Contains(a)
}

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
		if errors.Is(err, ErrPrivateTarget) {
			return "", Permanent(err)
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
