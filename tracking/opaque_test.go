package tracking_test

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/tracking"
	"github.com/notifyd/notifyd/tracking/trackingtest"
)

var secret = []byte("0123456789abcdef-test-secret") // testdata/legacy_tokens.json's

func signer(t testing.TB, opts ...tracking.Option) *tracking.Signer {
	t.Helper()
	s, err := tracking.NewSigner("https://t.example.com", secret, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const notificationID = "5b0d7f3e-7a52-5d3c-9b1e-2f4c6a8e0d11"

// marketingLinks are the links of one marketing email to a user whose id is
// an email address, and of one to a user with an opaque id.
func marketingLinks() []tracking.Link {
	var links []tracking.Link
	for _, user := range []string{"ada.lovelace@analytical.example", "customer-8a1f93"} {
		for _, kind := range []string{tracking.Open, tracking.Click, tracking.Unsubscribe} {
			l := tracking.Link{Kind: kind, NotificationID: notificationID, Tenant: "acmecorp", UserID: user,
				Template: "spring-sale", Category: "marketing", Channel: "email", Campaign: "campaign-2027-spring"}
			if kind == tracking.Click {
				l.URL = "https://shop.example.org/sale?utm_source=newsletter&x=%2F#top"
			}
			links = append(links, l)
		}
	}
	return links
}

// secretsOf is everything of l a token must not give away: user id (and,
// for an email address, its parts), notification id in every form, tenant,
// template, campaign, destination.
func secretsOf(l tracking.Link) [][]byte {
	u, _ := hex.DecodeString(strings.ReplaceAll(l.NotificationID, "-", ""))
	out := [][]byte{[]byte(l.UserID), []byte(l.NotificationID), []byte(strings.ReplaceAll(l.NotificationID, "-", "")), u,
		[]byte(l.Tenant), []byte(l.Template), []byte(l.Campaign)}
	if local, domain, ok := strings.Cut(l.UserID, "@"); ok {
		out = append(out, []byte(local), []byte(domain), []byte("lovelace"))
	}
	if l.URL != "" {
		out = append(out, []byte(l.URL), []byte("shop.example.org"), []byte("utm_source=newsletter"))
	}
	return out
}

// A token reveals nothing of its link: not as it is, nor in any base64,
// base64url or hex decoding of any of its substrings.
func TestTokenRevealsNothing(t *testing.T) {
	s := signer(t)
	for _, l := range marketingLinks() {
		for range 20 { // each with its own nonce
			u := s.URL(l)
			tok := strings.TrimPrefix(u, "https://t.example.com/t/"+l.Kind+"/")
			if where := trackingtest.Reveal(u, secretsOf(l)...); where != "" {
				t.Fatalf("%s token of %s reveals %s: %s", l.Kind, l.UserID, where, tok)
			}
			if got, err := s.Parse(l.Kind, tok); err != nil || got != l {
				t.Fatalf("Parse = %+v, %v; want %+v", got, err, l)
			}
		}
	}
}

// The check itself finds what a signed-only token shows.
func TestRevealFindsWhatLegacyTokensShow(t *testing.T) {
	for _, l := range marketingLinks() {
		tok := trackingtest.LegacyToken(secret, l)
		for _, s := range secretsOf(l)[:2] {
			if trackingtest.Reveal(tok, s) == "" {
				t.Fatalf("Reveal does not find %q in %s", s, tok)
			}
		}
		// Shifted so that no decoding is aligned with the start.
		if trackingtest.Reveal("x"+tok[1:], []byte(l.UserID)) == "" {
			t.Fatalf("Reveal does not find %q at another alignment", l.UserID)
		}
	}
	hexed := hex.EncodeToString([]byte("ada.lovelace@analytical.example"))
	if trackingtest.Reveal("zz"+hexed+"zz", []byte("lovelace")) == "" {
		t.Fatal("Reveal does not read hex")
	}
}

// Two tokens of one link differ (a random nonce): equal tokens would tell a
// reader that two emails' links are the same link.
func TestTokensOfOneLinkDiffer(t *testing.T) {
	s := signer(t)
	l := marketingLinks()[1]
	seen := map[string]bool{}
	for range 1000 {
		tok := s.Token(l)
		if seen[tok] {
			t.Fatalf("token %s minted twice", tok)
		}
		seen[tok] = true
	}
}

// The format: a '2' then base64url, no '.', so it is never read as a
// legacy token (which always has one) and is path safe; the bytes are a
// 24-byte nonce, the ciphertext and a 16-byte tag. Changing any bit of any
// byte, cutting it short or making it longer is refused.
func TestTamperingAnyBitIsRefused(t *testing.T) {
	s := signer(t)
	for _, l := range marketingLinks() {
		tok := s.Token(l)
		if tok[0] != '2' || strings.ContainsAny(tok, "./?#%=") {
			t.Fatalf("token %s: want '2' and unpadded base64url", tok)
		}
		raw, err := base64.RawURLEncoding.Strict().DecodeString(tok[1:])
		if err != nil {
			t.Fatal(err)
		}
		if len(raw) < 24+16+1 {
			t.Fatalf("%d bytes: no room for nonce, fields and tag", len(raw))
		}
		for i := range raw {
			for bit := range 8 {
				bad := []byte(string(raw))
				bad[i] ^= 1 << bit
				if got, err := s.Parse(l.Kind, "2"+base64.RawURLEncoding.EncodeToString(bad)); !errors.Is(err, tracking.ErrBadToken) {
					t.Fatalf("byte %d bit %d flipped: %+v, %v; want ErrBadToken", i, bit, got, err)
				}
			}
		}
		for n := range len(tok) {
			if _, err := s.Parse(l.Kind, tok[:n]); !errors.Is(err, tracking.ErrBadToken) {
				t.Fatalf("cut to %d chars: err = %v", n, err)
			}
		}
		for _, extra := range []string{"A", "AA", "AAAA"} {
			if _, err := s.Parse(l.Kind, tok+extra); !errors.Is(err, tracking.ErrBadToken) {
				t.Fatalf("extended by %q: err = %v", extra, err)
			}
		}
		for _, kind := range []string{tracking.Open, tracking.Click, tracking.Unsubscribe} {
			if _, err := s.Parse(kind, tok); kind != l.Kind && !errors.Is(err, tracking.ErrBadToken) {
				t.Fatalf("%s token accepted as %s", l.Kind, kind)
			}
		}
		// Another secret: another key.
		other, err := tracking.NewSigner("https://t.example.com", []byte("another-secret-of-16+"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := other.Parse(l.Kind, tok); !errors.Is(err, tracking.ErrBadToken) {
			t.Fatalf("re-keyed: err = %v", err)
		}
	}
}

// Links in emails sent before the change keep working until the legacy
// deadline: tokens the old code minted (testdata) verify and give the same
// Link; after the deadline they are refused. trackingtest.LegacyToken, which
// the service tests use, mints exactly what the old code did.
func TestLegacyTokensVerifyUntilTheDeadline(t *testing.T) {
	golden := tracking.LegacyGolden(t)
	open := signer(t, tracking.AcceptLegacyUntil(time.Now().Add(time.Hour)))
	closed := signer(t, tracking.AcceptLegacyUntil(time.Now().Add(-time.Second)))
	for _, g := range golden {
		if mint := trackingtest.LegacyToken(secret, g.Link); mint != g.Token {
			t.Fatalf("trackingtest.LegacyToken = %s, the old code minted %s", mint, g.Token)
		}
		got, err := open.Parse(g.Link.Kind, g.Token)
		if err != nil || got != g.Link {
			t.Fatalf("legacy %s token: %+v, %v; want %+v", g.Link.Kind, got, err, g.Link)
		}
		if _, err := closed.Parse(g.Link.Kind, g.Token); !errors.Is(err, tracking.ErrBadToken) {
			t.Fatalf("legacy token after the deadline: err = %v, want ErrBadToken", err)
		}
		// Still tamper-proof while accepted.
		for _, bad := range []string{g.Token[:len(g.Token)-1] + "x", "B" + g.Token[1:], g.Token + "A", strings.Replace(g.Token, ".", "", 1)} {
			if _, err := open.Parse(g.Link.Kind, bad); !errors.Is(err, tracking.ErrBadToken) {
				t.Fatalf("altered legacy token %s: err = %v", bad, err)
			}
		}
		for _, kind := range []string{tracking.Open, tracking.Click, tracking.Unsubscribe} {
			if _, err := open.Parse(kind, g.Token); kind != g.Link.Kind && !errors.Is(err, tracking.ErrBadToken) {
				t.Fatalf("legacy %s token accepted as %s", g.Link.Kind, kind)
			}
		}
	}
	// New links are never minted in the old format.
	for _, l := range marketingLinks() {
		if tok := open.Token(l); strings.Contains(tok, ".") || tok == trackingtest.LegacyToken(secret, l) {
			t.Fatalf("minted a legacy token %s", tok)
		}
	}
}

// A typical click token is about as long as the signed-only one it
// replaces, far below what URLs and email clients bear.
func TestTypicalClickTokenLength(t *testing.T) {
	s := signer(t)
	l := marketingLinks()[1]
	legacy, current := len(trackingtest.LegacyToken(secret, l)), len(s.Token(l))
	t.Logf("click token: legacy %d chars, current %d chars", legacy, current)
	if current > legacy+16 {
		t.Fatalf("current token %d chars, legacy %d", current, legacy)
	}
}
