package sinks

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/jwt"

	"github.com/notifyd/notifyd/schemas"
)

// FCM HTTP v1 (Firebase Cloud Messaging): one
// POST {baseUrl}/v1/projects/{projectId}/messages:send per device token,
// authorised by an OAuth2 access token that a Google service account obtains
// with a RS256-signed JWT assertion (iss=client_email, scope=firebase.messaging,
// aud=token_uri) exchanged at the key file's token_uri.
//
// golang.org/x/oauth2/jwt runs that exchange (golang.org/x/oauth2/google
// builds the same jwt.Config from the key file, but it pulls in
// cloud.google.com/go/compute/metadata, which this module does not require).

const (
	fcmDefaultBaseURL  = "https://fcm.googleapis.com"
	fcmDefaultTokenURI = "https://oauth2.googleapis.com/token"
	// FCMScope is the OAuth2 scope of the FCM HTTP v1 API.
	FCMScope = "https://www.googleapis.com/auth/firebase.messaging"
	// fcmMaxPayload is FCM's limit on a message's payload (4096 bytes, keys
	// and values included); notifyd counts the whole message but the token.
	fcmMaxPayload = 4096
	// fcmMaxTTL is the longest time to live FCM keeps a message (4 weeks).
	fcmMaxTTL = 28 * 24 * time.Hour
	// fcmQuotaBackoff is the wait after QUOTA_EXCEEDED without Retry-After:
	// FCM asks for exponential backoff starting at one minute.
	fcmQuotaBackoff = time.Minute
	// fcmErrorType is the @type of FCM's error detail naming its ErrorCode.
	fcmErrorType = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
)

// fcmSettings is the `fcm:` section of a provider.
type fcmSettings struct {
	// CredentialsFile is the path of a service-account JSON key.
	CredentialsFile string `yaml:"credentialsFile"`
	// CredentialsJSON is the same key inline (e.g. "${FCM_CREDENTIALS}").
	CredentialsJSON string `yaml:"credentialsJson"`
	// ProjectID is the Firebase project; default: the key's project_id.
	ProjectID string `yaml:"projectId"`
	// BaseURL of the FCM API; default https://fcm.googleapis.com.
	BaseURL string `yaml:"baseUrl"`
	// Timeout bounds each HTTP call (token and send); default 10s.
	Timeout time.Duration `yaml:"timeout"`
}

// fcmServiceAccount is what notifyd reads of a service-account key file.
type fcmServiceAccount struct {
	Type         string `json:"type"`
	ProjectID    string `json:"project_id"`
	PrivateKeyID string `json:"private_key_id"`
	PrivateKey   string `json:"private_key"`
	ClientEmail  string `json:"client_email"`
	TokenURI     string `json:"token_uri"`
}

type fcmProvider struct {
	name    string
	sendURL string
	client  *http.Client
	conf    *jwt.Config
	now     func() time.Time

	mu sync.Mutex
	ts oauth2.TokenSource // caches the access token until shortly before it expires
}

func init() {
	Register("fcm", Type{Channels: []string{"push"}, New: newFCMProvider})
}

func newFCMProvider(s Spec) (Provider, error) {
	var st fcmSettings
	if err := s.Settings(&st); err != nil {
		return nil, err
	}
	var raw []byte
	switch {
	case st.CredentialsFile != "" && strings.TrimSpace(st.CredentialsJSON) != "":
		return nil, errors.New("fcm: set credentialsFile or credentialsJson, not both")
	case st.CredentialsFile != "":
		b, err := os.ReadFile(st.CredentialsFile)
		if err != nil {
			return nil, fmt.Errorf("fcm: credentialsFile: %w", err)
		}
		raw = b
	case strings.TrimSpace(st.CredentialsJSON) != "":
		raw = []byte(st.CredentialsJSON)
	default:
		return nil, errors.New("fcm: credentialsFile or credentialsJson (a Google service-account JSON key) is required")
	}
	sa, err := parseFCMServiceAccount(raw)
	if err != nil {
		return nil, err
	}
	project := st.ProjectID
	if project == "" {
		project = sa.ProjectID
	}
	if project == "" {
		return nil, errors.New("fcm: projectId is required (the service-account key has no project_id)")
	}
	if strings.ContainsAny(project, "/?#% ") {
		return nil, fmt.Errorf("fcm: projectId %q is not a project id", project)
	}
	base := st.BaseURL
	if base == "" {
		base = fcmDefaultBaseURL
	}
	if err := checkHTTPURL("baseUrl", base); err != nil {
		return nil, fmt.Errorf("fcm: %w", err)
	}
	if st.Timeout < 0 {
		return nil, fmt.Errorf("fcm: timeout %s is negative", st.Timeout)
	}
	p := &fcmProvider{
		name:    s.Name,
		sendURL: strings.TrimRight(base, "/") + "/v1/projects/" + url.PathEscape(project) + "/messages:send",
		client:  newHTTPClient(st.Timeout, nil),
		conf: &jwt.Config{Email: sa.ClientEmail, PrivateKey: []byte(sa.PrivateKey), PrivateKeyID: sa.PrivateKeyID,
			Scopes: []string{FCMScope}, TokenURL: sa.TokenURI},
		now: s.Deps.now,
	}
	p.ts = p.newTokenSource()
	return p, nil
}

