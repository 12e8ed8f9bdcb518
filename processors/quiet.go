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

// Category is the category a notification is sent under. It comes from the
// template: a request may only narrow it, from transactional to a category
// that preferences and quiet hours apply to. A request that asks for any
// other category (transactional for a marketing template, say) is not
// honoured here whatever its producer; the API refuses it (NarrowCategory).
func Category(n *schemas.Notification, t *schemas.Template) string {
	c, _ := NarrowCategory(n.Category, t)
	return c
}

// NarrowCategory resolves a requested category against the template's. It
// returns the template's category and an error when the request would widen
// or swap it.
func NarrowCategory(requested string, t *schemas.Template) (string, error) {
	tc := "general"
	if t != nil && t.Category != "" {
		tc = t.Category
	}
	switch {
	case requested == "" || requested == tc:
		return tc, nil
	case tc == CategoryTransactional:
		return requested, nil
	default:
		return tc, fmt.Errorf("category %q may not replace the template's category %q: a request may only narrow a transactional template to another category", requested, tc)
	}
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

// LocalDue is when a notification with localTime "HH:MM" goes out: the first
// such time in the recipient's time zone (the profile's, UTC when there is
// none or it is unknown) at or after after. On the day a clock skips that
// time (a DST change), it is the moment the clock reaches it after the skip
// (02:30 on a spring-forward day is 03:30); on a day it repeats, the first.
func LocalDue(p *schemas.Profile, hhmm string, after time.Time) (time.Time, *time.Location, error) {
	at, err := time.Parse("15:04", hhmm)
	if err != nil {
		return time.Time{}, nil, fmt.Errorf("localTime %q: want HH:MM", hhmm)
	}
	loc := time.UTC
	if p != nil && p.Timezone != "" {
		if l, err := time.LoadLocation(p.Timezone); err == nil {
			loc = l
		}
	}
	local := after.In(loc)
	for day := 0; day < 3; day++ {
		d := local.AddDate(0, 0, day)
		due := time.Date(d.Year(), d.Month(), d.Day(), at.Hour(), at.Minute(), 0, 0, loc)
		if l := due.In(loc); l.Hour() != at.Hour() || l.Minute() != at.Minute() {
			// A time the clock skipped: time.Date gave the instant with the
			// offset before the change; the wall clock reaches it one
			// change later.
			_, before := due.Zone()
			_, later := due.Add(12 * time.Hour).Zone()
			due = due.Add(time.Duration(later-before) * time.Second)
		}
		if !due.Before(after) {
			return due, loc, nil
		}
	}
	return time.Time{}, nil, fmt.Errorf("localTime %q: no such time in %s", hhmm, loc) // unreachable for valid zones
}
