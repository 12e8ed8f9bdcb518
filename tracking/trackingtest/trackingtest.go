// Package trackingtest helps tests of tracking links: it makes links in the
// legacy format notifyd minted before tokens were encrypted (as emails
// already sent hold them), and looks for what a token gives away.
package trackingtest

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"

	"github.com/notifyd/notifyd/tracking"
)

// LegacyToken is the token notifyd minted for l with secret before tokens
// were encrypted: base64url(payload) "." base64url(HMAC-SHA256[:16]), the
// payload readable by anyone. It is written from the old code, apart from
// it; the tracking tests check it against tokens the old code minted
// (tracking/testdata/legacy_tokens.json).
func LegacyToken(secret []byte, l tracking.Link) string {
	payload := []byte{1}
	for _, f := range []string{l.NotificationID, l.Tenant, l.UserID, l.Template, l.Category, l.Channel, l.Campaign, l.URL} {
		payload = binary.AppendUvarint(payload, uint64(len(f)))
		payload = append(payload, f...)
	}
	p := base64.RawURLEncoding.EncodeToString(payload)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("notifyd-tracking-v1\x00" + l.Kind + "\x00" + p))
	return p + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:16])
}

// LegacyURL is LegacyToken's link under base, as the old code made it.
func LegacyURL(base string, secret []byte, l tracking.Link) string {
	return strings.TrimRight(base, "/") + "/t/" + l.Kind + "/" + LegacyToken(secret, l)
}

const (
	stdAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	urlAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	hexAlphabet = "0123456789abcdefABCDEF"
)

// Reveal tells where s (a token, or a whole URL) gives away one of secrets:
// in s itself, percent-decoded, or in the base64 (standard or URL alphabet,
// any alignment), base64url or hex decoding of any of its substrings. ""
// means nowhere.
//
// Decoding a prefix of a base64 or hex run gives a prefix of the run's
// decoding, so decoding, from every offset, the longest run of the
// alphabet that starts there covers every substring.
func Reveal(s string, secrets ...[]byte) string {
	type view struct {
		how  string
		data []byte
	}
	views := []view{{"as it is", []byte(s)}}
	if u, err := url.PathUnescape(s); err == nil {
		views = append(views, view{"percent-decoded", []byte(u)})
	}
	for i := range len(s) {
		for _, a := range []struct {
			name, alphabet string
			enc            *base64.Encoding
		}{{"base64", stdAlphabet, base64.RawStdEncoding}, {"base64url", urlAlphabet, base64.RawURLEncoding}} {
			run := alphabetRun(s[i:], a.alphabet)
			if len(run)%4 == 1 {
				run = run[:len(run)-1] // one char is no byte
			}
			if b, err := a.enc.DecodeString(run); err == nil && len(b) > 0 {
				views = append(views, view{fmt.Sprintf("%s from offset %d", a.name, i), b})
			}
		}
		run := alphabetRun(s[i:], hexAlphabet)
		if b, err := hex.DecodeString(run[:len(run)&^1]); err == nil && len(b) > 0 {
			views = append(views, view{fmt.Sprintf("hex from offset %d", i), b})
		}
	}
	for _, v := range views {
		for _, secret := range secrets {
			if bytes.Contains(v.data, secret) {
				return fmt.Sprintf("%q %s", secret, v.how)
			}
		}
	}
	return ""
}

func alphabetRun(s, alphabet string) string {
	for i := range len(s) {
		if strings.IndexByte(alphabet, s[i]) < 0 {
			return s[:i]
		}
	}
	return s
}