// parseFCMServiceAccount reads and checks a service-account key; its errors
// never quote the key.
func parseFCMServiceAccount(raw []byte) (*fcmServiceAccount, error) {
	var sa fcmServiceAccount
	if err := json.Unmarshal(raw, &sa); err != nil {
		return nil, errors.New("fcm: the credentials are not a JSON service-account key")
	}
	if sa.Type != "service_account" {
		return nil, fmt.Errorf("fcm: the credentials are of type %q, want a service_account key", sa.Type)
	}
	if sa.ClientEmail == "" {
		return nil, errors.New("fcm: the service-account key has no client_email")
	}
	if sa.PrivateKey == "" {
		return nil, errors.New("fcm: the service-account key has no private_key")
	}
	block, _ := pem.Decode([]byte(sa.PrivateKey))
	if block == nil {
		return nil, errors.New("fcm: the service-account private_key is not PEM")
	}
	var key any
	var err error
	if key, err = x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
		if key, err = x509.ParsePKCS1PrivateKey(block.Bytes); err != nil {
			return nil, errors.New("fcm: the service-account private_key is not a PKCS#8 or PKCS#1 private key")
		}
	}
	if _, ok := key.(*rsa.PrivateKey); !ok {
		return nil, errors.New("fcm: the service-account private_key is not an RSA key (RS256 needs one)")
	}
	if sa.TokenURI == "" {
		sa.TokenURI = fcmDefaultTokenURI
	}
	if err := checkHTTPURL("the service-account token_uri", sa.TokenURI); err != nil {
		return nil, fmt.Errorf("fcm: %w", err)
	}
	return &sa, nil
}

func (p *fcmProvider) Name() string        { return p.name }
func (p *fcmProvider) Platforms() []string { return []string{"fcm"} }

// newTokenSource fetches tokens with the provider's bounded HTTP client and
// reuses each until shortly before it expires.
func (p *fcmProvider) newTokenSource() oauth2.TokenSource {
	return p.conf.TokenSource(context.WithValue(context.Background(), oauth2.HTTPClient, p.client))
}

// token is the current access token and the source that gave it.
func (p *fcmProvider) token() (string, oauth2.TokenSource, error) {
	p.mu.Lock()
	ts := p.ts
	p.mu.Unlock()
	tok, err := ts.Token()
	if err != nil {
		return "", ts, fcmTokenError(err, p.now())
	}
	if tok.AccessToken == "" {
		return "", ts, Permanent(errors.New("fcm: the token endpoint answered without an access_token"))
	}
	return tok.AccessToken, ts, nil
}

// dropToken forgets the cached token of ts (FCM refused it), once.
func (p *fcmProvider) dropToken(ts oauth2.TokenSource) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ts == ts {
		p.ts = p.newTokenSource()
	}
}

// fcmTokenError classifies a failure to get an access token: the token
// endpoint refusing the service account (invalid_grant: wrong key, deleted
// account, bad clock) is permanent; its 429/5xx and network errors are not.
func fcmTokenError(err error, now time.Time) error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		return fmt.Errorf("fcm: fetching an access token: %w", err)
	}
	code, desc := re.ErrorCode, re.ErrorDescription
	if code == "" {
		var body struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		if json.Unmarshal(re.Body, &body) == nil {
			code, desc = body.Error, body.Description
		}
	}
	status := 0
	var header http.Header
	if re.Response != nil {
		status, header = re.Response.StatusCode, re.Response.Header
	}
	if code == "" {
		code = "no error code"
	}
	msg := fmt.Sprintf("fcm: the token endpoint refused the service account (HTTP %d %s", status, fcmClean(code, 64))
	if desc != "" {
		msg += ": " + fcmClean(desc, 200)
	}
	msg += ")"
	if status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500 {
		return RetryLater(errors.New(msg), ParseRetryAfter(header.Get("Retry-After"), now))
	}
	switch code {
	case "invalid_grant":
		msg += "; check the service-account key (revoked, deleted, or another key) and the clock"
	case "invalid_scope":
		msg += "; the account may not request the " + FCMScope + " scope"
	}
	return Permanent(errors.New(msg))
}

