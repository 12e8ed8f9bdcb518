package service_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/analytics"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/sinks/smtptest"
	"github.com/notifyd/notifyd/topology"
)

// syncBuffer is a log destination tests can read while the service writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// topicBytes reads every record of topic as it is on the broker.
func topicBytes(t *testing.T, h *harness, topic string) []byte {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.svc.Brokers()...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []byte
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		n := 0
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r.Value...); n++ })
		if n == 0 {
			return out
		}
	}
}

// A one-time code is high priority (quiet hours do not hold it), and behind a
// provider outage longer than its expiry it ends expired, never sent late; its
// code is in no log line, status reason, dead letter or ClickHouse row — while
// a failed one-time code's dead letter keeps nothing of it either.
func TestOTPExpiresBehindAnOutageAndIsNeverLogged(t *testing.T) {
	const code, rejected = "739184", "404404"
	// The mail server refuses the message carrying the second code, quoting
	// it in its answer as some servers quote content they reject.
	smtpSrv, err := smtptest.Start(smtptest.Options{OnData: func(m smtptest.Message) error {
		if i := bytes.Index(m.Data, []byte(rejected)); i >= 0 {
			return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "content refused: " + rejected}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(smtpSrv.Close)
	h := &harness{t: t, smtp: smtpSrv, cfg: testConfig(t, smtpSrv, nil)}
	on := true
	h.cfg.Analytics.Enabled = &on
	h.cfg.Analytics.FlushEvery = 200 * time.Millisecond
	h.cfg.Sink.Retry.Tiers = []time.Duration{time.Second, 2 * time.Second}
	h.cfg.LogLevel = "debug"
	logs := &syncBuffer{}
	h.log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h.start()
	for deadline := time.Now().Add(90 * time.Second); h.svc.AnalyticsAddr() == ""; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("all-in-one started no ClickHouse")
		}
	}
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/login-code", map[string]any{"category": "security",
		"channels": map[string]any{"email": map[string]any{"subject": "Your sign-in code",
			"text": "Your code is {{.code}}", "html": "<p>Your code is <b>{{.code}}</b></p>"}}})
	// Quiet all day: a normal notification would wait; a one-time code may not.
	h.mustCall(http.StatusOK, "PUT", "/v1/profiles/otp-user", map[string]any{"email": "otp@example.com",
		"preferences": map[string]any{"quietHours": map[string]any{"start": "00:00", "end": "23:59"}}})

	// Bad input: an OTP cannot be low priority or scheduled.
	for _, bad := range []map[string]any{{"priority": "low"}, {"sendAt": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}} {
		body := map[string]any{"template": "login-code", "otp": true, "recipients": []any{map[string]any{"userId": "otp-user"}}}
		for k, v := range bad {
			body[k] = v
		}
		if code, out := h.call("POST", "/v1/notifications", body); code != http.StatusBadRequest {
			t.Fatalf("otp with %v: %d %v", bad, code, out)
		}
	}

	// Delivered at once despite quiet hours, and the code reaches the user.
	ok := h.send(map[string]any{"template": "login-code", "otp": true, "data": map[string]any{"code": "551902"},
		"recipients": []any{map[string]any{"userId": "otp-user"}}})["otp-user"]
	st := h.waitStatus(ok, processors.StatusSent)
	if st["priority"] != "high" || strings.Contains(strings.Join(historyStatuses(st), ","), processors.StatusScheduled) {
		t.Fatalf("otp held or not high priority: %v", st)
	}
	if msgs := h.smtp.WaitFor(1, 10*time.Second); len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "551902") {
		t.Fatalf("otp message %v", msgs)
	}

	// Refused for good with the code in the server's answer: failed, and
	// neither the reason nor the dead letter carries the code.
	refused := h.send(map[string]any{"template": "login-code", "otp": true, "data": map[string]any{"code": rejected},
		"recipients": []any{map[string]any{"userId": "otp-user"}}})["otp-user"]
	fst := h.waitStatus(refused, processors.StatusFailed)

	// Behind an outage longer than its expiry: expired, never sent late.
	h.smtp.Stop()
	id := h.send(map[string]any{"template": "login-code", "otp": true, "data": map[string]any{"code": code},
		"expiresAt":  time.Now().Add(3 * time.Second).UTC().Format(time.RFC3339Nano),
		"recipients": []any{map[string]any{"userId": "otp-user"}}})["otp-user"]
	st = h.waitStatus(id, processors.StatusExpired)
	if !strings.Contains(strings.Join(historyStatuses(st), ","), processors.StatusRetrying) {
		t.Fatalf("the outage was not retried before the expiry: %v", historyStatuses(st))
	}
	if err := h.smtp.Resume(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // a retry due now would have gone out by then
	for _, m := range h.smtp.Messages() {
		if strings.Contains(string(m.Data), code) {
			t.Fatal("the expired code was sent after its expiry")
		}
	}

	// The code is nowhere: not in the logs, not in the status history, not in
	// status events or dead letters on the broker, not in ClickHouse.
	for _, e := range append(st["history"].([]any), fst["history"].([]any)...) {
		if reason, _ := e.(map[string]any)["reason"].(string); strings.Contains(reason, code) || strings.Contains(reason, rejected) {
			t.Fatalf("status reason carries the code: %v", e)
		}
	}
	if !strings.Contains(fmt.Sprint(fst["history"]), "content refused: [redacted]") {
		t.Fatalf("the failure's reason lost the server's answer: %v", fst["history"])
	}
	if strings.Contains(logs.String(), code) || strings.Contains(logs.String(), rejected) {
		t.Fatal("the code was logged")
	}
	dlq := topicBytes(t, h, string(topology.DLQ))
	if !bytes.Contains(dlq, []byte(refused)) {
		t.Fatal("the refused one-time code has no dead letter")
	}
	for _, topic := range []string{string(topology.Events), string(topology.DLQ)} {
		b := topicBytes(t, h, topic)
		if bytes.Contains(b, []byte(code)) || bytes.Contains(b, []byte(rejected)) {
			t.Fatalf("%s carries the code", topic)
		}
	}
	conn, err := analytics.Open(h.svc.AnalyticsAddr(), "default", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var rows, leaks uint64
	for deadline := time.Now().Add(30 * time.Second); rows < 6; time.Sleep(100 * time.Millisecond) {
		if err := conn.QueryRow(context.Background(), "SELECT count() FROM notifyd.events WHERE notification_id IN (?, ?)", id, refused).Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d events of the notification in ClickHouse", rows)
		}
	}
	if err := conn.QueryRow(context.Background(), "SELECT count() FROM notifyd.events WHERE position(concat(reason, template, provider, channel), ?) > 0 OR position(reason, ?) > 0",
		code, rejected).Scan(&leaks); err != nil || leaks != 0 {
		t.Fatalf("ClickHouse rows carry the code: %d %v", leaks, err)
	}
}
