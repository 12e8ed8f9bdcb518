package crypt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"unicode/utf8"
)

// Envelope layout, version 1:
//
//	magic "\xf1nE" | version 0x01 | subject length (uint16 BE) | subject |
//	key id length (1 byte) | key id | nonce (12) | AES-256-GCM ciphertext and tag
//
// 0xF1 followed by 'n' is never valid UTF-8, so no text field, and no Avro
// single-object record (0xC3 0x01), starts like an envelope.
const (
	envelopeVersion = 1
	nonceSize       = 12
	tagSize         = 16
	// MaxSubjectBytes bounds a subject (tenant "|" userId).
	MaxSubjectBytes = 512
	// MaxEnvelopeBytes bounds an envelope ParseEnvelope accepts and Seal produces.
	MaxEnvelopeBytes = 4 << 20
)

var magic = [3]byte{0xF1, 'n', 'E'}

// keyIDPattern is the form of every key id: 8 random bytes in hex.
var keyIDPattern = regexp.MustCompile(`^[0-9a-f]{16}$`)

// ErrNotSealed means the bytes do not start like an envelope.
var ErrNotSealed = errors.New("crypt: not a sealed envelope")

// Envelope is a parsed ciphertext. Subject and KeyID are in clear: they say
// which key opens it; the AAD binds them, so they cannot be altered.
type Envelope struct {
	Version    byte
	Subject    string
	KeyID      string
	Nonce      []byte
	Ciphertext []byte // ciphertext followed by the GCM tag
	header     []byte // every byte before the nonce: authenticated as AAD
}

// IsSealed tells whether b starts like an envelope of a known version. It
// does not validate the rest; Open does.
func IsSealed(b []byte) bool {
	return len(b) >= 4 && b[0] == magic[0] && b[1] == magic[1] && b[2] == magic[2] && b[3] == envelopeVersion
}

// ParseEnvelope splits an envelope into its parts without decrypting it.
func ParseEnvelope(b []byte) (Envelope, error) {
	if len(b) > MaxEnvelopeBytes {
		return Envelope{}, fmt.Errorf("parse envelope: %d bytes, at most %d", len(b), MaxEnvelopeBytes)
	}
	if !IsSealed(b) {
		return Envelope{}, ErrNotSealed
	}
	rest := b[4:]
	if len(rest) < 2 {
		return Envelope{}, errors.New("parse envelope: truncated subject length")
	}
	n := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if n == 0 || n > MaxSubjectBytes || n > len(rest) {
		return Envelope{}, fmt.Errorf("parse envelope: subject length %d of %d bytes left (1-%d)", n, len(rest), MaxSubjectBytes)
	}
	subject := string(rest[:n])
	rest = rest[n:]
	if err := checkSubject(subject); err != nil {
		return Envelope{}, fmt.Errorf("parse envelope: %w", err)
	}
	if len(rest) < 1 {
		return Envelope{}, errors.New("parse envelope: truncated key id length")
	}
	n = int(rest[0])
	rest = rest[1:]
	if n > len(rest) || !keyIDPattern.Match(rest[:n]) {
		return Envelope{}, errors.New("parse envelope: malformed key id")
	}
	kid := string(rest[:n])
	rest = rest[n:]
	if len(rest) < nonceSize+tagSize {
		return Envelope{}, fmt.Errorf("parse envelope: %d bytes of nonce and ciphertext, at least %d", len(rest), nonceSize+tagSize)
	}
	headerLen := len(b) - len(rest)
	return Envelope{
		Version:    envelopeVersion,
		Subject:    subject,
		KeyID:      kid,
		Nonce:      rest[:nonceSize:nonceSize],
		Ciphertext: rest[nonceSize:],
		header:     b[:headerLen:headerLen],
	}, nil
}

// appendHeader writes everything before the nonce; subject and kid are valid.
func appendHeader(dst []byte, subject, kid string) []byte {
	dst = append(dst, magic[:]...)
	dst = append(dst, envelopeVersion)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(subject)))
	dst = append(dst, subject...)
	dst = append(dst, byte(len(kid)))
	return append(dst, kid...)
}

// aad binds a ciphertext to its header (subject, key id) and to the field
// it belongs to. The header is self-delimiting, so the concatenation is
// unambiguous.
func aad(header []byte, field string) []byte {
	out := make([]byte, 0, len(header)+len(field))
	return append(append(out, header...), field...)
}

func checkSubject(s string) error {
	switch {
	case s == "":
		return errors.New("empty subject")
	case len(s) > MaxSubjectBytes:
		return fmt.Errorf("subject of %d bytes, at most %d", len(s), MaxSubjectBytes)
	case !utf8.ValidString(s):
		return errors.New("subject is not UTF-8")
	}
	return nil
}
