package processors

import (
	"fmt"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// QuietUntil tells whether a notification falls in the user's quiet hours and,
// if so, when they end. Transactional and high-priority notifications are never
// held. The window is in the user's time zone (UTC when unknown) and may wrap
// past midnight (22:00–08:00).
func QuietUntil(p *schemas.Profile, category, priority string, now time.Time) (time.Time, string, bool) {
	if p == nil || p.Preferences.QuietStart == "" || p.Preferences.QuietEnd == "" ||
		category == CategoryTransactional || priority == "high" {
		return time.Time{}, "", false
	}
	loc := time.UTC
	if p.Timezone != "" {
		if l, err := time.LoadLocation(p.Timezone); err == nil {
			loc = l
		}
	}
	start, err1 := time.Parse("15:04", p.Preferences.QuietStart)
	end, err2 := time.Parse("15:04", p.Preferences.QuietEnd)
	if err1 != nil || err2 != nil || start.Equal(end) {
		return time.Time{}, "", false
	}
	local := now.In(loc)
	at := func(day time.Time, hm time.Time) time.Time {
		return time.Date(day.Year(), day.Month(), day.Day(), hm.Hour(), hm.Minute(), 0, 0, loc)
	}
	todayStart, todayEnd := at(local, start), at(local, end)
	var until time.Time
	switch {
	case start.Before(end): // same-day window, e.g. 12:00–14:00
		if !local.Before(todayStart) && local.Before(todayEnd) {
			until = todayEnd
		}
	default: // wraps midnight, e.g. 22:00–08:00
		if !local.Before(todayStart) {
			until = at(local.AddDate(0, 0, 1), end)
		} else if local.Before(todayEnd) {
			until = todayEnd
		}
	}
	if until.IsZero() {
		return time.Time{}, "", false
	}
	return until, fmt.Sprintf("quiet hours %s–%s (%s) until %s", p.Preferences.QuietStart, p.Preferences.QuietEnd,
		loc, until.Format(time.RFC3339)), true
}

// Category and Priority resolve a notification's category and priority from
// the request, else the template, else the defaults.
func Category(n *schemas.Notification, t *schemas.Template) string {
	if t == nil {
		return first(n.Category, "general")
	}
	return first(n.Category, t.Category, "general")
}

// Priority resolves like Category.
// A one-time code is always high priority.
func Priority(n *schemas.Notification, t *schemas.Template) string {
	if n.OTP {
		return "high"
	}
	if t == nil {
		return first(n.Priority, "normal")
	}
	return first(n.Priority, t.Priority, "normal")
}
