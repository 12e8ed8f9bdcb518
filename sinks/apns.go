package sinks

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// APNs (Apple Push Notification service) over its HTTP/2 provider API with
// token-based authentication: one POST /3/device/<token> per device, signed by
// an ES256 provider token (JWT) that is cached and re-signed by age.
//
// Apple: "Refresh your token no more than once every 20 minutes and no less
// than once every 60 minutes. APNs rejects any request whose token contains a
// timestamp that is more than one hour old", and re-signing more often answers
// 429 TooManyProviderTokenUpdates. tokenRefresh therefore defaults to 50 min
// (the margin left for clock skew) and must lie in [20 min, 55 min].

// APNs hosts (port 443) and limits.
const (
	APNsProductionURL  = "https://api.push.apple.com"
	APNsDevelopmentURL = "https://api.sandbox.push.apple.com"

	apnsMaxPayload      = 4096 // bytes, for an alert notification
	apnsMaxCollapseID   = 64   // bytes
	apnsDefaultRefresh  = 50 * time.Minute
	apnsMinTokenRefresh = 20 * time.Minute
	apnsMaxTokenRefresh = 55 * time.Minute
)

// APNsSettings is the `apns:` section of a provider of type apns.
type APNsSettings struct {
	KeyFile      string        `yaml:"keyFile"`      // .p8 file: PKCS#8 PEM of the P-256 signing key
	Key          string        `yaml:"key"`          // the same PEM inline (instead of keyFile)
	KeyID        string        `yaml:"keyId"`        // 10-character key id (JWT kid)
	TeamID       string        `yaml:"teamId"`       // 10-character team id (JWT iss)
	Topic        string        `yaml:"topic"`        // the app's bundle id (apns-topic)
	Environment  string        `yaml:"environment"`  // production (default) | development
	BaseURL      string        `yaml:"baseUrl"`      // overrides environment's host (tests)
	CAFile       string        `yaml:"caFile"`       // extra root CA PEM trusted besides the system's
	Timeout      time.Duration `yaml:"timeout"`      // per request, default 10s
	TokenRefresh time.Duration `yaml:"tokenRefresh"` // provider token age before re-signing, default 50m
}

type apnsProvider struct {
	name      string
	base      string
	topic     string
	keyID     string
	teamID    string
	key       *ecdsa.PrivateKey
	refresh   time.Duration
	client    *http.Client
	transport *http.Transport
	now       func() time.Time
	log       *slog.Logger

	mu       sync.Mutex
	token    string    // the cached provider token
	tokenIat time.Time // its iat
}

func init() {
	Register("apns", Type{Channels: []string{"push"}, New: newAPNsProvider})
}

func newAPNsProvider(s Spec) (Provider, error) {
	var c APNsSettings
	if err := s.Settings(&c); err != nil {
		return nil, err
	}
	key, err := c.signingKey()
	if err != nil {
		return nil, err
	}
	for _, f := range []struct{ name, v string }{{"keyId", c.KeyID}, {"teamId", c.TeamID}} {
		if !apnsTenChars(f.v) {
			return nil, fmt.Errorf("apns: %s must be the 10-character identifier from the Apple developer account, got %q", f.name, f.v)
		}
	}
	if strings.TrimSpace(c.Topic) == "" {
		return nil, errors.New("apns: topic (the app's bundle id) is required")
	}
	base := c.BaseURL
	switch c.Environment {
	case "", "production":
		if base == "" {
			base = APNsProductionURL
		}
	case "development", "sandbox":
		if base == "" {
			base = APNsDevelopmentURL
		}
	default:
		return nil, fmt.Errorf("apns: environment must be production or development, got %q", c.Environment)
	}
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("apns: baseUrl must be an https URL (APNs speaks HTTP/2 over TLS only), got %q", base)
	}
	refresh := c.TokenRefresh
	if refresh == 0 {
		refresh = apnsDefaultRefresh
	}
	if refresh < apnsMinTokenRefresh || refresh > apnsMaxTokenRefresh {
		return nil, fmt.Errorf("apns: tokenRefresh must be between %s and %s (Apple: refresh no more than once every 20 minutes, tokens older than an hour are rejected), got %s",
			apnsMinTokenRefresh, apnsMaxTokenRefresh, refresh)
	}
	if c.Timeout < 0 {
		return nil, fmt.Errorf("apns: timeout must not be negative, got %s", c.Timeout)
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("apns: caFile: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("apns: caFile %s holds no PEM certificate", c.CAFile)
		}
		tlsConf.RootCAs = pool
	}
	timeout := c.Timeout
	if timeout == 0 {
		timeout = defaultHTTPTimeout
	}
	// HTTP/2 through the standard library: ForceAttemptHTTP2 keeps h2 on with a
	// custom TLS configuration. Apple asks for long-lived connections.
	transport := &http.Transport{TLSClientConfig: tlsConf, ForceAttemptHTTP2: true, Proxy: http.ProxyFromEnvironment,
		TLSHandshakeTimeout: timeout, IdleConnTimeout: 10 * time.Minute, MaxIdleConnsPerHost: 4}
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &apnsProvider{name: s.Name, base: strings.TrimRight(base, "/"), topic: c.Topic, keyID: c.KeyID, teamID: c.TeamID,
		key: key, refresh: refresh, transport: transport, client: newHTTPClient(timeout, transport), now: s.Deps.now, log: log}, nil
}

