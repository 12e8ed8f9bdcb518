package webpushtest

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

func b64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	return b
}

// The decryptor opens the worked example of RFC 8291 §5 (keys and auth secret
// from its Appendix A): the test browser is right, independently of the
// provider's encryption.
func TestWebPushDecryptRFC8291Example(t *testing.T) {
	const body = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
	ua, err := ecdh.P256().NewPrivateKey(b64(t, "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"))
	if err != nil {
		t.Fatal(err)
	}
	if got := base64.RawURLEncoding.EncodeToString(ua.PublicKey().Bytes()); got != "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4" {
		t.Fatalf("ua_public = %s", got)
	}
	auth := b64(t, "BTBZMqHH6r4Tts7J_aSIgg")
	msg := b64(t, body)
	pt, err := Decrypt(msg, ua, auth)
	if err != nil {
		t.Fatal(err)
	}
	if string(pt) != "When I grow up, I want to be a watermelon" {
		t.Fatalf("plaintext %q", pt)
	}
	// Any changed byte, a wrong auth secret or a truncated body fails.
	bad := bytes.Clone(msg)
	bad[len(bad)-1] ^= 1
	if _, err := Decrypt(bad, ua, auth); err == nil {
		t.Fatal("tampered ciphertext decrypted")
	}
	if _, err := Decrypt(msg, ua, make([]byte, 16)); err == nil {
		t.Fatal("wrong auth secret decrypted")
	}
	if _, err := Decrypt(msg[:60], ua, auth); err == nil {
		t.Fatal("truncated body decrypted")
	}
}

// jwt signs claims with key as ES256 (raw R‖S).
func jwt(t *testing.T, key *ecdsa.PrivateKey, claims map[string]any) string {
	t.Helper()
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"typ":"JWT","alg":"ES256"}`))
	c, _ := json.Marshal(claims)
	signed := h + "." + base64.RawURLEncoding.EncodeToString(c)
	d := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func TestWebPushVerifyVAPID(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pub, _ := key.PublicKey.Bytes()
	k := base64.RawURLEncoding.EncodeToString(pub)
	now := time.Now()
	origin := "https://push.example.net"
	good := map[string]any{"aud": origin, "exp": now.Add(12 * time.Hour).Unix(), "sub": "mailto:ops@example.com"}
	with := func(k string, v any) map[string]any {
		m := map[string]any{}
		for a, b := range good {
			m[a] = b
		}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	v, err := VerifyVAPID("vapid t="+jwt(t, key, good)+", k="+k, origin, now)
	if err != nil || v.Subject != "mailto:ops@example.com" || !bytes.Equal(v.Key, pub) {
		t.Fatalf("valid token: %+v %v", v, err)
	}
	for name, h := range map[string]string{
		"signed by another key": "vapid t=" + jwt(t, other, good) + ", k=" + k,
		"other audience":        "vapid t=" + jwt(t, key, with("aud", "https://evil.example")) + ", k=" + k,
		"expired":               "vapid t=" + jwt(t, key, with("exp", now.Add(-time.Minute).Unix())) + ", k=" + k,
		"exp beyond 24h":        "vapid t=" + jwt(t, key, with("exp", now.Add(25*time.Hour).Unix())) + ", k=" + k,
		"no sub":                "vapid t=" + jwt(t, key, with("sub", nil)) + ", k=" + k,
		"no exp":                "vapid t=" + jwt(t, key, with("exp", nil)) + ", k=" + k,
		"no k":                  "vapid t=" + jwt(t, key, good),
		"bearer":                "Bearer " + jwt(t, key, good),
	} {
		if _, err := VerifyVAPID(h, origin, now); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// The service answers a missing authorization 401 and an invalid one 403, and
// records nothing.
func TestWebPushServerRejectsBadVAPID(t *testing.T) {
	srv := Start()
	defer srv.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pub, _ := key.PublicKey.Bytes()
	k := base64.RawURLEncoding.EncodeToString(pub)
	sub, err := srv.Subscribe(k)
	if err != nil {
		t.Fatal(err)
	}
	post := func(auth string) int {
		req, _ := http.NewRequest(http.MethodPost, sub.Endpoint, strings.NewReader("x"))
		req.Header.Set("TTL", "60")
		req.Header.Set("Content-Encoding", "aes128gcm")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	claims := map[string]any{"aud": srv.URL, "exp": time.Now().Add(time.Hour).Unix(), "sub": "mailto:a@b.c"}
	if c := post(""); c != http.StatusUnauthorized {
		t.Errorf("no authorization: %d", c)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if c := post("vapid t=" + jwt(t, other, claims) + ", k=" + k); c != http.StatusForbidden {
		t.Errorf("bad signature: %d", c)
	}
	opub, _ := other.PublicKey.Bytes()
	if c := post("vapid t=" + jwt(t, other, claims) + ", k=" + base64.RawURLEncoding.EncodeToString(opub)); c != http.StatusForbidden {
		t.Errorf("not the applicationServerKey: %d", c)
	}
	// Valid VAPID but the body is not a message for this browser.
	if c := post("vapid t=" + jwt(t, key, claims) + ", k=" + k); c != http.StatusBadRequest {
		t.Errorf("undecryptable body: %d", c)
	}
	if len(srv.Messages()) != 0 || len(srv.Rejections()) != 4 {
		t.Fatalf("messages %v rejections %v", srv.Messages(), srv.Rejections())
	}
}
