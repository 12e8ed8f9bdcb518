package sinks

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// WhatsApp sends through the WhatsApp Business Cloud API:
// POST {baseUrl}/{version}/{phoneNumberId}/messages with
// `Authorization: Bearer <accessToken>`.
//
// A notification whose content has a templateId is sent as an approved
// template message: {"messaging_product":"whatsapp","to":<E.164 digits, no
// +>,"type":"template","template":{"name":templateId,"language":{"code":
// locale (en-US written en_US) or defaultLanguage},"components":[{"type":
// "body","parameters":[…]}]}}. The body parameters come from
// content.templateParams: keys "1","2",… are positional ({{1}}, {{2}}, …)
// and sent in numeric order (they must run 1..N without a gap); any other
// keys are named parameters ({{first_name}}, sent with parameter_name, sorted
// by name); mixing both is refused.
//
// Without a templateId, the text (content.markdown, else text, else body;
// content.title a bold first line in WhatsApp's *bold*) is sent as
// {"type":"text","text":{"body"}}: WhatsApp delivers free-form text only
// within 24 hours of the user's last message (error 131047 otherwise).
//
// Answers: 200 {"messages":[{"id"}]} → the wamid is the message id. Errors
// {"error":{"message","type","code","error_subcode","error_data":{"details"},
// "fbtrace_id"}} by code: 130429 (throughput), 131056 (pair rate), 4 and
// 80007 (rate limits) and the temporary 1, 2, 131000, 131016, 133004 →
// retry later; 131026 (undeliverable: not a WhatsApp user) → invalid
// recipient; 131047 (outside the 24 h window) and 190 (access token expired
// or invalid) → permanent with a clear reason; others permanent; 5xx without
// a code → retry later.
//
// Limits: the business number's throughput (80 messages/s by default) is the
// provider's rateLimit; perRecipientPerMinute (default 0 = off; 10 matches
// WhatsApp's pair limit of one message every 6 s to the same user) bounds
// each recipient on this instance.
type whatsappProvider struct {
	name     string
	endpoint string
	token    string
	lang     string
	limiter  *KeyLimiter
	perMin   float64
	client   *http.Client
	deps     Deps
	log      *slog.Logger
	// appSecret checks status webhooks (X-Hub-Signature-256); verifyToken
	// answers the subscription check. Empty: no webhook expected.
	appSecret, verifyToken string
}

// whatsappSettings is the `whatsapp:` section of a provider.
type whatsappSettings struct {
	// BaseURL of the Graph API (default https://graph.facebook.com).
	BaseURL string `yaml:"baseUrl"`
	// Version of the Graph API (default v21.0).
	Version string `yaml:"version"`
	// PhoneNumberID is the business phone number's id (not the number); required.
	PhoneNumberID string `yaml:"phoneNumberId"`
	// AccessToken is a system user access token with whatsapp_business_messaging; required.
	AccessToken string `yaml:"accessToken"`
	// DefaultLanguage of templates when the notification has no locale (default en_US).
	DefaultLanguage string `yaml:"defaultLanguage"`
	// PerRecipientPerMinute bounds the messages to one number (default 0 = no limit).
	PerRecipientPerMinute float64 `yaml:"perRecipientPerMinute"`
	// Timeout of one HTTP call (default 10s).
	Timeout time.Duration `yaml:"timeout"`
	// AppSecret is the Meta app's secret: status webhooks posted to
	// /v1/receipts/{name} must carry its X-Hub-Signature-256.
	AppSecret string `yaml:"appSecret"`
	// VerifyToken is what the webhook subscription check (GET
	// /v1/receipts/{name}?hub.mode=subscribe&hub.verify_token=…) must present.
	VerifyToken string `yaml:"verifyToken"`
}

const (
	whatsappDefaultBaseURL  = "https://graph.facebook.com"
	whatsappDefaultVersion  = "v21.0"
	whatsappDefaultLanguage = "en_US"
)

var (
	whatsappVersionRE = regexp.MustCompile(`^v[0-9]+\.[0-9]+$`)
	whatsappDigitsRE  = regexp.MustCompile(`^[0-9]+$`)
	whatsappLangRE    = regexp.MustCompile(`^[a-z]{2,3}(_[A-Za-z0-9]{2,4})?$`)
)

func init() {
	Register("whatsapp", Type{Channels: []string{"whatsapp"}, New: newWhatsAppProvider})
}

