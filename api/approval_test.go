package api

import (
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// rotateKey rotates key id with the key by and returns the successor.
func (e *keysEnv) rotateKey(by, id string) keyJSON {
	e.t.Helper()
	rec := e.do(by, "POST", "/v1/keys/"+id+"/rotate", `{"overlap": "1h"}`)
	expect(e.t, rec, http.StatusCreated, "")
	var k keyJSON
	if err := json.Unmarshal(rec.Body.Bytes(), &k); err != nil || k.Key == "" || k.Replaces != id {
		e.t.Fatalf("rotate answer %s: %v", rec.Body, err)
	}
	return k
}

// campaignCommands reads every command on notify.campaigns.
func (e *campaignEnv) campaignCommands(t *testing.T) []*schemas.CampaignCommand {
	t.Helper()
	n := e.ends()[string(topology.Campaigns)]
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(string(topology.Campaigns)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []*schemas.CampaignCommand
	for int64(len(out)) < n && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			cmd, err := schemas.CampaignCommandCodec.Decode(r.Value)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, cmd)
		})
	}
	if int64(len(out)) != n {
		t.Fatalf("read %d of %d campaign commands", len(out), n)
	}
	return out
}

// The attack of the security review, through the API: a key creates a
// campaign and mints itself an approver, named like itself or anything
// else. Nothing of the creator's lineage may approve or reject: keys minted
// from it (and from those), the keys it was minted from, and rotations of
// all of them, configured root included. Each refusal is 403 and writes
// nothing; the campaign stays pending. A sibling minted by the same
// ancestor passes the check and its approval is written.
func TestApprovalRefusedToTheCreatorsLineage(t *testing.T) {
	t.Parallel()
	e := newCampaignEnv(t)
	boss := e.create(rootKey, map[string]any{"name": "boss", "scopes": []string{ScopeAdmin}})
	creator := e.create(boss.Key, map[string]any{"name": "creator", "scopes": []string{ScopeAdmin}})
	now := e.clock()
	e.seedCampaign(schemas.Campaign{ID: "own", Template: "welcome", AudienceKind: processors.AudienceTopic, AudienceID: "news",
		State: processors.CampaignPending, CreatedBy: creator.ID, CreatedByName: creator.Name, CreatedAt: now.UnixMilli(),
		Rate: processors.DefaultCampaignRate, ApprovalDeadline: now.Add(time.Hour).UnixMilli()})

	// The reported bypass: a copy of the creator's name with a trailing space.
	expectField(t, e.do(creator.Key, "POST", "/v1/keys", map[string]any{"name": "creator ", "scopes": []string{ScopeApprove}}),
		http.StatusConflict, "conflict", "name")
	anything := e.create(creator.Key, map[string]any{"name": "anything", "scopes": []string{ScopeApprove}})
	deputy := e.create(creator.Key, map[string]any{"name": "deputy", "scopes": []string{ScopeAdmin}})
	clerk := e.create(deputy.Key, map[string]any{"name": "clerk", "scopes": []string{ScopeApprove}})
	creator2 := e.rotateKey(boss.Key, creator.ID) // minted by boss: a rotation, not a sibling
	boss2 := e.rotateKey(rootKey, boss.ID)
	// A revoked key still links the keys it minted to its own lineage.
	expect(t, e.do(rootKey, "DELETE", "/v1/keys/"+deputy.ID, nil), http.StatusNoContent, "")

	refused := []struct{ who, key string }{
		{"the creator", creator.Key},
		{"an approver the creator minted", anything.Key},
		{"a key minted by a key the creator minted (that one revoked since)", clerk.Key},
		{"the creator's rotation", creator2.Key},
		{"the creator's ancestor", boss.Key},
		{"the rotation of the creator's ancestor", boss2.Key},
		{"the configured root", rootKey},
	}
	for _, r := range refused {
		for _, op := range []string{"approve", "reject"} {
			before := e.ends()
			rec := e.serve(r.key, "POST", "/v1/campaigns/own/"+op, "", `{"comment": "looks fine to me"}`)
			expect(t, rec, http.StatusForbidden, "forbidden")
			if r.key != creator.Key && !strings.Contains(rec.Body.String(), "one lineage") {
				t.Errorf("%s: %s: the 403 does not say why: %s", r.who, op, rec.Body)
			}
			if after := e.ends(); !maps.Equal(before, after) {
				t.Errorf("%s: %s: a refused decision wrote: %v, then %v", r.who, op, before, after)
			}
		}
	}
	var c campaignJSON
	rec := e.do(rootKey, "GET", "/v1/campaigns/own", nil)
	if err := json.Unmarshal(rec.Body.Bytes(), &c); err != nil || c.State != processors.CampaignPending || len(c.Decisions) != 0 {
		t.Fatalf("campaign after refused decisions: %s", rec.Body)
	}

	// A creator this instance has not read yet (its view lags): refused
	// until it is known, not let through.
	e.seedCampaign(schemas.Campaign{ID: "unknown", Template: "welcome", AudienceKind: processors.AudienceTopic, AudienceID: "news",
		State: processors.CampaignPending, CreatedBy: "0123456789abcdef", CreatedAt: now.UnixMilli(),
		Rate: processors.DefaultCampaignRate, ApprovalDeadline: now.Add(time.Hour).UnixMilli()})
	before := e.ends()
	expect(t, e.serve(rootKey, "POST", "/v1/campaigns/unknown/approve", "", ``), http.StatusServiceUnavailable, "unavailable")
	if after := e.ends(); !maps.Equal(before, after) {
		t.Errorf("an unchecked approval wrote: %v, then %v", before, after)
	}

	// A sibling: minted by the creator's ancestor (its rotation, even), not
	// from the creator nor the creator from it. No campaign group runs here,
	// so its approval is written and the answer says it is not yet readable.
	lead := e.create(boss2.Key, map[string]any{"name": "lead", "scopes": []string{ScopeApprove}})
	e.srv.WriteWait = 100 * time.Millisecond // nothing will apply the command: do not wait for it
	expect(t, e.serve(lead.Key, "POST", "/v1/campaigns/own/approve", "", `{"comment": "copy checked"}`), http.StatusServiceUnavailable, "unavailable")
	cmds := e.campaignCommands(t)
	if len(cmds) != 1 || cmds[0].Op != processors.OpApprove || cmds[0].By != lead.ID || cmds[0].CampaignID != "own" {
		t.Fatalf("commands on notify.campaigns: %+v", cmds)
	}
}

