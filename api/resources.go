package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/crypt"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

func (s *Server) lookupTemplate(id string) *schemas.Template {
	v, err := s.Templates.Get(id)
	if err != nil {
		return nil
	}
	if d, ok := v.(schemas.Decoded[schemas.Template]); ok && d.Err == nil {
		return d.V
	}
	return nil
}

func (s *Server) lookupProfile(id string) *schemas.Profile {
	v, err := s.Profiles.Get(id)
	if err != nil {
		return nil
	}
	if d, ok := v.(schemas.Decoded[schemas.Profile]); ok && d.Err == nil {
		return d.V
	}
	return nil
}

func notFound(what, id string) *Error {
	return &Error{Status: http.StatusNotFound, Code: "not_found", Message: fmt.Sprintf("%s %q not found", what, id)}
}

// write produces a table record and waits until the API's view reads it back
// (or until WriteWait), so a GET right after a PUT sees the write.
func (s *Server) write(ctx context.Context, topic, key string, value []byte, visible func() bool) error {
	if err := s.Producer.ProduceSync(ctx, &kgo.Record{Topic: topic, Key: []byte(key), Value: value}).FirstErr(); err != nil {
		return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "could not write: " + err.Error()}
	}
	deadline := time.Now().Add(s.WriteWait)
	for !visible() && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// ---- notifications

type historyJSON struct {
	Status   string `json:"status"`
	At       string `json:"at"`
	Reason   string `json:"reason,omitempty"`
	Channel  string `json:"channel,omitempty"`
	Provider string `json:"provider,omitempty"`
}

type statusJSON struct {
	ID             string            `json:"id"`
	EventID        string            `json:"eventId"`
	UserID         string            `json:"userId"`
	Template       string            `json:"template"`
	Priority       string            `json:"priority,omitempty"`
	Category       string            `json:"category,omitempty"`
	Campaign       string            `json:"campaign,omitempty"`
	Channel        string            `json:"channel,omitempty"`
	Provider       string            `json:"provider,omitempty"`
	Status         string            `json:"status"`
	Channels       map[string]string `json:"channels,omitempty"`
	History        []historyJSON     `json:"history"`
	DroppedHistory int32             `json:"droppedHistory,omitempty"`
}

func millis(ms int64) string { return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z07:00") }

func (s *Server) getStatus(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	v, err := s.Status.Get(id)
	if err != nil {
		// The table could not be read here (another instance's partition
		// whose view is still catching up): not an answer about the id.
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: err.Error()})
		return
	}
	lc, _ := v.(*schemas.Lifecycle)
	if lc == nil || lc.Tenant != tenantFrom(r.Context()) {
		writeError(w, notFound("notification", id))
		return
	}
	out := statusJSON{ID: lc.ID, EventID: lc.EventID, UserID: lc.UserID, Template: lc.Template, Priority: lc.Priority,
		Category: lc.Category, Campaign: lc.Campaign, Channel: lc.Channel, Provider: lc.Provider, Status: lc.Status, Channels: lc.Channels,
		DroppedHistory: lc.DroppedHistory, History: []historyJSON{}}
	for _, h := range lc.History {
		out.History = append(out.History, historyJSON{Status: h.Status, At: millis(h.At), Reason: h.Reason, Channel: h.Channel, Provider: h.Provider})
	}
	writeJSON(w, http.StatusOK, out)
}

// ---- profiles

type deviceJSON struct {
	Platform     string `json:"platform"`
	Token        string `json:"token,omitempty"`
	Subscription *struct {
		Endpoint string `json:"endpoint"`
		Keys     struct {
			P256dh string `json:"p256dh"`
			Auth   string `json:"auth"`
		} `json:"keys"`
	} `json:"subscription,omitempty"`
}

type preferencesJSON struct {
	UnsubscribedAll bool                       `json:"unsubscribedAll"`
	Categories      map[string]map[string]bool `json:"categories,omitempty"`
	QuietHours      *struct {
		Start string `json:"start"`
		End   string `json:"end"`
	} `json:"quietHours,omitempty"`
}

type profileJSON struct {
	UserID      string                       `json:"userId,omitempty"`
	Email       string                       `json:"email,omitempty"`
	Phone       string                       `json:"phone,omitempty"`
	Locale      string                       `json:"locale,omitempty"`
	Timezone    string                       `json:"timezone,omitempty"`
	Devices     []deviceJSON                 `json:"devices,omitempty"`
	Chat        map[string]map[string]string `json:"chat,omitempty"`
	Preferences preferencesJSON              `json:"preferences"`
	// Attributes are what campaign segments select on (attributes.plan =
	// "pro"); they are stored readable, like locale: no personal data.
	Attributes map[string]string `json:"attributes,omitempty"`
	UpdatedAt  string            `json:"updatedAt,omitempty"`
}

