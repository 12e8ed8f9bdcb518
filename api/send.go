package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

type recipientBody struct {
	UserID string `json:"userId"`
	Email  string `json:"email"`
	Phone  string `json:"phone"`
	Locale string `json:"locale"`
	Upsert bool   `json:"upsert"`
}

type sendBody struct {
	EventID    string          `json:"eventId"`
	Template   string          `json:"template"`
	Recipients []recipientBody `json:"recipients"`
	Data       json.RawMessage `json:"data"`
	Priority   string          `json:"priority"`
	Category   string          `json:"category"`
	Channels   []string        `json:"channels"`
	SendAt     string          `json:"sendAt"`
	ExpiresAt  string          `json:"expiresAt"`
	// OTP marks a one-time code: high priority, never delayed, expires in
	// 5 minutes unless expiresAt says otherwise, never logged.
	OTP bool `json:"otp"`
	// LocalTime "HH:MM" sends each notification at that time of its
	// recipient's day (their profile's time zone, UTC if none).
	LocalTime string `json:"localTime"`
	// DigestKey groups the events of a digest template per user: events of
	// one key within the template's window are sent as one notification.
	DigestKey string `json:"digestKey"`
}

type sentNotification struct {
	ID     string `json:"id"`
	UserID string `json:"userId"`
}

type sendResponse struct {
	EventID       string             `json:"eventId"`
	Notifications []sentNotification `json:"notifications"`
}

// MaxRecipients bounds one request; larger audiences go through batch.
const MaxRecipients = 1000

var (
	localePattern = regexp.MustCompile(`^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$`)
)

// validID checks ids used as Kafka keys and URL segments.
func validID(field, v string) *Error {
	if v == "" {
		return invalid(field, "%s is required", field)
	}
	if !processors.ValidID(v) {
		return invalid(field, "%s must be 1-200 characters of letters, digits and ._:@/+=-", field)
	}
	return nil
}