// apnsTenChars: Apple's key and team ids are 10 ASCII letters and digits.
func apnsTenChars(s string) bool {
	if len(s) != 10 {
		return false
	}
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z') {
			return false
		}
	}
	return true
}

// signingKey loads the P-256 key from key or keyFile (exactly one).
func (c APNsSettings) signingKey() (*ecdsa.PrivateKey, error) {
	var raw []byte
	switch {
	case c.Key != "" && c.KeyFile != "":
		return nil, errors.New("apns: set key or keyFile, not both")
	case c.Key != "":
		raw = []byte(c.Key)
	case c.KeyFile != "":
		b, err := os.ReadFile(c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("apns: keyFile: %w", err)
		}
		raw = b
	default:
		return nil, errors.New("apns: keyFile or key (the .p8 signing key from the Apple developer account) is required")
	}
	return ParseAPNsKey(raw)
}

// ParseAPNsKey reads an APNs signing key: the PEM of a .p8 file (PKCS#8; SEC 1
// "EC PRIVATE KEY" is accepted too) holding an ECDSA P-256 key.
func ParseAPNsKey(pemBytes []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("apns: the signing key is not PEM (expected the contents of the .p8 file)")
	}
	var k any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("apns: the signing key PEM is a %q block, want PRIVATE KEY", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("apns: signing key: %w", err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, errors.New("apns: the signing key must be an ECDSA P-256 key (ES256)")
	}
	return ek, nil
}

// SignAPNsToken makes a provider token: a JWT {alg:ES256,kid}{iss,iat} whose
// signature is the raw 64-byte R||S of ECDSA P-256 over SHA-256.
func SignAPNsToken(key *ecdsa.PrivateKey, keyID, teamID string, iat time.Time) (string, error) {
	h, _ := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}{"ES256", keyID})
	c, _ := json.Marshal(struct {
		Iss string `json:"iss"`
		Iat int64  `json:"iat"`
	}{teamID, iat.Unix()})
	return signES256JWT(key, h, c)
}

func (p *apnsProvider) Name() string        { return p.name }
func (p *apnsProvider) Platforms() []string { return []string{"apns"} }

// Close drops the pooled HTTP/2 connections.
func (p *apnsProvider) Close() error {
	p.transport.CloseIdleConnections()
	return nil
}

// providerToken is the cached provider token, re-signed once it is
// tokenRefresh old (or its clock went back before its iat).
func (p *apnsProvider) providerToken() (string, error) {
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.token != "" && now.Sub(p.tokenIat) < p.refresh && !now.Before(p.tokenIat.Add(-time.Minute)) {
		return p.token, nil
	}
	tok, err := SignAPNsToken(p.key, p.keyID, p.teamID, now)
	if err != nil {
		return "", Permanent(fmt.Errorf("apns: signing the provider token: %w", err))
	}
	p.token, p.tokenIat = tok, now
	p.log.Debug("apns provider token signed", "provider", p.name, "kid", p.keyID)
	return tok, nil
}

// dropToken forgets tok if it is still the cached one, so the next call signs anew.
func (p *apnsProvider) dropToken(tok string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.token == tok {
		p.token = ""
	}
}

