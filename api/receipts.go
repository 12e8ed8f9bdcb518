package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks"
	"github.com/notifyd/notifyd/topology"
)

// receiptStatuses are what a provider (or a tracking relay) may report.
var receiptStatuses = map[string]bool{
	processors.StatusDelivered: true, processors.StatusFailed: true, processors.StatusOpened: true,
	processors.StatusClicked: true, processors.StatusUnsubscribed: true,
}

type receiptBody struct {
	NotificationID    string `json:"notificationId"`
	Channel           string `json:"channel"`
	Provider          string `json:"provider"`
	Status            string `json:"status"`
	Reason            string `json:"reason"`
	ProviderMessageID string `json:"providerMessageId"`
	At                string `json:"at"`
}

// receipts takes {"receipts": [...]}: what providers report about notifications
// they were handed (delivered, failed, opened, clicked, unsubscribed). Each
// becomes a status event; a repeated receipt has the same event id, so it counts
// once in analytics.
func (s *Server) receipts(w http.ResponseWriter, r *http.Request) {
	var b struct {
		Receipts []receiptBody `json:"receipts"`
	}
	if err := decode(r, s.MaxBodyBytes, &b); err != nil {
		writeError(w, err)
		return
	}
	if len(b.Receipts) == 0 || len(b.Receipts) > s.MaxBatch {
		writeError(w, invalid("receipts", "1 to %d receipts per request", s.MaxBatch))
		return
	}
	var recs []*kgo.Record
	for i, rc := range b.Receipts {
		f := func(name string) string { return fmt.Sprintf("receipts[%d].%s", i, name) }
		if err := validID(f("notificationId"), rc.NotificationID); err != nil {
			writeError(w, err)
			return
		}
		if !processors.KnownChannel(rc.Channel) {
			writeError(w, invalid(f("channel"), "unknown channel %q", rc.Channel))
			return
		}
		if err := validID(f("provider"), rc.Provider); err != nil {
			writeError(w, err)
			return
		}
		if !receiptStatuses[rc.Status] {
			writeError(w, invalid(f("status"), "status must be delivered, failed, opened, clicked or unsubscribed, got %q", rc.Status))
			return
		}
		at := s.now()
		var given bool
		if rc.At != "" {
			t, err := time.Parse(time.RFC3339, rc.At)
			if err != nil {
				writeError(w, invalid(f("at"), "at must be an RFC 3339 time: %v", err))
				return
			}
			at, given = t, true
		}
		lc := s.lifecycle(r.Context(), rc.NotificationID)
		if lc == nil || lc.Tenant != tenantFrom(r.Context()) {
			// Receipts only for notifications this tenant sent: nothing is
			// made up for an id notifyd does not know.
			writeError(w, &Error{Status: http.StatusNotFound, Code: "not_found", Field: f("notificationId"),
				Message: fmt.Sprintf("notification %q not found", rc.NotificationID)})
			return
		}
		if !sentBy(lc, rc.Channel, rc.Provider) {
			writeError(w, &Error{Status: http.StatusForbidden, Code: "wrong_provider", Field: f("provider"),
				Message: fmt.Sprintf("notification %q was not handed to provider %q on channel %s: only the provider that sent it may report on it",
					rc.NotificationID, rc.Provider, rc.Channel)})
			return
		}
		if lo, hi := receiptWindow(lc, s.now()); given && (at.Before(lo) || at.After(hi)) {
			writeError(w, invalid(f("at"), "at must be between %s (the notification's acceptance, less %s of clock skew) and %s (now, plus %s): got %s",
				lo.UTC().Format(time.RFC3339), maxReceiptBeforeAcceptance, hi.UTC().Format(time.RFC3339), maxReceiptAhead, rc.At))
			return
		}
		ev := receiptEvent(lc, rc.Channel, rc.Provider, rc.Status, rc.Reason, rc.ProviderMessageID, at)
		v, err := schemas.StatusEventCodec.Encode(ev)
		if err != nil {
			writeError(w, err)
			return
		}
		recs = append(recs, &kgo.Record{Topic: string(topology.Events), Key: []byte(ev.NotificationID), Value: v})
	}
	if err := s.Producer.ProduceSync(r.Context(), recs...).FirstErr(); err != nil {
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "could not record receipts: " + err.Error()})
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]int{"accepted": len(recs)})
}

// ReceiptSource is a provider that takes receipts, and its channel.
type ReceiptSource struct {
	Channel  string
	Provider sinks.ReceiptProvider
}

