package processors

import (
	"strings"
	"testing"
	"time"
)

func TestParseCron(t *testing.T) {
	valid := []struct{ spec, tz string }{
		{"0 9 * * *", ""},
		{"*/15 8-18 * * MON-FRI", "Europe/Berlin"},
		{"0 0 1 JAN,jul *", "UTC"},
		{"30 2 * * sun", "America/New_York"},
		{"0 0 29 2 *", "Asia/Tokyo"},
		{"0 12 ? * *", ""},
		{"  0 9 * * *  ", ""},
		{"@yearly", ""},
		{"@annually", ""},
		{"@monthly", "Australia/Sydney"},
		{"@weekly", ""},
		{"@daily", ""},
		{"@midnight", ""},
		{"@hourly", "Asia/Kolkata"},
	}
	for _, v := range valid {
		c, err := ParseCron(v.spec, v.tz)
		if err != nil {
			t.Errorf("ParseCron(%q, %q): %v", v.spec, v.tz, err)
			continue
		}
		if want := v.tz; want != "" && c.Location().String() != want {
			t.Errorf("ParseCron(%q, %q): zone %s", v.spec, v.tz, c.Location())
		}
	}
	if c, _ := ParseCron("0 9 * * *", ""); c == nil || c.Location() != time.UTC {
		t.Errorf(`empty zone: want UTC`)
	}

	invalid := []struct{ name, spec, tz, want string }{
		{"seconds field", "0 0 9 * * *", "", "seconds"},
		{"@every", "@every 1h", "", "@every"},
		{"CRON_TZ prefix", "CRON_TZ=Europe/Berlin 0 9 * * *", "", "prefix"},
		{"TZ prefix", "TZ=UTC 0 9 * * *", "", "prefix"},
		{"TZ prefix without fields", "TZ=UTC", "", "prefix"},
		{"lowercase tz prefix", "cron_tz=UTC 0 9 * * *", "", "prefix"},
		{"unknown zone", "0 9 * * *", "Mars/Olympus_Mons", "unknown time zone"},
		{"host zone", "0 9 * * *", "Local", "Local"},
		{"too long", "0 9 * * *" + strings.Repeat(" ", 192), "", "longer than 200"},
		{"never fires", "0 0 30 2 *", "", "never fires"},
		{"never fires in April", "0 0 31 4 *", "Europe/Berlin", "never fires"},
		{"empty", "", "", "empty"},
		{"blank", "   ", "", "empty"},
		{"four fields", "0 9 * *", "", "want 5 fields"},
		{"minute out of range", "60 9 * * *", "", "60"},
		{"hour out of range", "0 24 * * *", "", "24"},
		{"unknown month name", "0 9 * FOO *", "", "FOO"},
		{"zero step", "*/0 * * * *", "", "step"},
		{"unknown descriptor", "@fortnightly", "", "descriptor"},
		{"descriptor with fields", "@daily 9", "", "descriptor"},
	}
	for _, tc := range invalid {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseCron(tc.spec, tc.tz)
			if err == nil {
				t.Fatalf("ParseCron(%q, %q) = %v, want error", tc.spec, tc.tz, c)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseCron(%q, %q): error %q does not mention %q", tc.spec, tc.tz, err, tc.want)
			}
		})
	}
	// Exactly 200 bytes is still accepted.
	if _, err := ParseCron("0 9 * * *"+strings.Repeat(" ", 191), ""); err != nil {
		t.Errorf("200-byte spec: %v", err)
	}
}

