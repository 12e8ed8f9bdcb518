package processors

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// MaxCronSpec bounds the length of a cron expression, in bytes.
const MaxCronSpec = 200

const (
	// cronCheckYears is how far ParseCron looks for a first fire time; an
	// expression with none in that window never fires ("0 0 30 2 *").
	cronCheckYears = 5
	// cronHorizonYears is how far Next searches. It is wider than the check
	// so that a leap-day schedule still finds its next run across the eight
	// years between 29 February 2096 and 2104.
	cronHorizonYears = 10
	// cronStar is the bit robfig/cron sets on a field written as "*" or "?".
	cronStar = 1 << 63
)

// cronParser reads the standard five fields (minute hour day-of-month month
// day-of-week) and the @-descriptors; the library itself refuses a sixth
// (seconds) field.
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// cronCheckFrom is where ParseCron starts looking for a first fire time. A
// fixed instant keeps the answer independent of the clock; the five years
// from it include the leap day of 2024 and every weekday of every month, so
// any expression that can fire at all fires in that window.
var cronCheckFrom = time.Date(2024, time.January, 1, 0, 0, 0, 0, time.UTC)

// Cron is a parsed recurring schedule in a time zone.
//
// Times are matched on the wall clock of the zone, and daylight-saving
// changes are resolved so that every scheduled local time fires exactly once:
//   - a local time skipped by a spring-forward gap fires at the first instant
//     after the gap ("30 2 * * *" in America/New_York on 2026-03-08 fires at
//     03:00 EDT); several times inside one gap collapse into that one fire;
//   - a local time repeated by a fall-back fires at its first occurrence only
//     ("30 1 * * *" on 2026-11-01 fires at 01:30 EDT, 05:30Z, not again at
//     01:30 EST);
//   - other times keep their local time on both sides of a change ("0 9 * * *"
//     fires at 09:00 local, 14:00Z in winter and 13:00Z in summer).
//
// robfig/cron/v3's own Next drops a skipped time altogether and fires a
// repeated time twice, so Cron uses the library for parsing only and walks the
// calendar itself.
type Cron struct {
	spec  string
	loc   *time.Location
	sched *cron.SpecSchedule
}

// ParseCron parses a standard 5-field expression (minute hour day-of-month
// month day-of-week, with names like MON and JAN) or a descriptor (@yearly,
// @annually, @monthly, @weekly, @daily, @midnight, @hourly), in the IANA time
// zone tz ("" = UTC). It refuses a seconds field, @every, a "CRON_TZ=" or "TZ="
// prefix (the zone is its own field), unknown zones (and "Local", which would
// depend on the host), expressions longer than MaxCronSpec bytes, and
// expressions that never fire, such as "0 0 30 2 *".
func ParseCron(spec, tz string) (*Cron, error) {
	if len(spec) > MaxCronSpec {
		return nil, fmt.Errorf("cron %.20q…: longer than %d bytes", spec, MaxCronSpec)
	}
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, errors.New("cron: empty expression")
	}
	upper := strings.ToUpper(spec)
	if strings.HasPrefix(upper, "TZ=") || strings.HasPrefix(upper, "CRON_TZ=") {
		// Checked before the library sees it: robfig/cron panics on a
		// "TZ=" prefix without a following space.
		return nil, fmt.Errorf("cron %q: time zone prefix not allowed, the zone is a separate field", spec)
	}
	if strings.HasPrefix(spec, "@every") {
		return nil, fmt.Errorf("cron %q: @every is not a calendar schedule", spec)
	}
	if !strings.HasPrefix(spec, "@") {
		if n := len(strings.Fields(spec)); n != 5 {
			if n == 6 {
				return nil, fmt.Errorf("cron %q: seconds field not supported, use 5 fields (minute hour day-of-month month day-of-week)", spec)
			}
			return nil, fmt.Errorf("cron %q: want 5 fields (minute hour day-of-month month day-of-week), got %d", spec, n)
		}
	}
	loc, err := CronLocation(tz)
	if err != nil {
		return nil, fmt.Errorf("cron %q: %w", spec, err)
	}
	s, err := cronParser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("cron %q: %w", spec, err)
	}
	sched, ok := s.(*cron.SpecSchedule)
	if !ok {
		return nil, fmt.Errorf("cron %q: not a calendar schedule", spec)
	}
	c := &Cron{spec: spec, loc: loc, sched: sched}
	if c.next(cronCheckFrom.In(loc), cronCheckYears).IsZero() {
		return nil, fmt.Errorf("cron %q: never fires", spec)
	}
	return c, nil
}

// CronLocation is the IANA time zone tz ("" is UTC) a schedule runs in.
func CronLocation(tz string) (*time.Location, error) {
	if tz == "" {
		return time.UTC, nil
	}
	if tz == "Local" {
		return nil, errors.New(`time zone "Local" is not an IANA zone`)
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return nil, fmt.Errorf("unknown time zone %q", tz)
	}
	return loc, nil
}

