package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/notifyd/notifyd/sinks/smtptest"
)

// The crash loops reported against an older notifyd, with the real binary: a
// record larger than the producer's max (a 900,000-character orderId), a
// literal runaway range, and a data-driven runaway range that stalled its
// partition while /readyz said 200. Each must now end as a rejected
// notification with its reason, leave the partition (and the user's next
// notification) flowing, and leave nothing behind that a restart trips on.
func TestPoisonRecordsAreRejectedAndRestartsAreClean(t *testing.T) {
	bin := build(t)
	mail, err := smtptest.Start(smtptest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer mail.Close()
	dir := t.TempDir()
	httpPort, kafkaPort := freePort(t), freePort(t)
	cfgPath := writeRunConfig(t, dir, httpPort, kafkaPort, fmt.Sprintf(`
  email:
    - name: mail
      type: smtp
      smtp: {host: %s, port: %d, tls: none, from: notifyd@example.com}
`, mail.Host, mail.Port))
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	brokers := fmt.Sprintf("127.0.0.1:%d", kafkaPort)
	start := time.Now()
	phase := func(name string) { t.Logf("%6.1fs %s", time.Since(start).Seconds(), name) }

	p1 := watchExit(t, startNotifyd(t, bin, cfgPath))
	waitReady(t, base)
	phase("ready")

	// 1. The README's template.
	api(t, base, "PUT", "/v1/templates/order-shipped", map[string]any{
		"category": "transactional",
		"channels": map[string]any{"email": map[string]any{"subject": "Order {{.orderId}} shipped",
			"html": "<p>Your order <b>{{.orderId}}</b> arrives {{.eta}}</p>",
			"text": "Your order {{.orderId}} arrives {{.eta}}"}},
		"locales": map[string]any{"zh-CN": map[string]any{"email": map[string]any{"subject": "订单 {{.orderId}} 已发货",
			"html": "<p>订单 {{.orderId}}</p>", "text": "订单 {{.orderId}}"}}},
	}, http.StatusOK)

	const user, addr = "poison-user", "poison@example.com"
	send := func(template string, data map[string]any) string {
		t.Helper()
		out := api(t, base, "POST", "/v1/notifications", map[string]any{"template": template, "data": data,
			"recipients": []any{map[string]any{"userId": user, "email": addr}}}, http.StatusAccepted)
		return out["notifications"].([]any)[0].(map[string]any)["id"].(string)
	}

	// 2. A record the API takes (it fits in a record) but whose email would be
	// three times 900,000 bytes: rejected for the output budget, not sent, and
	// the process stays up.
	huge := send("order-shipped", map[string]any{"orderId": strings.Repeat("9", 900_000), "eta": "Monday"})
	lc := waitSettled(t, base, huge, 2*time.Minute)
	wantRejected(t, lc, "900,000-character orderId", "output exceeds", "bytes")
	t.Logf("the 900,000-character orderId: %s", rejectReason(lc))
	p1.requireRunning(t, "after the 900,000-character orderId")
	phase("huge orderId rejected")

	// 3. Runaway ranges a PUT can prove are refused there, naming the field.
	for _, src := range []string{`{{range 1000000000}}x{{end}}`, `{{range 100000}}{{range 100000}}{{end}}{{end}}`} {
		out := api(t, base, "PUT", "/v1/templates/loop", map[string]any{"category": "transactional",
			"channels": map[string]any{"email": map[string]any{"subject": "loop", "text": src}}}, http.StatusBadRequest)
		e, _ := out["error"].(map[string]any)
		if e["field"] != "channels.email.text" || !strings.Contains(fmt.Sprint(e["message"]), "exceeds") {
			t.Errorf("PUT %s: error %v, want field channels.email.text and a message saying what exceeds", src, e)
		}
		t.Logf("PUT %s: 400 %v", src, e)
	}

	// 4. One a PUT cannot prove (the data decides): 2,000³ = 8·10⁹ iterations
	// with this send, stopped by the budget, on the same user's partition.
	// $.a, not .a: inside a range, dot is the element, and an inner {{range .a}}
	// would fail at once on a number instead of looping.
	api(t, base, "PUT", "/v1/templates/loop2", map[string]any{"category": "transactional",
		"channels": map[string]any{"email": map[string]any{"subject": "loop",
			"text": `{{range $.a}}{{range $.a}}{{range $.a}}x{{end}}{{end}}{{end}}`}}}, http.StatusOK)
	cube := make([]int, 2000)
	for i := range cube {
		cube[i] = i
	}
	runaway := send("loop2", map[string]any{"a": cube})
	lc = waitSettled(t, base, runaway, 2*time.Minute)
	wantRejected(t, lc, "the cube", "exceed")
	if r := rejectReason(lc); !strings.Contains(r, "iterations") && !strings.Contains(r, "time") {
		t.Errorf("the cube was rejected for %q, want the iterations (or time) budget", r)
	}
	t.Logf("the cube: %s", rejectReason(lc))
	p1.requireRunning(t, "after the runaway range")
	phase("runaway range rejected")

	// 5. The same user's next notification goes through, and it is the only
	// email the server ever saw.
	good := send("order-shipped", map[string]any{"orderId": "A-1001", "eta": "Monday"})
	if lc := waitSettled(t, base, good, 2*time.Minute); lc["status"] != "sent" {
		t.Fatalf("a normal notification after the poison ones: %v", lc)
	}
	wantEmails(t, mail, good)
	if subj := smtptest.Header(mail.Messages()[0].Data, "Subject"); subj != "Order A-1001 shipped" {
		t.Errorf("the email's subject is %q", subj)
	}
	phase("normal notification sent")

	// 6. Nothing is stuck.
	wantReady(t, base)

	// 7. Preview of the runaway: refused for the budget, and it returns.
	code, body := previewCall(t, base, "loop2", map[string]any{"channel": "email", "data": map[string]any{"a": cube}})
	if code != http.StatusUnprocessableEntity || !strings.Contains(body, "render_budget") {
		t.Errorf("preview of the runaway template: %d %s, want 422 render_budget", code, body)
	}
	t.Logf("preview: %d %s", code, strings.TrimSpace(body))
	phase("preview refused")

	// A render over budget is a rejected notification with its reason, not a
	// bad record: the deliver group emits the rejected StatusEvent and writes
	// no dead letter (processors.Deliverer returns a rejected Outcome, and
	// topology's deliver emits only its event). Pinned here so a change of
	// that is a decision, not an accident.
	letters := dlqRows(t, bin, brokers)
	for _, l := range letters {
		if id := l["notificationId"]; id == huge || id == runaway {
			t.Errorf("a dead letter for the budget-rejected notification %s: %v", id, l)
		}
	}
	t.Logf("notify.dlq holds %d dead letters", len(letters))

	// 8. A crash and a restart on the same data dir: it comes up and stays up,
	// replays nothing it rejected, and delivers what comes next.
	p1.kill(t)
	phase("killed")
	p2 := watchExit(t, startNotifyd(t, bin, cfgPath))
	waitReady(t, base)
	phase("ready again")
	time.Sleep(5 * time.Second) // long enough for a crash loop to show
	p2.requireRunning(t, "5s after the restart")
	wantReady(t, base)
	for _, id := range []string{huge, runaway} {
		if lc := waitSettled(t, base, id, time.Minute); lc["status"] != "rejected" {
			t.Errorf("after the restart %s reads %v", id, lc)
		}
	}
	if lc := waitSettled(t, base, good, time.Minute); lc["status"] != "sent" {
		t.Errorf("after the restart %s reads %v", good, lc)
	}
	wantEmails(t, mail, good)
	next := send("order-shipped", map[string]any{"orderId": "A-1002", "eta": "Tuesday"})
	if lc := waitSettled(t, base, next, 2*time.Minute); lc["status"] != "sent" {
		t.Fatalf("a notification after the restart: %v", lc)
	}
	time.Sleep(time.Second) // room for a wrong extra email
	wantEmails(t, mail, good, next)
	p2.requireRunning(t, "at the end")
	p2.stop(t)
	phase("stopped")
}

// writeRunConfig writes the config of a `notifyd run` on the given ports,
// with the API key of api() and analytics off; channels is the YAML under
// "channels:".
func writeRunConfig(t *testing.T, dir string, httpPort, kafkaPort int, channels string) string {
	t.Helper()
	cfg := fmt.Sprintf(`dataDir: %s
logLevel: warn
http: {addr: "127.0.0.1:%d"}
kafka: {embeddedPort: %d, partitions: 2}
apiKeys: [{name: crash, key: crash-key}]
analytics: {enabled: false}
channels:%s`, filepath.Join(dir, "data"), httpPort, kafkaPort, channels)
	path := filepath.Join(dir, "notifyd.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// watched is a started notifyd whose exit the test sees as it happens.
type watched struct {
	*proc
	done chan struct{}
	err  error // of Wait, once done is closed
}

func watchExit(t *testing.T, p *proc) *watched {
	w := &watched{proc: p, done: make(chan struct{})}
	go func() { w.err = p.cmd.Wait(); close(w.done) }()
	// Runs before startNotifyd's cleanup, which then finds the process waited for.
	t.Cleanup(func() {
		select {
		case <-w.done:
		default:
			_ = p.cmd.Process.Kill()
			<-w.done
		}
	})
	return w
}

func (w *watched) requireRunning(t *testing.T, when string) {
	t.Helper()
	select {
	case <-w.done:
		t.Fatalf("notifyd exited (%v) %s", w.err, when)
	default:
	}
}

func (w *watched) kill(t *testing.T) {
	t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-w.done
}

// stop is SIGTERM, and a clean exit within 30s.
func (w *watched) stop(t *testing.T) {
	t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.done:
		if w.err != nil {
			t.Fatalf("notifyd exited with %v after SIGTERM", w.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("notifyd did not stop within 30s of SIGTERM")
	}
}

var testClient = &http.Client{Timeout: 30 * time.Second}

// statusOf is GET /v1/notifications/{id}; nil while notifyd does not know
// the id yet (404) or its table is catching up (503).
func statusOf(t *testing.T, base, id string) map[string]any {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/v1/notifications/"+id, nil)
	req.Header.Set("Authorization", "Bearer crash-key")
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatalf("GET status of %s: %v", id, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	switch resp.StatusCode {
	case http.StatusOK:
		var out map[string]any
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("status of %s: %v: %s", id, err, raw)
		}
		return out
	case http.StatusNotFound, http.StatusServiceUnavailable:
		return nil
	}
	t.Fatalf("GET status of %s: %d %s", id, resp.StatusCode, raw)
	return nil
}

// waitSettled polls a notification's status until it is past the states of a
// notification in work, and returns its lifecycle.
func waitSettled(t *testing.T, base, id string, d time.Duration) map[string]any {
	t.Helper()
	inWork := map[string]bool{"": true, "accepted": true, "scheduled": true, "queued": true, "retrying": true}
	deadline := time.Now().Add(d)
	var lc map[string]any
	for time.Now().Before(deadline) {
		if lc = statusOf(t, base, id); lc != nil && !inWork[fmt.Sprint(lc["status"])] {
			return lc
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not settle within %v: %v", id, d, lc)
	return nil
}

// waitStatus polls a notification's status until it reads want.
func waitStatus(t *testing.T, base, id, want string, d time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(d)
	var lc map[string]any
	for time.Now().Before(deadline) {
		if lc = statusOf(t, base, id); lc != nil && lc["status"] == want {
			return lc
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s does not read %s within %v: %v", id, want, d, lc)
	return nil
}

// rejectReason is the reason of the rejected entry of a lifecycle's history.
func rejectReason(lc map[string]any) string {
	hist, _ := lc["history"].([]any)
	for _, h := range hist {
		if e, _ := h.(map[string]any); e["status"] == "rejected" {
			return fmt.Sprint(e["reason"])
		}
	}
	return ""
}

func wantRejected(t *testing.T, lc map[string]any, what string, reasonHas ...string) {
	t.Helper()
	if lc["status"] != "rejected" {
		t.Fatalf("%s: status %v, want rejected: %v", what, lc["status"], lc)
	}
	r := rejectReason(lc)
	for _, s := range reasonHas {
		if !strings.Contains(r, s) {
			t.Errorf("%s was rejected for %q, want it to say %q", what, r, s)
		}
	}
	hist, _ := lc["history"].([]any)
	for _, h := range hist {
		if e, _ := h.(map[string]any); e["status"] == "sent" || e["status"] == "queued" {
			t.Errorf("%s went on after its rejection: %v", what, lc)
		}
	}
}

// wantEmails: the SMTP server has accepted exactly one message for each id, and no other.
func wantEmails(t *testing.T, srv *smtptest.Server, ids ...string) {
	t.Helper()
	var got []string
	for _, m := range srv.Messages() {
		got = append(got, smtptest.Header(m.Data, "X-Notifyd-Notification-Id"))
	}
	if fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("the SMTP server received emails for %v, want exactly %v", got, ids)
	}
}

func wantReady(t *testing.T, base string) {
	t.Helper()
	resp, err := testClient.Get(base + "/readyz")
	if err != nil {
		t.Fatalf("/readyz: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(resp.Body)
		t.Fatalf("/readyz: %d %s", resp.StatusCode, raw)
	}
}

// previewCall posts a preview with a generous client timeout: it must
// answer, not hang.
func previewCall(t *testing.T, base, id string, body any) (int, string) {
	t.Helper()
	b, _ := json.Marshal(body)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/v1/templates/"+id+"/preview", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer crash-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("preview of %s: %v", id, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw)
}

// dlqRows is `notifyd dlq list --format json`, one object per dead letter.
func dlqRows(t *testing.T, bin, brokers string) []map[string]any {
	t.Helper()
	out := dlqCommand(t, bin, "list", "--brokers", brokers, "--format", "json")
	var rows []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var row map[string]any
		if err := json.Unmarshal(sc.Bytes(), &row); err != nil {
			t.Fatalf("dlq list --format json: %v in %q", err, sc.Text())
		}
		rows = append(rows, row)
	}
	return rows
}

// dlqCommand runs `notifyd dlq args…`, requires exit 0, and returns its stdout.
func dlqCommand(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, append([]string{"dlq"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("notifyd dlq %v: %v\nstdout:\n%s\nstderr:\n%s", args, err, &stdout, &stderr)
	}
	return stdout.String()
}