// toRequest validates a send body and turns it into a SendRequest. prefix is
// the JSON path of the body ("" or "requests[3]").
func (s *Server) toRequest(ctx context.Context, b *sendBody, idemKey, prefix string, synced map[string]bool) (*schemas.SendRequest, *Error) {
	p := func(f string) string {
		if prefix == "" {
			return f
		}
		return prefix + "." + f
	}
	eventID := b.EventID
	if idemKey != "" {
		if eventID != "" && eventID != idemKey {
			return nil, invalid(p("eventId"), "eventId %q differs from the Idempotency-Key header %q", eventID, idemKey)
		}
		eventID = idemKey
	}
	if eventID == "" {
		eventID = processors.NewEventID()
	}
	if err := validID(p("eventId"), eventID); err != nil {
		return nil, err
	}
	if err := validID(p("template"), b.Template); err != nil {
		return nil, err
	}
	tenant := tenantFrom(ctx)
	tmpl := s.knownTemplate(ctx, schemas.TenantKey(tenant, b.Template), synced)
	if tmpl == nil {
		return nil, &Error{Status: http.StatusBadRequest, Code: "unknown_template", Field: p("template"),
			Message: fmt.Sprintf("unknown template %q", b.Template)}
	}
	if err := processors.ValidateCategory(b.Category); err != nil {
		return nil, invalid(p("category"), "%v", err)
	}
	category, apiErr := checkCategory(ctx, b, tmpl, p("category"))
	if apiErr != nil {
		return nil, apiErr
	}
	if len(b.Recipients) == 0 {
		return nil, invalid(p("recipients"), "at least one recipient is required")
	}
	if len(b.Recipients) > MaxRecipients {
		return nil, invalid(p("recipients"), "at most %d recipients per request, got %d", MaxRecipients, len(b.Recipients))
	}
	// The request records what it was authorized for: the template version
	// it was checked against, which delivery renders, and the category,
	// which delivery never widens.
	req := &schemas.SendRequest{EventID: eventID, Template: b.Template, Priority: b.Priority, Category: category,
		Channels: b.Channels, AcceptedAt: s.now().UnixMilli(), Source: "api", Tenant: tenant,
		TemplateVersion: tmpl.Version, TemplateHash: processors.VersionHash(tmpl)}
	for i, r := range b.Recipients {
		f := func(name string) string { return p(fmt.Sprintf("recipients[%d].%s", i, name)) }
		if err := validID(f("userId"), r.UserID); err != nil {
			return nil, err
		}
		r.Email, r.Phone = strings.TrimSpace(r.Email), strings.TrimSpace(r.Phone)
		if r.Email != "" {
			if err := processors.ValidateEmail(r.Email); err != nil {
				return nil, invalid(f("email"), "%v", err)
			}
		}
		if r.Phone != "" {
			if err := processors.ValidatePhone(r.Phone); err != nil {
				return nil, invalid(f("phone"), "%v", err)
			}
		}
		if r.Locale != "" && !localePattern.MatchString(r.Locale) {
			return nil, invalid(f("locale"), "locale %q is not a BCP 47 tag like en or zh-CN", r.Locale)
		}
		req.Recipients = append(req.Recipients, schemas.Recipient{UserID: r.UserID, Email: r.Email, Phone: r.Phone, Locale: r.Locale, Upsert: r.Upsert})
	}
	if len(b.Data) > 0 && !bytes.Equal(bytes.TrimSpace(b.Data), []byte("null")) {
		var m map[string]any
		if err := json.Unmarshal(b.Data, &m); err != nil {
			return nil, invalid(p("data"), "data must be a JSON object")
		}
		req.Data = string(b.Data)
	}
	switch b.Priority {
	case "", "high", "normal", "low":
	default:
		return nil, invalid(p("priority"), "priority must be high, normal or low, got %q", b.Priority)
	}
	for i, ch := range b.Channels {
		if !processors.KnownChannel(ch) {
			return nil, invalid(p(fmt.Sprintf("channels[%d]", i)), "unknown channel %q (known: %s)", ch, strings.Join(processors.AllChannels(), ", "))
		}
	}
	if b.ExpiresAt != "" {
		t, err := time.Parse(time.RFC3339, b.ExpiresAt)
		if err != nil {
			return nil, invalid(p("expiresAt"), "expiresAt must be an RFC 3339 time: %v", err)
		}
		if !t.After(s.now()) {
			return nil, invalid(p("expiresAt"), "expiresAt %s is already past", b.ExpiresAt)
		}
		req.ExpiresAt = t.UnixMilli()
	}
	if b.SendAt != "" {
		t, err := time.Parse(time.RFC3339, b.SendAt)
		if err != nil {
			return nil, invalid(p("sendAt"), "sendAt must be an RFC 3339 time: %v", err)
		}
		if t.After(s.now().Add(processors.MaxScheduleAhead)) {
			return nil, invalid(p("sendAt"), "sendAt may be at most %v ahead", processors.MaxScheduleAhead)
		}
		if t.After(s.now()) {
			req.SendAt = t.UnixMilli()
		}
		if req.ExpiresAt > 0 && req.SendAt >= req.ExpiresAt {
			return nil, invalid(p("sendAt"), "sendAt %s is not before expiresAt %s", b.SendAt, b.ExpiresAt)
		}
	}
	if b.LocalTime != "" {
		if !processors.ValidHHMM(b.LocalTime) {
			return nil, invalid(p("localTime"), "localTime must be HH:MM (00:00 to 23:59), got %q", processors.Clip(b.LocalTime, 32))
		}
		if b.OTP {
			return nil, invalid(p("localTime"), "a one-time code (otp) is sent at once; localTime is not allowed")
		}
		req.LocalTime = b.LocalTime
	}
	if b.DigestKey != "" {
		if err := validID(p("digestKey"), b.DigestKey); err != nil {
			return nil, err
		}
		req.DigestKey = b.DigestKey
	}
	if b.OTP {
		if b.Priority != "" && b.Priority != "high" {
			return nil, invalid(p("priority"), "a one-time code (otp) is always high priority, got %q", b.Priority)
		}
		if b.SendAt != "" {
			return nil, invalid(p("sendAt"), "a one-time code (otp) is sent at once; sendAt is not allowed")
		}
		req.OTP, req.Priority = true, "high"
	}
	if err := recordSize(req, p); err != nil {
		return nil, err
	}
	return req, nil
}

