package service_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/topology"
)

// sseEvent is one Server-Sent Event as a browser's EventSource parses it.
type sseEvent struct {
	ID, Event string
	Data      map[string]any
}

// sseClient opens a stream the way a browser's EventSource does (token in the
// query, Last-Event-ID header on reconnect) and delivers its events.
type sseClient struct {
	events chan sseEvent
	cancel context.CancelFunc
	status int
}

func openStream(t testing.TB, base, user, token, lastID string) *sseClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/v1/inbox/"+user+"/stream?token="+token, nil)
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("stream: %v", err)
	}
	c := &sseClient{events: make(chan sseEvent, 1000), cancel: cancel, status: resp.StatusCode}
	t.Cleanup(cancel)
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return c
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("stream content type %q", ct)
	}
	go func() {
		defer resp.Body.Close()
		defer close(c.events)
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.Event != "" {
					c.events <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.ID = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.Event = line[7:]
			case strings.HasPrefix(line, "data: "):
				_ = json.Unmarshal([]byte(line[6:]), &ev.Data)
			}
		}
	}()
	return c
}

// next waits for the next event of the stream.
func (c *sseClient) next(t testing.TB) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-c.events:
		if !ok {
			t.Fatal("stream ended")
		}
		return ev
	case <-time.After(20 * time.Second):
		t.Fatalf("no stream event within 20s (stream status %d)", c.status)
	}
	return sseEvent{}
}

// quiet asserts no event arrives for d.
func (c *sseClient) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case ev := <-c.events:
		t.Fatalf("unexpected stream event %+v", ev)
	case <-time.After(d):
	}
}

func inboxTemplate() map[string]any {
	return map[string]any{"category": "social", "channels": map[string]any{"inapp": map[string]any{
		"title": "Hi {{.name}}", "body": "Order {{.orderId}} shipped", "actionUrl": "https://shop.example/orders/{{.orderId}}",
		"imageUrl": "https://shop.example/avatar.png"}}}
}

func withInbox(cfg *config.Config) {
	cfg.Channels["inapp"] = []config.Provider{{Name: "inbox", Type: "inbox"}}
	cfg.Inbox.Secret = "inbox-secret-for-tests-0001"
	cfg.Inbox.Heartbeat = time.Second
}

// userCall calls an end-user inbox endpoint with a user's token.
func (h *harness) userCall(method, path, token string, body any) (int, map[string]any) {
	h.t.Helper()
	return h.call(method, path, body, "Authorization", "Bearer "+token)
}

func (h *harness) token(user string) string {
	h.t.Helper()
	out := h.mustCall(http.StatusOK, "GET", "/v1/inbox/"+user+"/token", nil)
	return out["token"].(string)
}

func (h *harness) sendInbox(user string, i int) string {
	h.t.Helper()
	return h.send(map[string]any{"template": "inbox-welcome", "eventId": fmt.Sprintf("inbox-%s-%d", user, i),
		"data":       map[string]any{"name": "Ann", "orderId": i},
		"recipients": []any{map[string]any{"userId": user}}})[user]
}

