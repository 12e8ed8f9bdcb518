// Package fcmtest runs a local stand-in for Firebase Cloud Messaging's HTTP v1
// API and Google's OAuth2 token endpoint, verifying what the real services
// verify: the service account's RS256 JWT assertion (signature with the
// account's public key, iss, aud, scope, iat/exp), the bearer token on
// messages:send, and the message itself. It answers errors as FCM does
// (google.rpc.Status with a google.firebase.fcm.v1.FcmError detail).
package fcmtest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/notifyd/notifyd/sinks/internal/fake"
)

const (
	// Scope is the OAuth2 scope FCM requires.
	Scope = "https://www.googleapis.com/auth/firebase.messaging"
	// CloudPlatformScope also grants FCM.
	CloudPlatformScope = "https://www.googleapis.com/auth/cloud-platform"
	// JWTBearer is the grant type of a service-account assertion (RFC 7523).
	JWTBearer = "urn:ietf:params:oauth:grant-type:jwt-bearer"
	// FcmErrorType is the @type of FCM's error detail.
	FcmErrorType = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
	// BadRequestType is the @type of the detail naming invalid fields.
	BadRequestType = "type.googleapis.com/google.rpc.BadRequest"
	// MaxPayload is FCM's payload limit (data keys and values, notification).
	MaxPayload = 4096
)

// Message is one message FCM accepted, decoded.
type Message struct {
	Name         string            `json:"-"` // projects/<p>/messages/<id>
	Token        string            `json:"token,omitempty"`
	Topic        string            `json:"topic,omitempty"`
	Condition    string            `json:"condition,omitempty"`
	Notification *Notification     `json:"notification,omitempty"`
	Data         map[string]string `json:"data,omitempty"`
	Android      *AndroidConfig    `json:"android,omitempty"`
	APNS         *APNSConfig       `json:"apns,omitempty"`
	Webpush      *WebpushConfig    `json:"webpush,omitempty"`
	FcmOptions   *FcmOptions       `json:"fcm_options,omitempty"`
}

// Notification is the cross-platform notification.
type Notification struct {
	Title string `json:"title,omitempty"`
	Body  string `json:"body,omitempty"`
	Image string `json:"image,omitempty"`
}

// AndroidConfig is the Android override.
type AndroidConfig struct {
	CollapseKey           string               `json:"collapse_key,omitempty"`
	Priority              string               `json:"priority,omitempty"`
	TTL                   string               `json:"ttl,omitempty"`
	RestrictedPackageName string               `json:"restricted_package_name,omitempty"`
	Data                  map[string]string    `json:"data,omitempty"`
	Notification          *AndroidNotification `json:"notification,omitempty"`
	FcmOptions            *FcmOptions          `json:"fcm_options,omitempty"`
	DirectBootOK          bool                 `json:"direct_boot_ok,omitempty"`
}

// AndroidNotification is the Android notification override.
type AndroidNotification struct {
	Title             string `json:"title,omitempty"`
	Body              string `json:"body,omitempty"`
	Icon              string `json:"icon,omitempty"`
	Color             string `json:"color,omitempty"`
	Sound             string `json:"sound,omitempty"`
	Tag               string `json:"tag,omitempty"`
	ClickAction       string `json:"click_action,omitempty"`
	ChannelID         string `json:"channel_id,omitempty"`
	Image             string `json:"image,omitempty"`
	NotificationCount *int   `json:"notification_count,omitempty"`
}

// APNSConfig is the APNs override: headers and the raw APNs payload.
type APNSConfig struct {
	Headers    map[string]string `json:"headers,omitempty"`
	Payload    *APNSPayload      `json:"payload,omitempty"`
	FcmOptions *FcmOptions       `json:"fcm_options,omitempty"`
}

// APNSPayload is the APNs JSON payload; Custom holds its keys besides aps.
type APNSPayload struct {
	Aps    Aps
	Custom map[string]json.RawMessage
}

// Aps is the aps dictionary.
type Aps struct {
	Alert            json.RawMessage `json:"alert,omitempty"`
	Badge            *int            `json:"badge,omitempty"`
	Sound            json.RawMessage `json:"sound,omitempty"`
	ContentAvailable int             `json:"content-available,omitempty"`
	MutableContent   int             `json:"mutable-content,omitempty"`
	Category         string          `json:"category,omitempty"`
	ThreadID         string          `json:"thread-id,omitempty"`
}

