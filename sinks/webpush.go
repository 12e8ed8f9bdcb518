package sinks

// Web Push provider: RFC 8030 (the protocol), RFC 8291 (aes128gcm message
// encryption) and RFC 8292 (VAPID), with the standard library only.
//
// webpush-go v1.4.0 was considered and not used: it prefixes "mailto:" to a
// subject that already has it, ignores its VapidExpiration option, always pads
// the message to 4 KiB and uses the deprecated crypto/elliptic arithmetic.

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/notifyd/notifyd/schemas"
)

// webpushPlatform is the Target.Platform the provider serves.
const webpushPlatform = "webpush"

// webpushSettings is the `webpush:` section of a provider of type webpush.
type webpushSettings struct {
	// VAPIDPublicKey is the application server key the browsers subscribed
	// with: the uncompressed P-256 point, base64url (as web-push generate-vapid-keys
	// prints it). Optional: derived from the private key when empty.
	VAPIDPublicKey string `yaml:"vapidPublicKey"`
	// VAPIDPrivateKey is the 32-byte P-256 private scalar, base64url.
	VAPIDPrivateKey string `yaml:"vapidPrivateKey"`
	// Subject is the contact of the application server: mailto: or https: URL.
	Subject string `yaml:"subject"`
	// TTL is how long the push service keeps a message for an offline browser
	// when the notification has no expiry (default 24h).
	TTL time.Duration `yaml:"ttl"`
	// Timeout bounds one request to the push service (default 10s).
	Timeout time.Duration `yaml:"timeout"`
	// AllowPrivateEndpoints lets endpoints resolve to loopback, private or
	// link-local addresses and use plain http (tests, on-premise push services).
	AllowPrivateEndpoints bool `yaml:"allowPrivateEndpoints"`
	// MaxPayload bounds the encrypted request body in bytes (default 4096, what
	// every push service accepts).
	MaxPayload int `yaml:"maxPayload"`
}

const (
	webpushDefaultTTL        = 24 * time.Hour
	webpushDefaultMaxPayload = 4096
	// webpushHeaderLen is the aes128gcm header: salt(16) rs(4) idlen(1) key(65).
	webpushHeaderLen = 16 + 4 + 1 + 65
	// webpushOverhead is the header plus the padding delimiter and the GCM tag.
	webpushOverhead = webpushHeaderLen + 1 + 16
	// webpushRecordSize is the rs of the single record (RFC 8291 §4: larger
	// than the plaintext, its delimiter and the tag).
	webpushRecordSize = 4096
	// webpushJWTLifetime is the exp of the VAPID token (RFC 8292: ≤ 24 h).
	webpushJWTLifetime = 12 * time.Hour
)

// errWebpushPrivateEndpoint is an endpoint resolving to an internal address.
var errWebpushPrivateEndpoint = errors.New("refusing private, loopback or link-local web push endpoint")

type webpushProvider struct {
	name         string
	key          *ecdsa.PrivateKey
	publicKey    string // base64url, unpadded, of the uncompressed point
	subject      string
	ttl          time.Duration
	maxPayload   int
	allowPrivate bool
	client       *http.Client
	now          func() time.Time
}

func init() {
	Register("webpush", Type{Channels: []string{"webpush"}, New: newWebpushProvider})
}

