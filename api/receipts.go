package api

import (
	"fmt"
	"net/http"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
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
		if rc.At != "" {
			t, err := time.Parse(time.RFC3339, rc.At)
			if err != nil {
				writeError(w, invalid(f("at"), "at must be an RFC 3339 time: %v", err))
				return
			}
			at = t
		}
		ev := &schemas.StatusEvent{ID: processors.StatusEventID(rc.NotificationID, rc.Status, rc.Channel, 0),
			NotificationID: rc.NotificationID, Channel: rc.Channel, Provider: rc.Provider, Status: rc.Status,
			Reason: rc.Reason, ProviderMessageID: rc.ProviderMessageID, At: at.UnixMilli()}
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
