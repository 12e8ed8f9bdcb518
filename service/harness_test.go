package service_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/service"
	"github.com/notifyd/notifyd/sinks/smtptest"
	"github.com/notifyd/notifyd/sinks/webhooktest"
	"github.com/notifyd/notifyd/topology"
)

const testKey = "test-key-1"

// harness runs one notifyd all-in-one process (embedded kfake broker, every
// group and sink, the API) against a real SMTP server and a webhook receiver.
type harness struct {
	t      testing.TB
	cfg    config.Config
	svc    *service.Service
	cancel context.CancelFunc
	done   chan error
	base   string
	smtp   *smtptest.Server
	hook   *webhooktest.Receiver
	now    func() time.Time // the service's clock; nil = real time
	log    *slog.Logger     // the service's log; nil = logger()
}

func testConfig(t testing.TB, smtpSrv *smtptest.Server, hook *webhooktest.Receiver) config.Config {
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Kafka.EmbeddedPort = 0
	cfg.Kafka.Partitions = 2
	cfg.APIKeys = []config.APIKey{{Name: "test", Key: testKey}}
	// One master key for every instance a test starts against one broker.
	cfg.Encryption.MasterKeys = "test1:" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	cfg.Sink.Backoff = 20 * time.Millisecond
	cfg.Sink.SendTimeout = 10 * time.Second
	off := false
	cfg.Analytics.Enabled = &off // the analytics tests turn it on
	cfg.Channels = map[string][]config.Provider{}
	if smtpSrv != nil {
		cfg.Channels["email"] = []config.Provider{{Name: "smtp-main", Type: "smtp", SMTP: config.SMTP{
			Host: smtpSrv.Host, Port: smtpSrv.Port, From: "notifyd@example.com", TLS: "none"}}}
	}
	if hook != nil {
		cfg.Channels["webhook"] = []config.Provider{{Name: "hook-main", Type: "webhook", Webhook: config.Webhook{
			AllowPrivateTargets: true, Timeout: 30 * time.Second,
			Endpoints: map[string]config.Endpoint{"default": {URL: hook.URL, Secret: string(hook.Secret)}}}}}
	}
	return cfg
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	smtpSrv, err := smtptest.Start(smtptest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(smtpSrv.Close)
	hook := webhooktest.Start("whsec-test")
	t.Cleanup(hook.Close)
	h := &harness{t: t, smtp: smtpSrv, hook: hook, cfg: testConfig(t, smtpSrv, hook)}
	return h
}

func logger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("NOTIFYD_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// start runs the service and waits until it is ready.
func (h *harness) start() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := h.log
	if log == nil {
		log = logger()
	}
	h.svc = &service.Service{Cfg: h.cfg, Roles: service.AllInOne, Log: log, Now: h.now}
	h.cancel = cancel
	h.done = make(chan error, 1)
	go func() { h.done <- h.svc.Run(ctx) }()
	select {
	case <-h.svc.Ready():
	case err := <-h.done:
		h.t.Fatalf("service stopped before ready: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		h.t.Fatal("service not ready after 60s")
	}
	h.base = "http://" + h.svc.HTTPAddr()
	h.t.Cleanup(h.stop)
}

// stop ends the service and waits for it; safe to call twice.
func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil && !errors.Is(err, context.Canceled) {
			h.t.Errorf("service stopped with: %v", err)
		}
	case <-time.After(30 * time.Second):
		h.t.Error("service did not stop within 30s")
	}
}

// call makes an API request and decodes a JSON answer.
func (h *harness) call(method, path string, body any, header ...string) (int, map[string]any) {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewBufferString(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	req, _ := http.NewRequest(method, h.base+path, rd)
	req.Header.Set("Authorization", "Bearer "+testKey)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			h.t.Fatalf("%s %s: answer is not JSON: %s", method, path, raw)
		}
	}
	return resp.StatusCode, out
}

func (h *harness) mustCall(want int, method, path string, body any, header ...string) map[string]any {
	h.t.Helper()
	code, out := h.call(method, path, body, header...)
	if code != want {
		h.t.Fatalf("%s %s: status %d, want %d: %v", method, path, code, want, out)
	}
	return out
}

// producer is a franz-go client of the service's broker, closed with the test.
func (h *harness) producer() *kgo.Client {
	h.t.Helper()
	cl, err := topology.NewProducer(h.svc.Brokers())
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(cl.Close)
	return cl
}

// send posts a notification and returns the notification ids by user.
func (h *harness) send(body map[string]any, header ...string) map[string]string {
	h.t.Helper()
	out := h.mustCall(http.StatusAccepted, "POST", "/v1/notifications", body, header...)
	ids := map[string]string{}
	for _, n := range out["notifications"].([]any) {
		m := n.(map[string]any)
		ids[m["userId"].(string)] = m["id"].(string)
	}
	return ids
}

// waitStatus polls a notification until its status is want.
func (h *harness) waitStatus(id, want string) map[string]any {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last map[string]any
	for time.Now().Before(deadline) {
		code, out := h.call("GET", "/v1/notifications/"+id, nil)
		if code == http.StatusOK && out["status"] == want {
			return out
		}
		last = out
		time.Sleep(20 * time.Millisecond)
	}
	h.t.Fatalf("notification %s: status never became %q; last: %v", id, want, last)
	return nil
}

// historyStatuses lists the statuses of a status answer's history.
func historyStatuses(st map[string]any) []string {
	var out []string
	for _, e := range st["history"].([]any) {
		out = append(out, e.(map[string]any)["status"].(string))
	}
	return out
}

func orderTemplate(category string) map[string]any {
	return map[string]any{
		"category": category,
		"channels": map[string]any{
			"email": map[string]any{
				"subject": "Order {{.orderId}} shipped",
				"html":    "<p>Your order <b>{{.orderId}}</b> arrives {{.eta}}</p>",
				"text":    "Your order {{.orderId}} arrives {{.eta}}",
			},
		},
		"locales": map[string]any{"zh-CN": map[string]any{"email": map[string]any{
			"subject": "订单 {{.orderId}} 已发货", "text": "订单 {{.orderId}}", "html": "<p>订单 {{.orderId}}</p>"}}},
	}
}
