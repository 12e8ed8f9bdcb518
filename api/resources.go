package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
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
	ID       string `json:"id"`
	EventID  string `json:"eventId"`
	UserID   string `json:"userId"`
	Template string `json:"template"`
	Priority string `json:"priority,omitempty"`
	Category string `json:"category,omitempty"`
	Campaign string `json:"campaign,omitempty"`
	// TemplateVersion is the template version it renders (0: not known yet).
	TemplateVersion int64             `json:"templateVersion,omitempty"`
	Channel         string            `json:"channel,omitempty"`
	Provider        string            `json:"provider,omitempty"`
	Status          string            `json:"status"`
	Channels        map[string]string `json:"channels,omitempty"`
	History         []historyJSON     `json:"history"`
	DroppedHistory  int32             `json:"droppedHistory,omitempty"`
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
		Category: lc.Category, Campaign: lc.Campaign, TemplateVersion: lc.TemplateVersion, Channel: lc.Channel, Provider: lc.Provider, Status: lc.Status, Channels: lc.Channels,
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
		if cat != "*" {
			if err := processors.ValidateCategory(cat); err != nil {
				return nil, invalid("preferences.categories."+processors.Clip(cat, 64), "%v", err)
			}
		}
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