// ---- the message

// fcmRequest is the body of messages:send.
type fcmRequest struct {
	Message *fcmMessage `json:"message"`
}

// fcmMessage is FCM v1's Message, in its documented (proto) field names.
type fcmMessage struct {
	Token        string            `json:"token"`
	Notification *fcmNotification  `json:"notification,omitempty"`
	Data         map[string]string `json:"data,omitempty"`
	Android      *fcmAndroid       `json:"android,omitempty"`
	APNS         *fcmAPNS          `json:"apns,omitempty"`
	Webpush      *fcmWebpush       `json:"webpush,omitempty"`
}

type fcmNotification struct {
	Title string `json:"title,omitempty"`
	Body  string `json:"body,omitempty"`
	Image string `json:"image,omitempty"`
}

type fcmAndroid struct {
	CollapseKey  string                  `json:"collapse_key,omitempty"`
	Priority     string                  `json:"priority,omitempty"`
	TTL          string                  `json:"ttl,omitempty"`
	Notification *fcmAndroidNotification `json:"notification,omitempty"`
}

type fcmAndroidNotification struct {
	Sound string `json:"sound,omitempty"`
}

type fcmAPNS struct {
	Headers map[string]string `json:"headers,omitempty"`
	Payload *fcmAPNSPayload   `json:"payload,omitempty"`
}

type fcmAPNSPayload struct {
	Aps fcmAps `json:"aps"`
}

type fcmAps struct {
	Badge *int32 `json:"badge,omitempty"`
	Sound string `json:"sound,omitempty"`
}

type fcmWebpush struct {
	Headers    map[string]string  `json:"headers,omitempty"`
	FcmOptions *fcmWebpushOptions `json:"fcm_options,omitempty"`
}

type fcmWebpushOptions struct {
	Link string `json:"link,omitempty"`
}

// fcmBuild is n's message for every token (Token left empty).
func fcmBuild(n *schemas.Notification, now time.Time) *fcmMessage {
	c := n.Content
	m := &fcmMessage{}
	title, body := c.Title, c.Body
	if title == "" {
		title = c.Subject
	}
	if body == "" {
		body = c.Text
	}
	if title != "" || body != "" || c.ImageURL != "" {
		m.Notification = &fcmNotification{Title: title, Body: body, Image: c.ImageURL}
	}
	m.Data = make(map[string]string, len(c.Data)+2)
	for k, v := range c.Data {
		m.Data[k] = v
	}
	if c.ActionURL != "" {
		if _, set := m.Data["actionUrl"]; !set {
			m.Data["actionUrl"] = c.ActionURL
		}
	}
	m.Data["notificationId"] = n.ID

	a := &fcmAndroid{Priority: "normal", CollapseKey: c.CollapseKey}
	if pushUrgent(n) {
		a.Priority = "high"
	}
	apnsHeaders := map[string]string{"apns-priority": apnsPriority(n)}
	var webHeaders map[string]string
	if n.ExpiresAt > 0 {
		left := time.UnixMilli(n.ExpiresAt).Sub(now)
		left = min(max(left, 0), fcmMaxTTL)
		secs := int64(left / time.Second)
		a.TTL = strconv.FormatInt(secs, 10) + "s"
		if secs == 0 {
			apnsHeaders["apns-expiration"] = "0" // now or never
		} else {
			apnsHeaders["apns-expiration"] = strconv.FormatInt(now.Add(left).Unix(), 10)
		}
		webHeaders = map[string]string{"TTL": strconv.FormatInt(secs, 10)}
	}
	if c.CollapseKey != "" && len(c.CollapseKey) <= apnsMaxCollapseID {
		apnsHeaders["apns-collapse-id"] = c.CollapseKey
	}
	if c.Sound != "" {
		a.Notification = &fcmAndroidNotification{Sound: c.Sound}
	}
	m.Android = a
	m.APNS = &fcmAPNS{Headers: apnsHeaders}
	if c.Sound != "" || c.Badge != 0 {
		pl := &fcmAPNSPayload{Aps: fcmAps{Sound: c.Sound}}
		if c.Badge != 0 {
			b := c.Badge
			pl.Aps.Badge = &b
		}
		m.APNS.Payload = pl
	}
	var link string
	if u, err := url.Parse(c.ActionURL); err == nil && u.Scheme == "https" && u.Host != "" {
		link = c.ActionURL // FCM accepts only HTTPS links
	}
	if webHeaders != nil || link != "" {
		m.Webpush = &fcmWebpush{Headers: webHeaders}
		if link != "" {
			m.Webpush.FcmOptions = &fcmWebpushOptions{Link: link}
		}
	}
	return m
}