// SoundName is the aps sound when it is a plain name.
func (a Aps) SoundName() string {
	var s string
	_ = json.Unmarshal(a.Sound, &s)
	return s
}

// UnmarshalJSON reads aps strictly and keeps the other keys.
func (p *APNSPayload) UnmarshalJSON(b []byte) error {
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	if raw, ok := all["aps"]; ok {
		if err := strictDecode(raw, &p.Aps); err != nil {
			return fmt.Errorf("apns.payload.aps: %w", err)
		}
		delete(all, "aps")
	}
	p.Custom = all
	return nil
}

// WebpushConfig is the web push override.
type WebpushConfig struct {
	Headers      map[string]string `json:"headers,omitempty"`
	Data         map[string]string `json:"data,omitempty"`
	Notification map[string]any    `json:"notification,omitempty"`
	FcmOptions   *WebpushOptions   `json:"fcm_options,omitempty"`
}

// WebpushOptions are the web push FCM options.
type WebpushOptions struct {
	Link           string `json:"link,omitempty"`
	AnalyticsLabel string `json:"analytics_label,omitempty"`
}

// FcmOptions are the platform-independent FCM options.
type FcmOptions struct {
	AnalyticsLabel string `json:"analytics_label,omitempty"`
	Image          string `json:"image,omitempty"`
}

// Failure is an error answer FCM gives.
type Failure struct {
	HTTP       int
	Status     string // google.rpc status: UNAVAILABLE, RESOURCE_EXHAUSTED, …
	ErrorCode  string // FcmError errorCode: UNAVAILABLE, QUOTA_EXCEEDED, …
	Message    string
	RetryAfter string // Retry-After header, "" for none
	Field      string // a BadRequest field violation, "" for none
}

// Unavailable is FCM's 503 answer.
func Unavailable(retryAfter string) Failure {
	return Failure{HTTP: 503, Status: "UNAVAILABLE", ErrorCode: "UNAVAILABLE", Message: "The service is currently unavailable.", RetryAfter: retryAfter}
}

// Internal is FCM's 500 answer.
func Internal() Failure {
	return Failure{HTTP: 500, Status: "INTERNAL", ErrorCode: "INTERNAL", Message: "Internal error encountered."}
}

// QuotaExceeded is FCM's 429 answer.
func QuotaExceeded(retryAfter string) Failure {
	return Failure{HTTP: 429, Status: "RESOURCE_EXHAUSTED", ErrorCode: "QUOTA_EXCEEDED",
		Message: "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute'", RetryAfter: retryAfter}
}

// ThirdPartyAuthError is FCM's 401 answer when the project's APNs or web push
// credentials are missing or invalid.
func ThirdPartyAuthError() Failure {
	return Failure{HTTP: 401, Status: "UNAUTHENTICATED", ErrorCode: "THIRD_PARTY_AUTH_ERROR", Message: "Auth error from APNS or Web Push Service"}
}

// Server is the stand-in for FCM and Google's token endpoint.
type Server struct {
	*httptest.Server
	ProjectID   string
	ClientEmail string
	KeyID       string

	key *rsa.PrivateKey

	tokenRejected fake.Log[string] // the error_description of each refused assertion
	messages      fake.Log[Message]
	next          fake.Queue[Failure]
	tokenRequests fake.Counter
	requests      fake.Counter // authorised messages:send requests
	authRejected  fake.Counter

	mu            sync.Mutex
	tokenLifetime time.Duration
	tokens        map[string]time.Time // access token → expiry
	gone          map[string]string    // token → UNREGISTERED | SENDER_ID_MISMATCH
	seq           int
}