// expectField is expect that also checks the field the error names.
func expectField(t *testing.T, rec *httptest.ResponseRecorder, status int, code, field string) {
	t.Helper()
	var out struct{ Error *Error }
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || rec.Code != status || out.Error == nil ||
		out.Error.Code != code || out.Error.Field != field {
		t.Fatalf("status %d, want %d %s field %q: %s", rec.Code, status, code, field, rec.Body)
	}
}

// Key names are trimmed and unique in their tenant among keys that are not
// revoked, configured keys included, compared ignoring case and spaces; a
// rotation's successor keeps its predecessor's name; a revoked key's name
// is free again, an expired one's not until it is revoked. Requests racing
// for one name on one instance: one wins.
func TestKeyNamesAreUniqueInATenant(t *testing.T) {
	t.Parallel()
	e := newKeysEnv(t, config.APIKey{Name: "Ops Team", Key: "ops-team-key", Scopes: []string{ScopeAdmin}})
	send := []string{ScopeSend}
	k := e.create(rootKey, map[string]any{"name": "  creator\t", "scopes": send})
	if k.Name != "creator" {
		t.Fatalf("name stored as %q", k.Name)
	}
	for _, name := range []string{"creator", "creator ", " Creator", "CREATOR", "root", "ops  team", "OPS TEAM "} {
		expectField(t, e.do(rootKey, "POST", "/v1/keys", map[string]any{"name": name, "scopes": send}), http.StatusConflict, "conflict", "name")
	}
	for _, name := range []string{"", "   ", "\t"} {
		expectField(t, e.do(rootKey, "POST", "/v1/keys", map[string]any{"name": name, "scopes": send}), http.StatusBadRequest, "invalid_argument", "name")
	}
	// Another tenant's names are its own.
	if acme := e.create(rootKey, map[string]any{"name": "creator", "scopes": send, "tenant": "acme"}); acme.Tenant != "acme" {
		t.Fatalf("acme key %+v", acme)
	}
	// A rotation keeps the name: two keys named creator during the overlap.
	next := e.rotateKey(rootKey, k.ID)
	if next.Name != "creator" {
		t.Fatalf("successor named %q", next.Name)
	}
	expectField(t, e.do(rootKey, "POST", "/v1/keys", map[string]any{"name": "creator", "scopes": send}), http.StatusConflict, "conflict", "name")

	// Revoked: the name is free. Expired: taken until revoked.
	old := e.create(rootKey, map[string]any{"name": "billing", "scopes": send})
	expect(t, e.do(rootKey, "DELETE", "/v1/keys/"+old.ID, nil), http.StatusNoContent, "")
	if again := e.create(rootKey, map[string]any{"name": "billing", "scopes": send}); again.ID == old.ID {
		t.Fatal("the same key")
	}
	temp := e.create(rootKey, map[string]any{"name": "temp", "scopes": send, "expiresAt": e.clock().Add(time.Minute).Format(time.RFC3339)})
	e.advance(2 * time.Minute)
	expectField(t, e.do(rootKey, "POST", "/v1/keys", map[string]any{"name": "temp", "scopes": send}), http.StatusConflict, "conflict", "name")
	expect(t, e.do(rootKey, "DELETE", "/v1/keys/"+temp.ID, nil), http.StatusNoContent, "")
	e.create(rootKey, map[string]any{"name": "temp", "scopes": send})

	// Eight requests for one name at once.
	var wg sync.WaitGroup
	codes := make(chan int, 8)
	for range 8 {
		wg.Go(func() {
			codes <- e.do(rootKey, "POST", "/v1/keys", map[string]any{"name": "racer", "scopes": send}).Code
		})
	}
	wg.Wait()
	close(codes)
	got := map[int]int{}
	for c := range codes {
		got[c]++
	}
	if got[http.StatusCreated] != 1 || got[http.StatusConflict] != 7 {
		t.Fatalf("racing creates answered %v, want one 201 and seven 409", got)
	}
}

