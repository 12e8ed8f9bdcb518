package service_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

const (
	// editorKey sends and writes templates, without send:transactional: the
	// key of finding 2.
	editorKey = "key-editor-0123456789abcdef"
)

func promoTemplate(category, subject string) map[string]any {
	return map[string]any{"category": category, "channels": map[string]any{
		"email": map[string]any{"subject": subject, "text": "Sale on {{.item}}"}}}
}

// Finding 2, as the review reproduced it: a key with send and
// templates:write (no send:transactional) schedules a marketing template to
// a user opted out of marketing email, then makes the template
// transactional. The notification was accepted as marketing, pinned to the
// version it was accepted with: it is suppressed, no mail goes out. The
// same through a recurring schedule, whose runs keep the category the
// schedule was authorized for. And a change of content after acceptance is
// not what is delivered: the accepted version is.
func TestAChangeAfterAcceptanceNeverWidensTheCategory(t *testing.T) {
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	// The service's clock starts a second after a minute: nothing is due
	// (the sends, nor the every-minute schedule) until the test moves it.
	offset.Store(int64(time.Until(time.Now().Truncate(time.Minute).Add(time.Minute + time.Second))))
	h := newHarness(t)
	h.now = now
	h.cfg.Scheduler.Interval = 50 * time.Millisecond
	h.cfg.APIKeys = append(h.cfg.APIKeys, config.APIKey{Name: "editor", Key: editorKey,
		Scopes: []string{"send", "templates:write", "templates:read", "notifications:read"}})
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/profiles/out", map[string]any{"email": "out@example.com",
		"preferences": map[string]any{"categories": map[string]any{"marketing": map[string]any{"email": false}}}})
	h.mustCall(http.StatusOK, "PUT", "/v1/profiles/in", map[string]any{"email": "in@example.com"})
	v1 := h.as(editorKey, http.StatusOK, "PUT", "/v1/templates/promo", promoTemplate("marketing", "Spring sale"))
	if v1["version"].(float64) != 1 || !strings.HasPrefix(v1["hash"].(string), "sha256:") || v1["savedByName"] != "editor" {
		t.Fatalf("version 1: %v", v1)
	}
	sendAt := now().Add(30 * time.Second).UTC().Format(time.RFC3339)
	ids := map[string]string{}
	for _, u := range []string{"out", "in"} {
		out := h.as(editorKey, http.StatusAccepted, "POST", "/v1/notifications", map[string]any{"template": "promo",
			"sendAt": sendAt, "data": map[string]any{"item": "shoes"}, "recipients": []any{map[string]any{"userId": u}}})
		ids[u] = out["notifications"].([]any)[0].(map[string]any)["id"].(string)
	}
	// A recurring schedule, every minute, to the opted-out user.
	h.as(editorKey, http.StatusOK, "PUT", "/v1/schedules/weekly", map[string]any{"cron": "* * * * *", "timeZone": "UTC",
		"request": map[string]any{"template": "promo", "data": map[string]any{"item": "hats"}, "recipients": []any{map[string]any{"userId": "out"}}}})
	h.waitStatus(ids["out"], processors.StatusScheduled)

	// Now the template becomes transactional, with other content.
	v2 := h.as(editorKey, http.StatusOK, "PUT", "/v1/templates/promo", promoTemplate("transactional", "Account notice"))
	if v2["version"].(float64) != 2 || v2["hash"] == v1["hash"] {
		t.Fatalf("version 2: %v", v2)
	}
	// The key still cannot send it as transactional.
	h.as(editorKey, http.StatusForbidden, "POST", "/v1/notifications", map[string]any{"template": "promo",
		"recipients": []any{map[string]any{"userId": "out"}}})

	// The scheduled sends come due, and the schedule fires (the clock moves a minute).
	offset.Add(int64(70 * time.Second))
	st := h.waitStatus(ids["out"], processors.StatusSuppressed)
	if !strings.Contains(historyText(st), "opted out of marketing email") || st["category"] != "marketing" {
		t.Fatalf("the opted-out user's notification: %v", st)
	}
	h.waitStatus(ids["in"], processors.StatusSent)
	msgs := h.smtp.WaitFor(1, 20*time.Second)
	time.Sleep(2 * time.Second) // let anything that would wrongly go out arrive
	msgs = h.smtp.Messages()
	if len(msgs) != 1 || msgs[0].To[0] != "in@example.com" {
		t.Fatalf("mail: %+v", msgs)
	}
	// The content delivered is the version it was accepted with.
	if !strings.Contains(string(msgs[0].Data), "Spring sale") || strings.Contains(string(msgs[0].Data), "Account notice") {
		t.Fatalf("the mail is not version 1: %s", msgs[0].Data)
	}
	if st := h.as(editorKey, http.StatusOK, "GET", "/v1/notifications/"+ids["in"], nil); st["templateVersion"].(float64) != 1 {
		t.Fatalf("the status does not name the version rendered: %v", st)
	}
	// The schedule's run is suppressed too: it was authorized as marketing.
	var run map[string]any
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		sc := h.mustCall(http.StatusOK, "GET", "/v1/schedules/weekly", nil)
		if fired, _ := sc["fired"].(float64); fired >= 1 {
			last, _ := time.Parse(time.RFC3339Nano, sc["lastFiredAt"].(string))
			run = h.waitStatus(processors.TenantNotificationID("", "schedule:weekly:"+last.UTC().Format("20060102T1504Z"), "out"), processors.StatusSuppressed)
			break
		}
	}
	if run == nil || run["category"] != "marketing" || run["templateVersion"].(float64) != 2 {
		t.Fatalf("the schedule's run: %v", run)
	}
	if n := len(h.smtp.Messages()); n != 1 {
		t.Fatalf("%d mails went out", n)
	}
}

