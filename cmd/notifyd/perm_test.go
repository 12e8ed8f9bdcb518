package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/notifyd/notifyd/sinks/webhooktest"
)

// permEnv is a notifyd run on its own data directory with every file the
// data directory can hold: the generated API and master keys (none
// configured), the embedded broker's log, goka's LevelDB state, and the local
// clickhouse-server's data (analytics on, no address configured).
type permEnv struct {
	bin, cfgPath, data, base string
	hook                     *webhooktest.Receiver
}

func newPermEnv(t *testing.T) *permEnv {
	t.Helper()
	e := &permEnv{bin: build(t), hook: webhooktest.Start("perm-secret")}
	t.Cleanup(e.hook.Close)
	dir := t.TempDir()
	e.data = filepath.Join(dir, "data")
	httpPort, kafkaPort := freePort(t), freePort(t)
	cfg := fmt.Sprintf(`dataDir: %s
logLevel: warn
http: {addr: "127.0.0.1:%d"}
kafka: {embeddedPort: %d, partitions: 2}
channels:
  webhook:
    - name: hook
      type: webhook
      webhook: {allowPrivateTargets: true, endpoints: {default: {url: %q, secret: perm-secret}}}
`, e.data, httpPort, kafkaPort, e.hook.URL)
	e.cfgPath = filepath.Join(dir, "notifyd.yaml")
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	e.base = fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	return e
}

// call uses the key notifyd generated into dataDir/api.key.
func (e *permEnv) call(t *testing.T, method, path string, body any, want int) map[string]any {
	t.Helper()
	code, out, raw := e.try(t, method, path, body)
	if code != want {
		t.Fatalf("%s %s: %d %s", method, path, code, raw)
	}
	return out
}

func (e *permEnv) try(t *testing.T, method, path string, body any) (int, map[string]any, []byte) {
	t.Helper()
	key, err := os.ReadFile(filepath.Join(e.data, "api.key"))
	if err != nil {
		t.Fatal(err)
	}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, e.base+path, rd)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out, raw
}

// deliver sends one webhook notification and waits until it is sent and the
// local ClickHouse answers for sent notifications in all (so its server
// reads and writes its data directory).
func (e *permEnv) deliver(t *testing.T, user string, sentInAll int) {
	t.Helper()
	e.call(t, "PUT", "/v1/templates/perm", map[string]any{"category": "transactional",
		"channels": map[string]any{"webhook": map[string]any{"body": `{"n": "{{.n}}"}`}}}, http.StatusOK)
	out := e.call(t, "POST", "/v1/notifications", map[string]any{"template": "perm", "data": map[string]any{"n": user},
		"recipients": []any{map[string]any{"userId": user}}}, http.StatusAccepted)
	id := out["notifications"].([]any)[0].(map[string]any)["id"].(string)
	from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	deadline := time.Now().Add(90 * time.Second)
	for {
		_, st, _ := e.try(t, "GET", "/v1/notifications/"+id, nil) // 404 until the status group has it
		sent := 0.0
		if st["status"] == "sent" {
			// 503 while the local ClickHouse starts.
			if code, sum, _ := e.try(t, "GET", "/v1/analytics/summary?groupBy=status&from="+from, nil); code == http.StatusOK {
				for _, r := range sum["rows"].([]any) {
					if m := r.(map[string]any); m["status"] == "sent" {
						sent = m["notifications"].(float64)
					}
				}
			}
		}
		if sent >= float64(sentInAll) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("notification %s: status %v, ClickHouse counts %v sent (want %d) after 90s", id, st["status"], sent, sentInAll)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if d := distinctIDs(e.hook.Deliveries()); d[id] != 1 {
		t.Fatalf("receiver got %s %d times", id, d[id])
	}
}

func distinctIDs(ds []webhooktest.Delivery) map[string]int {
	m := map[string]int{}
	for _, d := range ds {
		m[d.ID]++
	}
	return m
}

// stop ends notifyd with SIGTERM and waits for its clean exit (then its
// output is complete).
func stopNotifyd(t *testing.T, p *proc) string {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("notifyd exited with %v after SIGTERM:\n%s", err, p.logs)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("notifyd did not stop within 60s of SIGTERM")
	}
	return p.logs.String()
}