// Send posts one message per fcm target of n.
func (p *fcmProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	targets := pushTargets(n, "fcm")
	if len(n.Targets) == 0 && n.Address != "" {
		targets = []schemas.Target{{Platform: "fcm", Token: n.Address}}
	}
	if len(targets) == 0 {
		return "", Permanent(fmt.Errorf("fcm: notification %s has no fcm device token", n.ID))
	}
	msg := fcmBuild(n, p.now())
	payload, err := json.Marshal(msg)
	if err != nil {
		return "", Permanent(fmt.Errorf("fcm: encoding the message: %w", err))
	}
	if size := len(payload) - len(`"token":"",`); size > fcmMaxPayload {
		return "", Permanent(fmt.Errorf("fcm: the message is %d bytes, over FCM's %d-byte payload limit (title, body, data, options)", size, fcmMaxPayload))
	}
	tok, ts, err := p.token()
	if err != nil {
		return "", err
	}
	return SendEach(ctx, targets, func(ctx context.Context, t schemas.Target) (string, error) {
		if t.Token == "" {
			return "", InvalidRecipient(errors.New("fcm: device target without a token"), DeviceTarget(t))
		}
		m := *msg
		m.Token = t.Token
		id, err := p.post(ctx, &m, tok, t)
		var ae *fcmAPIError
		if errors.As(err, &ae) && ae.Code == "UNAUTHENTICATED" {
			// The cached token was refused (revoked, or expired early): one
			// more try with a fresh one before calling it a credentials error.
			p.dropToken(ts)
			if tok, ts, err = p.token(); err != nil {
				return "", err
			}
			id, err = p.post(ctx, &m, tok, t)
		}
		return id, err
	})
}

func (p *fcmProvider) post(ctx context.Context, m *fcmMessage, token string, t schemas.Target) (string, error) {
	body, err := json.Marshal(fcmRequest{Message: m})
	if err != nil {
		return "", Permanent(fmt.Errorf("fcm: encoding the message: %w", err))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.sendURL, bytes.NewReader(body))
	if err != nil {
		return "", Permanent(fmt.Errorf("fcm: %w", err))
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("User-Agent", "notifyd-fcm/1")
	resp, err := p.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("fcm: messages:send: %w", err)
	}
	return fcmClassify(resp.StatusCode, resp.Header, readBody(resp), t, p.now())
}

// ---- the answer

// fcmAPIError is FCM's google.rpc.Status error answer.
type fcmAPIError struct {
	HTTP    int
	Code    string // FcmError errorCode, else the status, else derived from HTTP
	Status  string // google.rpc status (INVALID_ARGUMENT, NOT_FOUND, …)
	Message string
	Hint    string
}

