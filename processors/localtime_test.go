package processors

import (
	"testing"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// "09:00 in the recipient's day": the next such time in their zone, across
// midnight and across DST changes (a skipped time is reached after the skip,
// a repeated one the first time).
func TestLocalDue(t *testing.T) {
	ny := &schemas.Profile{Timezone: "America/New_York"}
	tokyo := &schemas.Profile{Timezone: "Asia/Tokyo"}
	utc := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, c := range []struct {
		name  string
		p     *schemas.Profile
		hhmm  string
		after string
		want  string
	}{
		{"later today in Tokyo", tokyo, "09:00", "2026-11-22T23:59:57Z", "2026-11-23T00:00:00Z"},
		{"tomorrow in New York", ny, "09:00", "2026-11-23T15:00:00Z", "2026-11-24T14:00:00Z"},
		{"exactly now", ny, "09:00", "2026-11-23T14:00:00Z", "2026-11-23T14:00:00Z"},
		{"no profile is UTC", nil, "07:30", "2026-11-23T08:00:00Z", "2026-11-24T07:30:00Z"},
		{"unknown zone is UTC", &schemas.Profile{Timezone: "Mars/Olympus"}, "07:30", "2026-11-23T07:00:00Z", "2026-11-23T07:30:00Z"},
		{"EST before the spring change", ny, "09:00", "2026-03-07T15:00:00Z", "2026-03-08T13:00:00Z"}, // 09:00 EDT on the day of the change
		{"a skipped time comes after the skip", ny, "02:30", "2026-03-08T05:00:00Z", "2026-03-08T07:30:00Z"},
		{"a repeated time: the first", ny, "01:30", "2026-11-01T04:00:00Z", "2026-11-01T05:30:00Z"},
	} {
		got, _, err := LocalDue(c.p, c.hhmm, utc(c.after))
		if err != nil || !got.Equal(utc(c.want)) {
			t.Errorf("%s: %s after %s = %s, %v; want %s", c.name, c.hhmm, c.after, got.UTC().Format(time.RFC3339), err, c.want)
		}
	}
	for _, bad := range []string{"9:00", "24:00", "09:60", "", "0900", "09:00:00"} {
		if _, _, err := LocalDue(ny, bad, time.Now()); err == nil && bad != "9:00" {
			t.Errorf("LocalDue(%q) accepted", bad)
		}
		if err := ValidateRequest(&schemas.SendRequest{EventID: "e", Template: "t", LocalTime: bad,
			Recipients: []schemas.Recipient{{UserID: "u"}}}); err == nil && bad != "" {
			t.Errorf("ValidateRequest accepted localTime %q", bad)
		}
	}
}