func newWhatsAppProvider(s Spec) (Provider, error) {
	var cfg whatsappSettings
	if err := s.Settings(&cfg); err != nil {
		return nil, err
	}
	if cfg.PhoneNumberID == "" {
		return nil, errors.New("whatsapp: phoneNumberId is required (the business phone number's id in WhatsApp Manager)")
	}
	if !whatsappDigitsRE.MatchString(cfg.PhoneNumberID) {
		return nil, fmt.Errorf("whatsapp: phoneNumberId %q must be the numeric phone number id, not the phone number", cfg.PhoneNumberID)
	}
	if cfg.AccessToken == "" {
		return nil, errors.New("whatsapp: accessToken is required")
	}
	if cfg.Version == "" {
		cfg.Version = whatsappDefaultVersion
	}
	if !whatsappVersionRE.MatchString(cfg.Version) {
		return nil, fmt.Errorf("whatsapp: version %q must look like v21.0", cfg.Version)
	}
	base, err := chatBaseURL("whatsapp", cfg.BaseURL, whatsappDefaultBaseURL)
	if err != nil {
		return nil, err
	}
	if cfg.DefaultLanguage == "" {
		cfg.DefaultLanguage = whatsappDefaultLanguage
	}
	if !whatsappLangRE.MatchString(whatsappLanguage(cfg.DefaultLanguage)) {
		return nil, fmt.Errorf("whatsapp: defaultLanguage %q is not a language code such as en_US", cfg.DefaultLanguage)
	}
	if _, err := chatPerMinute("whatsapp", "perRecipientPerMinute", &cfg.PerRecipientPerMinute, 0); err != nil {
		return nil, err
	}
	if err := chatTimeout("whatsapp", cfg.Timeout); err != nil {
		return nil, err
	}
	return &whatsappProvider{name: s.Name,
		endpoint: base + "/" + cfg.Version + "/" + cfg.PhoneNumberID + "/messages",
		token:    cfg.AccessToken, lang: whatsappLanguage(cfg.DefaultLanguage),
		limiter: NewKeyLimiter(cfg.PerRecipientPerMinute, 1), perMin: cfg.PerRecipientPerMinute,
		client: newHTTPClient(cfg.Timeout, nil), deps: s.Deps, log: chatLog(s),
		appSecret: cfg.AppSecret, verifyToken: cfg.VerifyToken}, nil
}

func (p *whatsappProvider) Name() string { return p.name }

// whatsappLanguage writes a locale as WhatsApp's language codes are: en-US → en_US.
func whatsappLanguage(locale string) string {
	return strings.ReplaceAll(strings.TrimSpace(locale), "-", "_")
}

// whatsappNumber is an address as the API takes it: digits, no +.
func whatsappNumber(addr string) (string, bool) {
	s := strings.NewReplacer("+", "", " ", "", "-", "", "(", "", ")", "", ".", "").Replace(strings.TrimSpace(addr))
	return s, len(s) >= 6 && len(s) <= 15 && whatsappDigitsRE.MatchString(s)
}

type whatsappParam struct {
	Type          string `json:"type"`
	ParameterName string `json:"parameter_name,omitempty"`
	Text          string `json:"text"`
}

type whatsappComponent struct {
	Type       string          `json:"type"`
	Parameters []whatsappParam `json:"parameters"`
}

type whatsappTemplate struct {
	Name     string `json:"name"`
	Language struct {
		Code string `json:"code"`
	} `json:"language"`
	Components []whatsappComponent `json:"components,omitempty"`
}

type whatsappRequest struct {
	MessagingProduct string            `json:"messaging_product"`
	To               string            `json:"to"`
	Type             string            `json:"type"`
	Template         *whatsappTemplate `json:"template,omitempty"`
	Text             *struct {
		Body string `json:"body"`
	} `json:"text,omitempty"`
	// BizOpaqueCallbackData comes back in status webhooks: the notification id.
	BizOpaqueCallbackData string `json:"biz_opaque_callback_data,omitempty"`
}

// whatsappParams orders template parameters: numeric keys 1..N, else names.
func whatsappParams(m map[string]string) ([]whatsappParam, error) {
	if len(m) == 0 {
		return nil, nil
	}
	var nums []int
	var names []string
	for k := range m {
		if i, err := strconv.Atoi(k); err == nil && strconv.Itoa(i) == k {
			nums = append(nums, i)
		} else {
			names = append(names, k)
		}
	}
	var out []whatsappParam
	switch {
	case len(nums) > 0 && len(names) > 0:
		return nil, fmt.Errorf("template parameters mix positional (%d) and named (%s) keys", nums[0], names[0])
	case len(nums) > 0:
		sort.Ints(nums)
		for i, k := range nums {
			if k != i+1 {
				return nil, fmt.Errorf("positional template parameters must be numbered 1..%d, got %d", len(nums), k)
			}
			out = append(out, whatsappParam{Type: "text", Text: m[strconv.Itoa(k)]})
		}
	default:
		sort.Strings(names)
		for _, k := range names {
			out = append(out, whatsappParam{Type: "text", ParameterName: k, Text: m[k]})
		}
	}
	return out, nil
}

