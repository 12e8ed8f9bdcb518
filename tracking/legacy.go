package tracking

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// Token format, version 1 (legacy, signed but readable):
//
//	base64url(payload) "." base64url(HMAC-SHA256(secret, legacyDomain kind 0 base64url(payload))[:16])
//
// payload is the byte 1, then each field as a uvarint length and its bytes.
// notifyd no longer makes these tokens; it still accepts them until the
// Signer's legacy deadline (AcceptLegacyUntil), since they are in emails
// already sent and carry no expiry of their own. Delete this file once
// every deployment is past its deadline.
const (
	legacyVersion = 1
	legacySigLen  = 16 // bytes of HMAC-SHA256 kept: 128 bits
	// legacyDomain separated those MACs from any other use of the secret.
	legacyDomain = "notifyd-tracking-v1\x00"
)

// parseLegacy checks a version-1 token of kind. The caller has checked the
// legacy deadline.
func (s *Signer) parseLegacy(kind, token string) (Link, error) {
	payload, sig, ok := strings.Cut(token, ".")
	if !ok {
		return Link{}, errors.New("token has no signature")
	}
	got, err := b64.DecodeString(sig)
	if err != nil || len(got) != legacySigLen {
		return Link{}, errors.New("malformed signature")
	}
	// The MAC covers the kind from the URL, so a token moved to another
	// kind fails here like any other tampering.
	if !hmac.Equal(got, s.legacyMAC(kind, payload)) {
		return Link{}, errors.New("signature mismatch")
	}
	raw, err := b64.DecodeString(payload)
	if err != nil {
		return Link{}, fmt.Errorf("malformed payload: %v", err)
	}
	return decodeLegacyPayload(kind, raw)
}

func (s *Signer) legacyMAC(kind, payload string) []byte {
	m := hmac.New(sha256.New, s.legacyKey)
	m.Write([]byte(legacyDomain))
	m.Write([]byte(kind))
	m.Write([]byte{0})
	m.Write([]byte(payload))
	return m.Sum(nil)[:legacySigLen]
}

// encodeLegacyPayload is the version-1 payload of l, used only to check that
// a payload is canonical.
func encodeLegacyPayload(l Link) []byte {
	fields := l.fields()
	n := 1
	for _, f := range fields {
		n += binary.MaxVarintLen64 + len(f)
	}
	b := make([]byte, 1, n)
	b[0] = legacyVersion
	for _, f := range fields {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	return b
}

// decodeLegacyPayload accepts only the canonical encoding (what
// encodeLegacyPayload makes of the result), so one link had exactly one
// payload.
func decodeLegacyPayload(kind string, b []byte) (Link, error) {
	if len(b) == 0 || b[0] != legacyVersion {
		return Link{}, errors.New("unknown payload version")
	}
	rest := b[1:]
	var fields [len(fieldNames)]string
	for i, name := range fieldNames {
		n, size := binary.Uvarint(rest)
		if size <= 0 || n > uint64(len(rest)-size) {
			return Link{}, fmt.Errorf("payload field %s is truncated", name)
		}
		rest = rest[size:]
		fields[i], rest = string(rest[:n]), rest[n:]
	}
	if len(rest) != 0 {
		return Link{}, errors.New("payload has trailing bytes")
	}
	l := Link{
		Kind: kind, NotificationID: fields[0], Tenant: fields[1], UserID: fields[2], Template: fields[3],
		Category: fields[4], Channel: fields[5], Campaign: fields[6], URL: fields[7],
	}
	if string(encodeLegacyPayload(l)) != string(b) {
		return Link{}, errors.New("payload is not canonically encoded")
	}
	return l, nil
}