// String returns the expression and its zone, for logs.
func (c *Cron) String() string { return c.spec + " " + c.loc.String() }

// Location is the time zone the schedule's wall-clock times are read in.
func (c *Cron) Location() *time.Location { return c.loc }

// Next is the first fire time strictly after t, in the schedule's zone.
// It returns the zero time only if there is none within ten years, which
// cannot happen for a Cron from ParseCron before the year 9990.
func (c *Cron) Next(t time.Time) time.Time {
	return c.next(t.In(c.loc), cronHorizonYears)
}

// Due decides, from the schedule's stored next time and the clock, whether
// the schedule fires now. If it does, fireAt is the latest scheduled time
// <= now, so runs missed while the service was down collapse into one
// instead of a burst. A run later than catchUp (now - fireAt > catchUp) is
// skipped: ok is false, but next is still the first scheduled time after now
// so the schedule moves on. Before nextAt nothing is due: ok is false and
// next is nextAt unchanged.
func (c *Cron) Due(nextAt, now time.Time, catchUp time.Duration) (fireAt, next time.Time, ok bool) {
	if now.Before(nextAt) {
		return time.Time{}, nextAt, false
	}
	next = c.Next(now)
	if catchUp < 0 {
		catchUp = 0
	}
	// Only runs within catchUp of now can fire, so start the walk there
	// rather than at a nextAt that may be months old.
	fireAt = nextAt
	if oldest := now.Add(-catchUp); fireAt.Before(oldest) {
		fireAt = c.Next(oldest.Add(-time.Nanosecond))
		if fireAt.IsZero() || fireAt.After(now) {
			return time.Time{}, next, false
		}
	}
	for {
		n := c.Next(fireAt)
		if n.IsZero() || n.After(now) {
			break
		}
		fireAt = n
	}
	return fireAt.In(c.loc), next, true
}

// next walks local calendar days from t's and returns the first matching
// minute whose instant is after t, giving up after years. Instants of
// matching minutes never decrease along the walk (see resolve), so the first
// one after t is the earliest.
func (c *Cron) next(t time.Time, years int) time.Time {
	s := c.sched
	day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	end := day.AddDate(years, 0, 0)
	for ; day.Before(end); day = day.AddDate(0, 0, 1) {
		if s.Month&(1<<uint(day.Month())) == 0 || !c.dayMatches(day) {
			continue
		}
		y, mo, d := day.Date()
		for h := 0; h < 24; h++ {
			if s.Hour&(1<<uint(h)) == 0 {
				continue
			}
			// Skip the whole hour when its last minute is not after t.
			if !resolve(y, mo, d, h, 59, c.loc).After(t) {
				continue
			}
			for m := 0; m < 60; m++ {
				if s.Minute&(1<<uint(m)) == 0 {
					continue
				}
				if at := resolve(y, mo, d, h, m, c.loc); at.After(t) {
					return at
				}
			}
		}
	}
	return time.Time{}
}

// dayMatches applies cron's day rule: when both day-of-month and day-of-week
// are restricted, either one matching is enough; otherwise both must match.
func (c *Cron) dayMatches(day time.Time) bool {
	s := c.sched
	domMatch := s.Dom&(1<<uint(day.Day())) != 0
	dowMatch := s.Dow&(1<<uint(day.Weekday())) != 0
	if s.Dom&cronStar != 0 || s.Dow&cronStar != 0 {
		return domMatch && dowMatch
	}
	return domMatch || dowMatch
}

// resolve turns a local wall-clock time into one instant: a time inside a
// spring-forward gap becomes the first instant after the gap, a time repeated
// by a fall-back becomes its first occurrence. time.Date alone picks either
// side of a change without saying which.
func resolve(y int, mo time.Month, d, h, m int, loc *time.Location) time.Time {
	at := time.Date(y, mo, d, h, m, 0, 0, loc)
	wall := time.Date(y, mo, d, h, m, 0, 0, time.UTC)
	start, end := at.ZoneBounds()
	if ay, amo, ad := at.Date(); ay != y || amo != mo || ad != d || at.Hour() != h || at.Minute() != m {
		// The wall time does not exist: the gap's end is the edge of the
		// zone period time.Date landed in that faces the wanted time.
		got := time.Date(ay, amo, ad, at.Hour(), at.Minute(), 0, 0, time.UTC)
		if got.After(wall) {
			if !start.IsZero() {
				return start
			}
		} else if !end.IsZero() {
			return end
		}
		return at
	}
	// The wall time exists; look for an earlier occurrence in the previous
	// zone period.
	if !start.IsZero() {
		_, off := start.Add(-time.Nanosecond).Zone()
		if earlier := wall.Add(-time.Duration(off) * time.Second); earlier.Before(start) && earlier.Before(at) {
			if e := earlier.In(loc); e.Hour() == h && e.Minute() == m && e.Day() == d {
				return e
			}
		}
	}
	return at
}