// apnsPayload builds the JSON body: aps (alert, badge, sound, mutable-content),
// notificationId, actionUrl/imageUrl when set, and the content's data keys.
func apnsPayload(n *schemas.Notification) ([]byte, error) {
	c := n.Content
	body := c.Body
	if body == "" {
		body = c.Text
	}
	if c.Title == "" && body == "" {
		return nil, Permanent(fmt.Errorf("apns: notification %s has neither title nor body to show", n.ID))
	}
	alert := map[string]string{}
	if c.Title != "" {
		alert["title"] = c.Title
	}
	if body != "" {
		alert["body"] = body
	}
	aps := map[string]any{"alert": alert}
	if c.Badge > 0 {
		aps["badge"] = c.Badge
	}
	if c.Sound != "" {
		aps["sound"] = c.Sound
	}
	if c.ImageURL != "" {
		aps["mutable-content"] = 1 // lets the app's service extension fetch the image
	}
	pl := map[string]any{}
	for k, v := range c.Data {
		pl[k] = v
	}
	if c.ActionURL != "" {
		pl["actionUrl"] = c.ActionURL
	}
	if c.ImageURL != "" {
		pl["imageUrl"] = c.ImageURL
	}
	pl["aps"] = aps // never overridden by data
	pl["notificationId"] = n.ID
	b, err := json.Marshal(pl)
	if err != nil {
		return nil, Permanent(fmt.Errorf("apns: payload: %w", err))
	}
	if len(b) > apnsMaxPayload {
		return nil, Permanent(fmt.Errorf("apns: payload of notification %s is %d bytes, APNs takes at most %d (PayloadTooLarge)", n.ID, len(b), apnsMaxPayload))
	}
	return b, nil
}

// apnsHeaders are the request headers shared by every device of n.
func apnsHeaders(n *schemas.Notification, topic string) (http.Header, error) {
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("apns-topic", topic)
	h.Set("apns-push-type", "alert")
	h.Set("apns-priority", apnsPriority(n))
	exp := int64(0)
	if n.ExpiresAt > 0 {
		exp = n.ExpiresAt / 1000
	}
	h.Set("apns-expiration", strconv.FormatInt(exp, 10))
	if ck := n.Content.CollapseKey; ck != "" {
		if len(ck) > apnsMaxCollapseID {
			return nil, Permanent(fmt.Errorf("apns: collapse key of notification %s is %d bytes, APNs takes at most %d (BadCollapseId)", n.ID, len(ck), apnsMaxCollapseID))
		}
		h.Set("apns-collapse-id", ck)
	}
	return h, nil
}

// apnsDeviceToken: a device token is hexadecimal.
func apnsDeviceToken(t string) bool {
	if t == "" {
		return false
	}
	for _, r := range t {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F') {
			return false
		}
	}
	return true
}

func (p *apnsProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	targets := pushTargets(n, "apns")
	if len(targets) == 0 {
		return "", Permanent(fmt.Errorf("apns: notification %s has no apns device target", n.ID))
	}
	body, err := apnsPayload(n)
	if err != nil {
		return "", err
	}
	hdr, err := apnsHeaders(n, p.topic)
	if err != nil {
		return "", err
	}
	// The payload, headers and credentials are the same for every device: a
	// failure that is not about one device (bad key, bad topic) is not tried
	// again on the others.
	var fatal error
	return SendEach(ctx, targets, func(ctx context.Context, t schemas.Target) (string, error) {
		if fatal != nil {
			return "", fatal
		}
		id, err := p.push(ctx, t, body, hdr)
		var ir *InvalidRecipientError
		if err != nil && IsPermanent(err) && !errors.As(err, &ir) {
			fatal = err
		}
		return id, err
	})
}

