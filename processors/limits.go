package processors

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strconv"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// maxRecent bounds the content hashes kept per user.
const maxRecent = 200

// ContentHash names rendered content sent to an address on a channel.
func ContentHash(channel, address string, c schemas.Content) string {
	h := sha256.New()
	for _, s := range []string{channel, address, c.Subject, c.HTML, c.Text, c.Title, c.Body, c.Endpoint,
		c.Markdown, c.ActionURL, c.ImageURL, c.TemplateID} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	for _, m := range []map[string]string{c.Data, c.TemplateParams} {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			h.Write([]byte(k + "\x00" + m[k] + "\x00"))
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}

// UserDay is the user's calendar day (in their timezone when known), the unit of
// the frequency cap.
func UserDay(now time.Time, timezone string) string {
	if timezone != "" {
		if loc, err := time.LoadLocation(timezone); err == nil {
			now = now.In(loc)
		}
	} else {
		now = now.UTC()
	}
	return now.Format("2006-01-02")
}

// Limiter applies content dedup and the per-channel daily cap to a user's state.
type Limiter struct {
	ContentWindow time.Duration
	PerDay        func(channel string) int
}

// Check tells why a send must not happen ("" = allowed) and, when allowed,
// records it in st. st is modified in place. The same notification routed
// again (a replay after a crash) is allowed and not counted twice; the sink's
// ledger keeps it from being sent twice.
func (l Limiter) Check(st *schemas.UserState, now time.Time, day, channel, hash, notificationID string) (status, reason string) {
	if st.Day != day {
		st.Day, st.SentToday = day, map[string]int32{}
	}
	if st.SentToday == nil {
		st.SentToday = map[string]int32{}
	}
	cutoff := now.Add(-l.ContentWindow).UnixMilli()
	kept := st.Recent[:0]
	for _, r := range st.Recent {
		if r.At > cutoff {
			kept = append(kept, r)
		}
	}
	st.Recent = kept
	for _, r := range st.Recent {
		if r.Hash == hash && notificationID != "" && r.NotificationID == notificationID {
			return "", ""
		}
		if r.Hash == hash {
			return StatusSuppressed, "same content sent to this user on " + channel + " at " +
				time.UnixMilli(r.At).UTC().Format(time.RFC3339) + " (content dedup window " + l.ContentWindow.String() + ")"
		}
	}
	if limit := l.PerDay(channel); limit > 0 && int(st.SentToday[channel]) >= limit {
		return StatusRateLimited, "daily cap of " + strconv.Itoa(limit) + " " + channel + " notifications per user reached"
	}
	st.SentToday[channel]++
	st.Recent = append(st.Recent, schemas.RecentContent{Hash: hash, At: now.UnixMilli(), NotificationID: notificationID, Channel: channel})
	if n := len(st.Recent) - maxRecent; n > 0 {
		st.Recent = append([]schemas.RecentContent(nil), st.Recent[n:]...)
	}
	return "", ""
}

// Forget drops what st recorded of a notification on a channel that no
// provider accepted: content dedup counts only what was sent. It tells
// whether st changed.
func Forget(st *schemas.UserState, notificationID, channel string) bool {
	kept := st.Recent[:0]
	for _, r := range st.Recent {
		if r.NotificationID == notificationID && (r.Channel == channel || r.Channel == "") {
			continue
		}
		kept = append(kept, r)
	}
	changed := len(kept) != len(st.Recent)
	st.Recent = kept
	return changed
}
