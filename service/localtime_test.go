package service_test

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// "Send at 09:00 in each recipient's time zone": with the service's clock
// at 08:59:57 in Tokyo, the Tokyo user's notification goes out 3 s later,
// at 09:00 there, while the New York user's waits for 09:00 in New York
// (the status says until when) and the user without a time zone waits for
// 09:00 UTC.
func TestLocalTimeDeliveryAtNineInEachZone(t *testing.T) {
	h := newHarness(t)
	h.cfg.Scheduler.Interval = 100 * time.Millisecond
	tokyo, _ := time.LoadLocation("Asia/Tokyo")
	newYork, _ := time.LoadLocation("America/New_York")
	var clock atomic.Int64
	setClock := func(at time.Time) { clock.Store(int64(time.Until(at))) }
	h.now = func() time.Time { return time.Now().Add(time.Duration(clock.Load())) }
	setClock(time.Date(2026, 11, 23, 8, 0, 0, 0, tokyo))
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/digest", orderTemplate("newsletter"))
	for user, tz := range map[string]string{"tokyo": "Asia/Tokyo", "ny": "America/New_York", "nowhere": ""} {
		h.mustCall(http.StatusOK, "PUT", "/v1/profiles/"+user, map[string]any{"email": user + "@example.com", "timezone": tz})
	}
	// The clock is set once the service is set up, however long that took on
	// a loaded machine: the send is seconds before 09:00 in Tokyo.
	setClock(time.Date(2026, 11, 23, 8, 59, 57, 0, tokyo))
	ids := h.send(map[string]any{"template": "digest", "localTime": "09:00", "data": map[string]any{"orderId": "1", "eta": "now"},
		"recipients": []any{map[string]any{"userId": "tokyo"}, map[string]any{"userId": "ny"}, map[string]any{"userId": "nowhere"}}})

	reason := func(st map[string]any) string {
		hist := st["history"].([]any)
		r, _ := hist[len(hist)-1].(map[string]any)["reason"].(string)
		return r
	}
	nyDue := time.Date(2026, 11, 23, 9, 0, 0, 0, newYork) // 08:59:57 in Tokyo is 18:59:57 the day before in New York
	if r := reason(h.waitStatus(ids["ny"], "scheduled")); !strings.Contains(r, "local time 09:00 (America/New_York) at "+nyDue.Format(time.RFC3339)) {
		t.Fatalf("ny: reason %q, want the hold until %s", r, nyDue.Format(time.RFC3339))
	}
	utcDue := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	if r := reason(h.waitStatus(ids["nowhere"], "scheduled")); !strings.Contains(r, "(UTC) at "+utcDue.Format(time.RFC3339)) {
		t.Fatalf("nowhere: reason %q", r)
	}
	h.waitStatus(ids["tokyo"], "sent")
	msgs := h.smtp.Messages()
	if len(msgs) != 1 || msgs[0].To[0] != "tokyo@example.com" {
		t.Fatalf("sent %+v, want only the Tokyo user's", msgs)
	}
	if at := msgs[0].At.Add(time.Duration(clock.Load())); at.Before(time.Date(2026, 11, 23, 9, 0, 0, 0, tokyo)) {
		t.Fatalf("sent at %s (service clock), before 09:00 in Tokyo", at.In(tokyo))
	}
	// Bad input: not HH:MM, or with a one-time code.
	for _, body := range []map[string]any{
		{"template": "digest", "localTime": "9am", "recipients": []any{map[string]any{"userId": "ny"}}},
		{"template": "digest", "localTime": "09:00", "otp": true, "recipients": []any{map[string]any{"userId": "ny"}}},
	} {
		code, out := h.call("POST", "/v1/notifications", body)
		if e, _ := out["error"].(map[string]any); code != http.StatusBadRequest || e == nil || e["field"] != "localTime" {
			t.Fatalf("%v: %d %v", body, code, out)
		}
	}
}
