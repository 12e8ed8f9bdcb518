package webpushtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/notifyd/notifyd/sinks/internal/fake"
)

// VAPID is a verified "vapid" authorization (RFC 8292).
type VAPID struct {
	Key      []byte // k: the application server's uncompressed P-256 public key
	Audience string
	Expiry   time.Time
	Subject  string
}

// errNoVAPID is a request without vapid authorization.
var errNoVAPID = errors.New("no vapid authorization")

// ParseAuthorization reads `vapid t=<JWT>, k=<key>` (RFC 8292 §3).
func ParseAuthorization(h string) (token string, key []byte, err error) {
	scheme, params, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "vapid") {
		return "", nil, errNoVAPID
	}
	var k string
	for _, p := range strings.Split(params, ",") {
		name, value, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok {
			return "", nil, fmt.Errorf("malformed vapid parameter %q", p)
		}
		value = strings.Trim(strings.TrimSpace(value), `"`)
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "t":
			token = value
		case "k":
			k = value
		}
	}
	if token == "" || k == "" {
		return "", nil, errors.New("vapid authorization needs both t and k")
	}
	key, err = base64.RawURLEncoding.DecodeString(strings.TrimRight(k, "="))
	if err != nil || len(key) != 65 || key[0] != 4 {
		return "", nil, errors.New("k is not a base64url uncompressed P-256 public key")
	}
	return token, key, nil
}

// VerifyVAPID checks a vapid Authorization header for a message to a push
// resource of origin at now, as a push service does (RFC 8292 §2, §4.2): an
// ES256 JWT signed with the key k, aud the origin, exp in the future and no
// more than 24 hours ahead, sub a mailto: or https: contact.
func VerifyVAPID(authorization, origin string, now time.Time) (*VAPID, error) {
	token, key, err := ParseAuthorization(authorization)
	if err != nil {
		return nil, err
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, errors.New("the token is not a JWS compact serialization")
	}
	var header struct {
		Alg string `json:"alg"`
		Typ string `json:"typ"`
	}
	if err := decodeSegment(parts[0], &header); err != nil {
		return nil, fmt.Errorf("JWT header: %w", err)
	}
	if header.Alg != "ES256" {
		return nil, fmt.Errorf("JWT alg %q, want ES256", header.Alg)
	}
	if header.Typ != "" && !strings.EqualFold(header.Typ, "JWT") {
		return nil, fmt.Errorf("JWT typ %q", header.Typ)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), key)
	if err != nil {
		return nil, fmt.Errorf("k: %w", err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return nil, errors.New("the JWT signature is not a 64-byte ES256 R‖S")
	}
	if !fake.ES256Valid(pub, parts[0]+"."+parts[1], sig) {
		return nil, errors.New("the JWT signature does not verify with k")
	}
	var claims struct {
		Aud string      `json:"aud"`
		Exp json.Number `json:"exp"`
		Sub string      `json:"sub"`
	}
	if err := decodeSegment(parts[1], &claims); err != nil {
		return nil, fmt.Errorf("JWT claims: %w", err)
	}
	if claims.Aud != origin {
		return nil, fmt.Errorf("JWT aud %q is not the push resource's origin %q", claims.Aud, origin)
	}
	exp, err := claims.Exp.Int64()
	if err != nil {
		return nil, errors.New("JWT exp is missing or not an integer")
	}
	expiry := time.Unix(exp, 0)
	if !expiry.After(now) {
		return nil, errors.New("the JWT expired")
	}
	if expiry.After(now.Add(24 * time.Hour)) {
		return nil, errors.New("JWT exp is more than 24 hours ahead")
	}
	if !strings.HasPrefix(claims.Sub, "mailto:") && !strings.HasPrefix(claims.Sub, "https:") {
		return nil, fmt.Errorf("JWT sub %q is not a mailto: or https: contact", claims.Sub)
	}
	return &VAPID{Key: key, Audience: claims.Aud, Expiry: expiry, Subject: claims.Sub}, nil
}

func decodeSegment(seg string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.UseNumber()
	return dec.Decode(v)
}
