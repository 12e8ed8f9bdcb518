// Package apnstest runs a local APNs: the HTTP/2-over-TLS provider API
// (POST /3/device/<token>) with token-based authentication verified the way
// APNs does (ES256 JWT, kid and iss checked, iat at most an hour old), the
// documented request headers validated, and the documented error answers
// ({"reason":"…"} with the status of the reason).
package apnstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/notifyd/notifyd/sinks/internal/fake"
)

// Options configure a server.
type Options struct {
	TeamID string // the team whose key signs provider tokens (JWT iss)
	KeyID  string // the key's id (JWT kid)
	Topic  string // when set, the only apns-topic accepted (else 400 BadTopic)
	// Key is the team's signing key; nil = a fresh P-256 key (KeyPEM gives it).
	Key *ecdsa.PrivateKey
	// Now is the server's clock (nil = time.Now): provider tokens older than an
	// hour by it are expired, and a new provider token within 20 minutes of the
	// previous one answers 429 TooManyProviderTokenUpdates.
	Now func() time.Time
}

// Alert is the aps.alert of a push (a dictionary, or a string taken as body).
type Alert struct {
	Title string `json:"title,omitempty"`
	Body  string `json:"body,omitempty"`
}

// UnmarshalJSON accepts the dictionary and the string forms.
func (a *Alert) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		*a = Alert{Body: s}
		return nil
	}
	type plain Alert
	return json.Unmarshal(b, (*plain)(a))
}

// APS is the aps dictionary of a push.
type APS struct {
	Alert          Alert  `json:"alert"`
	Badge          *int   `json:"badge,omitempty"`
	Sound          string `json:"sound,omitempty"`
	MutableContent int    `json:"mutable-content,omitempty"`
}

// Push is one accepted notification.
type Push struct {
	Token   string         // the device token of the path
	ID      string         // the apns-id answered
	Header  http.Header    // the request headers, authorization removed
	Payload map[string]any // the whole JSON body
	APS     APS            // its aps dictionary
	Raw     []byte         // the body as sent
	Proto   string         // HTTP/2.0
	// TokenIssuedAt is the iat of the provider token that authorized it.
	TokenIssuedAt time.Time
}

// Rejection is a request answered with an error.
type Rejection struct {
	Status int
	Reason string
	Token  string
}

type failure struct {
	status     int
	reason     string
	retryAfter string
}

// Server is a local APNs.
type Server struct {
	*httptest.Server
	TeamID, KeyID, Topic string

	key *ecdsa.PrivateKey
	now func() time.Time

	pushes     fake.Log[Push]
	rejections fake.Log[Rejection]
	failNext   fake.Queue[failure]

	mu           sync.Mutex
	unregistered map[string]time.Time
	badTokens    map[string]bool
	tokens       map[string]bool // provider tokens that authorized a request
	expired      map[string]bool
	lastNewToken time.Time
	allowUpdate  bool
}

// Start runs a server on loopback with TLS and HTTP/2.
func Start(o Options) (*Server, error) {
	if o.TeamID == "" || o.KeyID == "" {
		return nil, fmt.Errorf("apnstest: TeamID and KeyID are required")
	}
	key := o.Key
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, err
		}
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	s := &Server{TeamID: o.TeamID, KeyID: o.KeyID, Topic: o.Topic, key: key, now: now,
		unregistered: map[string]time.Time{}, badTokens: map[string]bool{}, tokens: map[string]bool{}, expired: map[string]bool{}}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.Server.EnableHTTP2 = true
	s.Server.StartTLS()
	return s, nil
}

// KeyPEM is the team's signing key as a .p8 file holds it (PKCS#8 PEM).
func (s *Server) KeyPEM() string { return keyPEM(s.key) }

// NewKeyPEM is a fresh P-256 key in .p8 form, one the server does not trust.
func NewKeyPEM() (string, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	return keyPEM(k), nil
}

func keyPEM(k *ecdsa.PrivateKey) string {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// CACertPEM is the PEM of the server's certificate, to trust as a root CA.
func (s *Server) CACertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Server.Certificate().Raw})
}

// Unregister makes token answer 410 Unregistered (with the timestamp).
func (s *Server) Unregister(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unregistered[strings.ToLower(token)] = s.now()
}

