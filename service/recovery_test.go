package service_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
)

// Recovery is as fast as the provider: the SMTP server refuses while 200
// emails are sent, long enough that every one waits on the ten-minute retry
// tier. When the server is back, the mail that goes on closes the breaker,
// and every parked email is delivered at once, each exactly once, none failed —
// not ten minutes later when its tier would have released it.
func TestParkedEmailsGoOutWhenSMTPRecovers(t *testing.T) {
	h := newHarness(t)
	h.cfg.Limits.DefaultPerDay = 0
	h.cfg.Sink.Attempts = 1
	h.cfg.Sink.SendTimeout = 5 * time.Second
	h.cfg.Sink.Retry = config.Retry{Tiers: []time.Duration{time.Second, 2 * time.Second, 10 * time.Minute},
		Horizon: map[string]time.Duration{"high": time.Hour, "normal": time.Hour, "low": time.Hour}}
	h.cfg.Sink.Breaker = config.Breaker{Failures: 5, OpenFor: time.Second, Probes: 1}
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))

	const parked, after = 200, 20
	h.smtp.Stop()
	ids := h.sendBatch("order-shipped", 0, 100, "blip")
	ids = append(ids, h.sendBatch("order-shipped", 100, parked, "blip")...)
	deadline := time.Now().Add(60 * time.Second)
	for h.metricValue("notifyd_sink_retries_total", `channel="email"`, `tier="10m"`) < parked {
		if time.Now().After(deadline) {
			t.Fatalf("%v of %d emails reached the ten-minute tier during the outage",
				h.metricValue("notifyd_sink_retries_total", `channel="email"`, `tier="10m"`), parked)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(h.smtp.Messages()) != 0 {
		t.Fatalf("%d emails accepted by a stopped server", len(h.smtp.Messages()))
	}

	if err := h.smtp.Resume(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	ids = append(ids, h.sendBatch("order-shipped", parked, parked+after, "blip")...)
	deadline = back.Add(30 * time.Second) // the parked ones' tier is 10 minutes
	for len(notificationIDs(t, h.smtp.Messages())) < parked+after {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d emails accepted by the SMTP server 30 s after it came back",
				len(notificationIDs(t, h.smtp.Messages())), parked+after)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("every parked email accepted %v after the server came back", time.Since(back).Round(10*time.Millisecond))
	time.Sleep(time.Second) // room for a wrong second delivery
	got := notificationIDs(t, h.smtp.Messages())
	for _, id := range ids {
		if got[id] != 1 {
			t.Fatalf("%s delivered %d times", id, got[id])
		}
	}
	if len(got) != len(ids) {
		t.Fatalf("%d distinct emails accepted, want %d", len(got), len(ids))
	}
	for _, id := range ids {
		st := h.waitStatus(id, processors.StatusSent)
		for _, s := range historyStatuses(st) {
			if s == processors.StatusFailed {
				t.Fatalf("%s failed during the outage: %v", id, historyStatuses(st))
			}
		}
	}
	if n := h.metricValue("notifyd_retry_released_total", `channel="email"`); n < 1 {
		t.Fatalf("notifyd_retry_released_total{channel=\"email\"} is %v after the recovery", n)
	}
}
