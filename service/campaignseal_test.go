package service_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A campaign's data, and a large request held for approval as a campaign,
// are sealed wherever they are stored: on notify.campaigns, in the campaign
// table and in the notifications the campaign group writes to
// notify.accepted. The API shows the data to its tenant, and the mails
// carry it.
func TestCampaignDataIsSealed(t *testing.T) {
	const campaignSecret, heldSecret = "campaign-secret-value-72", "held-secret-value-91"
	h := newHarness(t)
	campaignKeys(&h.cfg)
	h.cfg.Campaigns.ApprovalAbove = 2
	h.cfg.Campaigns.Step = 200 * time.Millisecond
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/note", map[string]any{"category": "account", "channels": map[string]any{
		"email": map[string]any{"subject": "Note", "text": "code {{.secret}}"}}})
	users := []any{}
	for _, u := range []string{"s1", "s2", "s3"} {
		h.mustCall(http.StatusOK, "PUT", "/v1/profiles/"+u, map[string]any{"email": u + "@example.com", "attributes": map[string]any{"plan": "pro"}})
		users = append(users, map[string]any{"userId": u})
	}
	h.mustCall(http.StatusAccepted, "POST", "/v1/campaigns", map[string]any{"id": "sealed", "template": "note",
		"data": map[string]any{"secret": campaignSecret}, "audience": map[string]any{"segment": `attributes.plan = "pro"`}}, as(creatorKey)...)
	held := h.mustCall(http.StatusAccepted, "POST", "/v1/notifications", map[string]any{"template": "note", "eventId": "held-1",
		"data": map[string]any{"secret": heldSecret}, "recipients": users}, as(creatorKey)...)
	heldID := held["id"].(string)
	for _, id := range []string{"sealed", heldID} {
		c := h.mustCall(http.StatusOK, "GET", "/v1/campaigns/"+id, nil)
		if data, _ := json.Marshal(c["data"]); !strings.Contains(string(data), "secret-value") {
			t.Fatalf("the API does not show %s's data to its tenant: %v", id, c)
		}
		h.mustCall(http.StatusOK, "POST", "/v1/campaigns/"+id+"/approve", nil, as(approverKey)...)
	}
	msgs := h.smtp.WaitFor(6, 30*time.Second)
	if len(msgs) != 6 {
		t.Fatalf("%d mails", len(msgs))
	}
	for _, secret := range []string{campaignSecret, heldSecret} {
		n := 0
		for _, m := range msgs {
			if bytes.Contains(m.Data, []byte(secret)) {
				n++
			}
		}
		if n != 3 {
			t.Fatalf("%d mails carry %s", n, secret)
		}
	}
	recs := topicRecords(t, h, `notify\.(campaigns|accepted|campaign-table)`)
	seen := map[string]int{}
	for _, r := range recs {
		seen[r.Topic]++
		for _, secret := range []string{campaignSecret, heldSecret} {
			if bytes.Contains(r.Value, []byte(secret)) {
				t.Errorf("%s offset %d holds %q in clear", r.Topic, r.Offset, secret)
			}
		}
	}
	for _, topic := range []string{"notify.campaigns", "notify.accepted", "notify.campaign-table"} {
		if seen[topic] == 0 {
			t.Errorf("no record read from %s (seen %v): the scan proves nothing there", topic, seen)
		}
	}
}