func (e *fcmAPIError) Error() string {
	s := fmt.Sprintf("fcm: %s (HTTP %d)", e.Code, e.HTTP)
	if e.Status != "" && e.Status != e.Code {
		s = fmt.Sprintf("fcm: %s (HTTP %d %s)", e.Code, e.HTTP, e.Status)
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.Hint != "" {
		s += "; " + e.Hint
	}
	return s
}

// fcmStatus is the "error" object of an FCM error answer.
type fcmStatus struct {
	Code    int               `json:"code"`
	Message string            `json:"message"`
	Status  string            `json:"status"`
	Details []json.RawMessage `json:"details"`
}

// fcmDetail is what notifyd reads of an error detail: FcmError's errorCode,
// google.rpc.BadRequest's fieldViolations.
type fcmDetail struct {
	Type            string `json:"@type"`
	ErrorCode       string `json:"errorCode"`
	FieldViolations []struct {
		Field       string `json:"field"`
		Description string `json:"description"`
	} `json:"fieldViolations"`
}

// fcmClassify turns FCM's answer to the message for target t into a message
// id (the message's name) or a classified error.
func fcmClassify(status int, header http.Header, body []byte, t schemas.Target, now time.Time) (string, error) {
	var ans struct {
		Name  string     `json:"name"`
		Error *fcmStatus `json:"error"`
	}
	parsed := json.Unmarshal(body, &ans) == nil
	if status >= 200 && status < 300 && (ans.Error == nil || (ans.Error.Code == 0 && ans.Error.Status == "")) {
		if ans.Name != "" {
			return fcmClean(ans.Name, 256), nil
		}
		return "-", nil // accepted; FCM named no message
	}
	e := &fcmAPIError{HTTP: status}
	tokenField := false
	if ans.Error != nil {
		e.Status = fcmClean(ans.Error.Status, 64)
		e.Message = fcmClean(ans.Error.Message, 300)
		if status >= 200 && status < 300 && ans.Error.Code >= 400 && ans.Error.Code < 600 {
			e.HTTP = ans.Error.Code // an error in a 2xx answer: its own code
		}
		for _, raw := range ans.Error.Details {
			var d fcmDetail
			if json.Unmarshal(raw, &d) != nil {
				continue
			}
			if d.Type == fcmErrorType && d.ErrorCode != "" && e.Code == "" {
				e.Code = fcmClean(d.ErrorCode, 64)
			}
			for _, fv := range d.FieldViolations {
				if fv.Field == "message.token" {
					tokenField = true
				}
			}
		}
	} else if !parsed || ans.Name == "" {
		e.Message = fcmClean(string(body), 200)
	}
	if e.Code == "" {
		e.Code = e.Status
	}
	if e.Code == "" {
		e.Code = fcmCodeOfHTTP(e.HTTP)
	}
	retryAfter := ParseRetryAfter(header.Get("Retry-After"), now)
	switch e.Code {
	case "UNREGISTERED":
		e.Hint = "the app instance is no longer registered"
		return "", InvalidRecipient(e, DeviceTarget(t))
	case "SENDER_ID_MISMATCH":
		e.Hint = "the token belongs to another Firebase project"
		return "", InvalidRecipient(e, DeviceTarget(t))
	case "INVALID_ARGUMENT":
		if tokenField || strings.Contains(strings.ToLower(e.Message), "registration token") {
			return "", InvalidRecipient(e, DeviceTarget(t))
		}
		return "", Permanent(e)
	case "QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED":
		if retryAfter == 0 {
			retryAfter = fcmQuotaBackoff
		}
		return "", RetryLater(e, retryAfter)
	case "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED":
		return "", RetryLater(e, retryAfter)
	case "THIRD_PARTY_AUTH_ERROR":
		e.Hint = "the APNs certificate/auth key or web push credentials of the Firebase project are invalid or missing"
		return "", Permanent(e)
	case "UNAUTHENTICATED":
		e.Hint = "FCM refused the service account's access token"
		return "", Permanent(e)
	case "PERMISSION_DENIED":
		e.Hint = "the service account may not send for this project (cloudmessaging.messages.create), or the FCM API is disabled"
		return "", Permanent(e)
	}
	switch c := e.HTTP; {
	case c == http.StatusTooManyRequests:
		if retryAfter == 0 {
			retryAfter = fcmQuotaBackoff
		}
		return "", RetryLater(e, retryAfter)
	case c == http.StatusRequestTimeout || c >= 500 || c < 200:
		return "", RetryLater(e, retryAfter)
	}
	return "", Permanent(e)
}

// fcmCodeOfHTTP names an HTTP status as FCM's canonical codes do.
func fcmCodeOfHTTP(status int) string {
	switch status {
	case 400:
		return "INVALID_ARGUMENT"
	case 401:
		return "UNAUTHENTICATED"
	case 403:
		return "PERMISSION_DENIED"
	case 404:
		return "NOT_FOUND"
	case 429:
		return "QUOTA_EXCEEDED"
	case 500:
		return "INTERNAL"
	case 503:
		return "UNAVAILABLE"
	}
	return "HTTP_" + strconv.Itoa(status)
}

// fcmClean makes a provider string safe to log: printable, on one line, at
// most max bytes.
func fcmClean(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' || r == '\t' {
			return ' '
		}
		if !unicode.IsPrint(r) {
			return -1
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }
