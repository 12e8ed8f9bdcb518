package main

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/notifyd/notifyd/sinks/webhooktest"
)

// An endpoint answers 410 Gone: the webhook sink fails the notifications and
// dead-letters the routed records. Once the endpoint is fixed, `notifyd dlq
// replay` re-injects them into their notify.out.webhook.* queue: each is
// delivered once and reads sent; a second replay re-injects nothing.
func TestDLQReplayRedeliversOnceAfterTheFix(t *testing.T) {
	bin := build(t)
	rc := webhooktest.Start("replay-secret")
	defer rc.Close()
	var fixed atomic.Bool
	var mu sync.Mutex
	refused := map[string]int{} // requests answered 410, per notification id
	rc.Hook = func(r *http.Request, _ []byte) int {
		if fixed.Load() {
			return 0
		}
		mu.Lock()
		refused[r.Header.Get("X-Notifyd-Notification-Id")]++
		mu.Unlock()
		return http.StatusGone
	}
	dir := t.TempDir()
	httpPort, kafkaPort := freePort(t), freePort(t)
	cfgPath := writeRunConfig(t, dir, httpPort, kafkaPort, fmt.Sprintf(`
  webhook:
    - name: hook
      type: webhook
      webhook: {allowPrivateTargets: true, endpoints: {default: {url: %q, secret: replay-secret}}}
`, rc.URL))
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	brokers := fmt.Sprintf("127.0.0.1:%d", kafkaPort)
	start := time.Now()
	phase := func(name string) { t.Logf("%6.1fs %s", time.Since(start).Seconds(), name) }

	p := watchExit(t, startNotifyd(t, bin, cfgPath))
	waitReady(t, base)
	phase("ready")
	api(t, base, "PUT", "/v1/templates/replay-hook", map[string]any{"category": "transactional",
		"channels": map[string]any{"webhook": map[string]any{"body": `{"n": "{{.n}}"}`}}}, http.StatusOK)
	var ids []string
	for i := 1; i <= 3; i++ {
		out := api(t, base, "POST", "/v1/notifications", map[string]any{"template": "replay-hook",
			"data":       map[string]any{"n": fmt.Sprint(i)},
			"recipients": []any{map[string]any{"userId": fmt.Sprintf("replay-user-%d", i)}}}, http.StatusAccepted)
		ids = append(ids, out["notifications"].([]any)[0].(map[string]any)["id"].(string))
	}
	sort.Strings(ids)
	for _, id := range ids {
		waitStatus(t, base, id, "failed", 2*time.Minute)
	}
	if d := rc.Deliveries(); len(d) != 0 {
		t.Fatalf("deliveries while the endpoint answered 410: %+v", d)
	}
	mu.Lock()
	for _, id := range ids {
		if refused[id] == 0 {
			t.Errorf("%s failed without the endpoint seeing it", id)
		}
	}
	t.Logf("410 answers per notification: %v", refused)
	mu.Unlock()
	phase("all 3 failed")

	// Each failure left one replayable dead letter of the webhook sink, whose
	// source is the routed record on its notify.out.webhook.<priority> queue.
	letters := dlqRows(t, bin, brokers)
	var lettered []string
	for _, l := range letters {
		src, _ := l["source"].(map[string]any)
		if l["stage"] != "sink.webhook" || l["state"] != "replayable" ||
			!strings.HasPrefix(fmt.Sprint(src["topic"]), "notify.out.webhook.") {
			t.Errorf("dead letter %v: want a replayable sink.webhook letter from notify.out.webhook.*", l)
		}
		lettered = append(lettered, fmt.Sprint(l["notificationId"]))
	}
	sort.Strings(lettered)
	if fmt.Sprint(lettered) != fmt.Sprint(ids) {
		t.Fatalf("dead letters name %v, want one for each of %v", lettered, ids)
	}

	// The cause is fixed; the replay re-injects the three, once each.
	fixed.Store(true)
	out := dlqCommand(t, bin, "replay", "--brokers", brokers, "--stage", "sink.*")
	t.Logf("dlq replay:\n%s", out)
	wantAll(t, "first dlq replay", out, "replayed 3, skipped 0 (already replayed), refused 0\n")
	phase("replayed")
	deadline := time.Now().Add(time.Minute)
	for len(rc.Deliveries()) < len(ids) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for _, id := range ids {
		lc := waitStatus(t, base, id, "sent", time.Minute)
		if !strings.Contains(fmt.Sprint(lc["history"]), "failed") {
			t.Logf("%s: the history no longer shows the failure: %v", id, lc["history"])
		}
	}
	phase("all 3 sent")
	time.Sleep(2 * time.Second) // room for a wrong second delivery
	wantDeliveredOnce(t, rc, ids)

	// A second replay finds them replayed and re-injects nothing.
	out = dlqCommand(t, bin, "replay", "--brokers", brokers, "--stage", "sink.*")
	t.Logf("second dlq replay:\n%s", out)
	wantAll(t, "second dlq replay", out, "replayed 0, skipped 3 (already replayed), refused 0\n")
	time.Sleep(2 * time.Second)
	wantDeliveredOnce(t, rc, ids)
	for _, id := range ids {
		if lc := statusOf(t, base, id); lc == nil || lc["status"] != "sent" {
			t.Errorf("%s after the second replay: %v", id, lc)
		}
	}

	// The list says so too.
	out = dlqCommand(t, bin, "list", "--brokers", brokers)
	t.Logf("dlq list:\n%s", out)
	for _, id := range ids {
		found := false
		for _, l := range strings.Split(out, "\n") {
			found = found || strings.Contains(l, id) && strings.Contains(l, " replayed ")
		}
		if !found {
			t.Errorf("dlq list shows no replayed dead letter of %s", id)
		}
	}
	wantAll(t, "dlq list", out, "3 dead letters: 0 replayable, 3 replayed, 0 cannot be replayed")
	p.requireRunning(t, "at the end")
	p.stop(t)
	phase("stopped")
}

// wantDeliveredOnce: the receiver got exactly one delivery of each id, and no other.
func wantDeliveredOnce(t *testing.T, rc *webhooktest.Receiver, ids []string) {
	t.Helper()
	var got []string
	for _, d := range rc.Deliveries() {
		got = append(got, d.ID)
	}
	sort.Strings(got)
	if fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("deliveries of %v, want exactly one of each of %v", got, ids)
	}
}