func newWebpushProvider(s Spec) (Provider, error) {
	var c webpushSettings
	if err := s.Settings(&c); err != nil {
		return nil, err
	}
	p := &webpushProvider{name: s.Name, subject: strings.TrimSpace(c.Subject), ttl: c.TTL, maxPayload: c.MaxPayload,
		allowPrivate: c.AllowPrivateEndpoints, now: s.Deps.now}
	if c.VAPIDPrivateKey == "" {
		return nil, errors.New("webpush: vapidPrivateKey is required (base64url P-256 private key, e.g. from `web-push generate-vapid-keys`)")
	}
	raw, err := webpushDecodeKey(c.VAPIDPrivateKey)
	if err != nil || len(raw) != 32 {
		return nil, errors.New("webpush: vapidPrivateKey is not a base64url 32-byte P-256 private key")
	}
	p.key, err = ecdsa.ParseRawPrivateKey(elliptic.P256(), raw)
	if err != nil {
		return nil, fmt.Errorf("webpush: vapidPrivateKey: %w", err)
	}
	pub, err := p.key.PublicKey.Bytes()
	if err != nil {
		return nil, fmt.Errorf("webpush: vapidPrivateKey: %w", err)
	}
	if c.VAPIDPublicKey != "" {
		given, err := webpushDecodeKey(c.VAPIDPublicKey)
		if err != nil || len(given) != 65 {
			return nil, errors.New("webpush: vapidPublicKey is not a base64url 65-byte uncompressed P-256 public key")
		}
		if !bytes.Equal(given, pub) {
			return nil, errors.New("webpush: vapidPublicKey is not the public key of vapidPrivateKey")
		}
	}
	p.publicKey = base64.RawURLEncoding.EncodeToString(pub)
	if err := webpushCheckSubject(p.subject); err != nil {
		return nil, err
	}
	if err := notNegative("ttl", float64(p.ttl)); err != nil {
		return nil, fmt.Errorf("webpush: %w", err)
	}
	if p.ttl == 0 {
		p.ttl = webpushDefaultTTL
	}
	if p.maxPayload == 0 {
		p.maxPayload = webpushDefaultMaxPayload
	}
	if p.maxPayload <= webpushOverhead {
		return nil, fmt.Errorf("webpush: maxPayload %d leaves no room for a message (the encryption takes %d bytes)", p.maxPayload, webpushOverhead)
	}
	if err := notNegative("timeout", float64(c.Timeout)); err != nil {
		return nil, fmt.Errorf("webpush: %w", err)
	}
	timeout := c.Timeout
	if timeout == 0 {
		timeout = defaultHTTPTimeout
	}
	// An endpoint comes from a browser: a public name resolving to an internal
	// service must not be reachable.
	dialer := guardedDialer(timeout, p.allowPrivate, errWebpushPrivateEndpoint)
	p.client = newHTTPClient(timeout, &http.Transport{DialContext: dialer.DialContext, ForceAttemptHTTP2: true,
		MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: timeout, Proxy: nil})
	return p, nil
}

// webpushCheckSubject accepts the VAPID contact forms of RFC 8292 §2.1.
func webpushCheckSubject(s string) error {
	if s == "" {
		return errors.New("webpush: subject is required (mailto:ops@example.com or an https: URL the push service can contact you at)")
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
	case u.Scheme == "mailto" && strings.Contains(u.Opaque, "@"):
		return nil
	case u.Scheme == "https" && u.Host != "":
		return nil
	}
	return fmt.Errorf("webpush: subject %q must be a mailto: address or an https: URL", s)
}

// webpushDecodeKey decodes a key as browsers and tools write them: base64url,
// padded or not; standard base64 is accepted too.
func webpushDecodeKey(s string) ([]byte, error) {
	s = strings.TrimRight(strings.TrimSpace(s), "=")
	if b, err := base64.RawURLEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.RawStdEncoding.DecodeString(s)
}

func (p *webpushProvider) Name() string        { return p.name }
func (p *webpushProvider) Platforms() []string { return []string{webpushPlatform} }

// webpushMessage is the plaintext of every push message: what the service
// worker's push event reads with event.data.json().
type webpushMessage struct {
	ID        string            `json:"id"`
	Title     string            `json:"title,omitempty"`
	Body      string            `json:"body,omitempty"`
	ActionURL string            `json:"actionUrl,omitempty"`
	ImageURL  string            `json:"imageUrl,omitempty"`
	Data      map[string]string `json:"data,omitempty"`
}

