package crypt_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/notifyd/notifyd/crypt"
)

func sample(subject, kid string, body int) []byte {
	return append(crypt.AppendHeader(nil, subject, kid), bytes.Repeat([]byte{7}, 12+body)...)
}

func TestParseEnvelope(t *testing.T) {
	env := sample("acme|u/1", "0123456789abcdef", 20)
	e, err := crypt.ParseEnvelope(env)
	if err != nil {
		t.Fatal(err)
	}
	if e.Subject != "acme|u/1" || e.KeyID != "0123456789abcdef" || len(e.Nonce) != 12 || len(e.Ciphertext) != 20 || e.Version != 1 {
		t.Fatalf("%+v", e)
	}
	bad := map[string][]byte{
		"not sealed":         []byte("ada@example.com"),
		"avro record":        {0xC3, 0x01, 1, 2, 3, 4},
		"short ciphertext":   sample("u", "0123456789abcdef", 15),
		"empty subject":      sample("", "0123456789abcdef", 20),
		"bad key id":         sample("u", "0123456789ABCDEF", 20),
		"short key id":       sample("u", "0123", 20),
		"long subject":       sample(strings.Repeat("u", crypt.MaxSubjectBytes+1), "0123456789abcdef", 20),
		"subject past end":   env[:7],
		"invalid utf8":       sample("\xff", "0123456789abcdef", 20),
		"oversized envelope": sample("u", "0123456789abcdef", crypt.MaxEnvelopeBytes),
	}
	for name, b := range bad {
		if _, err := crypt.ParseEnvelope(b); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	if crypt.IsSealed([]byte("plain")) || crypt.IsSealed(nil) || !crypt.IsSealed(env) {
		t.Error("IsSealed")
	}
}

// Whatever the bytes, ParseEnvelope does not panic, and what it accepts is
// exactly header, nonce and ciphertext of a well-formed envelope.
func FuzzParseEnvelope(f *testing.F) {
	f.Add(sample("acme|u1", "0123456789abcdef", 16))
	f.Add(sample("u", "fedcba9876543210", 100))
	f.Add(sample("u", "0123", 20))
	f.Add([]byte{0xF1, 'n', 'E', 1, 0xff, 0xff})
	f.Add([]byte{0xF1, 'n', 'E', 1, 0, 1, 'u', 16})
	f.Add([]byte("plain text"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := crypt.ParseEnvelope(b)
		if err != nil {
			return
		}
		again := append(crypt.AppendHeader(nil, e.Subject, e.KeyID), append(bytes.Clone(e.Nonce), e.Ciphertext...)...)
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoded %x, parsed %x", again, b)
		}
		if len(e.Nonce) != 12 || len(e.Ciphertext) < 16 || e.Subject == "" || len(e.Subject) > crypt.MaxSubjectBytes || !crypt.IsSealed(b) {
			t.Fatalf("accepted %+v", e)
		}
	})
}
