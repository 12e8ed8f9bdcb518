package service_test

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/topology"
)

// A recurring schedule "0 9 * * *" in New York fires at 09:00 there on both
// sides of the end of daylight saving time (13:00Z, then 14:00Z), with the
// service restarted between the two runs; the service's clock is injected.
// Each run is a request with its own event id; pause, resume and delete
// work as they say.
func TestCronScheduleFiresOnTimeAcrossARestartAndADSTChange(t *testing.T) {
	newYork, _ := time.LoadLocation("America/New_York")
	var offset atomic.Int64
	setClock := func(at time.Time) { offset.Store(int64(time.Until(at))) }
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	h := newHarness(t)
	h.cfg.Scheduler.Interval = 50 * time.Millisecond
	h.now = now
	setClock(time.Date(2026, 10, 31, 8, 59, 57, 0, newYork)) // Saturday, EDT (UTC-4)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/daily", map[string]any{"category": "newsletter", "channels": map[string]any{
		"email": map[string]any{"subject": "Daily {{.edition}}", "text": "Today"}}})
	h.mustCall(http.StatusOK, "PUT", "/v1/profiles/d1", map[string]any{"email": "d1@example.com"})
	sc := h.mustCall(http.StatusOK, "PUT", "/v1/schedules/daily", map[string]any{"cron": "0 9 * * *", "timeZone": "America/New_York",
		"request": map[string]any{"template": "daily", "data": map[string]any{"edition": "am"}, "recipients": []any{map[string]any{"userId": "d1"}}}})
	first := time.Date(2026, 10, 31, 13, 0, 0, 0, time.UTC)
	if sc["state"] != topology.ScheduleActive || sc["nextAt"] != first.Format(time.RFC3339Nano) {
		t.Fatalf("schedule %v, want the next run at %s", sc, first)
	}
	msgs := h.smtp.WaitFor(1, 20*time.Second)
	if len(msgs) != 1 || msgs[0].At.Add(time.Duration(offset.Load())).Before(first) {
		t.Fatalf("first run: %d messages, at %v (service clock), not before %s", len(msgs), msgs, first)
	}
	h.waitStatus(processors.TenantNotificationID("", "schedule:daily:20261031T1300Z", "d1"), processors.StatusSent)
	second := time.Date(2026, 11, 1, 14, 0, 0, 0, time.UTC) // 09:00 EST (UTC-5), the day the clocks go back
	sc = h.mustCall(http.StatusOK, "GET", "/v1/schedules/daily", nil)
	if sc["fired"].(float64) != 1 || sc["nextAt"] != second.Format(time.RFC3339Nano) {
		t.Fatalf("after the first run: %v, want the next at %s", sc, second)
	}

	// Restart, the clock now shortly before 09:00 EST the next day: the
	// run comes from the schedule's table, at 14:00Z, not at 13:00Z.
	h.stop()
	setClock(time.Date(2026, 11, 1, 8, 59, 57, 0, newYork))
	h.start()
	msgs = h.smtp.WaitFor(2, 20*time.Second)
	if len(msgs) != 2 || msgs[1].At.Add(time.Duration(offset.Load())).Before(second) {
		t.Fatalf("second run: %d messages; the last at %v (service clock), not before %s", len(msgs), msgs[len(msgs)-1].At.Add(time.Duration(offset.Load())), second)
	}
	h.waitStatus(processors.TenantNotificationID("", "schedule:daily:20261101T1400Z", "d1"), processors.StatusSent)
	sc = h.mustCall(http.StatusOK, "GET", "/v1/schedules/daily", nil)
	if sc["fired"].(float64) != 2 || sc["lastFiredAt"] != second.Format(time.RFC3339Nano) {
		t.Fatalf("after the second run: %v", sc)
	}

	// Paused, it does not fire; resumed, it goes on from now; deleted, gone.
	if sc = h.mustCall(http.StatusOK, "POST", "/v1/schedules/daily/pause", nil); sc["state"] != topology.SchedulePaused {
		t.Fatalf("paused: %v", sc)
	}
	setClock(time.Date(2026, 11, 2, 8, 59, 58, 0, newYork))
	time.Sleep(3 * time.Second)
	if n := len(h.smtp.Messages()); n != 2 {
		t.Fatalf("a paused schedule fired: %d messages", n)
	}
	sc = h.mustCall(http.StatusOK, "POST", "/v1/schedules/daily/resume", nil)
	if sc["state"] != topology.ScheduleActive || sc["nextAt"] != time.Date(2026, 11, 3, 14, 0, 0, 0, time.UTC).Format(time.RFC3339Nano) {
		t.Fatalf("resumed: %v", sc)
	}
	h.mustCall(http.StatusNoContent, "DELETE", "/v1/schedules/daily", nil)
	h.mustCall(http.StatusNotFound, "GET", "/v1/schedules/daily", nil)

	// Bad input: a clear 400 naming the field.
	for _, body := range []map[string]any{
		{"cron": "0 9 * *", "timeZone": "America/New_York", "request": map[string]any{"template": "daily", "recipients": []any{map[string]any{"userId": "d1"}}}},
		{"cron": "0 9 * * *", "timeZone": "Mars/Olympus", "request": map[string]any{"template": "daily", "recipients": []any{map[string]any{"userId": "d1"}}}},
		{"cron": "0 9 * * *", "request": map[string]any{"template": "nope", "recipients": []any{map[string]any{"userId": "d1"}}}},
		{"cron": "0 9 * * *"},
	} {
		code, out := h.call("PUT", "/v1/schedules/bad", body)
		if e, _ := out["error"].(map[string]any); code != http.StatusBadRequest || e == nil || e["field"] == "" {
			t.Fatalf("%v: %d %v", body, code, out)
		}
	}
}
