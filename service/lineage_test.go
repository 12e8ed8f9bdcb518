package service_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/processors"
)

// managedKey is a key minted through POST /v1/keys.
type managedKey struct{ id, key string }

func (h *harness) mintKey(by, name string, scopes ...string) managedKey {
	h.t.Helper()
	out := h.mustCall(http.StatusCreated, "POST", "/v1/keys", map[string]any{"name": name, "scopes": scopes}, as(by)...)
	return managedKey{id: out["id"].(string), key: out["key"].(string)}
}

func (h *harness) rotateKey(by, id string) managedKey {
	h.t.Helper()
	out := h.mustCall(http.StatusCreated, "POST", "/v1/keys/"+id+"/rotate", map[string]any{"overlap": "1h"}, as(by)...)
	return managedKey{id: out["id"].(string), key: out["key"].(string)}
}

// The security review's attack on the two-person rule, end to end: an admin
// key creates a campaign and mints itself an approver — named like itself
// with a trailing space (refused: names are unique), or anything else.
// Neither it nor any key of its lineage (keys minted from it and from
// those, the key it was minted from, the configured root, rotations of
// the creator and of its ancestor) can approve or reject it: 403, and the
// campaign stays pending, sending nothing. A sibling key minted by the
// creator's ancestor approves it, and every user gets the campaign once.
func TestTwoPersonRuleHoldsAgainstTheCreatorsLineage(t *testing.T) {
	h := newHarness(t)
	h.cfg.Campaigns.Step = 200 * time.Millisecond
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/promo", map[string]any{"category": "marketing", "channels": map[string]any{
		"email": map[string]any{"subject": "Sale", "text": "20% off"}}})
	users := []string{"l1", "l2", "l3"}
	for _, u := range users {
		h.mustCall(http.StatusOK, "PUT", "/v1/profiles/"+u, map[string]any{"email": u + "@example.com"})
	}
	boss := h.mintKey(testKey, "boss", "admin")
	creator := h.mintKey(boss.key, "creator", "admin")
	c := h.mustCall(http.StatusAccepted, "POST", "/v1/campaigns", map[string]any{"id": "own", "template": "promo",
		"audience": map[string]any{"users": users}}, as(creator.key)...)
	if c["state"] != processors.CampaignPending || c["createdBy"] != "creator" {
		t.Fatalf("created %v", c)
	}

	code, out := h.call("POST", "/v1/keys", map[string]any{"name": "creator ", "scopes": []string{"approve"}}, as(creator.key)...)
	if e, _ := out["error"].(map[string]any); code != http.StatusConflict || e["field"] != "name" {
		t.Fatalf(`minting "creator ": %d %v`, code, out)
	}
	anything := h.mintKey(creator.key, "anything", "approve")
	deputy := h.mintKey(creator.key, "deputy", "admin")
	clerk := h.mintKey(deputy.key, "clerk", "approve")
	creator2 := h.rotateKey(boss.key, creator.id)
	boss2 := h.rotateKey(testKey, boss.id)
	refused := []struct{ who, key string }{
		{"the creator", creator.key},
		{"anything (minted by the creator)", anything.key},
		{"clerk (minted by a key the creator minted)", clerk.key},
		{"the creator's rotation", creator2.key},
		{"boss (the creator's ancestor)", boss.key},
		{"boss's rotation", boss2.key},
		{"the configured root", testKey},
	}
	for _, r := range refused {
		for _, op := range []string{"approve", "reject"} {
			code, out := h.call("POST", "/v1/campaigns/own/"+op, map[string]any{"comment": "fine by me"}, as(r.key)...)
			if e, _ := out["error"].(map[string]any); code != http.StatusForbidden || e["code"] != "forbidden" {
				t.Fatalf("%s: %s: %d %v", r.who, op, code, out)
			}
		}
	}
	c = h.mustCall(http.StatusOK, "GET", "/v1/campaigns/own", nil)
	if c["state"] != processors.CampaignPending || len(c["decisions"].([]any)) != 0 {
		t.Fatalf("after the refused decisions: %v", c)
	}

	// A sibling: minted by (a rotation of) the creator's ancestor, not from
	// the creator, nor the creator from it.
	lead := h.mintKey(boss2.key, "lead", "approve")
	c = h.mustCall(http.StatusOK, "POST", "/v1/campaigns/own/approve", map[string]any{"comment": "copy checked"}, as(lead.key)...)
	if d := c["decisions"].([]any); len(d) != 1 || d[0].(map[string]any)["by"] != lead.id || d[0].(map[string]any)["byName"] != "lead" {
		t.Fatalf("decisions %v", c["decisions"])
	}
	c = h.waitCampaign("own", settled)
	if p := progressOf(c); p["sent"] != len(users) || p["targeted"] != len(users) {
		t.Fatalf("progress %v", p)
	}
	got := map[string]int{}
	for _, m := range h.smtp.Messages() {
		got[strings.TrimSuffix(m.To[0], "@example.com")]++
	}
	if fmt.Sprint(got) != "map[l1:1 l2:1 l3:1]" {
		t.Fatalf("messages %v", got)
	}
	// The audit trail: every refusal, and the approval.
	approve := h.auditActions()["POST /v1/campaigns/{id}/approve"]
	for _, name := range []string{"creator", "anything", "clerk", "boss", "test"} {
		if !strings.Contains(fmt.Sprint(approve[name]), "403") {
			t.Errorf("audit of %s's approvals: %v", name, approve[name])
		}
	}
	if fmt.Sprint(approve["lead"]) != "[200]" {
		t.Errorf("audit of lead's approval: %v", approve["lead"])
	}
}