// Configured keys are distinct principals, config:<name>: two with one name
// (ignoring case and spaces) or one secret do not load, and the error never
// quotes a secret.
func TestConfiguredKeysWithOneNameOrSecretDoNotLoad(t *testing.T) {
	for name, keys := range map[string][]config.APIKey{
		"same name":           {{Name: "ops", Key: "first-secret-1"}, {Name: "ops", Key: "second-secret-2"}},
		"trailing space":      {{Name: "ops", Key: "first-secret-1"}, {Name: "ops ", Key: "second-secret-2"}},
		"case":                {{Name: "ops", Key: "first-secret-1"}, {Name: "OPS", Key: "second-secret-2", Tenant: "acme"}},
		"same secret":         {{Name: "ops", Key: "first-secret-1"}, {Name: "dev", Key: "first-secret-1"}},
		"blank name":          {{Name: "  ", Key: "first-secret-1"}},
		"blank after unused":  {{Name: "unset", Key: ""}, {Name: "\t", Key: "first-secret-1"}},
		"three, last clashes": {{Name: "a", Key: "first-secret-1"}, {Name: "b", Key: "second-secret-2"}, {Name: " a", Key: "third-secret-3"}},
	} {
		_, err := LoadKeys(keys)
		if err == nil {
			t.Errorf("%s: loaded", name)
		} else if strings.Contains(err.Error(), "secret-") {
			t.Errorf("%s: the error quotes a secret: %v", name, err)
		}
	}
	if _, err := LoadKeys([]config.APIKey{{Name: "ops", Key: "first-secret-1"}, {Name: "ops-2", Key: "second-secret-2"}, {Name: "unset", Key: ""}}); err != nil {
		t.Fatalf("distinct keys: %v", err)
	}
}

// A key still in its rotation's overlap has a successor: rotating it again
// is 409 naming the successor, so a key has one live successor at most,
// also when rotations race on one instance.
func TestRotatingAKeyInItsOverlapIsRefused(t *testing.T) {
	t.Parallel()
	e := newKeysEnv(t)
	k := e.create(rootKey, map[string]any{"name": "billing", "scopes": []string{ScopeSend}})
	next := e.rotateKey(rootKey, k.ID)
	rec := e.do(rootKey, "POST", "/v1/keys/"+k.ID+"/rotate", `{"overlap": "1h"}`)
	expect(t, rec, http.StatusConflict, "conflict")
	if !strings.Contains(rec.Body.String(), "rotate key "+next.ID+" instead") {
		t.Fatalf("the 409 does not name the successor: %s", rec.Body)
	}
	expect(t, e.do(k.Key, "POST", "/v1/notifications", `{}`), http.StatusBadRequest, "") // the old key still works

	// Racing rotations of a fresh key: one successor.
	r := e.create(rootKey, map[string]any{"name": "racer", "scopes": []string{ScopeSend}})
	var wg sync.WaitGroup
	codes := make(chan int, 8)
	for range 8 {
		wg.Go(func() { codes <- e.do(rootKey, "POST", "/v1/keys/"+r.ID+"/rotate", `{"overlap": "1h"}`).Code })
	}
	wg.Wait()
	close(codes)
	got := map[int]int{}
	for c := range codes {
		got[c]++
	}
	if got[http.StatusCreated] != 1 || got[http.StatusConflict] != 7 {
		t.Fatalf("racing rotations answered %v, want one 201 and seven 409", got)
	}

	// The list: each rotated key has exactly one successor, and it is active.
	rec = e.do(rootKey, "GET", "/v1/keys", nil)
	var list struct{ Keys []keyJSON }
	if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil {
		t.Fatal(err)
	}
	successors := map[string][]keyJSON{}
	for _, x := range list.Keys {
		if x.Replaces != "" {
			successors[x.Replaces] = append(successors[x.Replaces], x)
		}
	}
	for _, id := range []string{k.ID, r.ID} {
		if s := successors[id]; len(s) != 1 || s[0].Status != "active" {
			t.Errorf("key %s has successors %+v", id, s)
		}
	}
	// The successor rotates; after the overlap the old key is expired (409 too).
	e.rotateKey(rootKey, next.ID)
	e.advance(2 * time.Hour)
	expect(t, e.do(rootKey, "POST", "/v1/keys/"+k.ID+"/rotate", nil), http.StatusConflict, "conflict")
}
