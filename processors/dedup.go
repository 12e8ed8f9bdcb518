package processors

import (
	"encoding/json"
	"fmt"
	"regexp"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// Priorities, highest first.
var Priorities = []string{"high", "normal", "low"}

// IsDuplicate tells whether a request whose eventId was first seen at entry is a
// repeat: an entry older than the window no longer counts.
func IsDuplicate(entry *schemas.DedupEntry, now time.Time, window time.Duration) bool {
	return entry != nil && !DedupExpired(entry, now, window)
}

// DedupExpired tells whether a dedup entry is past its window and may be deleted.
func DedupExpired(entry *schemas.DedupEntry, now time.Time, window time.Duration) bool {
	return entry == nil || now.Sub(time.UnixMilli(entry.FirstSeen)) >= window
}

// ValidateRequest checks a SendRequest that may not have come through the API.
func ValidateRequest(r *schemas.SendRequest) error {
	if r.EventID == "" {
		return fmt.Errorf("eventId: required")
	}
	if r.LocalTime != "" && !hhmmPattern.MatchString(r.LocalTime) {
		return fmt.Errorf("localTime: want HH:MM (00:00 to 23:59)")
	}
	if r.Tenant != "" && !schemas.ValidTenant(r.Tenant) {
		return fmt.Errorf("tenant: must be 1-63 characters of lowercase letters, digits, _ and -")
	}
	if !ValidID(r.EventID) {
		return fmt.Errorf("eventId: must be 1-200 characters of letters, digits and ._:@/+=-")
	}
	if r.Template == "" {
		return fmt.Errorf("template: required")
	}
	if !ValidID(r.Template) {
		return fmt.Errorf("template: must be 1-200 characters of letters, digits and ._:@/+=-")
	}
	if len(r.Recipients) == 0 {
		return fmt.Errorf("recipients: at least one recipient is required")
	}
	for i, rc := range r.Recipients {
		if rc.UserID == "" {
			return fmt.Errorf("recipients[%d].userId: required", i)
		}
		if !ValidID(rc.UserID) {
			return fmt.Errorf("recipients[%d].userId: must be 1-200 characters of letters, digits and ._:@/+=-", i)
		}
	}
	if err := ValidateCategory(r.Category); err != nil {
		return fmt.Errorf("category: %w", err)
	}
	if r.Priority != "" && !validPriority(r.Priority) {
		return fmt.Errorf("priority: must be high, normal or low, got %q", r.Priority)
	}
	for i, ch := range r.Channels {
		if !KnownChannel(ch) {
			return fmt.Errorf("channels[%d]: unknown channel %q", i, ch)
		}
	}
	if r.Data != "" {
		var m map[string]any
		if err := json.Unmarshal([]byte(r.Data), &m); err != nil {
			return fmt.Errorf("data: must be a JSON object: %v", err)
		}
	}
	return CheckFanout(r)
}

// MaxFanoutBytes bounds the data a request fans out to: every notification
// carries the request's data, so a large data object times many recipients
// would multiply into gigabytes of records.
const MaxFanoutBytes = 64 << 20

// NotificationOverhead is what a notification record may add to its request's
// data and recipient (ids, template, timestamps), so a request that fits a
// record with this margin fans out to notifications that fit too.
const NotificationOverhead = 8 << 10

// CheckFanout refuses a request whose data times its recipients exceeds MaxFanoutBytes.
func CheckFanout(r *schemas.SendRequest) error {
	if n := len(r.Data) * len(r.Recipients); n > MaxFanoutBytes {
		return fmt.Errorf("data of %d bytes for %d recipients makes %d bytes of notifications, over the limit of %d",
			len(r.Data), len(r.Recipients), n, MaxFanoutBytes)
	}
	return nil
}

var hhmmPattern = regexp.MustCompile(`^([01][0-9]|2[0-3]):[0-5][0-9]$`)

func validPriority(p string) bool { return p == "high" || p == "normal" || p == "low" }

// OTPDefaultTTL is how long a one-time code may be delivered when its request
// gives no expiresAt: past it the notification ends expired, never sent late.
const OTPDefaultTTL = 5 * time.Minute

// Fanout splits a request into one Notification per recipient.
func Fanout(r *schemas.SendRequest) []*schemas.Notification {
	out := make([]*schemas.Notification, 0, len(r.Recipients))
	seen := make(map[string]bool, len(r.Recipients))
	for _, rc := range r.Recipients {
		if seen[rc.UserID] { // the same user twice in one request is one notification
			continue
		}
		seen[rc.UserID] = true
		out = append(out, &schemas.Notification{
			ID: TenantNotificationID(r.Tenant, r.EventID, rc.UserID), EventID: r.EventID, UserID: rc.UserID, Tenant: r.Tenant,
			Template: r.Template, Priority: r.Priority, Category: r.Category, Channels: r.Channels,
			Recipient: rc, Data: r.Data, SendAt: r.SendAt, ExpiresAt: r.ExpiresAt, AcceptedAt: r.AcceptedAt, LocalTime: r.LocalTime,
			OTP: r.OTP, DigestKey: r.DigestKey, ScheduleID: r.ScheduleID,
			TemplateVersion: r.TemplateVersion, TemplateHash: r.TemplateHash,
		})
		if r.OTP {
			last := out[len(out)-1]
			last.Priority, last.SendAt, last.LocalTime = "high", 0, ""
			if last.ExpiresAt == 0 {
				last.ExpiresAt = r.AcceptedAt + OTPDefaultTTL.Milliseconds()
			}
		}
	}
	return out
}

// ValidateNotification checks a Notification read from notify.accepted, which
// any Kafka client can write.
func ValidateNotification(n *schemas.Notification) error {
	if !ValidID(n.ID) {
		return fmt.Errorf("id: must be 1-200 characters of letters, digits and ._:@/+=-")
	}
	if n.Tenant != "" && !schemas.ValidTenant(n.Tenant) {
		return fmt.Errorf("tenant: must be 1-63 characters of lowercase letters, digits, _ and -")
	}
	if !ValidID(n.UserID) {
		return fmt.Errorf("userId: must be 1-200 characters of letters, digits and ._:@/+=-")
	}
	if n.Template != "" && !ValidID(n.Template) {
		return fmt.Errorf("template: must be 1-200 characters of letters, digits and ._:@/+=-")
	}
	return nil
}

// MaxReason bounds the reason of a status event: reasons quote errors, and
// errors may quote input.
const MaxReason = 2048

// NotificationEvent builds a status event about a notification.
//
// The reason goes through Redact (contacts, addresses, phone numbers, a
// one-time code's data; bounded to MaxReason).
func NotificationEvent(n *schemas.Notification, status, channel, reason string, at time.Time) *schemas.StatusEvent {
	if reason != "" {
		reason = Redact(reason, Sensitive(n), MaxReason)
	}
	return &schemas.StatusEvent{
		ID: StatusEventID(n.ID, status, channel, 0), NotificationID: n.ID, EventID: n.EventID, UserID: n.UserID,
		Template: n.Template, Channel: channel, Priority: n.Priority, Category: n.Category, Tenant: n.Tenant, Campaign: n.Campaign,
		Status: status, Reason: reason, At: at.UnixMilli(), AcceptedAt: n.AcceptedAt, TemplateVersion: n.TemplateVersion,
	}
}

// ScheduleKey is the key of a scheduled notification: the due time first, zero
// padded, so keys sort by when they are due.
func ScheduleKey(dueMillis int64, notificationID string) string {
	return fmt.Sprintf("%013d/%s", dueMillis, notificationID)
}

// MaxScheduleAhead bounds how far in the future a notification may be scheduled.
const MaxScheduleAhead = 366 * 24 * time.Hour