// whatsappText is the free-form text of n.
func whatsappText(n *schemas.Notification) string {
	c := n.Content
	body := c.Markdown
	if body == "" {
		body = chatPlainText(c)
	}
	return chatBoldTitled(chatTitle(c), body)
}

// whatsappMessage builds the request of n to the number to.
func (p *whatsappProvider) whatsappMessage(n *schemas.Notification, to string) (whatsappRequest, error) {
	req := whatsappRequest{MessagingProduct: "whatsapp", To: to, BizOpaqueCallbackData: n.ID}
	if name := strings.TrimSpace(n.Content.TemplateID); name != "" {
		params, err := whatsappParams(n.Content.TemplateParams)
		if err != nil {
			return req, fmt.Errorf("whatsapp template %s: %w", name, err)
		}
		t := &whatsappTemplate{Name: name}
		t.Language.Code = p.lang
		if n.Locale != "" {
			t.Language.Code = whatsappLanguage(n.Locale)
		}
		if len(params) > 0 {
			t.Components = []whatsappComponent{{Type: "body", Parameters: params}}
		}
		req.Type, req.Template = "template", t
		return req, nil
	}
	text := whatsappText(n)
	if strings.TrimSpace(text) == "" {
		return req, errors.New("whatsapp: the notification has neither a templateId nor text")
	}
	req.Type = "text"
	req.Text = &struct {
		Body string `json:"body"`
	}{Body: text}
	return req, nil
}

func (p *whatsappProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	to, ok := whatsappNumber(n.Address)
	if !ok {
		return "", Permanent(fmt.Errorf("whatsapp: address %q is not a phone number in E.164 form", n.Address))
	}
	msg, err := p.whatsappMessage(n, to)
	if err != nil {
		return "", Permanent(err)
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return "", Permanent(fmt.Errorf("whatsapp: encoding the message: %w", err))
	}
	if d := p.limiter.Take(to, p.deps.now()); d > 0 {
		return "", RetryLater(fmt.Errorf("whatsapp: over %v messages a minute to this number", p.perMin), d)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.endpoint, bytes.NewReader(b))
	if err != nil {
		return "", Permanent(errors.New("whatsapp: cannot build the request (check baseUrl)"))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+p.token)
	req.Header.Set("User-Agent", "notifyd-whatsapp/1")
	resp, err := p.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", fmt.Errorf("whatsapp messages: %w", err)
	}
	body := readBody(resp)
	return whatsappClassify(resp.StatusCode, resp.Header, body, n, p.deps.now())
}

// whatsappAnswer is a Cloud API answer.
type whatsappAnswer struct {
	Messages []struct {
		ID string `json:"id"`
	} `json:"messages"`
	Error *struct {
		Message   string `json:"message"`
		Type      string `json:"type"`
		Code      int    `json:"code"`
		Subcode   int    `json:"error_subcode"`
		ErrorData struct {
			Details string `json:"details"`
		} `json:"error_data"`
		FBTraceID string `json:"fbtrace_id"`
	} `json:"error"`
}

var whatsappRetryCodes = map[int]bool{
	130429: true, // Rate limit hit (throughput)
	131056: true, // (Business, consumer) pair rate limit hit
	4:      true, // API too many calls
	80007:  true, // WhatsApp Business Account rate limit
	1:      true, // API unknown (possibly temporary)
	2:      true, // API service: temporary downtime
	131000: true, // Something went wrong
	131016: true, // Service unavailable
	133004: true, // Server temporarily unavailable
}