// Start runs a server for projectID with a fresh service-account key.
func Start(projectID string) (*Server, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	s := &Server{ProjectID: projectID, ClientEmail: "notifyd@" + projectID + ".iam.gserviceaccount.com",
		KeyID: randomHex(20), key: key, tokenLifetime: time.Hour,
		tokens: map[string]time.Time{}, gone: map[string]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/token", s.serveToken)
	mux.HandleFunc("/v1/projects/{project}/{method}", s.serveSend)
	s.Server = httptest.NewServer(mux)
	return s, nil
}

// TokenURL is the key file's token_uri.
func (s *Server) TokenURL() string { return s.URL + "/token" }

// KeyJSON is the service account's JSON key, whose token_uri is this server.
func (s *Server) KeyJSON() []byte { return s.keyJSON(s.key) }

// ForeignKeyJSON is a key file of the same account but another private key,
// one the server does not know: its assertions fail with invalid_grant.
func (s *Server) ForeignKeyJSON() ([]byte, error) {
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	return s.keyJSON(other), nil
}

func (s *Server) keyJSON(k *rsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic(err)
	}
	b, _ := json.MarshalIndent(map[string]string{
		"type":                        "service_account",
		"project_id":                  s.ProjectID,
		"private_key_id":              s.KeyID,
		"private_key":                 string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":                s.ClientEmail,
		"client_id":                   "100000000000000000001",
		"auth_uri":                    "https://accounts.google.com/o/oauth2/auth",
		"token_uri":                   s.TokenURL(),
		"auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
		"universe_domain":             "googleapis.com",
	}, "", "  ")
	return b
}

// WriteKeyFile writes key (KeyJSON when nil) to dir and returns its path.
func (s *Server) WriteKeyFile(dir string, key []byte) (string, error) {
	if key == nil {
		key = s.KeyJSON()
	}
	path := filepath.Join(dir, "service-account.json")
	return path, os.WriteFile(path, key, 0o600)
}

// SetTokenLifetime sets expires_in of the access tokens issued from now on.
func (s *Server) SetTokenLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokenLifetime = d
}

// RevokeTokens invalidates every access token issued so far.
func (s *Server) RevokeTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.tokens)
}

// Unregister makes token answer UNREGISTERED (404): the app is gone.
func (s *Server) Unregister(token string) { s.setGone(token, "UNREGISTERED") }

// MismatchSender makes token answer SENDER_ID_MISMATCH (403).
func (s *Server) MismatchSender(token string) { s.setGone(token, "SENDER_ID_MISMATCH") }

func (s *Server) setGone(token, code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gone[token] = code
}

// FailNext answers the next n authorised messages:send requests with f.
func (s *Server) FailNext(n int, f Failure) { s.next.FailNext(n, f) }

// FailAlways answers every authorised messages:send request with f (nil: stop).
func (s *Server) FailAlways(f *Failure) { s.next.FailAlways(f) }

// Messages are the accepted messages, in order.
func (s *Server) Messages() []Message { return s.messages.All() }

// Requests counts the authorised messages:send requests, accepted or not.
func (s *Server) Requests() int { return s.requests.Get() }

// TokenRequests counts the token endpoint's requests.
func (s *Server) TokenRequests() int { return s.tokenRequests.Get() }

// TokenRejections are the reasons the token endpoint refused assertions.
func (s *Server) TokenRejections() []string { return s.tokenRejected.All() }

// AuthRejected counts messages:send requests refused for their bearer token.
func (s *Server) AuthRejected() int { return s.authRejected.Get() }

// ---- the token endpoint (Google OAuth2, JWT bearer grant)

