package tracking

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"golang.org/x/crypto/chacha20poly1305"
)

// Token format, version 2 (opaque):
//
//	"2" base64url( nonce (24) | XChaCha20-Poly1305(fields) | tag (16) )
//
// The key is derived from the tracking secret with HKDF (keyInfo); the
// additional data binds the kind from the URL path, so a token moved to
// another kind fails like any other tampering. A token reveals nothing but
// its length.
//
// fields is the Link's fields in fieldNames order, each as a uvarint header
// and bytes: header 1 is a UUID in canonical form packed into its 16 bytes
// (notification ids are UUIDs, and this keeps tokens as short as the
// signed-only ones were); an even header 2n is a string of n bytes.
//
// The leading '2' is the version marker: a version-1 token (legacy.go,
// base64url(payload) "." base64url(mac)) always starts with 'A' (its
// payload's first byte is 1) and always has a '.', which base64url never
// makes, so neither format can be read as the other.
const (
	tokenV2    = '2'
	nonceLen   = chacha20poly1305.NonceSizeX
	tagLen     = chacha20poly1305.Overhead
	uuidHeader = 1
	uuidLen    = 16
	// keyInfo is the HKDF purpose label of the token key: no other use of
	// the tracking secret derives the same key.
	keyInfo = "notifyd tracking token v2: XChaCha20-Poly1305 key"
	// adDomain starts the additional data of every v2 token.
	adDomain = "notifyd-tracking-v2\x00"
)

// additionalData is what a token of kind authenticates besides its fields.
// A kind that is not Open, Click or Unsubscribe gets a byte no valid kind
// has, so a token minted for it is never accepted.
func additionalData(buf *[len(adDomain) + 1]byte, kind string) []byte {
	copy(buf[:], adDomain)
	buf[len(adDomain)] = 0
	if validKind(kind) {
		buf[len(adDomain)] = kind[0]
	}
	return buf[:]
}

// fieldsLen is an upper bound of the encoded length of l's fields.
func fieldsLen(fields *[len(fieldNames)]string) int {
	n := 0
	for _, f := range fields {
		n += binary.MaxVarintLen64 + len(f)
	}
	return n
}

// appendFields appends the v2 encoding of fields to b.
func appendFields(b []byte, fields *[len(fieldNames)]string) []byte {
	for _, f := range fields {
		if u, ok := parseUUID(f); ok {
			b = append(b, uuidHeader)
			b = append(b, u[:]...)
			continue
		}
		b = binary.AppendUvarint(b, uint64(len(f))<<1)
		b = append(b, f...)
	}
	return b
}

// decodeFields undoes appendFields. It accepts only what appendFields makes
// (a UUID is always packed), so one Link has one encoding. The strings share
// one allocation.
func decodeFields(kind string, b []byte) (Link, error) {
	// Every string of the Link is a substring of text, or a formatted UUID.
	text := string(b)
	var fields [len(fieldNames)]string
	off := 0
	for i, name := range fieldNames {
		h, size := binary.Uvarint(b[off:])
		if size <= 0 {
			return Link{}, fmt.Errorf("field %s is truncated", name)
		}
		off += size
		switch {
		case h == uuidHeader:
			if len(b)-off < uuidLen {
				return Link{}, fmt.Errorf("field %s is truncated", name)
			}
			fields[i] = formatUUID(b[off : off+uuidLen])
			off += uuidLen
		case h&1 == 0 && h>>1 <= uint64(len(b)-off):
			n := int(h >> 1)
			fields[i] = text[off : off+n]
			off += n
			if _, ok := parseUUID(fields[i]); ok {
				return Link{}, fmt.Errorf("field %s is an unpacked uuid", name)
			}
		default:
			return Link{}, fmt.Errorf("field %s has a bad header or is truncated", name)
		}
	}
	if off != len(b) {
		return Link{}, errors.New("trailing bytes after the fields")
	}
	return Link{
		Kind: kind, NotificationID: fields[0], Tenant: fields[1], UserID: fields[2], Template: fields[3],
		Category: fields[4], Channel: fields[5], Campaign: fields[6], URL: fields[7],
	}, nil
}

// seal returns the v2 token of l.
func (s *Signer) seal(l Link) string {
	fields := l.fields()
	raw := make([]byte, nonceLen, nonceLen+fieldsLen(&fields)+tagLen)
	_, _ = rand.Read(raw) // never fails (crypto/rand crashes the program rather)
	raw = appendFields(raw, &fields)
	var ad [len(adDomain) + 1]byte
	raw = s.aead.Seal(raw[:nonceLen], raw[:nonceLen], raw[nonceLen:], additionalData(&ad, l.Kind))
	out := make([]byte, 1+b64.EncodedLen(len(raw)))
	out[0] = tokenV2
	b64.Encode(out[1:], raw)
	return string(out)
}

// open checks and decrypts the base64url part of a v2 token of kind.
func (s *Signer) open(kind, enc string) (Link, error) {
	raw := make([]byte, b64.DecodedLen(len(enc)))
	n, err := b64.Decode(raw, []byte(enc))
	if err != nil {
		return Link{}, fmt.Errorf("malformed token: %v", err)
	}
	raw = raw[:n]
	if len(raw) < nonceLen+tagLen {
		return Link{}, errors.New("token is too short")
	}
	var ad [len(adDomain) + 1]byte
	plain, err := s.aead.Open(raw[nonceLen:nonceLen], raw[:nonceLen], raw[nonceLen:], additionalData(&ad, kind))
	if err != nil {
		// A tampered or truncated token, another kind, another secret.
		return Link{}, errors.New("token does not authenticate")
	}
	return decodeFields(kind, plain)
}

// parseUUID reads s when it is a UUID in canonical form (lower-case hex,
// 8-4-4-4-12), the only form formatUUID gives back.
func parseUUID(s string) (u [uuidLen]byte, ok bool) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, false
	}
	j := 0
	for i := 0; i < 36; {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			i++
			continue
		}
		hi, ok1 := lowerHex(s[i])
		lo, ok2 := lowerHex(s[i+1])
		if !ok1 || !ok2 {
			return u, false
		}
		u[j] = hi<<4 | lo
		i += 2
		j++
	}
	return u, true
}

func lowerHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

func formatUUID(u []byte) string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}