// recordSize refuses a request whose records could not be produced: the
// request itself, and each notification it fans out to (each carries the
// data), must fit in a record, and the fan-out as a whole is bounded too (one
// request must not turn into gigabytes). The error names the field to shrink.
func recordSize(req *schemas.SendRequest, p func(string) string) *Error {
	tooLarge := func(field, format string, args ...any) *Error {
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: "payload_too_large", Field: p(field),
			Message: fmt.Sprintf(format, args...)}
	}
	if err := processors.CheckFanout(req); err != nil {
		return tooLarge("data", "%v; send fewer recipients per request", err)
	}
	v, err := schemas.SendRequestCodec.Encode(req)
	if err != nil {
		return invalid("", "%v", err)
	}
	if limit := topology.MaxRecordBytes - processors.NotificationOverhead; len(v)+len(req.EventID) > limit {
		field := "data"
		if len(req.Data) < len(v)/2 {
			field = "recipients"
		}
		return tooLarge(field, "the request's record would be %d bytes, over the %d-byte limit of a record; %s is the largest part",
			len(v), limit, field)
	}
	return nil
}

// knownTemplate looks a template up by its tenant-qualified key; on a miss it
// lets the table catch up once (per synced set), in case another instance
// wrote it a moment ago.
func (s *Server) knownTemplate(ctx context.Context, key string, synced map[string]bool) *schemas.Template {
	if t := s.lookupTemplate(key); t != nil {
		return t
	}
	if synced[key] {
		return nil
	}
	synced[key] = true
	s.sync(ctx, s.Templates, key)
	return s.lookupTemplate(key)
}

// checkCategory applies "the category comes from the template": a request
// may only narrow a transactional template to another category, and a send
// that ends up transactional (which skips opt-outs and quiet hours) needs
// the send:transactional scope.
// It returns the category the send is authorized for.
func checkCategory(ctx context.Context, b *sendBody, t *schemas.Template, field string) (string, *Error) {
	category, err := processors.NarrowCategory(b.Category, t)
	if err != nil {
		if b.Category == processors.CategoryTransactional {
			return "", &Error{Status: http.StatusForbidden, Code: "forbidden", Field: field, Message: err.Error()}
		}
		return "", invalid(field, "%v", err)
	}
	if category == processors.CategoryTransactional && !can(ctx, ScopeSendTransactional) {
		return "", &Error{Status: http.StatusForbidden, Code: "forbidden", Field: field,
			Message: fmt.Sprintf("template %q is transactional (it skips opt-outs and quiet hours): this key lacks scope %q; send it under a narrower category or use a key with that scope", t.ID, ScopeSendTransactional)}
	}
	return category, nil
}

func respond(req *schemas.SendRequest) sendResponse {
	out := sendResponse{EventID: req.EventID}
	for _, n := range processors.Fanout(req) {
		out.Notifications = append(out.Notifications, sentNotification{ID: n.ID, UserID: n.UserID})
	}
	return out
}

func (s *Server) send(w http.ResponseWriter, r *http.Request) {
	var b sendBody
	if err := decode(r, s.MaxBodyBytes, &b); err != nil {
		writeError(w, err)
		return
	}
	req, apiErr := s.toRequest(r.Context(), &b, r.Header.Get("Idempotency-Key"), "", map[string]bool{})
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	if s.holdForApproval(w, r, req) {
		return
	}
	if err := s.produceRequests(r.Context(), []*schemas.SendRequest{req}); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, respond(req))
}

type batchBody struct {
	Requests []json.RawMessage `json:"requests"`
}

type batchItem struct {
	*sendResponse
	Error *Error `json:"error,omitempty"`
}