// webpushPlaintext is the JSON message of n.
func webpushPlaintext(n *schemas.Notification) ([]byte, error) {
	return json.Marshal(webpushMessage{ID: n.ID, Title: n.Content.Title, Body: n.Content.Body,
		ActionURL: n.Content.ActionURL, ImageURL: n.Content.ImageURL, Data: n.Content.Data})
}

// webpushTopicRe is a Topic header value as RFC 8030 §5.4 allows it.
var webpushTopicRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// webpushTopic is the Topic header of a collapse key: the key itself when it is
// at most 32 base64url characters, else 32 characters of its SHA-256.
func webpushTopic(collapseKey string) string {
	if collapseKey == "" || webpushTopicRe.MatchString(collapseKey) {
		return collapseKey
	}
	sum := sha256.Sum256([]byte(collapseKey))
	return base64.RawURLEncoding.EncodeToString(sum[:24])
}

// webpushUrgency is the Urgency header of a notification priority.
func webpushUrgency(priority string) string {
	switch priority {
	case "high", "normal", "low":
		return priority
	}
	return ""
}

// webpushHeaders are the per-notification request headers.
type webpushHeaders struct {
	ttl     int64
	urgency string
	topic   string
}

func (p *webpushProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	targets := pushTargets(n, webpushPlatform)
	if len(targets) == 0 {
		return "", Permanent(errors.New("webpush: the notification has no webpush subscription to send to"))
	}
	now := p.now()
	h := webpushHeaders{ttl: int64(p.ttl / time.Second), urgency: webpushUrgency(n.Priority), topic: webpushTopic(n.Content.CollapseKey)}
	if n.ExpiresAt > 0 {
		left := n.ExpiresAt - now.UnixMilli()
		if left <= 0 {
			return "", Permanent(fmt.Errorf("webpush: the notification expired at %s before it was sent",
				time.UnixMilli(n.ExpiresAt).UTC().Format(time.RFC3339)))
		}
		h.ttl = left / 1000
	}
	plaintext, err := webpushPlaintext(n)
	if err != nil {
		return "", Permanent(fmt.Errorf("webpush: encoding the message: %w", err))
	}
	if size := len(plaintext) + webpushOverhead; size > p.maxPayload {
		return "", Permanent(fmt.Errorf("webpush: payload too large: %d bytes encrypted, maxPayload is %d", size, p.maxPayload))
	}
	return SendEach(ctx, targets, func(ctx context.Context, t schemas.Target) (string, error) {
		return p.sendOne(ctx, n.ID, t, plaintext, h, now)
	})
}