// MaxAttributes bounds a profile's attributes.
const MaxAttributes = 100

var attributeName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

func (b *profileJSON) toProfile(userID string) (*schemas.Profile, *Error) {
	p := &schemas.Profile{UserID: userID, Email: strings.TrimSpace(b.Email), Phone: strings.TrimSpace(b.Phone),
		Locale: b.Locale, Timezone: b.Timezone, Chat: b.Chat}
	if b.UserID != "" && b.UserID != userID {
		return nil, invalid("userId", "userId %q in the body differs from %q in the path", b.UserID, userID)
	}
	if len(b.Attributes) > MaxAttributes {
		return nil, invalid("attributes", "at most %d attributes", MaxAttributes)
	}
	for k, v := range b.Attributes {
		if !attributeName.MatchString(k) {
			return nil, invalid("attributes."+processors.Clip(k, 64), "an attribute name is 1-64 letters, digits, _ - or .")
		}
		if len(v) > 1024 {
			return nil, invalid("attributes."+k, "an attribute value is at most 1024 bytes")
		}
	}
	p.Attributes = b.Attributes
	if p.Email != "" {
		if err := processors.ValidateEmail(p.Email); err != nil {
			return nil, invalid("email", "%v", err)
		}
	}
	if p.Phone != "" {
		if err := processors.ValidatePhone(p.Phone); err != nil {
			return nil, invalid("phone", "%v", err)
		}
	}
	if p.Locale != "" && !localePattern.MatchString(p.Locale) {
		return nil, invalid("locale", "locale %q is not a BCP 47 tag like en or zh-CN", p.Locale)
	}
	if p.Timezone != "" {
		if _, err := time.LoadLocation(p.Timezone); err != nil {
			return nil, invalid("timezone", "unknown IANA time zone %q", p.Timezone)
		}
	}
	for i, d := range b.Devices {
		f := fmt.Sprintf("devices[%d]", i)
		dev := schemas.Device{Platform: d.Platform, Token: d.Token}
		switch d.Platform {
		case "fcm", "apns":
			if d.Token == "" {
				return nil, invalid(f+".token", "a %s device needs a token", d.Platform)
			}
		case "webpush":
			if d.Subscription == nil || d.Subscription.Endpoint == "" || d.Subscription.Keys.P256dh == "" || d.Subscription.Keys.Auth == "" {
				return nil, invalid(f+".subscription", "a webpush device needs subscription.endpoint and subscription.keys.p256dh/auth")
			}
			dev.Endpoint, dev.P256dh, dev.Auth = d.Subscription.Endpoint, d.Subscription.Keys.P256dh, d.Subscription.Keys.Auth
		default:
			return nil, invalid(f+".platform", "platform must be fcm, apns or webpush, got %q", d.Platform)
		}
		p.Devices = append(p.Devices, dev)
	}
	for app := range b.Chat {
		if !processors.KnownChannel(app) {
			return nil, invalid("chat."+app, "unknown chat app %q", app)
		}
	}
	p.Preferences = schemas.Preferences{UnsubscribedAll: b.Preferences.UnsubscribedAll, Categories: b.Preferences.Categories}
	for cat, chs := range b.Preferences.Categories {
		for ch := range chs {
			if ch != "all" && !processors.KnownChannel(ch) {
				return nil, invalid("preferences.categories."+cat+"."+ch, "unknown channel %q", ch)
			}
		}
	}
	if q := b.Preferences.QuietHours; q != nil {
		if !processors.ValidHHMM(q.Start) {
			return nil, invalid("preferences.quietHours.start", "start must be HH:MM, got %q", q.Start)
		}
		if !processors.ValidHHMM(q.End) {
			return nil, invalid("preferences.quietHours.end", "end must be HH:MM, got %q", q.End)
		}
		p.Preferences.QuietStart, p.Preferences.QuietEnd = q.Start, q.End
	}
	return p, nil
}

func fromProfile(p *schemas.Profile) profileJSON {
	out := profileJSON{UserID: p.UserID, Email: p.Email, Phone: p.Phone, Locale: p.Locale, Timezone: p.Timezone, Chat: p.Chat, Attributes: p.Attributes,
		Preferences: preferencesJSON{UnsubscribedAll: p.Preferences.UnsubscribedAll, Categories: p.Preferences.Categories}}
	if p.UpdatedAt > 0 {
		out.UpdatedAt = millis(p.UpdatedAt)
	}
	if p.Preferences.QuietStart != "" {
		out.Preferences.QuietHours = &struct {
			Start string `json:"start"`
			End   string `json:"end"`
		}{p.Preferences.QuietStart, p.Preferences.QuietEnd}
	}
	for _, d := range p.Devices {
		dj := deviceJSON{Platform: d.Platform, Token: d.Token}
		if d.Platform == "webpush" {
			dj.Subscription = &struct {
				Endpoint string `json:"endpoint"`
				Keys     struct {
					P256dh string `json:"p256dh"`
					Auth   string `json:"auth"`
				} `json:"keys"`
			}{Endpoint: d.Endpoint}
			dj.Subscription.Keys.P256dh, dj.Subscription.Keys.Auth = d.P256dh, d.Auth
		}
		out.Devices = append(out.Devices, dj)
	}
	return out
}

