package service_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/sinks/smtptest"
)

// notificationIDs counts accepted emails per X-Notifyd-Notification-Id.
func notificationIDs(t *testing.T, msgs []smtptest.Message) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, m := range msgs {
		h, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(m.Data))).ReadMIMEHeader()
		if err != nil && len(h) == 0 {
			t.Fatalf("unreadable message: %v", err)
		}
		out[h.Get("X-Notifyd-Notification-Id")]++
	}
	return out
}

// metric reads one sample of the process's /metrics ("" = absent).
func (h *harness) metric(name string, labels ...string) string {
	h.t.Helper()
	resp, err := http.Get(h.base + "/metrics")
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if ok {
			return line[strings.LastIndexByte(line, ' ')+1:]
		}
	}
	return ""
}

func (h *harness) metricValue(name string, labels ...string) float64 {
	v, _ := strconv.ParseFloat(h.metric(name, labels...), 64)
	return v
}

// sendBatch posts requests for users [from, to) and returns their ids.
func (h *harness) sendBatch(template string, from, to int, prefix string) []string {
	h.t.Helper()
	var reqs []any
	var ids []string
	for i := from; i < to; i++ {
		user := fmt.Sprintf("%s-%d", prefix, i)
		event := fmt.Sprintf("%s-ev-%d", prefix, i)
		reqs = append(reqs, map[string]any{"eventId": event, "template": template,
			"data":       map[string]any{"orderId": i, "eta": "soon"},
			"recipients": []any{map[string]any{"userId": user, "email": user + "@example.com"}}})
		ids = append(ids, processors.NotificationID(event, user))
	}
	h.mustCall(http.StatusOK, "POST", "/v1/notifications/batch", map[string]any{"requests": reqs})
	return ids
}

