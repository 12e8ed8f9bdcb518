// Package webpushtest runs a push service (RFC 8030) for tests, with test
// "browsers" subscribed to it. It verifies every message as a push service
// does (VAPID per RFC 8292, the TTL, Urgency, Topic and Content-Encoding
// headers, the size) and then decrypts it as the browser would (RFC 8291), so a
// test sees exactly the plaintext a service worker would get.
package webpushtest

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
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

// DefaultMaxBody is the largest message body the service accepts (RFC 8030
// §7.2: at least 4096 bytes; what FCM and autopush take).
const DefaultMaxBody = 4096

// Subscription is what the browser's PushSubscription.toJSON() gives the
// application: the push resource URL and the keys, base64url without padding.
type Subscription struct {
	Endpoint string
	P256dh   string
	Auth     string
}

// Message is one push message the service accepted, decrypted.
type Message struct {
	Endpoint  string
	Location  string // the push message resource answered in Location
	Plaintext []byte
	TTL       int
	Urgency   string // "" when the header was absent
	Topic     string
	VAPIDKey  string // k, base64url
	Subject   string // the JWT's sub
}

// Rejection is a request the service refused.
type Rejection struct {
	Endpoint string
	Status   int
	Reason   string
}

type subscription struct {
	endpoint  string
	key       *ecdh.PrivateKey
	auth      []byte
	serverKey []byte // applicationServerKey: messages must carry this k
	gone      bool
}

type forced struct {
	status     int
	retryAfter time.Duration
}

// Server is a push service on loopback.
type Server struct {
	*httptest.Server
	// MaxBody is the largest body accepted; 0 = DefaultMaxBody.
	MaxBody int

	messages fake.Log[Message]
	rejected fake.Log[Rejection]
	next     fake.Queue[forced]
	requests fake.Counter

	mu   sync.Mutex
	subs map[string]*subscription // by path
	seq  int
}