func mustCron(t *testing.T, spec, tz string) *Cron {
	t.Helper()
	c, err := ParseCron(spec, tz)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func utc(s string) time.Time {
	at, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return at
}

// checkRuns walks Next from `from` and compares each fire time with want.
func checkRuns(t *testing.T, c *Cron, from string, want ...string) {
	t.Helper()
	at := utc(from)
	for i, w := range want {
		at = c.Next(at)
		if !at.Equal(utc(w)) {
			t.Fatalf("%s: run %d = %s (%s), want %s", c, i, at.UTC().Format(time.RFC3339), at.Format(time.RFC3339), w)
		}
		if at.Location() != c.Location() {
			t.Fatalf("%s: run %d in zone %s", c, i, at.Location())
		}
	}
}

func TestCronNextNewYork(t *testing.T) {
	// Spring forward, Sunday 2026-03-08: 02:00 EST becomes 03:00 EDT, so
	// 02:30 does not exist and fires once at 03:00 EDT (07:00Z).
	t.Run("skipped time fires after the gap", func(t *testing.T) {
		checkRuns(t, mustCron(t, "30 2 * * *", "America/New_York"), "2026-03-06T12:00:00Z",
			"2026-03-07T07:30:00Z", // 02:30 EST
			"2026-03-08T07:00:00Z", // 03:00 EDT, the first instant after the gap
			"2026-03-09T06:30:00Z", // 02:30 EDT
		)
	})
	t.Run("times inside one gap collapse", func(t *testing.T) {
		checkRuns(t, mustCron(t, "0,30 2,3 * * *", "America/New_York"), "2026-03-08T06:00:00Z",
			"2026-03-08T07:00:00Z", // 02:00, 02:30 and 03:00 EDT all at once
			"2026-03-08T07:30:00Z", // 03:30 EDT
			"2026-03-09T06:00:00Z", // 02:00 EDT
		)
	})
	// Fall back, Sunday 2026-11-01: 02:00 EDT becomes 01:00 EST, so 01:30
	// happens twice and fires only at the first, 01:30 EDT (05:30Z).
	t.Run("repeated time fires once at its first occurrence", func(t *testing.T) {
		checkRuns(t, mustCron(t, "30 1 * * *", "America/New_York"), "2026-10-30T12:00:00Z",
			"2026-10-31T05:30:00Z", // 01:30 EDT
			"2026-11-01T05:30:00Z", // 01:30 EDT; not again at 06:30Z (01:30 EST)
			"2026-11-02T06:30:00Z", // 01:30 EST
		)
		// Asked from between the two occurrences, the next run is the next day.
		checkRuns(t, mustCron(t, "30 1 * * *", "America/New_York"), "2026-11-01T06:00:00Z",
			"2026-11-02T06:30:00Z")
	})
	// In New York 02:30 is not repeated on fall-back day (clocks go from
	// 01:59 EDT back to 01:00 EST), so it fires once, at 02:30 EST.
	t.Run("02:30 on fall-back day", func(t *testing.T) {
		checkRuns(t, mustCron(t, "30 2 * * *", "America/New_York"), "2026-10-31T12:00:00Z",
			"2026-11-01T07:30:00Z", "2026-11-02T07:30:00Z")
	})
	t.Run("every minute through the repeated hour", func(t *testing.T) {
		c := mustCron(t, "* 1 * * *", "America/New_York")
		at := utc("2026-11-01T05:00:00Z") // 01:00 EDT
		for i := 1; i < 60; i++ {
			at = c.Next(at)
			if want := utc("2026-11-01T05:00:00Z").Add(time.Duration(i) * time.Minute); !at.Equal(want) {
				t.Fatalf("minute %d: %s, want %s", i, at.UTC(), want)
			}
		}
		if at = c.Next(at); !at.Equal(utc("2026-11-02T06:00:00Z")) {
			t.Fatalf("after 01:59 EDT: %s, want the next day's 01:00 EST", at.UTC())
		}
	})
	t.Run("09:00 keeps its local time", func(t *testing.T) {
		c := mustCron(t, "0 9 * * *", "America/New_York")
		checkRuns(t, c, "2026-03-06T12:00:00Z",
			"2026-03-06T14:00:00Z", "2026-03-07T14:00:00Z", // EST
			"2026-03-08T13:00:00Z", "2026-03-09T13:00:00Z", // EDT
		)
		checkRuns(t, c, "2026-10-30T12:00:00Z",
			"2026-10-30T13:00:00Z", "2026-10-31T13:00:00Z", // EDT
			"2026-11-01T14:00:00Z", "2026-11-02T14:00:00Z", // EST
		)
	})
}

func TestCronNextBerlin(t *testing.T) {
	// Berlin changes at 02:00 CET -> 03:00 CEST on 2026-03-29 and at
	// 03:00 CEST -> 02:00 CET on 2026-10-25, so 02:30 is both the skipped and
	// the repeated time.
	c := mustCron(t, "30 2 * * *", "Europe/Berlin")
	checkRuns(t, c, "2026-03-27T12:00:00Z",
		"2026-03-28T01:30:00Z", // 02:30 CET
		"2026-03-29T01:00:00Z", // 03:00 CEST, after the gap
		"2026-03-30T00:30:00Z", // 02:30 CEST
	)
	checkRuns(t, c, "2026-10-23T12:00:00Z",
		"2026-10-24T00:30:00Z", // 02:30 CEST
		"2026-10-25T00:30:00Z", // 02:30 CEST, the first of two
		"2026-10-26T01:30:00Z", // 02:30 CET
	)
	nine := mustCron(t, "0 9 * * *", "Europe/Berlin")
	checkRuns(t, nine, "2026-03-28T00:00:00Z",
		"2026-03-28T08:00:00Z", "2026-03-29T07:00:00Z", "2026-03-30T07:00:00Z")
	checkRuns(t, nine, "2026-10-24T00:00:00Z",
		"2026-10-24T07:00:00Z", "2026-10-25T08:00:00Z", "2026-10-26T08:00:00Z")
}

func TestCronNextCalendar(t *testing.T) {
	// Day-of-month and day-of-week both restricted: either matches.
	checkRuns(t, mustCron(t, "0 8 13 * FRI", ""), "2026-11-30T00:00:00Z",
		"2026-12-04T08:00:00Z", "2026-12-11T08:00:00Z", "2026-12-13T08:00:00Z", "2026-12-18T08:00:00Z")
	// A leap-day schedule finds its run across the eight years to 2104.
	checkRuns(t, mustCron(t, "0 0 29 2 *", ""), "2097-01-01T00:00:00Z", "2104-02-29T00:00:00Z")
	// Strictly after: a time exactly on the schedule is not its own next run.
	checkRuns(t, mustCron(t, "@hourly", ""), "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z")
	checkRuns(t, mustCron(t, "@hourly", ""), "2026-12-01T09:59:59.999Z", "2026-12-01T10:00:00Z")
}

func TestCronDue(t *testing.T) {
	c := mustCron(t, "0 * * * *", "") // hourly
	t.Run("not yet due", func(t *testing.T) {
		nextAt := utc("2026-12-01T10:00:00Z")
		fire, next, ok := c.Due(nextAt, utc("2026-12-01T09:59:59Z"), time.Hour)
		if ok || !fire.IsZero() || !next.Equal(nextAt) {
			t.Fatalf("Due = %s, %s, %v; want nothing, next unchanged", fire, next, ok)
		}
	})
	t.Run("on time", func(t *testing.T) {
		fire, next, ok := c.Due(utc("2026-12-01T10:00:00Z"), utc("2026-12-01T10:00:00.250Z"), time.Minute)
		if !ok || !fire.Equal(utc("2026-12-01T10:00:00Z")) || !next.Equal(utc("2026-12-01T11:00:00Z")) {
			t.Fatalf("Due = %s, %s, %v", fire, next, ok)
		}
	})
	t.Run("missed runs collapse into the latest", func(t *testing.T) {
		// Down from before 10:00 until 12:20: 10:00, 11:00 and 12:00 were missed.
		fire, next, ok := c.Due(utc("2026-12-01T10:00:00Z"), utc("2026-12-01T12:20:00Z"), time.Hour)
		if !ok || !fire.Equal(utc("2026-12-01T12:00:00Z")) || !next.Equal(utc("2026-12-01T13:00:00Z")) {
			t.Fatalf("Due = %s, %s, %v; want one fire at 12:00, next 13:00", fire, next, ok)
		}
	})
	t.Run("beyond catch-up is skipped but moves on", func(t *testing.T) {
		fire, next, ok := c.Due(utc("2026-12-01T10:00:00Z"), utc("2026-12-01T12:20:00Z"), 15*time.Minute)
		if ok || !fire.IsZero() || !next.Equal(utc("2026-12-01T13:00:00Z")) {
			t.Fatalf("Due = %s, %s, %v; want skipped, next 13:00", fire, next, ok)
		}
	})
	t.Run("old nextAt, latest run within catch-up", func(t *testing.T) {
		// Stored months ago; only the latest run matters.
		fire, next, ok := c.Due(utc("2026-06-01T00:00:00Z"), utc("2026-12-01T12:05:00Z"), 10*time.Minute)
		if !ok || !fire.Equal(utc("2026-12-01T12:00:00Z")) || !next.Equal(utc("2026-12-01T13:00:00Z")) {
			t.Fatalf("Due = %s, %s, %v", fire, next, ok)
		}
	})
	t.Run("exactly catch-up late still fires", func(t *testing.T) {
		fire, _, ok := c.Due(utc("2026-12-01T12:00:00Z"), utc("2026-12-01T12:10:00Z"), 10*time.Minute)
		if !ok || !fire.Equal(utc("2026-12-01T12:00:00Z")) {
			t.Fatalf("Due = %s, %v", fire, ok)
		}
	})
	t.Run("daily schedule across spring forward", func(t *testing.T) {
		ny := mustCron(t, "30 2 * * *", "America/New_York")
		fire, next, ok := ny.Due(utc("2026-03-08T07:00:00Z"), utc("2026-03-08T07:00:30Z"), time.Minute)
		if !ok || !fire.Equal(utc("2026-03-08T07:00:00Z")) || !next.Equal(utc("2026-03-09T06:30:00Z")) {
			t.Fatalf("Due = %s, %s, %v", fire, next, ok)
		}
	})
}

func FuzzParseCron(f *testing.F) {
	seeds := []struct{ spec, tz string }{
		{"0 9 * * *", ""},
		{"*/15 8-18 * * MON-FRI", "Europe/Berlin"},
		{"30 2 * * *", "America/New_York"},
		{"30 1 * * *", "America/New_York"},
		{"0 0 29 2 *", "UTC"},
		{"0 0 30 2 *", ""},
		{"0 8 13 * FRI", "Australia/Lord_Howe"},
		{"@daily", "Asia/Kathmandu"},
		{"@every 1h", ""},
		{"TZ=UTC", ""},
		{"CRON_TZ=UTC 0 9 * * *", ""},
		{"0 0 9 * * *", ""},
		{"1-5/2,7 */3 1,15 JAN-MAR sun", "America/Sao_Paulo"},
		{"59 23 31 12 *", "Pacific/Kiritimati"},
	}
	for i, s := range seeds {
		f.Add(s.spec, s.tz, int64(1772000000000+int64(i)*7919000017))
	}
	lo := utc("2000-01-01T00:00:00Z").UnixMilli()
	hi := utc("2090-01-01T00:00:00Z").UnixMilli()
	f.Fuzz(func(t *testing.T, spec, tz string, ms int64) {
		c, err := ParseCron(spec, tz)
		if err != nil {
			return
		}
		if ms < 0 {
			ms = -(ms + 1)
		}
		at := time.UnixMilli(lo + ms%(hi-lo))
		next := c.Next(at)
		if !next.After(at) {
			t.Fatalf("ParseCron(%q, %q).Next(%s) = %s, not after", spec, tz, at.UTC(), next.UTC())
		}
		// A fire time is a matching wall-clock minute, or the end of a
		// daylight-saving gap that swallowed one.
		local, s := next, c.sched
		start, _ := local.ZoneBounds()
		matches := local.Second() == 0 && local.Nanosecond() == 0 &&
			s.Minute&(1<<uint(local.Minute())) != 0 && s.Hour&(1<<uint(local.Hour())) != 0 &&
			s.Month&(1<<uint(local.Month())) != 0 && c.dayMatches(local)
		if !matches && !local.Equal(start) {
			t.Fatalf("ParseCron(%q, %q).Next(%s) = %s, not on the schedule", spec, tz, at.UTC(), local)
		}
		if next.Sub(at) > 5*366*24*time.Hour {
			t.Fatalf("ParseCron(%q, %q).Next(%s) = %s, more than five years on", spec, tz, at.UTC(), next.UTC())
		}
	})
}
