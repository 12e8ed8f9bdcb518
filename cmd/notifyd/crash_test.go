package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/notifyd/notifyd/crypt"
	"github.com/notifyd/notifyd/sinks/webhooktest"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// build compiles notifyd once for the tests of this package.
func build(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "notifyd-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "notifyd")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		_ = os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// freePort picks a free port below the kernel's ephemeral range (32768 and
// up): a process restarted by a test binds its port again, and a port from
// the ephemeral range may meanwhile be the local end of any connection.
func freePort(t *testing.T) int {
	t.Helper()
	for i := 0; i < 1000; i++ {
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free port below 32000")
	return 0
}

type proc struct {
	cmd  *exec.Cmd
	logs *bytes.Buffer
}

func startNotifyd(t *testing.T, bin, cfgPath string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, "run", "--config", cfgPath), logs: new(bytes.Buffer)}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("notifyd output:\n%s", p.logs)
		}
	})
	return p
}

func api(t *testing.T, base, method, path string, body any, want int) map[string]any {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, base+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer crash-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return out
}

func waitReady(t *testing.T, base string) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("notifyd not ready after 90s")
}

// SIGKILL notifyd while the provider holds the request (accepted, routed, not
// delivered), start it again on the same data dir: delivered exactly once.
func TestKillDuringDeliveryThenRestartDeliversOnce(t *testing.T) {
	bin := build(t)
	rc := webhooktest.Start("crash-secret")
	defer rc.Close()
	arrived := make(chan string, 1)
	var first atomic.Bool
	first.Store(true)
	rc.Hook = func(r *http.Request, _ []byte) int {
		if first.CompareAndSwap(true, false) {
			arrived <- r.Header.Get("X-Notifyd-Notification-Id")
			<-r.Context().Done() // until the killed process's connection breaks
		}
		return 0
	}
	dir := t.TempDir()
	httpPort, kafkaPort := freePort(t), freePort(t)
	cfg := fmt.Sprintf(`dataDir: %s
logLevel: warn
http: {addr: "127.0.0.1:%d"}
kafka: {embeddedPort: %d, partitions: 2}
apiKeys: [{name: crash, key: crash-key}]
channels:
  webhook:
    - name: hook
      type: webhook
      webhook: {allowPrivateTargets: true, endpoints: {default: {url: %q, secret: crash-secret}}}
`, filepath.Join(dir, "data"), httpPort, kafkaPort, rc.URL)
	cfgPath := filepath.Join(dir, "notifyd.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)

	p1 := startNotifyd(t, bin, cfgPath)
	waitReady(t, base)
	api(t, base, "PUT", "/v1/templates/hook", map[string]any{"category": "transactional",
		"channels": map[string]any{"webhook": map[string]any{"body": `{"n": "{{.n}}"}`}}}, http.StatusOK)
	out := api(t, base, "POST", "/v1/notifications", map[string]any{"template": "hook", "data": map[string]any{"n": "1"},
		"recipients": []any{map[string]any{"userId": "crash-user"}}}, http.StatusAccepted)
	id := out["notifications"].([]any)[0].(map[string]any)["id"].(string)
	select {
	case got := <-arrived:
		if got != id {
			t.Fatalf("provider got %s, want %s", got, id)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the provider never saw the notification")
	}
	if err := p1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p1.cmd.Wait()
	if n := len(rc.Deliveries()); n != 0 {
		t.Fatalf("%d deliveries counted before the restart", n)
	}

	p2 := startNotifyd(t, bin, cfgPath)
	waitReady(t, base)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for len(rc.Deliveries()) == 0 && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(time.Second) // room for a wrong second delivery
	if d := rc.Deliveries(); len(d) != 1 || d[0].ID != id {
		t.Fatalf("want exactly one delivery of %s, got %+v", id, d)
	}
	for {
		st := api(t, base, "GET", "/v1/notifications/"+id, nil, http.StatusOK)
		if st["status"] == "sent" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("status after the restart: %v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A clean stop on SIGTERM.
	if err := p2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p2.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("notifyd exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("notifyd did not stop within 30s of SIGTERM")
	}
}

func TestCommandLineRejectsBadInvocations(t *testing.T) {
	bin := build(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(bad, []byte("kafka: {partitions: many}\n"), 0o600)
	cases := []struct {
		args []string
		code int
		say  string
	}{
		{nil, 2, "usage"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"sink", "--brokers", "127.0.0.1:1"}, 1, "--channel is required"},
		{[]string{"process"}, 1, "--brokers (or kafka.brokers) is required"},
		{[]string{"run", "--config", filepath.Join(dir, "missing.yaml")}, 1, "no such file"},
		{[]string{"run", "--config", bad}, 1, "config " + bad},
		{[]string{"run", "--no-such-flag"}, 1, "flag provided but not defined"},
		{[]string{"keys"}, 2, "notifyd keys"},
		{[]string{"keys", "shred"}, 2, `unknown command "shred"`},
		{[]string{"keys", "generate", "--id", "no spaces"}, 1, "master key"},
		{[]string{"keys", "rewrap"}, 1, "--brokers (or kafka.brokers) is required"},
	}
	for _, c := range cases {
		out, err := exec.Command(bin, c.args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != c.code || !bytes.Contains(out, []byte(c.say)) {
			t.Errorf("notifyd %v: exit %d, want %d, output %q (want it to say %q)", c.args, code, c.code, out, c.say)
		}
	}
	// keys generate prints a master key the configuration accepts.
	out, err := exec.Command(bin, "keys", "generate", "--id", "m7").Output()
	if err != nil {
		t.Fatal(err)
	}
	if mk, err := crypt.ParseMasterKeys(strings.TrimSpace(string(out))); err != nil || mk.Current() != "m7" {
		t.Fatalf("keys generate printed %q: %v", out, err)
	}
}