// Finding 3, as the review reproduced it: an approved campaign's content
// could be swapped by a templates:write key after the approval. The
// approver approves a version (its hash shown and recorded); a change
// after that never reaches a recipient unapproved: fan-out renders the
// approved version. An approval of a version older than the campaign's is
// refused; re-pinning a campaign to a new version needs a new approval.
func TestAnApprovedCampaignSendsExactlyTheApprovedVersion(t *testing.T) {
	h := newHarness(t)
	campaignKeys(&h.cfg)
	h.cfg.APIKeys = append(h.cfg.APIKeys, config.APIKey{Name: "editor", Key: editorKey,
		Scopes: []string{"templates:write", "templates:read"}})
	h.cfg.Campaigns.Step = 200 * time.Millisecond
	h.start()
	for i := 0; i < 5; i++ {
		h.mustCall(http.StatusOK, "PUT", fmt.Sprintf("/v1/profiles/c%d", i), map[string]any{"email": fmt.Sprintf("c%d@example.com", i),
			"attributes": map[string]any{"plan": "pro"}})
	}
	h.as(editorKey, http.StatusOK, "PUT", "/v1/templates/promo", promoTemplate("marketing", "Checked copy"))
	c := h.mustCall(http.StatusAccepted, "POST", "/v1/campaigns", map[string]any{"id": "spring", "template": "promo", "rate": 1000,
		"sendAt": time.Now().Add(4 * time.Second).UTC().Format(time.RFC3339), "data": map[string]any{"item": "x"},
		"audience": map[string]any{"segment": `attributes.plan = "pro"`}}, as(creatorKey)...)
	hash := c["templateHash"].(string)
	if c["templateVersion"].(float64) != 1 || !strings.HasPrefix(hash, "sha256:") ||
		c["links"].(map[string]any)["templateVersion"] != "/v1/templates/promo/versions/1" {
		t.Fatalf("the campaign does not show the version to approve: %v", c)
	}
	// What the approver reads: that version, and its preview.
	if v := h.mustCall(http.StatusOK, "GET", "/v1/templates/promo/versions/1", nil); v["hash"] != hash {
		t.Fatalf("version 1: %v", v)
	}
	if p := h.mustCall(http.StatusOK, "POST", "/v1/templates/promo/preview", map[string]any{"channel": "email", "version": 1,
		"data": map[string]any{"item": "x"}}); p["hash"] != hash {
		t.Fatalf("preview of version 1: %v", p)
	}
	c = h.mustCall(http.StatusOK, "POST", "/v1/campaigns/spring/approve", map[string]any{"comment": "copy checked",
		"templateVersion": 1, "templateHash": hash}, as(approverKey)...)
	decisions := c["decisions"].([]any)
	if d := decisions[len(decisions)-1].(map[string]any); d["templateHash"] != hash || d["templateVersion"].(float64) != 1 {
		t.Fatalf("the approval does not record the version: %v", d)
	}
	// After the approval, before the send time: the content is swapped.
	h.as(editorKey, http.StatusOK, "PUT", "/v1/templates/promo", promoTemplate("marketing", "Swapped copy"))
	msgs := h.smtp.WaitFor(5, 30*time.Second)
	if len(msgs) != 5 {
		t.Fatalf("%d mails", len(msgs))
	}
	for _, m := range msgs {
		if !strings.Contains(string(m.Data), "Checked copy") || strings.Contains(string(m.Data), "Swapped copy") {
			t.Fatalf("a recipient got unapproved content: %s", m.Data)
		}
	}

	// A second campaign, created on version 2: an approver who read version
	// 1 cannot approve it with version 1's hash.
	h.mustCall(http.StatusAccepted, "POST", "/v1/campaigns", map[string]any{"id": "summer", "template": "promo", "rate": 1000,
		"data": map[string]any{"item": "y"}, "audience": map[string]any{"segment": `attributes.plan = "pro"`}}, as(creatorKey)...)
	h.mustCall(http.StatusConflict, "POST", "/v1/campaigns/summer/approve", map[string]any{"templateHash": hash}, as(approverKey)...)
	// The creator re-pins it to a third version: pending approval again,
	// the old content never goes, and the new one only once approved.
	v3 := h.as(editorKey, http.StatusOK, "PUT", "/v1/templates/promo", promoTemplate("marketing", "Third copy"))
	c = h.mustCall(http.StatusOK, "POST", "/v1/campaigns/summer/template", map[string]any{"version": 3}, as(creatorKey)...)
	if c["state"] != processors.CampaignPending || c["templateVersion"].(float64) != 3 || c["templateHash"] != v3["hash"] {
		t.Fatalf("re-pinned: %v", c)
	}
	time.Sleep(time.Second)
	if n := len(h.smtp.Messages()); n != 5 {
		t.Fatalf("an unapproved campaign sent: %d mails", n)
	}
	h.mustCall(http.StatusOK, "POST", "/v1/campaigns/summer/approve", map[string]any{"templateVersion": 3}, as(approverKey)...)
	msgs = h.smtp.WaitFor(10, 30*time.Second)
	if len(msgs) != 10 {
		_, c := h.call("GET", "/v1/campaigns/summer", nil)
		_, n := h.call("GET", "/v1/notifications/c:default:summer:c0", nil)
		t.Fatalf("%d mails; campaign %v; c0: %v", len(msgs), c, n)
	}
	for _, m := range msgs[5:] {
		if !strings.Contains(string(m.Data), "Third copy") {
			t.Fatalf("the second campaign did not send version 3: %s", m.Data)
		}
	}
}

