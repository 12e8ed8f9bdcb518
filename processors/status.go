package processors

import (
	"sort"

	"github.com/notifyd/notifyd/schemas"
)

// Lifecycle states (DESIGN.md).
const (
	StatusAccepted     = "accepted"
	StatusDuplicate    = "duplicate"
	StatusSuppressed   = "suppressed"
	StatusRateLimited  = "rate_limited"
	StatusRejected     = "rejected"
	StatusScheduled    = "scheduled"
	StatusQueued       = "queued"
	StatusRetrying     = "retrying" // a provider failed transiently; due again on a retry topic
	StatusSent         = "sent"
	StatusDelivered    = "delivered"
	StatusOpened       = "opened"
	StatusClicked      = "clicked"
	StatusFailed       = "failed"
	StatusExpired      = "expired"
	StatusUnsubscribed = "unsubscribed"
	// StatusCanceled: cancelled (alone or with its campaign) before a provider took it.
	StatusCanceled = "canceled"
	// StatusDigested: collected into a digest notification, sent with it.
	StatusDigested = "digested"
)

// rank orders states so that events arriving out of order cannot move a
// notification backwards (a late "accepted" after "sent" keeps "sent").
var rank = map[string]int{
	StatusAccepted: 1, StatusScheduled: 2, StatusQueued: 3, StatusRetrying: 3, StatusFailed: 4, StatusSent: 5,
	StatusDelivered: 6, StatusOpened: 7, StatusClicked: 8, StatusUnsubscribed: 9,
	StatusSuppressed: 10, StatusRateLimited: 10, StatusRejected: 10, StatusExpired: 10, StatusCanceled: 10, StatusDigested: 10,
}

// MaxHistory bounds a lifecycle's history; older entries are counted, not kept.
const MaxHistory = 100

// SeenStatus tells whether the lifecycle holds the event already (by event id):
// a stage replayed after a crash emits the same ids, and the history shows
// each state change once.
func SeenStatus(lc *schemas.Lifecycle, ev *schemas.StatusEvent) bool {
	if lc == nil || ev.ID == "" {
		return false
	}
	for i := len(lc.History) - 1; i >= 0; i-- {
		if lc.History[i].EventID == ev.ID {
			return true
		}
	}
	return false
}

// QueuedEvent is the queued event a sink's event implies: the deliver group
// routed the notification to ev's channel at ev.QueuedAt. It has the id the
// deliver group's own queued event had (before status_event.v5), so either
// one, seen first, makes the other a replay. nil when ev states no routing.
func QueuedEvent(ev *schemas.StatusEvent) *schemas.StatusEvent {
	if ev.QueuedAt <= 0 || ev.Channel == "" {
		return nil
	}
	return &schemas.StatusEvent{
		ID: StatusEventID(ev.NotificationID, StatusQueued, ev.Channel, 0), NotificationID: ev.NotificationID,
		EventID: ev.EventID, UserID: ev.UserID, Template: ev.Template, Channel: ev.Channel, Priority: ev.Priority,
		Category: ev.Category, Status: StatusQueued, At: ev.QueuedAt, AcceptedAt: ev.AcceptedAt,
		Tenant: ev.Tenant, Campaign: ev.Campaign, TemplateVersion: ev.TemplateVersion,
	}
}

// ImpliedQueued is the queued event to fold into lc before ev (see
// QueuedEvent), or nil when lc has it already. A history that dropped old
// entries may have dropped it: once the channel has a state there, it is not
// stated again.
func ImpliedQueued(lc *schemas.Lifecycle, ev *schemas.StatusEvent) *schemas.StatusEvent {
	q := QueuedEvent(ev)
	if q == nil || SeenStatus(lc, q) || (lc != nil && lc.DroppedHistory > 0 && lc.Channels[ev.Channel] != "") {
		return nil
	}
	return q
}

// ApplyStatus folds one status event into a notification's lifecycle.
func ApplyStatus(lc *schemas.Lifecycle, ev *schemas.StatusEvent) *schemas.Lifecycle {
	if lc == nil {
		lc = &schemas.Lifecycle{ID: ev.NotificationID}
	}
	fill := func(dst *string, v string) {
		if *dst == "" {
			*dst = v
		}
	}
	fill(&lc.EventID, ev.EventID)
	fill(&lc.UserID, ev.UserID)
	fill(&lc.Template, ev.Template)
	fill(&lc.Priority, ev.Priority)
	fill(&lc.Category, ev.Category)
	fill(&lc.Tenant, ev.Tenant)
	fill(&lc.Campaign, ev.Campaign)
	if lc.TemplateVersion == 0 {
		lc.TemplateVersion = ev.TemplateVersion
	}

	lc.History = append(lc.History, schemas.HistoryEntry{
		Status: ev.Status, At: ev.At, Reason: ev.Reason, Channel: ev.Channel, Provider: ev.Provider, EventID: ev.ID,
	})
	sort.SliceStable(lc.History, func(i, j int) bool { return lc.History[i].At < lc.History[j].At })
	if n := len(lc.History) - MaxHistory; n > 0 {
		lc.History = append([]schemas.HistoryEntry(nil), lc.History[n:]...)
		lc.DroppedHistory += int32(n)
	}

	// A duplicate request is history only: it does not change where the
	// original notification stands.
	if ev.Status == StatusDuplicate {
		if lc.Status == "" {
			lc.Status = StatusDuplicate
		}
		return lc
	}
	if ev.Channel != "" {
		if lc.Channels == nil {
			lc.Channels = map[string]string{}
		}
		if rank[ev.Status] >= rank[lc.Channels[ev.Channel]] {
			lc.Channels[ev.Channel] = ev.Status
		}
	}
	if lc.Status == StatusDuplicate || rank[ev.Status] >= rank[lc.Status] {
		lc.Status = ev.Status
		if ev.Channel != "" {
			lc.Channel = ev.Channel
		}
		if ev.Provider != "" {
			lc.Provider = ev.Provider
		}
	}
	return lc
}