func (p *webpushProvider) sendOne(ctx context.Context, id string, t schemas.Target, plaintext []byte, h webpushHeaders, now time.Time) (string, error) {
	u, err := url.Parse(t.Endpoint)
	if err != nil || u.Host == "" || u.User != nil || (u.Scheme != "https" && u.Scheme != "http") {
		return "", InvalidRecipient(errors.New("webpush: the subscription's endpoint is not an http(s) URL"), DeviceTarget(t))
	}
	if u.Scheme != "https" && !p.allowPrivate {
		return "", Permanent(fmt.Errorf("webpush: refusing the plain http endpoint of host %s (allowPrivateEndpoints is off)", u.Hostname()))
	}
	uaPublic, err1 := webpushDecodeKey(t.P256dh)
	auth, err2 := webpushDecodeKey(t.Auth)
	if err1 != nil || err2 != nil || len(auth) != 16 {
		return "", InvalidRecipient(errors.New("webpush: the subscription's p256dh or auth key is malformed"), DeviceTarget(t))
	}
	uaKey, err := ecdh.P256().NewPublicKey(uaPublic)
	if err != nil {
		return "", InvalidRecipient(errors.New("webpush: the subscription's p256dh is not a P-256 public key"), DeviceTarget(t))
	}
	body, err := webpushEncrypt(rand.Reader, plaintext, uaKey, auth, nil, nil)
	if err != nil {
		return "", Permanent(fmt.Errorf("webpush: encrypting: %w", err))
	}
	origin := u.Scheme + "://" + u.Host
	jwt, err := p.vapidToken(origin, now)
	if err != nil {
		return "", Permanent(fmt.Errorf("webpush: signing the VAPID token: %w", err))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.Endpoint, bytes.NewReader(body))
	if err != nil {
		return "", InvalidRecipient(fmt.Errorf("webpush: the subscription's endpoint is unusable: %v", err), DeviceTarget(t))
	}
	req.Header.Set("TTL", strconv.FormatInt(h.ttl, 10))
	if h.urgency != "" {
		req.Header.Set("Urgency", h.urgency)
	}
	if h.topic != "" {
		req.Header.Set("Topic", h.topic)
	}
	req.Header.Set("Content-Encoding", "aes128gcm")
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "vapid t="+jwt+", k="+p.publicKey)
	req.Header.Set("User-Agent", "notifyd-webpush/1")
	resp, err := p.client.Do(req)
	if err != nil {
		// A refused endpoint is this subscription's permanent failure,
		// typed so that no breaker counts it as the provider's (an outage)
		// and no other provider is tried.
		var refused *RefusedTargetError
		if errors.As(err, &refused) {
			return "", fmt.Errorf("webpush: %w", refused)
		}
		if errors.Is(err, errWebpushPrivateEndpoint) {
			return "", Permanent(fmt.Errorf("webpush: %w", errWebpushPrivateEndpoint))
		}
		return "", fmt.Errorf("webpush: POST to %s: %w", u.Host, webpushRedactURL(err))
	}
	rb := readBody(resp)
	return classifyWebpush(resp.StatusCode, resp.Header, rb, p.now(), t, id)
}

// webpushRedactURL drops the URL from a client error: a push endpoint is a
// capability (anyone knowing it can push to the browser).
func webpushRedactURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// classifyWebpush reads a push service's answer to a message for target t.
// fallbackID is the message id when the service gives no Location.
func classifyWebpush(status int, h http.Header, body []byte, now time.Time, t schemas.Target, fallbackID string) (string, error) {
	reason := webpushReason(body)
	what := fmt.Sprintf("webpush: push service answered HTTP %d%s", status, reason)
	switch {
	case status >= 200 && status < 300:
		if loc := strings.TrimSpace(h.Get("Location")); loc != "" && len(loc) <= 2048 {
			return loc, nil
		}
		return fallbackID, nil
	case status == http.StatusNotFound || status == http.StatusGone:
		return "", InvalidRecipient(fmt.Errorf("%s: the subscription expired or was unsubscribed", what), DeviceTarget(t))
	case status == http.StatusTooManyRequests || status >= 500 || status == http.StatusRequestTimeout || status == http.StatusTooEarly:
		return "", RetryLater(errors.New(what), ParseRetryAfter(h.Get("Retry-After"), now))
	case status == http.StatusRequestEntityTooLarge:
		return "", Permanent(fmt.Errorf("%s: payload too large", what))
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return "", Permanent(fmt.Errorf("%s: VAPID authorization rejected (check vapidPrivateKey/vapidPublicKey are the key pair the browsers subscribed with, and subject)", what))
	case status == http.StatusBadRequest:
		return "", Permanent(fmt.Errorf("%s: request refused as malformed (VAPID token, TTL, Topic or encryption headers)", what))
	default:
		return "", Permanent(errors.New(what))
	}
}