// The in-app inbox end to end: a send lands in the user's feed and on the
// user's open stream at once, reads and bulk reads change the counts (and the
// stream says so), a reconnect with Last-Event-ID gets every message missed,
// and a user's token opens only that user's inbox.
func TestInboxFeedStreamAndCounts(t *testing.T) {
	h := newHarness(t)
	withInbox(&h.cfg)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/inbox-welcome", inboxTemplate())
	tokA, tokB := h.token("ann"), h.token("bob")
	if tokA == tokB || tokA == "" {
		t.Fatalf("tokens %q %q", tokA, tokB)
	}

	// A token opens its own user's inbox only, by header or query.
	for _, c := range []struct{ path, tok string }{{"/v1/inbox/bob/messages", tokA}, {"/v1/inbox/ann/messages", ""},
		{"/v1/inbox/ann/messages", tokA + "x"}, {"/v1/inbox/bob/count", tokA}} {
		if code, _ := h.userCall("GET", c.path, c.tok, nil); code != http.StatusUnauthorized {
			t.Fatalf("%s with token %q: %d, want 401", c.path, c.tok, code)
		}
	}
	if s := openStream(t, h.base, "bob", tokA, ""); s.status != http.StatusUnauthorized {
		t.Fatalf("ann's token opened bob's stream: %d", s.status)
	}
	if code, _ := h.call("GET", "/v1/inbox/ann/token", nil, "Authorization", "Bearer "+tokA); code != http.StatusUnauthorized {
		t.Fatalf("a user token got a token (API key required): %d", code)
	}

	st := openStream(t, h.base, "ann", tokA, "")
	first := st.next(t)
	if first.Event != "count" || first.Data["unread"] != float64(0) {
		t.Fatalf("first event %+v", first)
	}
	var ids []string
	for i := 1; i <= 3; i++ {
		ids = append(ids, h.sendInbox("ann", i))
		ev := st.next(t)
		msg, _ := ev.Data["message"].(map[string]any)
		if ev.Event != "message" || msg["id"] != ids[i-1] || msg["title"] != "Hi Ann" ||
			msg["body"] != fmt.Sprintf("Order %d shipped", i) || msg["actionUrl"] != fmt.Sprintf("https://shop.example/orders/%d", i) ||
			msg["avatar"] != "https://shop.example/avatar.png" || ev.Data["unread"] != float64(i) {
			t.Fatalf("message event %d: %+v", i, ev)
		}
	}
	for _, id := range ids {
		if lc := h.waitStatus(id, processors.StatusSent); lc["channels"].(map[string]any)["inapp"] != processors.StatusSent {
			t.Fatalf("status %v", lc)
		}
	}
	// Bob's stream heard nothing of Ann's messages.
	sb := openStream(t, h.base, "bob", tokB, "")
	if ev := sb.next(t); ev.Event != "count" || ev.Data["unread"] != float64(0) {
		t.Fatalf("bob's first event %+v", ev)
	}

	_, list := h.userCall("GET", "/v1/inbox/ann/messages", tokA, nil)
	ms := list["messages"].([]any)
	if len(ms) != 3 || ms[0].(map[string]any)["id"] != ids[2] || list["unread"] != float64(3) {
		t.Fatalf("feed (newest first) %v", list)
	}
	out := h.mustCall(http.StatusAccepted, "POST", "/v1/inbox/ann/messages/"+ids[0]+"/read", nil, "Authorization", "Bearer "+tokA)
	if out["unread"] != float64(2) {
		t.Fatalf("after one read: %v", out)
	}
	if ev := st.next(t); ev.Event != "update" || ev.Data["unread"] != float64(2) {
		t.Fatalf("update event %+v", ev)
	}
	if _, c := h.userCall("GET", "/v1/inbox/ann/count", tokA, nil); c["unread"] != float64(2) || c["unseen"] != float64(2) {
		t.Fatalf("count after one read %v", c)
	}
	_, unread := h.userCall("GET", "/v1/inbox/ann/messages?filter=unread", tokA, nil)
	if len(unread["messages"].([]any)) != 2 {
		t.Fatalf("unread filter %v", unread)
	}
	out = h.mustCall(http.StatusAccepted, "POST", "/v1/inbox/ann/read-all", nil, "Authorization", "Bearer "+tokA)
	if out["unread"] != float64(0) {
		t.Fatalf("after read-all: %v", out)
	}
	ev := st.next(t)
	if ev.Event != "count" || ev.Data["unread"] != float64(0) {
		t.Fatalf("count event after read-all %+v", ev)
	}
	lastID := ev.ID
	sb.quiet(t, 300*time.Millisecond)

	// Disconnected while two more arrive: the reconnect gets both, oldest
	// first, then the counts.
	st.cancel()
	missed := []string{h.sendInbox("ann", 4), h.sendInbox("ann", 5)}
	h.waitStatus(missed[1], processors.StatusSent)
	h.waitStatus(missed[0], processors.StatusSent)
	re := openStream(t, h.base, "ann", tokA, lastID)
	// Both, in the order the feed got them (two sends may reach it in
	// either order), each after the last id seen.
	replayed := map[any]bool{}
	prev, _ := strconv.Atoi(lastID)
	for i := range missed {
		ev := re.next(t)
		n, err := strconv.Atoi(ev.ID)
		if ev.Event != "message" || err != nil || n <= prev {
			t.Fatalf("replayed event %d: %+v (after id %d)", i, ev, prev)
		}
		prev = n
		replayed[ev.Data["message"].(map[string]any)["id"]] = true
	}
	if !replayed[missed[0]] || !replayed[missed[1]] {
		t.Fatalf("replayed %v, want %v", replayed, missed)
	}
	if ev := re.next(t); ev.Event != "count" || ev.Data["unread"] != float64(2) {
		t.Fatalf("count after reconnect %+v", ev)
	}
	re.quiet(t, 300*time.Millisecond)

	// Bad input gets a clear error.
	for _, c := range []struct {
		method, path string
		body         any
		want         int
	}{
		{"POST", "/v1/inbox/ann/messages/" + ids[0] + "/explode", nil, http.StatusNotFound},
		{"POST", "/v1/inbox/ann/bulk", map[string]any{"op": "read"}, http.StatusBadRequest},
		{"POST", "/v1/inbox/ann/bulk", `{"op":"read","ids":["a b"]}`, http.StatusBadRequest},
		{"POST", "/v1/inbox/ann/bulk", `not json`, http.StatusBadRequest},
		{"GET", "/v1/inbox/ann/messages?limit=0", nil, http.StatusBadRequest},
		{"GET", "/v1/inbox/ann/messages?filter=spam", nil, http.StatusBadRequest},
	} {
		if code, out := h.userCall(c.method, c.path, tokA, c.body); code != c.want || out["error"] == nil {
			t.Fatalf("%s %s: %d %v, want %d with an error", c.method, c.path, code, out, c.want)
		}
	}
	if s := openStream(t, h.base, "ann", tokA, "minus-one"); s.status != http.StatusBadRequest {
		t.Fatalf("bad Last-Event-ID: %d", s.status)
	}
	out = h.mustCall(http.StatusAccepted, "POST", "/v1/inbox/ann/bulk", map[string]any{"op": "archive", "ids": missed},
		"Authorization", "Bearer "+tokA)
	if out["unread"] != float64(0) {
		t.Fatalf("after archiving the unread ones: %v", out)
	}
}

