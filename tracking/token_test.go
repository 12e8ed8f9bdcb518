package tracking

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// LegacyGoldenToken is a token the signed-only format minted, before tokens
// were encrypted, for Link with the secret testSecret.
type LegacyGoldenToken struct {
	Link  Link   `json:"link"`
	Token string `json:"token"`
}

// LegacyGolden reads testdata/legacy_tokens.json: tokens minted by the code
// before this format change (never regenerate them: they stand for links in
// emails already sent).
func LegacyGolden(t testing.TB) []LegacyGoldenToken {
	t.Helper()
	b, err := os.ReadFile("testdata/legacy_tokens.json")
	if err != nil {
		t.Fatal(err)
	}
	var golden struct {
		Secret string              `json:"secret"`
		Tokens []LegacyGoldenToken `json:"tokens"`
	}
	if err := json.Unmarshal(b, &golden); err != nil {
		t.Fatal(err)
	}
	if golden.Secret != string(testSecret) || len(golden.Tokens) == 0 {
		t.Fatalf("testdata/legacy_tokens.json: secret %q, %d tokens", golden.Secret, len(golden.Tokens))
	}
	return golden.Tokens
}

func TestUUIDsArePackedAndComeBackTheSame(t *testing.T) {
	const id = "5b0d7f3e-7a52-5d3c-9b1e-2f4c6a8e0d11"
	for _, v := range []string{id, strings.ToUpper(id), "{" + id + "}", "urn:uuid:" + id, strings.ReplaceAll(id, "-", ""),
		id[:35] + "g", id[:8] + "_" + id[9:], "", "x"} {
		fields := [len(fieldNames)]string{v, v, v, v, v, v, v, v}
		b := appendFields(nil, &fields)
		l, err := decodeFields(Open, b)
		if err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		if l.fields() != fields {
			t.Fatalf("%q came back as %+v", v, l)
		}
		packed := v == id
		if want := 8 * (1 + len(v)); packed {
			if len(b) != 8*(1+uuidLen) {
				t.Fatalf("%q: %d bytes, want it packed in %d", v, len(b), 8*(1+uuidLen))
			}
		} else if len(b) != want {
			t.Fatalf("%q: %d bytes, want %d", v, len(b), want)
		}
	}
}

func TestDecodeFieldsRefusesNonCanonical(t *testing.T) {
	const id = "5b0d7f3e-7a52-5d3c-9b1e-2f4c6a8e0d11"
	var fields [len(fieldNames)]string
	fields[0] = "n"
	good := appendFields(nil, &fields)
	unpacked := append([]byte{byte(len(id) << 1)}, id...)
	unpacked = append(unpacked, good[2:]...)
	for name, b := range map[string][]byte{
		"empty":          nil,
		"truncated":      good[:len(good)-1],
		"trailing":       append(bytes.Clone(good), 0),
		"odd header":     append([]byte{3}, good[1:]...),
		"short uuid":     {uuidHeader, 1, 2, 3},
		"unpacked uuid":  unpacked,
		"length too big": {0x7e, 'n'},
	} {
		if l, err := decodeFields(Open, b); err == nil {
			t.Errorf("%s: decoded %+v", name, l)
		}
	}
}

func TestLegacyTokensAreRefusedWithoutTheOption(t *testing.T) {
	s := newTestSigner(t)
	for _, g := range LegacyGolden(t) {
		if _, err := s.Parse(g.Link.Kind, g.Token); !errors.Is(err, ErrBadToken) {
			t.Fatalf("legacy token accepted without AcceptLegacyUntil: %v", err)
		}
	}
}

func TestLegacyDeadlineIsTheSignersClock(t *testing.T) {
	deadline := time.Date(2027, 6, 30, 0, 0, 0, 0, time.UTC)
	s := newTestSigner(t, AcceptLegacyUntil(deadline))
	g := LegacyGolden(t)[0]
	for _, c := range []struct {
		now time.Time
		ok  bool
	}{{deadline.Add(-time.Nanosecond), true}, {deadline, false}, {deadline.Add(time.Hour), false}} {
		s.now = func() time.Time { return c.now }
		l, err := s.Parse(g.Link.Kind, g.Token)
		if c.ok && (err != nil || l != g.Link) {
			t.Fatalf("at %v: %+v, %v; want %+v", c.now, l, err, g.Link)
		}
		if !c.ok && !errors.Is(err, ErrBadToken) {
			t.Fatalf("at %v: err = %v, want ErrBadToken", c.now, err)
		}
		// The deadline is for legacy tokens only.
		if _, err := s.Parse(Open, s.Token(sampleLink(Open))); err != nil {
			t.Fatalf("at %v a current token is refused: %v", c.now, err)
		}
	}
}

// sealRaw is a current-format token whose fields are the bytes b, with the
// nonce n, n, n...: what a bug in the encoder could make, or a key holder
// mint. Unlike Token, it gives the same token every time.
func (s *Signer) sealRaw(kind string, b []byte, n byte) string {
	raw := bytes.Repeat([]byte{n}, nonceLen)
	var ad [len(adDomain) + 1]byte
	raw = s.aead.Seal(raw, raw[:nonceLen], b, additionalData(&ad, kind))
	return string(tokenV2) + b64.EncodeToString(raw)
}

// FuzzParseAuthenticated reaches the field decoder through Parse with
// plaintexts the fuzzer chooses (FuzzParse cannot get past the
// authentication): it never panics, and what it accepts is a valid Link
// whose encoding is exactly those bytes.
func FuzzParseAuthenticated(f *testing.F) {
	s := newTestSigner(f)
	for _, kind := range []string{Open, Click, Unsubscribe} {
		fields := sampleLink(kind).fields()
		f.Add(kind, appendFields(nil, &fields))
	}
	f.Add(Open, []byte{})
	f.Add(Open, []byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, kind string, b []byte) {
		if !validKind(kind) {
			kind = Open
		}
		l, err := s.Parse(kind, s.sealRaw(kind, b, 0))
		if err != nil {
			if !errors.Is(err, ErrBadToken) {
				t.Fatalf("error %v does not wrap ErrBadToken", err)
			}
			return
		}
		if err := l.Validate(); err != nil || l.Kind != kind {
			t.Fatalf("accepted an invalid link %+v: %v", l, err)
		}
		fields := l.fields()
		if again := appendFields(nil, &fields); !bytes.Equal(again, b) {
			t.Fatalf("accepted %x, which encodes back as %x", b, again)
		}
	})
}