// Start runs a push service.
func Start() *Server {
	s := &Server{subs: map[string]*subscription{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// Subscribe is a browser calling pushManager.subscribe({applicationServerKey}):
// it makes the user agent's P-256 key pair and 16-byte auth secret, and the
// service ties the new subscription to applicationServerKey (base64url; ""
// for an unrestricted subscription).
func (s *Server) Subscribe(applicationServerKey string) (Subscription, error) {
	var serverKey []byte
	if applicationServerKey != "" {
		k, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(applicationServerKey, "="))
		if err != nil || len(k) != 65 {
			return Subscription{}, fmt.Errorf("applicationServerKey is not a base64url P-256 public key")
		}
		if _, err := ecdh.P256().NewPublicKey(k); err != nil {
			return Subscription{}, err
		}
		serverKey = k
	}
	key, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return Subscription{}, err
	}
	auth := make([]byte, 16)
	if _, err := rand.Read(auth); err != nil {
		return Subscription{}, err
	}
	tok := make([]byte, 24)
	_, _ = rand.Read(tok)
	path := "/wpush/v2/" + base64.RawURLEncoding.EncodeToString(tok)
	sub := &subscription{endpoint: s.URL + path, key: key, auth: auth, serverKey: serverKey}
	s.mu.Lock()
	s.subs[path] = sub
	s.mu.Unlock()
	return Subscription{Endpoint: sub.endpoint, P256dh: base64.RawURLEncoding.EncodeToString(key.PublicKey().Bytes()),
		Auth: base64.RawURLEncoding.EncodeToString(auth)}, nil
}

// Expire ends a subscription (the user unsubscribed or it timed out): later
// messages to it are answered 410 Gone.
func (s *Server) Expire(endpoint string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sub := range s.subs {
		if sub.endpoint == endpoint {
			sub.gone = true
		}
	}
}

// Throttle answers the next n requests 429 Too Many Requests with Retry-After.
func (s *Server) Throttle(n int, retryAfter time.Duration) {
	s.FailNext(n, http.StatusTooManyRequests, retryAfter)
}

// FailNext answers the next n requests with status (a 5xx, or any permanent
// error), with Retry-After when retryAfter > 0.
func (s *Server) FailNext(n, status int, retryAfter time.Duration) {
	s.next.FailNext(n, forced{status, retryAfter})
}

// Messages are the accepted messages, in arrival order.
func (s *Server) Messages() []Message { return s.messages.All() }

// Rejections are the refused requests, in arrival order.
func (s *Server) Rejections() []Rejection { return s.rejected.All() }

// Requests counts every request received.
func (s *Server) Requests() int { return s.requests.Get() }

// errorBody is autopush's error answer.
type errorBody struct {
	Code     int    `json:"code"`
	Errno    int    `json:"errno"`
	Error    string `json:"error"`
	Message  string `json:"message"`
	MoreInfo string `json:"more_info"`
}

var topicRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	s.requests.Inc()
	f, forcedAnswer := s.next.Pop()
	s.mu.Lock()
	sub := s.subs[r.URL.Path]
	maxBody := s.MaxBody
	s.mu.Unlock()
	endpoint := s.URL + r.URL.Path
	reject := func(status, errno int, msg string) {
		s.rejected.Add(Rejection{Endpoint: endpoint, Status: status, Reason: msg})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(errorBody{Code: status, Errno: errno, Error: http.StatusText(status), Message: msg,
			MoreInfo: "https://mozilla-services.github.io/autopush-rs/errors.html"})
	}
	if err != nil {
		reject(http.StatusBadRequest, 999, "unreadable body")
		return
	}
	if forcedAnswer {
		if f.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int((f.retryAfter+time.Second-1)/time.Second)))
		}
		reject(f.status, 201, "forced answer")
		return
	}
	if r.Method != http.MethodPost {
		reject(http.StatusMethodNotAllowed, 999, "push messages are POSTed")
		return
	}
	if sub == nil {
		reject(http.StatusNotFound, 102, "Request did not validate invalid token")
		return
	}
	// VAPID: absent → 401, present but invalid → 403 (RFC 8292 §4.2).
	v, err := VerifyVAPID(r.Header.Get("Authorization"), s.URL, time.Now())
	if err == errNoVAPID {
		reject(http.StatusUnauthorized, 109, "Missing vapid authorization")
		return
	}
	if err != nil {
		reject(http.StatusForbidden, 109, "Invalid vapid authorization: "+err.Error())
		return
	}
	if sub.serverKey != nil && !bytes.Equal(v.Key, sub.serverKey) {
		reject(http.StatusForbidden, 109, "vapid key does not match the subscription's applicationServerKey")
		return
	}
	if sub.gone {
		reject(http.StatusGone, 106, "Subscription is no longer valid")
		return
	}
	ttl, err := strconv.Atoi(r.Header.Get("TTL"))
	if err != nil || ttl < 0 {
		reject(http.StatusBadRequest, 111, "Missing or invalid TTL header")
		return
	}
	urgency := r.Header.Get("Urgency")
	switch urgency {
	case "", "very-low", "low", "normal", "high":
	default:
		reject(http.StatusBadRequest, 112, "Invalid Urgency header")
		return
	}
	topic := r.Header.Get("Topic")
	if topic != "" && !topicRe.MatchString(topic) {
		reject(http.StatusBadRequest, 113, "Topic must be at most 32 characters of the base64url alphabet")
		return
	}
	if r.Header.Get("Content-Encoding") != "aes128gcm" {
		reject(http.StatusBadRequest, 110, "Content-Encoding must be aes128gcm")
		return
	}
	if maxBody == 0 {
		maxBody = DefaultMaxBody
	}
	if len(body) > maxBody {
		reject(http.StatusRequestEntityTooLarge, 104, fmt.Sprintf("Data payload too large: %d bytes, the limit is %d", len(body), maxBody))
		return
	}
	// The browser's side: a message it cannot decrypt is lost. Answered 400
	// here so a test sees the failure.
	plaintext, err := Decrypt(body, sub.key, sub.auth)
	if err != nil {
		reject(http.StatusBadRequest, 110, "test browser could not decrypt: "+err.Error())
		return
	}
	if r.Context().Err() != nil {
		return
	}
	s.mu.Lock()
	s.seq++
	loc := fmt.Sprintf("%s/m/%d", s.URL, s.seq)
	s.messages.Add(Message{Endpoint: endpoint, Location: loc, Plaintext: plaintext, TTL: ttl,
		Urgency: urgency, Topic: topic, VAPIDKey: base64.RawURLEncoding.EncodeToString(v.Key), Subject: v.Subject})
	s.mu.Unlock()
	w.Header().Set("Location", loc)
	w.WriteHeader(http.StatusCreated)
}