// Template versions: every PUT that changes the content is a new version
// recording who saved it; an unchanged PUT is none; the history and each
// version read back; restoring is a PUT of an old version's body; numbering
// goes on after a DELETE. A template written before versions keeps its
// content as version 1, so a notification pinned to it renders it.
func TestTemplateVersionsKeepHistoryAndRestore(t *testing.T) {
	h := newHarness(t)
	h.cfg.APIKeys = append(h.cfg.APIKeys, config.APIKey{Name: "editor", Key: editorKey,
		Scopes: []string{"templates:write", "templates:read", "send", "notifications:read"}})
	h.start()
	v1 := h.as(editorKey, http.StatusOK, "PUT", "/v1/templates/t", promoTemplate("marketing", "one"))
	again := h.mustCall(http.StatusOK, "PUT", "/v1/templates/t", promoTemplate("marketing", "one"))
	if again["version"] != v1["version"] || again["savedByName"] != "editor" {
		t.Fatalf("an unchanged PUT made a version: %v", again)
	}
	v2 := h.mustCall(http.StatusOK, "PUT", "/v1/templates/t", promoTemplate("marketing", "two"))
	if v2["version"].(float64) != 2 || v2["savedBy"] != "config:test" || v2["savedByName"] != "test" || v2["savedAt"] == "" {
		t.Fatalf("version 2: %v", v2)
	}
	list := h.mustCall(http.StatusOK, "GET", "/v1/templates/t/versions", nil)
	vs := list["versions"].([]any)
	if len(vs) != 2 || list["current"].(float64) != 2 || vs[0].(map[string]any)["version"].(float64) != 2 ||
		vs[1].(map[string]any)["savedByName"] != "editor" || vs[0].(map[string]any)["current"] != true {
		t.Fatalf("versions: %v", list)
	}
	old := h.mustCall(http.StatusOK, "GET", "/v1/templates/t/versions/1", nil)
	if old["channels"].(map[string]any)["email"].(map[string]any)["subject"] != "one" || old["hash"] != v1["hash"] {
		t.Fatalf("version 1: %v", old)
	}
	// Restore: PUT the old version's body back.
	v3 := h.mustCall(http.StatusOK, "PUT", "/v1/templates/t", old)
	if v3["version"].(float64) != 3 || v3["restoredFrom"].(float64) != 1 || v3["hash"] != v1["hash"] {
		t.Fatalf("restored: %v", v3)
	}
	// Deleted and created again: numbering goes on, the history stays.
	h.mustCall(http.StatusNoContent, "DELETE", "/v1/templates/t", nil)
	if l := h.mustCall(http.StatusOK, "GET", "/v1/templates/t/versions", nil); len(l["versions"].([]any)) != 3 || l["current"] != nil {
		t.Fatalf("history after the delete: %v", l)
	}
	if v4 := h.mustCall(http.StatusOK, "PUT", "/v1/templates/t", promoTemplate("marketing", "four")); v4["version"].(float64) != 4 {
		t.Fatalf("created again: %v", v4)
	}
	// Paging.
	page := h.mustCall(http.StatusOK, "GET", "/v1/templates/t/versions?limit=2", nil)
	if vs := page["versions"].([]any); len(vs) != 2 || vs[1].(map[string]any)["version"].(float64) != 3 || page["next"] == nil {
		t.Fatalf("page: %v", page)
	}
	page = h.mustCall(http.StatusOK, "GET", "/v1/templates/t/versions?before=3&limit=2", nil)
	if vs := page["versions"].([]any); len(vs) != 2 || vs[0].(map[string]any)["version"].(float64) != 2 {
		t.Fatalf("page 2: %v", page)
	}
	// Bad input.
	for path, field := range map[string]string{"/v1/templates/t/versions/0": "n", "/v1/templates/t/versions/x": "n",
		"/v1/templates/t/versions?limit=0": "limit", "/v1/templates/t/versions?limit=1001": "limit", "/v1/templates/t/versions?before=-1": "before"} {
		if code, out := h.call("GET", path, nil); code != http.StatusBadRequest || errorField(out) != field {
			t.Fatalf("GET %s: %d %v, want 400 naming %s", path, code, out, field)
		}
	}
	// A preview of a version: the stored one; a bad or missing one is named.
	if p := h.mustCall(http.StatusOK, "POST", "/v1/templates/t/preview", map[string]any{"channel": "email", "version": 2,
		"data": map[string]any{"item": "x"}}); p["version"].(float64) != 2 || p["content"].(map[string]any)["subject"] != "two" {
		t.Fatalf("preview of version 2: %v", p)
	}
	for _, c := range []struct {
		body   string
		status int
	}{{`{"channel": "email", "version": -1}`, 400}, {`{"channel": "email", "version": "2"}`, 400},
		{`{"channel": "email", "version": 1.5}`, 400}, {`{"channel": "email", "version": 99}`, 404}} {
		if code, out := h.call("POST", "/v1/templates/t/preview", c.body); code != c.status || errorField(out) != "version" {
			t.Fatalf("preview %s: %d %v, want %d naming version", c.body, code, out, c.status)
		}
	}
	h.mustCall(http.StatusNotFound, "GET", "/v1/templates/t/versions/99", nil)
	h.mustCall(http.StatusNotFound, "GET", "/v1/templates/none/versions", nil)

	// A template written before versions (no version, no hash) is pinned by
	// its hash; its first save keeps it as version 1: a notification
	// accepted with it, delivered after the save, renders it.
	legacy := &schemas.Template{ID: "legacy", Category: "account", UpdatedAt: time.Now().UnixMilli(),
		Channels: map[string]schemas.ChannelContent{"email": {Subject: "Legacy subject", Text: "hi"}}}
	v, _ := schemas.TemplateCodec.Encode(legacy)
	if err := h.producer().ProduceSync(context.Background(), &kgo.Record{Topic: string(topology.Templates),
		Key: []byte(schemas.TenantKey("", "legacy")), Value: v}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if code, got := h.call("GET", "/v1/templates/legacy", nil); code == http.StatusOK && got["hash"] == processors.TemplateHash(legacy) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the legacy template is not readable")
		}
	}
	h.mustCall(http.StatusOK, "PUT", "/v1/profiles/u1", map[string]any{"email": "u1@example.com"})
	id := h.send(map[string]any{"template": "legacy", "sendAt": time.Now().Add(2 * time.Second).UTC().Format(time.RFC3339),
		"recipients": []any{map[string]any{"userId": "u1"}}})["u1"]
	h.waitStatus(id, processors.StatusScheduled)
	saved := h.mustCall(http.StatusOK, "PUT", "/v1/templates/legacy", map[string]any{"category": "account", "channels": map[string]any{
		"email": map[string]any{"subject": "New subject", "text": "hi"}}})
	if saved["version"].(float64) != 2 {
		t.Fatalf("the first save of a legacy template: %v", saved)
	}
	if l := h.mustCall(http.StatusOK, "GET", "/v1/templates/legacy/versions/1", nil); l["hash"] != processors.TemplateHash(legacy) {
		t.Fatalf("version 1 of the legacy template: %v", l)
	}
	h.waitStatus(id, processors.StatusSent)
	msgs := h.smtp.WaitFor(1, 10*time.Second)
	if len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "Legacy subject") {
		t.Fatalf("the pinned legacy content was not what went out: %+v", msgs)
	}
}