// openEntries walks dir and lists every entry (links aside) with a group or
// other permission bit, and how many entries there are.
func openEntries(t *testing.T, dir string) (open []string, total int) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := os.Lstat(path)
		if err != nil {
			return err
		}
		if info.Mode()&fs.ModeSymlink != 0 {
			return nil
		}
		total++
		if info.Mode().Perm()&0o077 != 0 {
			open = append(open, fmt.Sprintf("%v %s", info.Mode(), path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return open, total
}

// mustHold fails unless the data directory holds what a run writes.
func mustHold(t *testing.T, data string) {
	t.Helper()
	for _, f := range []string{"api.key", "master.key"} {
		if _, err := os.Stat(filepath.Join(data, f)); err != nil {
			t.Errorf("no %s: %v", f, err)
		}
	}
	for _, sub := range []string{"kafka", "goka", "clickhouse"} {
		files := 0
		_ = filepath.WalkDir(filepath.Join(data, sub), func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				files++
			}
			return nil
		})
		if files == 0 {
			t.Errorf("%s holds no file", sub)
		}
	}
	ldb, _ := filepath.Glob(filepath.Join(data, "goka", "*", "*", "CURRENT"))
	if len(ldb) == 0 {
		t.Error("no LevelDB store under goka/")
	}
}

// A fresh data directory, after a notification went through (broker log,
// LevelDB state, generated keys, ClickHouse data): no file or directory in
// it has any group or other permission bit.
func TestDataDirIsPrivateToItsOwner(t *testing.T) {
	e := newPermEnv(t)
	p := startNotifyd(t, e.bin, e.cfgPath)
	waitReady(t, e.base)
	e.deliver(t, "perm-user", 1)
	stopNotifyd(t, p)

	mustHold(t, e.data)
	open, total := openEntries(t, e.data)
	if len(open) > 0 {
		t.Fatalf("%d of %d data directory entries are open to group or others:\n%s", len(open), total,
			strings.Join(open[:min(len(open), 40)], "\n"))
	}
	t.Logf("%d entries, all private", total)
}

// A data directory an older notifyd left 0755/0644 is tightened at start:
// every entry it held is fixed before anything opens it (the log says how
// many), and the broker, the goka state and ClickHouse go on working on it.
func TestOlderDataDirIsTightenedAtStart(t *testing.T) {
	e := newPermEnv(t)
	p := startNotifyd(t, e.bin, e.cfgPath)
	waitReady(t, e.base)
	e.deliver(t, "before-upgrade", 1)
	stopNotifyd(t, p)

	// What an older notifyd (no umask, 0755 directories, 0644 files) left.
	loosened := 0
	err := filepath.WalkDir(e.data, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink != 0 {
			return err
		}
		mode := fs.FileMode(0o644)
		if d.IsDir() {
			mode = 0o755
		}
		loosened++
		return os.Chmod(path, mode)
	})
	if err != nil {
		t.Fatal(err)
	}
	if open, _ := openEntries(t, e.data); len(open) != loosened {
		t.Fatalf("%d entries open, %d loosened", len(open), loosened)
	}

	p = startNotifyd(t, e.bin, e.cfgPath)
	waitReady(t, e.base)
	e.deliver(t, "after-upgrade", 2) // the first one's ClickHouse rows were read back too
	logs := stopNotifyd(t, p)

	m := regexp.MustCompile(`removed their permissions.* fixed=(\d+)`).FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("no log line about the tightened data directory:\n%s", logs)
	}
	if fixed, _ := strconv.Atoi(m[1]); fixed != loosened {
		t.Fatalf("the log says %d entries fixed, %d were loosened", fixed, loosened)
	}
	mustHold(t, e.data)
	if open, total := openEntries(t, e.data); len(open) > 0 {
		t.Fatalf("%d of %d entries still open to group or others:\n%s", len(open), total,
			strings.Join(open[:min(len(open), 40)], "\n"))
	}
}