// webpushReason is the push service's explanation of an error, for the reason
// of a failure: autopush's JSON {"errno","error","message"} or the first line
// of a text body (FCM), cleaned and bounded. "" when there is none.
func webpushReason(body []byte) string {
	var j struct {
		Errno   json.Number `json:"errno"`
		Error   any         `json:"error"`
		Message string      `json:"message"`
		Reason  string      `json:"reason"`
	}
	var parts []string
	if json.Unmarshal(body, &j) == nil {
		if j.Errno != "" {
			parts = append(parts, "errno "+j.Errno.String())
		}
		if e, ok := j.Error.(string); ok && e != "" {
			parts = append(parts, e)
		}
		for _, s := range []string{j.Message, j.Reason} {
			if s != "" {
				parts = append(parts, s)
			}
		}
	} else if line, _, _ := strings.Cut(string(body), "\n"); strings.TrimSpace(line) != "" && !strings.HasPrefix(strings.TrimSpace(line), "<") {
		parts = append(parts, line)
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + webpushClean(strings.Join(parts, ": "), 200) + ")"
}

// webpushClean keeps the printable characters of s, at most n runes.
func webpushClean(s string, n int) string {
	var b strings.Builder
	i := 0
	for _, r := range s {
		if i == n {
			b.WriteString("…")
			break
		}
		if r == unicode.ReplacementChar || !unicode.IsPrint(r) {
			r = ' '
		}
		b.WriteRune(r)
		i++
	}
	return strings.TrimSpace(b.String())
}

// vapidToken is the ES256 JWT of RFC 8292 §2 for the push service at origin.
func (p *webpushProvider) vapidToken(origin string, now time.Time) (string, error) {
	claims, err := json.Marshal(struct {
		Aud string `json:"aud"`
		Exp int64  `json:"exp"`
		Sub string `json:"sub"`
	}{origin, now.Add(webpushJWTLifetime).Unix(), p.subject})
	if err != nil {
		return "", err
	}
	return signES256JWT(p.key, []byte(`{"typ":"JWT","alg":"ES256"}`), claims)
}

// webpushEncrypt encrypts plaintext for the user agent key uaPublic and auth
// secret as one aes128gcm record (RFC 8291 §3-4, RFC 8188). salt and asKey are
// drawn from rnd when nil (tests fix them to reproduce the RFC's example).
func webpushEncrypt(rnd io.Reader, plaintext []byte, uaPublic *ecdh.PublicKey, auth, salt []byte, asKey *ecdh.PrivateKey) ([]byte, error) {
	var err error
	if asKey == nil {
		if asKey, err = ecdh.P256().GenerateKey(rnd); err != nil {
			return nil, err
		}
	}
	if salt == nil {
		salt = make([]byte, 16)
		if _, err := io.ReadFull(rnd, salt); err != nil {
			return nil, err
		}
	}
	if len(salt) != 16 {
		return nil, errors.New("salt must be 16 bytes")
	}
	ecdhSecret, err := asKey.ECDH(uaPublic)
	if err != nil {
		return nil, err
	}
	asPublic := asKey.PublicKey().Bytes()
	// IKM = HKDF(auth_secret, ecdh_secret, "WebPush: info" 0x00 ua_public as_public, 32)
	keyInfo := "WebPush: info\x00" + string(uaPublic.Bytes()) + string(asPublic)
	ikm, err := hkdf.Key(sha256.New, ecdhSecret, auth, keyInfo, 32)
	if err != nil {
		return nil, err
	}
	prk, err := hkdf.Extract(sha256.New, ikm, salt)
	if err != nil {
		return nil, err
	}
	cek, err := hkdf.Expand(sha256.New, prk, "Content-Encoding: aes128gcm\x00", 16)
	if err != nil {
		return nil, err
	}
	nonce, err := hkdf.Expand(sha256.New, prk, "Content-Encoding: nonce\x00", 12)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	rs := max(webpushRecordSize, len(plaintext)+1+16+1)
	out := make([]byte, 0, webpushHeaderLen+len(plaintext)+17)
	out = append(out, salt...)
	out = binary.BigEndian.AppendUint32(out, uint32(rs))
	out = append(out, byte(len(asPublic)))
	out = append(out, asPublic...)
	record := append(append(make([]byte, 0, len(plaintext)+1), plaintext...), 0x02) // last record, no padding
	return gcm.Seal(out, nonce, record, nil), nil
}
