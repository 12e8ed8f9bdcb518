package tracking

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ErrBadToken is wrapped by every refusal of Parse: a tampered, truncated or
// malformed token, one signed for another kind or with another secret.
// Callers answer it with a 4xx and record nothing.
var ErrBadToken = errors.New("bad tracking token")

const (
	minSecretLen = 16
	maxTokenLen  = 8 << 10
	sigLen       = 16 // bytes of HMAC-SHA256 kept: 128 bits
	// sigDomain separates these MACs from any other use of the secret.
	sigDomain = "notifyd-tracking-v1\x00"
)

// b64 is unpadded base64url, strict so that one byte string has exactly one
// encoding: its alphabet has no '/', '?', '#' or '%', so tokens are safe in
// a URL path as they are.
var b64 = base64.RawURLEncoding.Strict()

// Signer makes and checks tracking URLs under a base URL with an
// HMAC-SHA256 secret. It is safe for concurrent use.
type Signer struct {
	base   string // without trailing slash
	secret []byte
}

// NewSigner returns a Signer for tracking URLs under baseURL (e.g.
// "https://t.example.com", a path is allowed, a trailing slash is not
// needed). baseURL must be an absolute http or https URL without user info,
// query or fragment; secret must be at least 16 bytes.
func NewSigner(baseURL string, secret []byte) (*Signer, error) {
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
	return &Signer{base: strings.TrimRight(baseURL, "/"), secret: append([]byte(nil), secret...)}, nil
}

// URL is the tracking URL of l: <base>/t/<kind>/<token>. A Link that fails
// Validate gets a URL that Parse refuses.
func (s *Signer) URL(l Link) string {
	return s.base + "/t/" + l.Kind + "/" + s.Token(l)
}

// Token is the signed token of l: base64url(payload) "." base64url(mac).
func (s *Signer) Token(l Link) string {
	payload := b64.EncodeToString(l.encode())
	return payload + "." + b64.EncodeToString(s.mac(l.Kind, payload))
}

// Parse checks a token found in a URL of the given kind and returns its Link.
// Every refusal wraps ErrBadToken.
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
	payload, sig, ok := strings.Cut(token, ".")
	if !ok {
		return Link{}, errors.New("token has no signature")
	}
	got, err := b64.DecodeString(sig)
	if err != nil || len(got) != sigLen {
		return Link{}, errors.New("malformed signature")
	}
	// The MAC covers the kind from the URL, so a token moved to another
	// kind fails here like any other tampering.
	if !hmac.Equal(got, s.mac(kind, payload)) {
		return Link{}, errors.New("signature mismatch")
	}
	raw, err := b64.DecodeString(payload)
	if err != nil {
		return Link{}, fmt.Errorf("malformed payload: %v", err)
	}
	l, err := decodeLink(kind, raw)
	if err != nil {
		return Link{}, err
	}
	if err := l.Validate(); err != nil {
		return Link{}, err
	}
	return l, nil
}

func (s *Signer) mac(kind, payload string) []byte {
	m := hmac.New(sha256.New, s.secret)
	m.Write([]byte(sigDomain))
	m.Write([]byte(kind))
	m.Write([]byte{0})
	m.Write([]byte(payload))
	return m.Sum(nil)[:sigLen]
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