// BadDeviceToken makes token answer 400 BadDeviceToken.
func (s *Server) BadDeviceToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.badTokens[strings.ToLower(token)] = true
}

// FailNext answers the next n authorized requests with status and reason
// (e.g. 429 TooManyRequests, 503 ServiceUnavailable, 400 BadTopic), with a
// Retry-After header when retryAfter is not empty.
func (s *Server) FailNext(n, status int, reason, retryAfter string) {
	s.failNext.FailNext(n, failure{status, reason, retryAfter})
}

// ExpireProviderTokens makes every provider token seen so far answer 403
// ExpiredProviderToken, and lets the next new token in at once.
func (s *Server) ExpireProviderTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t := range s.tokens {
		s.expired[t] = true
	}
	s.allowUpdate = true
}

// Pushes are the accepted notifications, in arrival order.
func (s *Server) Pushes() []Push { return s.pushes.All() }

// Rejections are the requests answered with an error, in arrival order.
func (s *Server) Rejections() []Rejection { return s.rejections.All() }

// ProviderTokens counts the distinct provider tokens that verified.
func (s *Server) ProviderTokens() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.tokens)
}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
var hexRE = regexp.MustCompile(`^[0-9a-fA-F]+$`)

var pushTypes = map[string]bool{"alert": true, "background": true, "location": true, "voip": true, "complication": true,
	"fileprovider": true, "mdm": true, "liveactivity": true, "pushtotalk": true, "widgets": true, "controls": true}