// maxCallbackBytes bounds a provider's callback body.
const maxCallbackBytes = 64 << 10

// providerReceipts takes a provider's own callback (Twilio's status callback,
// say) at POST /v1/receipts/{provider}: not an API key but the provider's
// signature authenticates it. Each receipt about a notification notifyd knows
// becomes a status event; an unsubscribe (SMS STOP) also opts the user out of
// the channel. Receipts for notifications notifyd does not know record
// nothing; a callback with none it knows answers 404.
func (s *Server) providerReceipts(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("provider")
	src, ok := s.ReceiptProviders[name]
	if !ok {
		writeError(w, &Error{Status: http.StatusNotFound, Code: "not_found", Message: fmt.Sprintf("no provider %q takes receipts here", name)})
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxCallbackBytes))
	if err != nil {
		writeError(w, &Error{Status: http.StatusRequestEntityTooLarge, Code: "payload_too_large",
			Message: fmt.Sprintf("a callback may be at most %d bytes", maxCallbackBytes)})
		return
	}
	receipts, err := src.Provider.Receipts(r, body)
	if errors.Is(err, sinks.ErrBadSignature) {
		writeError(w, &Error{Status: http.StatusForbidden, Code: "bad_signature", Message: name + ": " + err.Error()})
		return
	}
	if err != nil {
		writeError(w, invalid("", "%s callback: %v", name, err))
		return
	}
	var recs []*kgo.Record
	recorded, unknown, replaced := 0, 0, 0
	var firstUnknown string
	for _, rc := range receipts {
		if rc.Status == "" {
			continue
		}
		lc := s.lifecycle(r.Context(), rc.NotificationID)
		if lc == nil || !sentBy(lc, src.Channel, name) {
			// Not a notification notifyd handed to this provider: nothing is
			// recorded for it. A batch (SendGrid posts many events at once)
			// goes on with the rest.
			unknown++
			if firstUnknown == "" {
				firstUnknown = rc.NotificationID
			}
			continue
		}
		recorded++
		// The provider's time, when it gave a plausible one; a time before the
		// notification or in the future (a wrong clock, a garbled field) is
		// replaced by when the callback came, as a missing one is: the status
		// the provider signed is still recorded.
		now := s.now()
		at := rc.At
		if lo, hi := receiptWindow(lc, now); !at.IsZero() && (at.Before(lo) || at.After(hi)) {
			replaced++
			at = time.Time{}
		}
		if at.IsZero() {
			at = now
		}
		channel := src.Channel
		ev := receiptEvent(lc, channel, name, rc.Status, rc.Reason, rc.ProviderMessageID, at)
		v, err := schemas.StatusEventCodec.Encode(ev)
		if err != nil {
			writeError(w, err)
			return
		}
		recs = append(recs, &kgo.Record{Topic: string(topology.Events), Key: []byte(ev.NotificationID), Value: v})
		if rc.Status == processors.StatusUnsubscribed && processors.ValidID(lc.UserID) {
			fb, err := schemas.FeedbackCodec.Encode(&schemas.DeliveryFeedback{NotificationID: rc.NotificationID, Channel: channel,
				Status: processors.StatusUnsubscribed, At: at.UnixMilli(), Unsubscribe: true, Reason: ev.Reason})
			if err == nil {
				recs = append(recs, &kgo.Record{Topic: string(topology.Feedback), Key: []byte(schemas.TenantKey(lc.Tenant, lc.UserID)), Value: fb})
			}
		}
	}
	if replaced > 0 {
		s.logger().Warn("provider callback: event times out of bounds replaced by the time received", "provider", name, "events", replaced)
	}
	if unknown > 0 && recorded == 0 {
		writeError(w, notFound("notification", firstUnknown))
		return
	}
	if len(recs) > 0 {
		if err := s.Producer.ProduceSync(r.Context(), recs...).FirstErr(); err != nil {
			writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "could not record receipts: " + err.Error()})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]int{"accepted": recorded, "unknown": unknown})
}