// An inbox stream open on one API instance receives a message that another
// instance's sink delivered.
func TestInboxStreamsAcrossInstances(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	instance := func() *harness {
		h := &harness{t: t, cfg: testConfig(t, nil, nil)}
		withInbox(&h.cfg)
		h.cfg.Kafka.Brokers = cluster.ListenAddrs()
		h.start()
		return h
	}
	a, b := instance(), instance()
	a.waitSettled(2, string(topology.InboxGroup), topology.SinkGroup("inapp"))
	a.mustCall(http.StatusOK, "PUT", "/v1/templates/inbox-welcome", inboxTemplate())
	users := []string{"u-1", "u-2", "u-3", "u-4"} // spread over the partitions
	streams := map[string]*sseClient{}
	for _, u := range users {
		s := openStream(t, b.base, u, b.token(u), "")
		if ev := s.next(t); ev.Event != "count" {
			t.Fatalf("first event %+v", ev)
		}
		streams[u] = s
	}
	for i, u := range users {
		id := a.sendInbox(u, i)
		ev := streams[u].next(t)
		if ev.Event != "message" || ev.Data["message"].(map[string]any)["id"] != id {
			t.Fatalf("%s: event %+v", u, ev)
		}
		if _, c := a.userCall("GET", "/v1/inbox/"+u+"/count", a.token(u), nil); c["unread"] != float64(1) {
			t.Fatalf("%s: count through the other instance %v", u, c)
		}
	}
}