func (s *Server) reject(w http.ResponseWriter, status int, reason, token string, extra map[string]any) {
	s.rejections.Add(Rejection{Status: status, Reason: reason, Token: token})
	body := map[string]any{"reason": reason}
	for k, v := range extra {
		body[k] = v
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("apns-id", newUUID())
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 2 || r.TLS == nil {
		s.reject(w, http.StatusBadRequest, "HTTP2Required", "", nil) // APNs speaks HTTP/2 over TLS only
		return
	}
	if r.Method != http.MethodPost {
		s.reject(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "", nil)
		return
	}
	token, ok := strings.CutPrefix(r.URL.Path, "/3/device/")
	if !ok || strings.Contains(token, "/") {
		s.reject(w, http.StatusNotFound, "BadPath", "", nil)
		return
	}
	if token == "" {
		s.reject(w, http.StatusBadRequest, "MissingDeviceToken", "", nil)
		return
	}
	// Provider authentication.
	auth := r.Header.Get("authorization")
	scheme, jwt, _ := strings.Cut(auth, " ")
	if auth == "" || !strings.EqualFold(scheme, "bearer") || jwt == "" {
		s.reject(w, http.StatusForbidden, "MissingProviderToken", token, nil)
		return
	}
	iat, reason := s.verify(jwt)
	if reason != "" {
		s.reject(w, http.StatusForbidden, reason, token, nil)
		return
	}
	s.mu.Lock()
	switch {
	case s.expired[jwt]:
		reason = "ExpiredProviderToken"
	case !s.tokens[jwt] && len(s.tokens) > 0 && !s.allowUpdate && s.now().Sub(s.lastNewToken) < 20*time.Minute:
		reason = "TooManyProviderTokenUpdates"
	case !s.tokens[jwt]:
		s.tokens[jwt] = true
		s.lastNewToken = s.now()
		s.allowUpdate = false
	}
	s.mu.Unlock()
	switch reason {
	case "ExpiredProviderToken":
		s.reject(w, http.StatusForbidden, reason, token, nil)
		return
	case "TooManyProviderTokenUpdates":
		s.reject(w, http.StatusTooManyRequests, reason, token, nil)
		return
	}
	// Headers.
	for _, v := range r.Header {
		if len(v) > 1 {
			s.reject(w, http.StatusBadRequest, "DuplicateHeaders", token, nil)
			return
		}
	}
	topic := r.Header.Get("apns-topic")
	if topic == "" {
		s.reject(w, http.StatusBadRequest, "MissingTopic", token, nil)
		return
	}
	if s.Topic != "" && topic != s.Topic {
		s.reject(w, http.StatusBadRequest, "BadTopic", token, nil)
		return
	}
	if pt := r.Header.Get("apns-push-type"); pt != "" && !pushTypes[pt] {
		s.reject(w, http.StatusBadRequest, "InvalidPushType", token, nil)
		return
	}
	switch r.Header.Get("apns-priority") {
	case "", "10", "5", "1":
	default:
		s.reject(w, http.StatusBadRequest, "BadPriority", token, nil)
		return
	}
	if e := r.Header.Get("apns-expiration"); e != "" {
		if v, err := strconv.ParseInt(e, 10, 64); err != nil || v < 0 {
			s.reject(w, http.StatusBadRequest, "BadExpirationDate", token, nil)
			return
		}
	}
	if len(r.Header.Get("apns-collapse-id")) > 64 {
		s.reject(w, http.StatusBadRequest, "BadCollapseId", token, nil)
		return
	}
	id := r.Header.Get("apns-id")
	if id != "" && !uuidRE.MatchString(id) {
		s.reject(w, http.StatusBadRequest, "BadMessageId", token, nil)
		return
	}
	// Payload.
	raw, err := io.ReadAll(io.LimitReader(r.Body, 4097))
	if err != nil {
		s.reject(w, http.StatusBadRequest, "BadPayload", token, nil)
		return
	}
	if len(raw) > 4096 {
		s.reject(w, http.StatusRequestEntityTooLarge, "PayloadTooLarge", token, nil)
		return
	}
	if len(raw) == 0 {
		s.reject(w, http.StatusBadRequest, "PayloadEmpty", token, nil)
		return
	}
	var payload map[string]any
	var env struct {
		APS *APS `json:"aps"`
	}
	if json.Unmarshal(raw, &payload) != nil || json.Unmarshal(raw, &env) != nil || env.APS == nil {
		s.reject(w, http.StatusBadRequest, "BadPayload", token, nil)
		return
	}
	// The device.
	s.mu.Lock()
	gone, isGone := s.unregistered[strings.ToLower(token)]
	bad := s.badTokens[strings.ToLower(token)]
	f, failing := s.failNext.Pop()
	s.mu.Unlock()
	switch {
	case !hexRE.MatchString(token) || bad:
		s.reject(w, http.StatusBadRequest, "BadDeviceToken", token, nil)
		return
	case isGone:
		s.reject(w, http.StatusGone, "Unregistered", token, map[string]any{"timestamp": gone.UnixMilli()})
		return
	case failing:
		if f.retryAfter != "" {
			w.Header().Set("Retry-After", f.retryAfter)
		}
		s.reject(w, f.status, f.reason, token, nil)
		return
	}
	if id == "" {
		id = newUUID()
	}
	hdr := r.Header.Clone()
	hdr.Del("authorization")
	s.pushes.Add(Push{Token: token, ID: id, Header: hdr, Payload: payload, APS: *env.APS, Raw: raw,
		Proto: r.Proto, TokenIssuedAt: iat})
	w.Header().Set("apns-id", id)
	w.WriteHeader(http.StatusOK)
}

// verify checks a provider token: three base64url parts, header
// {"alg":"ES256","kid":KeyID}, claims {"iss":TeamID,"iat":…}, the signature
// the raw 64-byte R||S of ECDSA P-256 over SHA-256 of "header.claims" by the
// team's key, and iat no more than an hour old. It answers the iat, or the
// APNs reason for refusing.
func (s *Server) verify(jwt string) (time.Time, string) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return time.Time{}, "InvalidProviderToken"
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	cb, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return time.Time{}, "InvalidProviderToken"
	}
	var h struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	var c struct {
		Iss string   `json:"iss"`
		Iat *float64 `json:"iat"`
	}
	if json.Unmarshal(hb, &h) != nil || json.Unmarshal(cb, &c) != nil || h.Alg != "ES256" || h.Kid != s.KeyID ||
		c.Iss != s.TeamID || c.Iat == nil {
		return time.Time{}, "InvalidProviderToken"
	}
	if !fake.ES256Valid(&s.key.PublicKey, parts[0]+"."+parts[1], sig) {
		return time.Time{}, "InvalidProviderToken"
	}
	iat := time.Unix(int64(*c.Iat), 0)
	if s.now().Sub(iat) > time.Hour {
		return iat, "ExpiredProviderToken"
	}
	return iat, ""
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%X-%X-%X-%X-%X", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