type assertionClaims struct {
	Scope string `json:"scope"`
	jwt.RegisteredClaims
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	s.tokenRequests.Inc()
	if r.Method != http.MethodPost {
		oauthError(w, http.StatusMethodNotAllowed, "invalid_request", "POST required")
		return
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/x-www-form-urlencoded" {
		oauthError(w, http.StatusBadRequest, "invalid_request", "Content-Type must be application/x-www-form-urlencoded")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", "unreadable form")
		return
	}
	if gt := r.PostForm.Get("grant_type"); gt != JWTBearer {
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "Invalid grant_type: "+gt)
		return
	}
	var claims assertionClaims
	_, err := jwt.ParseWithClaims(r.PostForm.Get("assertion"), &claims, func(t *jwt.Token) (any, error) {
		if kid, _ := t.Header["kid"].(string); kid != "" && kid != s.KeyID {
			return nil, jwt.ErrTokenSignatureInvalid
		}
		return &s.key.PublicKey, nil
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuer(s.ClientEmail), jwt.WithAudience(s.TokenURL()),
		jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithLeeway(time.Minute))
	if err == nil && (claims.IssuedAt == nil || claims.ExpiresAt.Sub(claims.IssuedAt.Time) > time.Hour) {
		err = jwt.ErrTokenInvalidClaims
	}
	if err != nil {
		desc := "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim."
		switch {
		case errors.Is(err, jwt.ErrTokenMalformed):
			desc = "Invalid JWT: malformed assertion"
		case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
			desc = "Invalid JWT Signature."
		case errors.Is(err, jwt.ErrTokenInvalidIssuer):
			desc = "Invalid grant: account not found"
		case errors.Is(err, jwt.ErrTokenInvalidAudience):
			desc = "Invalid JWT: aud is not the token endpoint"
		}
		s.tokenRejected.Add(desc)
		oauthError(w, http.StatusBadRequest, "invalid_grant", desc)
		return
	}
	if !hasScope(claims.Scope) {
		oauthError(w, http.StatusBadRequest, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
		return
	}
	tok := "ya29.test-" + randomHex(24)
	s.mu.Lock()
	life := s.tokenLifetime
	s.tokens[tok] = time.Now().Add(life)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"access_token": tok, "expires_in": int(life / time.Second), "token_type": "Bearer"})
}

func hasScope(scopes string) bool {
	for _, sc := range strings.Fields(scopes) {
		if sc == Scope || sc == CloudPlatformScope {
			return true
		}
	}
	return false
}

func oauthError(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
}

// ---- messages:send

