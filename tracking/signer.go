package tracking

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// ErrBadToken is wrapped by every refusal of Parse: a tampered, truncated or
// malformed token, one made for another kind or with another secret, a
// legacy token past its deadline. Callers answer it with a 4xx and record
// nothing.
var ErrBadToken = errors.New("bad tracking token")

const (
	minSecretLen = 16
	maxTokenLen  = 8 << 10
)

// b64 is unpadded base64url, strict so that one byte string has exactly one
// encoding: its alphabet has no '/', '?', '#' or '%', so tokens are safe in
// a URL path as they are.
var b64 = base64.RawURLEncoding.Strict()

// Signer makes and checks tracking URLs under a base URL with a secret. It
// is safe for concurrent use.
type Signer struct {
	base string      // without trailing slash
	aead cipher.AEAD // XChaCha20-Poly1305 under the HKDF-derived token key
	// legacyKey is the secret itself, the HMAC key of version-1 tokens;
	// they are accepted before legacyUntil (zero: never).
	legacyKey   []byte
	legacyUntil time.Time
	now         func() time.Time
}

// Option configures a Signer.
type Option func(*Signer)

// AcceptLegacyUntil makes the Signer accept, before t, the signed but
// readable tokens of links minted before tokens were encrypted: they are
// in emails already sent and carry no expiry. Without it, or from t on,
// they answer ErrBadToken. New links are always minted encrypted.
func AcceptLegacyUntil(t time.Time) Option {
	return func(s *Signer) { s.legacyUntil = t }
}

// NewSigner returns a Signer for tracking URLs under baseURL (e.g.
// "https://t.example.com", a path is allowed, a trailing slash is not
// needed). baseURL must be an absolute http or https URL without user info,
// query or fragment; secret must be at least 16 bytes.
func NewSigner(baseURL string, secret []byte, opts ...Option) (*Signer, error) {
	if len(secret) < minSecretLen {
		return nil, fmt.Errorf("tracking secret is %d bytes, need at least %d", len(secret), minSecretLen)
	}
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("tracking base url: %w", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("tracking base url %q: scheme must be http or https", baseURL)
	case u.Host == "" || u.Opaque != "":
		return nil, fmt.Errorf("tracking base url %q: not an absolute url with a host", baseURL)
	case u.User != nil:
		return nil, fmt.Errorf("tracking base url %q: user info not allowed", baseURL)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.ContainsAny(baseURL, "?#"):
		return nil, fmt.Errorf("tracking base url %q: query or fragment not allowed", baseURL)
	}
	// The token key is derived for this one purpose, so it is not the
	// legacy HMAC key (the secret itself) nor anything else made from it.
	key, err := hkdf.Key(sha256.New, secret, nil, keyInfo, chacha20poly1305.KeySize)
	if err != nil {
		return nil, fmt.Errorf("tracking key: %w", err)
	}
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, fmt.Errorf("tracking key: %w", err)
	}
	s := &Signer{base: strings.TrimRight(baseURL, "/"), aead: aead,
		legacyKey: append([]byte(nil), secret...), now: time.Now}
	for _, opt := range opts {
		opt(s)
	}
	return s, nil
}

// URL is the tracking URL of l: <base>/t/<kind>/<token>. A Link that fails
// Validate gets a URL that Parse refuses.
func (s *Signer) URL(l Link) string {
	return s.base + "/t/" + l.Kind + "/" + s.Token(l)
}

// Token is the opaque token of l (token.go): encrypted and authenticated,
// with a random nonce, so two tokens of one Link differ.
func (s *Signer) Token(l Link) string {
	return s.seal(l)
}

// Parse checks a token found in a URL of the given kind and returns its Link.
// It accepts the current format, and legacy signed tokens before the
// deadline given by AcceptLegacyUntil. Every refusal wraps ErrBadToken.
func (s *Signer) Parse(kind, token string) (Link, error) {
	l, err := s.parse(kind, token)
	if err != nil {
		return Link{}, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	return l, nil
}

func (s *Signer) parse(kind, token string) (Link, error) {
	if len(token) > maxTokenLen {
		return Link{}, fmt.Errorf("token is %d bytes, over %d", len(token), maxTokenLen)
	}
	if !validKind(kind) {
		return Link{}, fmt.Errorf("unknown link kind %q", kind)
	}
	var l Link
	var err error
	switch {
	case token != "" && token[0] == tokenV2:
		l, err = s.open(kind, token[1:])
	case !s.now().Before(s.legacyUntil):
		return Link{}, errors.New("not a current token, and legacy tokens are no longer accepted")
	default:
		l, err = s.parseLegacy(kind, token)
	}
	if err != nil {
		return Link{}, err
	}
	// Authentic is not enough: what Token made of an invalid Link (a
	// javascript: destination...) is refused too.
	if err := l.Validate(); err != nil {
		return Link{}, err
	}
	return l, nil
}

// Owns tells whether href is already a URL under the signer's base, such as
// an unsubscribe link placed in a template, which must not be wrapped again.
func (s *Signer) Owns(href string) bool {
	return href == s.base || strings.HasPrefix(href, s.base+"/")
}

// ClickFunc returns the click function for RewriteHTML of an email whose
// links carry the fields of l (Kind and URL are set per link): it signs a
// Click link to each href, and leaves alone ("" result) hrefs the signer
// owns and those a Click link cannot carry (e.g. over-long URLs).
func (s *Signer) ClickFunc(l Link) func(href string) string {
	l.Kind = Click
	return func(href string) string {
		if s.Owns(href) {
			return ""
		}
		c := l
		c.URL = href
		if c.Validate() != nil {
			return ""
		}
		return s.URL(c)
	}
}