// The SMTP server goes away for 20 s — longer than the retry tiers together
// (2 + 5 + 10 s), so parked notifications come round the last tier again — in
// the middle of 5,000 notifications: the notifications wait on the retry
// topics, nothing fails, and once the server is back every one is delivered
// exactly once. The breaker opened and
// closed again (metrics), and /metrics shows retries, lag and the DLQ size.
func TestSMTPOutageLongerThanTheRetryTiersLosesNothing(t *testing.T) {
	h := newHarness(t)
	h.cfg.Limits.DefaultPerDay = 0
	h.cfg.Sink.Attempts = 1
	h.cfg.Sink.SendTimeout = 5 * time.Second
	h.cfg.Sink.Retry = config.Retry{Tiers: []time.Duration{2 * time.Second, 5 * time.Second, 10 * time.Second},
		Horizon: map[string]time.Duration{"high": time.Hour, "normal": time.Hour, "low": time.Hour}}
	h.cfg.Sink.Breaker = config.Breaker{Failures: 5, OpenFor: 3 * time.Second, Probes: 1}
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))

	const total = 5000
	var ids []string
	for b := 0; b < 10; b++ { // the first 1,000 while the server is up
		ids = append(ids, h.sendBatch("order-shipped", b*100, b*100+100, "outage")...)
	}
	h.smtp.WaitFor(500, 30*time.Second)
	h.smtp.Stop()
	down := time.Now()
	for b := 10; b < total/100; b++ {
		ids = append(ids, h.sendBatch("order-shipped", b*100, b*100+100, "outage")...)
	}
	deadline := time.Now().Add(30 * time.Second)
	for h.metricValue("notifyd_breaker_transitions_total", `provider="smtp-main"`, `to="open"`) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the breaker never opened while the SMTP server was down")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if h.metricValue("notifyd_sink_retries_total", `channel="email"`) < 1 {
		t.Fatal("no retry counted while the SMTP server was down")
	}
	time.Sleep(time.Until(down.Add(20 * time.Second)))
	if err := h.smtp.Resume(); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(3 * time.Minute)
	for len(h.smtp.Messages()) < total && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(time.Second) // room for a wrong second delivery
	got := notificationIDs(t, h.smtp.Messages())
	if len(got) != total {
		t.Fatalf("%d of %d notifications delivered after the outage", len(got), total)
	}
	for id, n := range got {
		if n != 1 {
			t.Fatalf("%s delivered %d times", id, n)
		}
	}
	for i, id := range ids {
		if i%50 != 0 { // a sample of statuses; every email arrived once above
			continue
		}
		st := h.waitStatus(id, processors.StatusSent)
		for _, s := range historyStatuses(st) {
			if s == processors.StatusFailed {
				t.Fatalf("%s failed during the outage: %v", id, historyStatuses(st))
			}
		}
	}
	deadline = time.Now().Add(30 * time.Second)
	for h.metric("notifyd_breaker_state", `provider="smtp-main"`) != "0" {
		if time.Now().After(deadline) {
			t.Fatalf("breaker state %s after the recovery, want 0 (closed)", h.metric("notifyd_breaker_state", `provider="smtp-main"`))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if h.metricValue("notifyd_breaker_transitions_total", `provider="smtp-main"`, `to="closed"`) < 1 {
		t.Fatal("no transition to closed counted")
	}
	if h.metric("notifyd_sink_notifications_total", `status="failed"`) != "" {
		t.Fatalf("failed notifications counted: %s", h.metric("notifyd_sink_notifications_total", `status="failed"`))
	}
	for _, name := range []string{"notifyd_consumer_lag", "notifyd_dlq_records", "notifyd_breaker_state", "notifyd_sink_retries_total"} {
		if h.metric(name) == "" {
			t.Errorf("/metrics has no %s", name)
		}
	}
}

// With a second provider configured, a failing first provider's breaker
// opens after its configured failures and every later notification goes to
// the second one at once: the first is not called again.
func TestFailoverToTheSecondProvider(t *testing.T) {
	h := newHarness(t)
	var primaryCalls atomic.Int32
	primary, err := smtptest.Start(smtptest.Options{OnData: func(smtptest.Message) error {
		primaryCalls.Add(1)
		return &smtp.SMTPError{Code: 451, Message: "try again later"}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer primary.Close()
	h.cfg.Limits.DefaultPerDay = 0
	h.cfg.Sink.Attempts = 1
	h.cfg.Sink.Breaker = config.Breaker{Failures: 5, OpenFor: time.Minute, Probes: 1}
	h.cfg.Channels["email"] = []config.Provider{
		{Name: "smtp-primary", Type: "smtp", Concurrency: 1, SMTP: config.SMTP{Host: primary.Host, Port: primary.Port, From: "n@example.com", TLS: "none"}},
		{Name: "smtp-main", Type: "smtp", SMTP: config.SMTP{Host: h.smtp.Host, Port: h.smtp.Port, From: "n@example.com", TLS: "none"}},
	}
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	const total = 300
	ids := h.sendBatch("order-shipped", 0, total, "failover")
	var waits []time.Duration
	for _, id := range ids {
		st := h.waitStatus(id, processors.StatusSent)
		if st["provider"] != "smtp-main" {
			t.Fatalf("%s sent by %v", id, st["provider"])
		}
		waits = append(waits, acceptedToSent(t, st))
	}
	if n := primaryCalls.Load(); n != 5 {
		t.Fatalf("the failing provider was called %d times, want 5 (then its breaker is open)", n)
	}
	sort.Slice(waits, func(i, j int) bool { return waits[i] < waits[j] })
	t.Logf("accepted → sent through the second provider: p50 %v, p99 %v, max %v",
		waits[len(waits)/2], waits[len(waits)*99/100], waits[len(waits)-1])
}

func acceptedToSent(t *testing.T, st map[string]any) time.Duration {
	t.Helper()
	var accepted, sent time.Time
	for _, e := range st["history"].([]any) {
		m := e.(map[string]any)
		at, err := time.Parse(time.RFC3339Nano, m["at"].(string))
		if err != nil {
			t.Fatal(err)
		}
		switch m["status"] {
		case processors.StatusAccepted:
			accepted = at
		case processors.StatusSent:
			sent = at
		}
	}
	if accepted.IsZero() || sent.IsZero() {
		t.Fatal(errors.New("history lacks accepted or sent"))
	}
	return sent.Sub(accepted)
}

// A record in work longer than health.stuckAfter (here: a provider holding
// the request) makes /readyz answer 503 naming the partition; when it is
// done, the process is ready again.
func TestReadinessReportsAStuckPartition(t *testing.T) {
	h := newHarness(t)
	h.cfg.Health.StuckAfter = time.Second
	release := make(chan struct{})
	h.hook.Hook = holdUntil(release)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/hook", webhookTemplate())
	ids := h.send(map[string]any{"template": "hook", "data": map[string]any{"orderId": "1"},
		"recipients": []any{map[string]any{"userId": "stuck-1"}}})
	readyz := func() (int, string) {
		resp, err := http.Get(h.base + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(raw)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := readyz()
		if code == http.StatusServiceUnavailable && strings.Contains(body, "notify.sink.webhook/") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never reported the stuck sink partition: %d %s", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	close(release)
	h.waitStatus(ids["stuck-1"], processors.StatusSent)
	for {
		if code, _ := readyz(); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz did not recover after the record was done")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