func (s *Server) sendBatch(w http.ResponseWriter, r *http.Request) {
	var b batchBody
	if err := decode(r, s.MaxBodyBytes, &b); err != nil {
		writeError(w, err)
		return
	}
	if len(b.Requests) == 0 {
		writeError(w, invalid("requests", "at least one request is required"))
		return
	}
	if len(b.Requests) > s.MaxBatch {
		writeError(w, invalid("requests", "at most %d requests per batch, got %d", s.MaxBatch, len(b.Requests)))
		return
	}
	items := make([]batchItem, len(b.Requests))
	synced := map[string]bool{} // each unknown template waits for the table once per batch
	var reqs []*schemas.SendRequest
	var idx []int
	for i, raw := range b.Requests {
		prefix := fmt.Sprintf("requests[%d]", i)
		var sb sendBody
		d := json.NewDecoder(bytes.NewReader(raw))
		d.DisallowUnknownFields()
		if err := d.Decode(&sb); err != nil {
			e := jsonError(err, s.MaxBodyBytes)
			e.Field = strings.TrimSuffix(prefix+"."+e.Field, ".")
			items[i].Error = e
			continue
		}
		req, apiErr := s.toRequest(r.Context(), &sb, "", prefix, synced)
		if apiErr == nil && s.Campaigns != nil && s.Campaigns.ApprovalAbove > 0 && len(req.Recipients) > s.Campaigns.ApprovalAbove {
			apiErr = invalid(prefix+".recipients", "a request to more than %d recipients waits for approval: send it alone to POST /v1/notifications", s.Campaigns.ApprovalAbove)
		}
		if apiErr != nil {
			items[i].Error = apiErr
			continue
		}
		reqs = append(reqs, req)
		idx = append(idx, i)
	}
	if err := s.produceRequests(r.Context(), reqs); err != nil {
		writeError(w, err)
		return
	}
	for j, req := range reqs {
		resp := respond(req)
		items[idx[j]].sendResponse = &resp
	}
	writeJSON(w, http.StatusOK, map[string]any{"results": items})
}

// produceRequests writes requests to notify.ingest and returns once the broker
// has them all: a 202 means the request is durable.
func (s *Server) produceRequests(ctx context.Context, reqs []*schemas.SendRequest) error {
	if len(reqs) == 0 {
		return nil
	}
	for _, req := range reqs {
		if req.Priority == "high" {
			s.Priority.High() // this process's lower lanes make room for it
			break
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for _, req := range reqs {
		v, err := schemas.SendRequestCodec.Encode(req)
		if err != nil {
			return err
		}
		wg.Add(1)
		key := []byte(schemas.TenantKey(req.Tenant, req.EventID))
		p := s.Producer
		if s.IngestProducer != nil && topology.FitsIngestBatch(key, v) {
			p = s.IngestProducer
		}
		p.Produce(ctx, &kgo.Record{Topic: string(topology.IngestLane(req.Priority)), Key: key, Value: v},
			func(_ *kgo.Record, err error) {
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
				wg.Done()
			})
	}
	wg.Wait()
	if firstErr != nil {
		return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "could not enqueue: " + firstErr.Error()}
	}
	for _, req := range reqs {
		s.upsertProfiles(ctx, req)
	}
	return nil
}

// upsertProfiles writes inline contacts of recipients that asked for it.
func (s *Server) upsertProfiles(ctx context.Context, req *schemas.SendRequest) {
	for _, r := range req.Recipients {
		if !r.Upsert {
			continue
		}
		key := schemas.TenantKey(req.Tenant, r.UserID)
		p := &schemas.Profile{UserID: r.UserID, Tenant: req.Tenant}
		if cur := s.lookupProfile(key); cur != nil {
			opened, err := processors.OpenProfile(ctx, s.sealer(), cur)
			if err != nil {
				continue // erased or unreadable: not revived by a send
			}
			p = opened
		}
		if r.Email != "" {
			p.Email = r.Email
		}
		if r.Phone != "" {
			p.Phone = r.Phone
		}
		if r.Locale != "" {
			p.Locale = r.Locale
		}
		p.UpdatedAt = s.now().UnixMilli()
		sealed, err := processors.SealProfile(ctx, s.sealer(), p)
		if err != nil {
			continue
		}
		if v, err := schemas.ProfileCodec.Encode(sealed); err == nil {
			s.Producer.Produce(ctx, &kgo.Record{Topic: string(topology.Profiles), Key: []byte(key), Value: v}, nil)
		}
	}
}