// providerHandshake answers a provider's GET check of its callback URL
// (WhatsApp: hub.mode=subscribe with the configured verify token → the
// challenge, as text).
func (s *Server) providerHandshake(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("provider")
	src, ok := s.ReceiptProviders[name]
	hs, isHS := src.Provider.(sinks.ReceiptHandshaker)
	if !ok || !isHS {
		writeError(w, &Error{Status: http.StatusNotFound, Code: "not_found", Message: fmt.Sprintf("no provider %q checks its callback URL here", name)})
		return
	}
	challenge, err := hs.Handshake(r)
	if err != nil {
		writeError(w, &Error{Status: http.StatusForbidden, Code: "bad_signature", Message: name + ": " + err.Error()})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, challenge)
}

// receiptEvent is the status event of a receipt about a known notification:
// tenant, template, category and priority come from its lifecycle, so
// analytics per template and tenant count it. The receipt's free text — the
// reason and the message id a caller or a provider's callback wrote — enters
// notifyd here, for both endpoints, through processors.Redact.
func receiptEvent(lc *schemas.Lifecycle, channel, provider, status, reason, providerMessageID string, at time.Time) *schemas.StatusEvent {
	return &schemas.StatusEvent{ID: processors.StatusEventID(lc.ID, status, channel, 0),
		NotificationID: lc.ID, EventID: lc.EventID, UserID: lc.UserID, Template: lc.Template, Tenant: lc.Tenant, Campaign: lc.Campaign,
		Channel: channel, Priority: lc.Priority, Category: lc.Category, Provider: provider, Status: status,
		Reason:            processors.Redact(reason, nil, processors.MaxReason),
		ProviderMessageID: processors.Redact(providerMessageID, nil, maxReceiptMessageID), At: at.UnixMilli()}
}

// maxReceiptMessageID bounds a receipt's provider message id (Twilio's are
// 34 bytes, SendGrid's and WhatsApp's under 100).
const maxReceiptMessageID = 256

// A receipt's time must be plausible: a provider reports on a message after
// notifyd accepted it, and not later than now. The allowances absorb the
// clocks of providers, relays and notifyd's own hosts.
const (
	// maxReceiptAhead: how far past notifyd's clock a receipt's time may be.
	maxReceiptAhead = 5 * time.Minute
	// maxReceiptBeforeAcceptance: how far before the notification's
	// acceptance (its first status) a receipt's time may be.
	maxReceiptBeforeAcceptance = 5 * time.Minute
)

// receiptWindow is the span a receipt's time about lc must fall in at now.
// The acceptance is the first status of the history; when older history was
// dropped it is unknown, and only the Unix epoch bounds the past (ClickHouse
// DateTime starts there).
func receiptWindow(lc *schemas.Lifecycle, now time.Time) (lo, hi time.Time) {
	lo = time.Unix(0, 0)
	if len(lc.History) > 0 && lc.DroppedHistory == 0 {
		first := lc.History[0].At
		for _, h := range lc.History[1:] { // sorted by the status group; not trusted to be
			first = min(first, h.At)
		}
		if t := time.UnixMilli(first).Add(-maxReceiptBeforeAcceptance); t.After(lo) {
			lo = t
		}
	}
	return lo, now.Add(maxReceiptAhead)
}

// sentBy tells whether provider was handed the notification on channel: a
// receipt is taken only from the provider that sent it. Push sent to several
// platforms names its providers joined by "+".
func sentBy(lc *schemas.Lifecycle, channel, provider string) bool {
	names := func(p string) bool {
		for _, n := range strings.Split(p, "+") {
			if n == provider {
				return true
			}
		}
		return false
	}
	for _, h := range lc.History {
		if h.Status == processors.StatusSent && h.Channel == channel && names(h.Provider) {
			return true
		}
	}
	// The oldest history may have been dropped; the lifecycle still names the
	// provider of its channel.
	return lc.DroppedHistory > 0 && lc.Channel == channel && names(lc.Provider)
}

// lifecycle reads a notification's lifecycle, nil when notifyd has none. On a
// miss the status table catches up once: a receipt may follow its send closely.
func (s *Server) lifecycle(ctx context.Context, id string) *schemas.Lifecycle {
	if !processors.ValidID(id) {
		return nil
	}
	if lc := s.readLifecycle(id); lc != nil {
		return lc
	}
	s.sync(ctx, s.Status, id)
	return s.readLifecycle(id)
}

func (s *Server) readLifecycle(id string) *schemas.Lifecycle {
	v, err := s.Status.Get(id)
	if err != nil {
		return nil
	}
	switch lc := v.(type) {
	case *schemas.Lifecycle:
		return lc
	case schemas.Decoded[schemas.Lifecycle]:
		return lc.V
	}
	return nil
}
