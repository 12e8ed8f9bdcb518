package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	notifydapi "github.com/notifyd/notifyd/api"
	"github.com/notifyd/notifyd/processors"
)

// The in-app inbox as operators run it, under kill -9: a standalone broker,
// two `process` (the inbox group among their groups), two
// `sink --channel=inapp` and one `api` instance as separate OS processes,
// killed every few seconds and at crash points — between the dedup entry and
// its notifications, between a sink's finished records and their commit, and
// between the inbox feed's write and its announcement. At the end every
// user's inbox holds its message exactly once, unread, and every status reads
// sent.
func TestChaosInboxSeparateProcesses(t *testing.T) {
	const total, batch = 3000, 100
	const secret = "chaos-inbox-secret-0123456789"
	c := startCluster(t, `channels:
  inapp:
    - name: inbox
      type: inbox
inbox: {secret: `+secret+`}
`,
		roleSpec{"process-1", "dedup.after-entry=0.002,inbox.after-feed=0.002", []string{"process"}},
		roleSpec{"process-2", "dedup.after-entry=0.002,inbox.after-feed=0.002", []string{"process"}},
		roleSpec{"sink-1", "sink.after-finish=0.002", []string{"sink", "--channel=inapp"}},
		roleSpec{"sink-2", "sink.after-finish=0.002", []string{"sink", "--channel=inapp"}},
		roleSpec{"api", "", []string{"api"}})
	chaosCall(t, c.base, "PUT", "/v1/templates/chaos", map[string]any{"channels": map[string]any{
		"inapp": map[string]any{"title": "Order {{.n}}", "body": "Order {{.n}} shipped"}}}, http.StatusOK, time.Minute)

	k := c.startKiller(8)
	c.sendChaos(total, batch, func(n int) map[string]any { return map[string]any{"userId": fmt.Sprintf("u%d", n)} })
	k.wait(t, total)
	c.checkAllSent(total)
	faultKills := c.faultKills()
	t.Logf("%d random kills, crash points hit: %v", k.kills.Load(), faultKills)
	if faultKills["sink.after-finish"] == 0 || faultKills["inbox.after-feed"]+faultKills["dedup.after-entry"] == 0 {
		t.Fatalf("crash points not hit: %v", faultKills)
	}

	// Every inbox holds exactly its message, once, unread — read as the
	// user's browser would, with the user's token, once the inbox group has
	// applied every command.
	waitGroupCaughtUp(t, c.brokerPort, "notify.inbox", "notify.inbox.commands", 4*time.Minute)
	client := &http.Client{Timeout: 10 * time.Second}
	checkEach(t, total, 2*time.Minute, "inboxes are not exactly their message", func(ctx context.Context, n int) (bool, string) {
		user := fmt.Sprintf("u%d", n)
		want := processors.NotificationID(fmt.Sprintf("chaos-%d", n), user)
		req, _ := http.NewRequestWithContext(ctx, "GET", c.base+"/v1/inbox/"+user+"/messages", nil)
		req.Header.Set("Authorization", "Bearer "+notifydapi.InboxToken([]byte(secret), user))
		resp, err := client.Do(req)
		if err != nil {
			return false, user + ": " + err.Error()
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var feed struct {
			Messages []struct{ ID, Title string }
			Unread   int
		}
		ok := resp.StatusCode == http.StatusOK && json.Unmarshal(raw, &feed) == nil && len(feed.Messages) == 1 &&
			feed.Messages[0].ID == want && feed.Messages[0].Title == fmt.Sprintf("Order %d", n) && feed.Unread == 1
		return ok, fmt.Sprintf("%s: %d %s", user, resp.StatusCode, raw)
	})
}