// push sends to one device; a stale provider token is re-signed once.
func (p *apnsProvider) push(ctx context.Context, t schemas.Target, body []byte, hdr http.Header) (string, error) {
	if !apnsDeviceToken(t.Token) {
		return "", InvalidRecipient(errors.New("apns: BadDeviceToken: the device token is not hexadecimal"), DeviceTarget(t))
	}
	for attempt := 0; ; attempt++ {
		tok, err := p.providerToken()
		if err != nil {
			return "", err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.base+"/3/device/"+t.Token, bytes.NewReader(body))
		if err != nil {
			return "", Permanent(fmt.Errorf("apns: request: %w", err))
		}
		req.Header = hdr.Clone()
		req.Header.Set("authorization", "bearer "+tok)
		resp, err := p.client.Do(req)
		if err != nil {
			return "", fmt.Errorf("apns: %w", err)
		}
		respBody := readBody(resp)
		id, err := classifyAPNs(resp.StatusCode, resp.Header, respBody, t, p.now())
		var ae *APNsError
		if errors.As(err, &ae) && ae.Reason == "ExpiredProviderToken" {
			// APNs finds the token stale (a clock jump, a suspended process):
			// sign anew and try once more at once.
			p.dropToken(tok)
			if attempt == 0 {
				continue
			}
		}
		return id, err
	}
}

// APNsError is an error answer of APNs: the HTTP status and the reason of
// its JSON body ({"reason":"…","timestamp":ms}).
type APNsError struct {
	Status int
	Reason string
}

func (e *APNsError) Error() string {
	msg := fmt.Sprintf("apns: HTTP %d %s", e.Status, e.Reason)
	if d, ok := apnsReasons[e.Reason]; ok {
		msg += ": " + d
	}
	return msg
}

// apnsReasons describe the documented reasons that need a hint.
var apnsReasons = map[string]string{
	"BadDeviceToken":              "the device token is bad or belongs to the other environment",
	"DeviceTokenNotForTopic":      "the device token does not match the topic",
	"Unregistered":                "the device token is no longer active for the topic",
	"ExpiredToken":                "the device token has expired",
	"BadTopic":                    "the apns-topic is invalid (check the topic setting)",
	"TopicDisallowed":             "pushing to this topic is not allowed",
	"MissingTopic":                "the apns-topic header is missing",
	"BadCollapseId":               "the collapse id is longer than 64 bytes",
	"BadExpirationDate":           "the apns-expiration is bad",
	"BadPriority":                 "the apns-priority is bad",
	"InvalidPushType":             "the apns-push-type is invalid",
	"PayloadEmpty":                "the payload is empty",
	"PayloadTooLarge":             "the payload exceeds 4096 bytes",
	"InvalidProviderToken":        "the provider token is not valid or its signature cannot be verified (check key, keyId and teamId)",
	"ExpiredProviderToken":        "the provider token is older than an hour (check the clock)",
	"MissingProviderToken":        "no provider token was sent",
	"Forbidden":                   "the action is not allowed",
	"TooManyProviderTokenUpdates": "the provider token was re-signed too often",
	"TooManyRequests":             "too many requests to the same device token",
	"InternalServerError":         "APNs internal error",
	"ServiceUnavailable":          "APNs is unavailable",
	"Shutdown":                    "the APNs server is shutting down",
}

// classifyAPNs maps an APNs answer to the outcome classes: 200 → the apns-id;
// Unregistered/ExpiredToken (410), BadDeviceToken and DeviceTokenNotForTopic
// → invalid recipient; 429 and 5xx → retry later (Retry-After when given);
// anything else (403 provider token errors, BadTopic, …) → permanent.
func classifyAPNs(status int, h http.Header, body []byte, t schemas.Target, now time.Time) (string, error) {
	if status == http.StatusOK {
		return h.Get("apns-id"), nil
	}
	var eb struct {
		Reason string `json:"reason"`
	}
	_ = json.Unmarshal(body, &eb)
	reason := eb.Reason
	if len(reason) > 64 || strings.ContainsFunc(reason, func(r rune) bool { return r < 0x20 || r > 0x7e }) {
		reason = "" // not one of APNs' reason strings
	}
	if reason == "" {
		reason = strings.ReplaceAll(http.StatusText(status), " ", "")
		if reason == "" {
			reason = "Unknown"
		}
	}
	err := &APNsError{Status: status, Reason: reason}
	switch {
	case status == http.StatusGone || // Unregistered, ExpiredToken
		status == http.StatusBadRequest && (reason == "BadDeviceToken" || reason == "DeviceTokenNotForTopic"):
		return "", InvalidRecipient(err, DeviceTarget(t))
	case status == http.StatusTooManyRequests || status >= 500 || status == http.StatusRequestTimeout:
		return "", RetryLater(err, ParseRetryAfter(h.Get("Retry-After"), now))
	default:
		return "", Permanent(err)
	}
}