func (s *Server) serveSend(w http.ResponseWriter, r *http.Request) {
	if r.PathValue("method") != "messages:send" || r.Method != http.MethodPost {
		rpcError(w, Failure{HTTP: 404, Status: "NOT_FOUND", Message: "Method not found."})
		return
	}
	if !s.authorised(r.Header.Get("Authorization")) {
		s.authRejected.Inc()
		rpcError(w, Failure{HTTP: 401, Status: "UNAUTHENTICATED",
			Message: "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential."})
		return
	}
	if p := r.PathValue("project"); p != s.ProjectID {
		rpcError(w, Failure{HTTP: 403, Status: "PERMISSION_DENIED",
			Message: fmt.Sprintf("Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager.googleapis.com/projects/%s' (or it may not exist).", p)})
		return
	}
	s.requests.Inc()
	fail, failing := s.next.Pop() // the queued failures before the FailAlways one
	if !failing {
		fail, failing = s.next.Always()
	}
	if failing {
		rpcError(w, fail)
		return
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
		rpcError(w, *invalid("Invalid JSON payload received. Content-Type must be application/json.", ""))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		rpcError(w, *invalid("Request payload too large", ""))
		return
	}
	var req struct {
		ValidateOnly bool     `json:"validate_only"`
		Message      *Message `json:"message"`
	}
	if err := strictDecode(body, &req); err != nil {
		rpcError(w, *invalid("Invalid JSON payload received. "+err.Error(), ""))
		return
	}
	if req.Message == nil {
		rpcError(w, *invalid("Request contains an invalid argument: message is required", "message"))
		return
	}
	m := req.Message
	if f := validate(m); f != nil {
		rpcError(w, *f)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if code, ok := s.gone[m.Token]; ok {
		if code == "UNREGISTERED" {
			rpcError(w, Failure{HTTP: 404, Status: "NOT_FOUND", ErrorCode: code, Message: "Requested entity was not found."})
		} else {
			rpcError(w, Failure{HTTP: 403, Status: "PERMISSION_DENIED", ErrorCode: code, Message: "SenderId mismatch"})
		}
		return
	}
	s.seq++
	m.Name = fmt.Sprintf("projects/%s/messages/0:%d%%%s", s.ProjectID, 1700000000000000+s.seq, randomHex(8))
	if !req.ValidateOnly {
		s.messages.Add(*m)
	}
	writeJSON(w, http.StatusOK, map[string]string{"name": m.Name})
}

func (s *Server) authorised(h string) bool {
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || tok == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.tokens[tok]
	return ok && time.Now().Before(exp)
}

var (
	tokenRE = regexp.MustCompile(`^[A-Za-z0-9_:\-]+$`)
	ttlRE   = regexp.MustCompile(`^([0-9]+)(\.[0-9]{1,9})?s$`)
)

// validate checks m as FCM does, answering its INVALID_ARGUMENT errors.
func validate(m *Message) *Failure {
	targets := 0
	for _, t := range []string{m.Token, m.Topic, m.Condition} {
		if t != "" {
			targets++
		}
	}
	if targets != 1 {
		return invalid("Exactly one of token, topic or condition must be set", "message")
	}
	if m.Token != "" && (len(m.Token) > 4096 || !tokenRE.MatchString(m.Token)) {
		return invalid("The registration token is not a valid FCM registration token", "message.token")
	}
	size := 0
	for k, v := range m.Data {
		lk := strings.ToLower(k)
		if lk == "from" || lk == "gcm" || strings.HasPrefix(lk, "google") || strings.HasPrefix(lk, "gcm.") || lk == "message_type" {
			return invalid("Invalid data payload key: "+k, "message.data")
		}
		size += len(k) + len(v)
	}
	if n := m.Notification; n != nil {
		size += len(n.Title) + len(n.Body) + len(n.Image)
	}
	if size > MaxPayload {
		return invalid("Message is too big", "message")
	}
	if a := m.Android; a != nil {
		switch strings.ToLower(a.Priority) {
		case "", "normal", "high":
		default:
			return invalid(fmt.Sprintf("Invalid value at 'message.android.priority' (type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), %q", a.Priority), "message.android.priority")
		}
		if a.TTL != "" {
			sub := ttlRE.FindStringSubmatch(a.TTL)
			if sub == nil {
				return invalid(fmt.Sprintf("Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration), %q", a.TTL), "message.android.ttl")
			}
			if secs, err := strconv.ParseInt(sub[1], 10, 64); err != nil || secs > 28*24*3600 {
				return invalid("The ttl is more than the maximum of 4 weeks", "message.android.ttl")
			}
		}
	}
	if a := m.APNS; a != nil {
		for k, v := range a.Headers {
			switch strings.ToLower(k) {
			case "apns-priority":
				if v != "10" && v != "5" && v != "1" {
					return invalid("Invalid apns-priority header: "+v, "message.apns.headers")
				}
			case "apns-expiration":
				if _, err := strconv.ParseInt(v, 10, 64); err != nil {
					return invalid("Invalid apns-expiration header: "+v, "message.apns.headers")
				}
			case "apns-collapse-id":
				if len(v) > 64 {
					return invalid("apns-collapse-id is longer than 64 bytes", "message.apns.headers")
				}
			}
		}
	}
	if wp := m.Webpush; wp != nil && wp.FcmOptions != nil && wp.FcmOptions.Link != "" &&
		!strings.HasPrefix(wp.FcmOptions.Link, "https://") {
		return invalid("The link must be an HTTPS URL", "message.webpush.fcm_options.link")
	}
	return nil
}

func invalid(msg, field string) *Failure {
	return &Failure{HTTP: 400, Status: "INVALID_ARGUMENT", ErrorCode: "INVALID_ARGUMENT", Message: msg, Field: field}
}

// rpcError writes f as FCM does: a google.rpc.Status with an FcmError detail
// (and a BadRequest one naming the field).
func rpcError(w http.ResponseWriter, f Failure) {
	var details []any
	if f.ErrorCode != "" {
		details = append(details, map[string]string{"@type": FcmErrorType, "errorCode": f.ErrorCode})
	}
	if f.Field != "" {
		details = append(details, map[string]any{"@type": BadRequestType,
			"fieldViolations": []map[string]string{{"field": f.Field, "description": f.Message}}})
	}
	if f.RetryAfter != "" {
		w.Header().Set("Retry-After", f.RetryAfter)
	}
	e := map[string]any{"code": f.HTTP, "message": f.Message, "status": f.Status}
	if details != nil {
		e["details"] = details
	}
	writeJSON(w, f.HTTP, map[string]any{"error": e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func strictDecode(b []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