func (s *Server) putProfile(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("userId")
	if err := validID("userId", id); err != nil {
		writeError(w, err)
		return
	}
	var b profileJSON
	if err := decode(r, s.MaxBodyBytes, &b); err != nil {
		writeError(w, err)
		return
	}
	p, apiErr := b.toProfile(id)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	p.Tenant = tenantFrom(r.Context())
	key := schemas.TenantKey(p.Tenant, id)
	p.UpdatedAt = s.now().UnixMilli()
	sealed, err := processors.SealProfile(r.Context(), s.sealer(), p)
	if err != nil {
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "profile: " + err.Error()})
		return
	}
	v, err := schemas.ProfileCodec.Encode(sealed)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.write(r.Context(), string(topology.Profiles), key, v, func() bool {
		cur := s.lookupProfile(key)
		return cur != nil && cur.UpdatedAt == p.UpdatedAt
	}); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, fromProfile(p))
}

func (s *Server) getProfile(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("userId")
	key := schemas.TenantKey(tenantFrom(r.Context()), id)
	s.sync(r.Context(), s.Profiles, key)
	p := s.lookupProfile(key)
	if p == nil {
		writeError(w, notFound("profile", id))
		return
	}
	opened, err := processors.OpenProfile(r.Context(), s.sealer(), p)
	if err != nil {
		if errors.Is(err, crypt.ErrErased) {
			writeError(w, notFound("profile", id))
			return
		}
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "profile: " + err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, fromProfile(opened))
}

func (s *Server) deleteProfile(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("userId")
	key := schemas.TenantKey(tenantFrom(r.Context()), id)
	if s.lookupProfile(key) == nil {
		// Gone already; a DELETE repeated after its key could not be
		// destroyed finishes the erasure.
		if s.Crypt != nil {
			if n, err := s.Crypt.Erase(r.Context(), key); err == nil && n > 0 {
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		writeError(w, notFound("profile", id))
		return
	}
	if err := s.write(r.Context(), string(topology.Profiles), key, nil, func() bool { return s.lookupProfile(key) == nil }); err != nil {
		writeError(w, err)
		return
	}
	// Erasure: the user's data key is destroyed, so every copy of their
	// personal data on every topic, in the DLQ and in local state (all
	// sealed with it) can no longer be read.
	if s.Crypt != nil {
		if _, err := s.Crypt.Erase(r.Context(), key); err != nil {
			writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable",
				Message: "the profile is deleted but its data key could not be destroyed yet; repeat the DELETE: " + err.Error()})
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

// ---- templates

type templateJSON struct {
	ID       string                                       `json:"id,omitempty"`
	Category string                                       `json:"category,omitempty"`
	Priority string                                       `json:"priority,omitempty"`
	Channels map[string]schemas.ChannelContent            `json:"channels"`
	Locales  map[string]map[string]schemas.ChannelContent `json:"locales,omitempty"`
	// Digest collects a user's events of this template within a window
	// into one notification (data "digest": count, items, more).
	Digest    *digestJSON `json:"digest,omitempty"`
	UpdatedAt string      `json:"updatedAt,omitempty"`
}

type digestJSON struct {
	Window string `json:"window"`
	Max    int32  `json:"max,omitempty"`
}

func fromTemplate(t *schemas.Template) templateJSON {
	out := templateJSON{ID: t.ID, Category: t.Category, Priority: t.Priority, Channels: t.Channels, Locales: t.Locales}
	if t.DigestWindowMs > 0 {
		out.Digest = &digestJSON{Window: (time.Duration(t.DigestWindowMs) * time.Millisecond).String(), Max: t.DigestMax}
	}
	if t.UpdatedAt > 0 {
		out.UpdatedAt = millis(t.UpdatedAt)
	}
	return out
}

func (s *Server) putTemplate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := validID("id", id); err != nil {
		writeError(w, err)
		return
	}
	var b templateJSON
	if err := decode(r, s.MaxBodyBytes, &b); err != nil {
		writeError(w, err)
		return
	}
	if b.ID != "" && b.ID != id {
		writeError(w, invalid("id", "id %q in the body differs from %q in the path", b.ID, id))
		return
	}
	t := &schemas.Template{ID: id, Category: b.Category, Priority: b.Priority, Channels: b.Channels, Locales: b.Locales,
		UpdatedAt: s.now().UnixMilli(), Tenant: tenantFrom(r.Context())}
	if b.Digest != nil {
		d, err := time.ParseDuration(b.Digest.Window)
		if err != nil || d < time.Second || d > processors.MaxDigestWindow {
			writeError(w, invalid("digest.window", "digest.window must be a duration from 1s to %v, like 10m", processors.MaxDigestWindow))
			return
		}
		if b.Digest.Max < 0 || b.Digest.Max > processors.MaxDigestMax {
			writeError(w, invalid("digest.max", "digest.max must be 0 (the default, %d) to %d", processors.DefaultDigestMax, processors.MaxDigestMax))
			return
		}
		t.DigestWindowMs, t.DigestMax = d.Milliseconds(), b.Digest.Max
	}
	key := schemas.TenantKey(t.Tenant, id)
	if err := processors.ValidateTemplateLimits(t, s.Render); err != nil {
		field, msg, _ := strings.Cut(err.Error(), ": ")
		writeError(w, invalid(field, "%s", msg))
		return
	}
	v, err := schemas.TemplateCodec.Encode(t)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.write(r.Context(), string(topology.Templates), key, v, func() bool {
		cur := s.lookupTemplate(key)
		return cur != nil && cur.UpdatedAt == t.UpdatedAt
	}); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, fromTemplate(t))
}

func (s *Server) getTemplate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	key := schemas.TenantKey(tenantFrom(r.Context()), id)
	s.sync(r.Context(), s.Templates, key)
	t := s.lookupTemplate(key)
	if t == nil {
		writeError(w, notFound("template", id))
		return
	}
	writeJSON(w, http.StatusOK, fromTemplate(t))
}

