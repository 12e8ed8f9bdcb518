package service_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// A campaign to a topic reaches its subscribers as the topic stands when
// the campaign starts: a user who unsubscribed gets nothing, a user who is
// not subscribed gets nothing, each subscriber gets one message; a user
// listed twice in a large request held for approval gets one message too.
func TestCampaignToATopicReachesItsSubscribersOnce(t *testing.T) {
	h := newHarness(t)
	campaignKeys(&h.cfg)
	h.cfg.Campaigns.Step = 200 * time.Millisecond
	h.cfg.Campaigns.ApprovalAbove = 3
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/release", map[string]any{"category": "product", "channels": map[string]any{
		"email": map[string]any{"subject": "Release {{.version}}", "text": "notes"}}})
	var all []string
	for i := 0; i < 8; i++ {
		u := fmt.Sprintf("t%d", i)
		all = append(all, u)
		h.mustCall(http.StatusOK, "PUT", "/v1/profiles/"+u, map[string]any{"email": u + "@example.com"})
	}
	h.mustCall(http.StatusOK, "POST", "/v1/topics/releases/subscribers", map[string]any{"userIds": all[:6]})
	h.mustCall(http.StatusOK, "POST", "/v1/topics/releases/subscribers", map[string]any{"userIds": []string{"t1", "t2"}}) // again: once
	h.mustCall(http.StatusNoContent, "DELETE", "/v1/topics/releases/subscribers/t3", nil)
	if got := h.mustCall(http.StatusOK, "GET", "/v1/topics/releases/subscribers", nil); fmt.Sprint(got["users"]) != "[t0 t1 t2 t4 t5]" {
		t.Fatalf("subscribers: %v", got)
	}
	h.mustCall(http.StatusAccepted, "POST", "/v1/campaigns", map[string]any{"id": "v2", "template": "release",
		"data": map[string]any{"version": "2.0"}, "audience": map[string]any{"topic": "releases"}}, as(creatorKey)...)
	h.mustCall(http.StatusOK, "POST", "/v1/campaigns/v2/approve", nil, as(approverKey)...)
	c := h.waitCampaign("v2", settled)
	if p := progressOf(c); p["targeted"] != 5 || p["sent"] != 5 {
		t.Fatalf("progress %v", p)
	}
	got := map[string]int{}
	for _, m := range h.smtp.WaitFor(5, 30*time.Second) {
		for _, to := range m.To {
			got[to]++
		}
	}
	for _, u := range []string{"t0", "t1", "t2", "t4", "t5"} {
		if got[u+"@example.com"] != 1 {
			t.Fatalf("%s got %d messages: %v", u, got[u+"@example.com"], got)
		}
	}
	if len(got) != 5 {
		t.Fatalf("messages to %v, want the five subscribers", got)
	}

	// Above campaigns.approvalAbove (3), a send is held; a user listed twice is one recipient.
	out := h.mustCall(http.StatusAccepted, "POST", "/v1/notifications", map[string]any{"eventId": "big-1", "template": "release",
		"data": map[string]any{"version": "2.1"}, "recipients": []any{map[string]any{"userId": "t6"}, map[string]any{"userId": "t7"},
			map[string]any{"userId": "t6"}, map[string]any{"userId": "t0"}}}, as(creatorKey)...)
	if out["state"] != "pending_approval" || fmt.Sprint(out["audience"].(map[string]any)["users"]) != "[t6 t7 t0]" || out["priority"] != "normal" {
		t.Fatalf("held request: %v", out)
	}
	again := h.mustCall(http.StatusAccepted, "POST", "/v1/notifications", map[string]any{"eventId": "big-1", "template": "release",
		"data": map[string]any{"version": "2.1"}, "recipients": []any{map[string]any{"userId": "t6"}, map[string]any{"userId": "t7"},
			map[string]any{"userId": "t6"}, map[string]any{"userId": "t0"}}}, as(creatorKey)...)
	if again["id"] != out["id"] || again["createdAt"] != out["createdAt"] {
		t.Fatalf("retried held request: %v, first %v", again, out)
	}
	id := out["id"].(string)
	h.mustCall(http.StatusOK, "POST", "/v1/campaigns/"+id+"/approve", map[string]any{"comment": "ok"}, as(approverKey)...)
	if p := progressOf(h.waitCampaign(id, settled)); p["targeted"] != 3 || p["sent"] != 3 {
		t.Fatalf("held request progress %v", p)
	}
	if n := len(h.smtp.WaitFor(8, 30*time.Second)); n != 8 {
		t.Fatalf("%d messages, want 8", n)
	}
}