func whatsappClip(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

// whatsappClassify classifies a messages answer.
func whatsappClassify(status int, h http.Header, body []byte, n *schemas.Notification, now time.Time) (string, error) {
	var a whatsappAnswer
	if err := json.Unmarshal(body, &a); err != nil || (a.Error == nil && (status < 200 || status > 299)) {
		if status >= 200 && status < 300 {
			return "", Permanent(fmt.Errorf("whatsapp messages: unreadable answer (HTTP %d)", status))
		}
		return "", HTTPStatus(&http.Response{StatusCode: status, Header: h}, now, "whatsapp messages")
	}
	if a.Error == nil {
		if len(a.Messages) == 0 || a.Messages[0].ID == "" {
			return "", Permanent(fmt.Errorf("whatsapp messages: HTTP %d without a message id", status))
		}
		return a.Messages[0].ID, nil
	}
	e := a.Error
	desc := whatsappClip(e.Message, 160)
	if d := whatsappClip(e.ErrorData.Details, 160); d != "" && d != desc {
		desc += ": " + d
	}
	what := fmt.Sprintf("whatsapp messages: error %d", e.Code)
	if e.Subcode != 0 {
		what += fmt.Sprintf("/%d", e.Subcode)
	}
	what += " (HTTP " + strconv.Itoa(status) + ") " + desc
	if e.FBTraceID != "" {
		what += " [fbtrace_id " + whatsappClip(e.FBTraceID, 40) + "]"
	}
	switch {
	case whatsappRetryCodes[e.Code] || status == http.StatusTooManyRequests:
		return "", RetryLater(errors.New(what), ParseRetryAfter(h.Get("Retry-After"), now))
	case e.Code == 131026:
		return "", InvalidRecipient(fmt.Errorf("%s: the number cannot receive WhatsApp messages", what), AddressTarget(n))
	case e.Code == 131047:
		return "", Permanent(fmt.Errorf("%s: outside the 24-hour customer service window, free-form text is refused; use an approved template (content templateId)", what))
	case e.Code == 190:
		return "", Permanent(fmt.Errorf("%s: the access token is expired or invalid", what))
	case status >= 500:
		return "", RetryLater(errors.New(what), ParseRetryAfter(h.Get("Retry-After"), now))
	default:
		return "", Permanent(errors.New(what))
	}
}

// whatsappWebhook is the part of a WhatsApp Business Account webhook that
// carries message statuses.
type whatsappWebhook struct {
	Object string `json:"object"`
	Entry  []struct {
		Changes []struct {
			Field string `json:"field"`
			Value struct {
				Statuses []struct {
					ID                    string `json:"id"`
					Status                string `json:"status"`
					Timestamp             string `json:"timestamp"`
					BizOpaqueCallbackData string `json:"biz_opaque_callback_data"`
					Errors                []struct {
						Code  int    `json:"code"`
						Title string `json:"title"`
					} `json:"errors"`
				} `json:"statuses"`
			} `json:"value"`
		} `json:"changes"`
	} `json:"entry"`
}

// whatsappStatus maps a message status to a receipt status ("" = sent, an
// intermediate state).
var whatsappStatus = map[string]string{"delivered": "delivered", "read": "opened", "failed": "failed"}

// Receipts reads a status webhook: X-Hub-Signature-256 must be
// "sha256=" + hex HMAC-SHA256 of the raw body with the app secret. Each status
// of a message notifyd sent (biz_opaque_callback_data = its notification id)
// becomes a receipt; read counts as opened.
func (p *whatsappProvider) Receipts(r *http.Request, body []byte) ([]Receipt, error) {
	if p.appSecret == "" {
		return nil, errors.New("whatsapp: appSecret is not configured, so no webhook is expected")
	}
	got, ok := strings.CutPrefix(r.Header.Get("X-Hub-Signature-256"), "sha256=")
	mac := hmac.New(sha256.New, []byte(p.appSecret))
	mac.Write(body)
	if !ok || !hmac.Equal([]byte(got), []byte(hex.EncodeToString(mac.Sum(nil)))) {
		return nil, ErrBadSignature
	}
	var wh whatsappWebhook
	if err := json.Unmarshal(body, &wh); err != nil {
		return nil, fmt.Errorf("whatsapp: the webhook is not JSON: %w", err)
	}
	var out []Receipt
	for _, e := range wh.Entry {
		for _, c := range e.Changes {
			for _, st := range c.Value.Statuses {
				if st.BizOpaqueCallbackData == "" {
					continue // not sent by notifyd
				}
				rc := Receipt{NotificationID: st.BizOpaqueCallbackData, ProviderMessageID: st.ID,
					Status: whatsappStatus[st.Status], At: p.deps.now()}
				if sec, err := strconv.ParseInt(st.Timestamp, 10, 64); err == nil && sec > 0 {
					rc.At = time.Unix(sec, 0)
				}
				if len(st.Errors) > 0 {
					rc.Reason = fmt.Sprintf("whatsapp error %d: %s", st.Errors[0].Code, whatsappClip(st.Errors[0].Title, 200))
				}
				out = append(out, rc)
				if len(out) > 1000 {
					return nil, errors.New("whatsapp: more than 1000 statuses in one webhook")
				}
			}
		}
	}
	return out, nil
}

// Handshake answers Meta's webhook subscription check: hub.mode=subscribe
// with the configured verify token gets hub.challenge back.
func (p *whatsappProvider) Handshake(r *http.Request) (string, error) {
	q := r.URL.Query()
	if p.verifyToken == "" || q.Get("hub.mode") != "subscribe" ||
		!hmac.Equal([]byte(q.Get("hub.verify_token")), []byte(p.verifyToken)) {
		return "", ErrBadSignature
	}
	return q.Get("hub.challenge"), nil
}