func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request) {
	it, err := s.Templates.Iterator()
	if err != nil {
		writeError(w, err)
		return
	}
	defer it.Release()
	out := []templateJSON{}
	tenant := tenantFrom(r.Context())
	for it.Next() {
		if t, _ := schemas.SplitTenantKey(it.Key()); t != tenant {
			continue
		}
		v, err := it.Value()
		if err != nil {
			continue
		}
		if d, ok := v.(schemas.Decoded[schemas.Template]); ok && d.Err == nil && d.V != nil {
			out = append(out, fromTemplate(d.V))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	writeJSON(w, http.StatusOK, map[string]any{"templates": out})
}

func (s *Server) deleteTemplate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	key := schemas.TenantKey(tenantFrom(r.Context()), id)
	if s.lookupTemplate(key) == nil {
		writeError(w, notFound("template", id))
		return
	}
	if err := s.write(r.Context(), string(topology.Templates), key, nil, func() bool { return s.lookupTemplate(key) == nil }); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

type previewBody struct {
	Data    json.RawMessage `json:"data"`
	Locale  string          `json:"locale"`
	Channel string          `json:"channel"`
}

// renderError is the answer to a preview that did not render. A render over
// budget is 422 render_budget naming "data": the template passed its checks
// at PUT, so it is this data (a long value, a long list) that takes it over.
func renderError(ctx context.Context, err error) *Error {
	var be *processors.BudgetError
	switch {
	case errors.As(err, &be):
		return &Error{Status: http.StatusUnprocessableEntity, Code: "render_budget", Field: "data",
			Message: fmt.Sprintf("%v (the %s budget of a render; a send with this data is rejected alike)", err, be.Budget)}
	case ctx.Err() != nil:
		// Nobody reads this; the status is for the request metrics.
		return &Error{Status: statusClientClosedRequest, Code: "canceled", Message: "the request was cancelled before the preview rendered"}
	}
	return invalid("data", "%v", err)
}

// statusClientClosedRequest is nginx's status for a request its client
// abandoned.
const statusClientClosedRequest = 499

func (s *Server) previewTemplate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	t := s.lookupTemplate(schemas.TenantKey(tenantFrom(r.Context()), id))
	if t == nil {
		writeError(w, notFound("template", id))
		return
	}
	var b previewBody
	if err := decode(r, s.MaxBodyBytes, &b); err != nil {
		writeError(w, err)
		return
	}
	if b.Channel == "" {
		writeError(w, invalid("channel", "channel is required"))
		return
	}
	cc, locale, ok := processors.SelectContent(t, b.Channel, b.Locale)
	if !ok {
		writeError(w, invalid("channel", "template %s has no %s content", id, b.Channel))
		return
	}
	// Parsed exactly as the pipeline parses a request's data, so the preview
	// renders what a send would.
	data, err := processors.ParseData(string(b.Data))
	if err != nil {
		writeError(w, invalid("data", "data must be a JSON object"))
		return
	}
	// The request's context stops the render when the client goes away.
	content, err := processors.RenderContext(r.Context(), t, b.Channel, cc, data, s.Render)
	if err != nil {
		writeError(w, renderError(r.Context(), err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"channel": b.Channel, "locale": locale, "content": content})
}