// Categories are written exactly: " transactional" and "Transactional" are
// refused at a template PUT, on a send, on a campaign, in a profile's
// preferences, and on a record produced to notify.ingest.
func TestCategoriesAreExact(t *testing.T) {
	h := newHarness(t)
	campaignKeys(&h.cfg)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/ok", promoTemplate("marketing", "x"))
	for _, bad := range []string{" transactional", "Transactional", "transactional ", "MARKETING", "a b"} {
		if code, out := h.call("PUT", "/v1/templates/t", promoTemplate(bad, "x")); code != http.StatusBadRequest || errorField(out) != "category" {
			t.Fatalf("template category %q: %d %v", bad, code, out)
		}
		if code, out := h.call("POST", "/v1/notifications", map[string]any{"template": "ok", "category": bad,
			"recipients": []any{map[string]any{"userId": "u1"}}}); code != http.StatusBadRequest || errorField(out) != "category" {
			t.Fatalf("send category %q: %d %v", bad, code, out)
		}
		if code, out := h.call("POST", "/v1/campaigns", map[string]any{"template": "ok", "category": bad,
			"audience": map[string]any{"segment": `locale = "de"`}}, as(creatorKey)...); code != http.StatusBadRequest || errorField(out) != "category" {
			t.Fatalf("campaign category %q: %d %v", bad, code, out)
		}
		if code, out := h.call("PUT", "/v1/profiles/u1", map[string]any{"preferences": map[string]any{"categories": map[string]any{
			bad: map[string]any{"email": false}}}}); code != http.StatusBadRequest || !strings.HasPrefix(errorField(out), "preferences.categories.") {
			t.Fatalf("preference category %q: %d %v", bad, code, out)
		}
	}
	h.mustCall(http.StatusNotFound, "GET", "/v1/templates/t", nil)
	// From Kafka: rejected, with its reason.
	req := &schemas.SendRequest{EventID: "kafka-cat", Template: "ok", Category: "Transactional", Recipients: []schemas.Recipient{{UserID: "u1"}}}
	v, _ := schemas.SendRequestCodec.Encode(req)
	if err := h.producer().ProduceSync(context.Background(), &kgo.Record{Topic: string(topology.Ingest), Key: []byte("kafka-cat"), Value: v}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	st := h.waitStatus(processors.TenantNotificationID("", "kafka-cat", "u1"), processors.StatusRejected)
	if !strings.Contains(historyText(st), `did you mean "transactional"`) {
		t.Fatalf("the Kafka record's rejection: %v", st)
	}
}

// The key that pins a campaign to another template version chose its
// content: like the creator, neither it nor its lineage may approve it.
func TestTheKeyThatPinsAVersionCannotApproveIt(t *testing.T) {
	h := newHarness(t)
	h.cfg.Campaigns.Step = 200 * time.Millisecond
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/promo", promoTemplate("marketing", "one"))
	h.mustCall(http.StatusOK, "PUT", "/v1/profiles/p1", map[string]any{"email": "p1@example.com"})
	creator := h.mintKey(testKey, "creator", "send", "notifications:read")
	editor := h.mintKey(testKey, "editor", "admin")
	editorsApprover := h.mintKey(editor.key, "editors-approver", "approve")
	lead := h.mintKey(testKey, "lead", "approve")
	h.mustCall(http.StatusAccepted, "POST", "/v1/campaigns", map[string]any{"id": "pinned", "template": "promo",
		"data": map[string]any{"item": "x"}, "audience": map[string]any{"users": []string{"p1"}}}, as(creator.key)...)
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/promo", promoTemplate("marketing", "two"))
	c := h.mustCall(http.StatusOK, "POST", "/v1/campaigns/pinned/template", map[string]any{"version": 2}, as(editor.key)...)
	if c["templateVersion"].(float64) != 2 {
		t.Fatalf("re-pinned: %v", c)
	}
	for who, key := range map[string]string{"the editor": editor.key, "a key the editor minted": editorsApprover.key} {
		if code, out := h.call("POST", "/v1/campaigns/pinned/approve", nil, as(key)...); code != http.StatusForbidden {
			t.Fatalf("%s approved the version it chose: %d %v", who, code, out)
		}
	}
	h.mustCall(http.StatusOK, "POST", "/v1/campaigns/pinned/approve", map[string]any{"templateVersion": 2}, as(lead.key)...)
	msgs := h.smtp.WaitFor(1, 30*time.Second)
	if len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "Subject: two") {
		t.Fatalf("mail: %+v", msgs)
	}
}
