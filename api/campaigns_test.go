package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// campaignEnv is a keysEnv whose server also serves campaigns, audiences,
// schedules and cancellations, from real views of the campaign and schedule
// tables, notify.audiences and notify.cancels. No campaign or schedule group
// runs: a campaign or a lifecycle exists only if the test writes it into its
// table, and a refused request must leave every topic those endpoints write
// as it was.
type campaignEnv struct {
	*keysEnv
	adm *kadm.Client
}

// The list bounds of campaignEnv.
const (
	testMaxListBytes = 1024
	testMaxListLines = 100
)

// writtenTopics are the topics a campaign, audience, schedule, cancel,
// template or profile endpoint produces to.
var writtenTopics = []string{string(topology.Campaigns), string(topology.Audiences), string(topology.Cancels),
	string(topology.Schedules), string(topology.Templates), string(topology.Profiles)}

func newCampaignEnv(t *testing.T) *campaignEnv {
	t.Helper()
	k := newKeysEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	view := func(table goka.Table, codec goka.Codec) *goka.View {
		v := startView(t, k.brokers, table, codec)
		awaitRecovered(t, ctx, v)
		return v
	}
	k.srv.Campaigns = &Campaigns{
		Table:        view(goka.GroupTable(topology.CampaignGroup), topology.CampaignTableCodec()),
		Members:      view(topology.Audiences, schemas.Lenient[schemas.AudienceMember]{C: schemas.AudienceMemberCodec}),
		Cancels:      view(topology.Cancels, topology.CancellationCodec()),
		Schedules:    view(goka.GroupTable(topology.ScheduleGroup), topology.ScheduleTableCodec()),
		MaxListBytes: testMaxListBytes,
		MaxListLines: testMaxListLines,
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	e := &campaignEnv{keysEnv: k, adm: kadm.NewClient(cl)}
	expect(t, e.do(rootKey, "PUT", "/v1/templates/welcome", `{"channels": {"email": {"subject": "Hi", "text": "Hello"}}}`), http.StatusOK, "")
	return e
}

// ends sums the end offsets of each of writtenTopics: what has been produced
// to it. Produces are synchronous in every handler, so a write a handler
// made is counted once it has answered.
func (e *campaignEnv) ends() map[string]int64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	listed, err := e.adm.ListEndOffsets(ctx, writtenTopics...)
	if err == nil {
		err = listed.Error()
	}
	if err != nil {
		e.t.Fatalf("end offsets: %v", err)
	}
	out := map[string]int64{}
	listed.Each(func(o kadm.ListedOffset) { out[o.Topic] += o.Offset })
	return out
}

// seed writes value into a table's topic and waits until get reads it.
func (e *campaignEnv) seed(topic, key string, value []byte, get func() bool) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.srv.Producer.ProduceSync(ctx, &kgo.Record{Topic: topic, Key: []byte(key), Value: value}).FirstErr(); err != nil {
		e.t.Fatal(err)
	}
	for !get() {
		if ctx.Err() != nil {
			e.t.Fatalf("%s %s: not readable", topic, key)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// seedCampaign puts c into the campaign table of the default tenant.
func (e *campaignEnv) seedCampaign(c schemas.Campaign) {
	e.t.Helper()
	b, err := schemas.CampaignCodec.Encode(&c)
	if err != nil {
		e.t.Fatal(err)
	}
	e.seed(string(goka.GroupTable(topology.CampaignGroup)), processors.CampaignKey("", c.ID), b,
		func() bool { return e.srv.campaign("", c.ID) != nil })
}

// seedLifecycle puts lc into the status table.
func (e *campaignEnv) seedLifecycle(lc schemas.Lifecycle) {
	e.t.Helper()
	b, err := schemas.LifecycleCodec.Encode(&lc)
	if err != nil {
		e.t.Fatal(err)
	}
	e.seed(string(goka.GroupTable(topology.StatusGroup)), lc.ID, b, func() bool { return e.srv.readLifecycle(lc.ID) != nil })
}

// badRequest is a request that must be refused.
type badRequest struct {
	name, method, path string
	body               string
	contentType        string // for uploads; "" sends none
	status             int
	code, field        string
}

// refuse serves each request with the root key and asserts its status, its
// error code and the field the error names, and that it wrote nothing.
func (e *campaignEnv) refuse(t *testing.T, cases []badRequest) {
	t.Helper()
	for _, c := range cases {
		before := e.ends()
		rec := e.serve(rootKey, c.method, c.path, c.contentType, c.body)
		var out struct{ Error *Error }
		_ = json.Unmarshal(rec.Body.Bytes(), &out)
		if rec.Code != c.status || out.Error == nil || out.Error.Code != c.code || out.Error.Field != c.field || out.Error.Message == "" {
			t.Errorf("%s: %s %s: %d %.300s\n\twant %d code %q field %q", c.name, c.method, c.path, rec.Code, rec.Body, c.status, c.code, c.field)
		}
		if after := e.ends(); !maps.Equal(before, after) {
			t.Errorf("%s: a refused request wrote: offsets %v, then %v", c.name, before, after)
		}
	}
}

// serve is keysEnv.do with a body sent as is and a Content-Type.
func (e *campaignEnv) serve(key, method, path, contentType, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	return rec
}

// campaignBodyWith is a valid campaign create body with fields set (a nil
// value removes the field).
func campaignBodyWith(kv ...any) string {
	b := map[string]any{"template": "welcome", "audience": map[string]any{"topic": "news"}}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(b, kv[i].(string))
			continue
		}
		b[kv[i].(string)] = kv[i+1]
	}
	out, err := json.Marshal(b)
	if err != nil {
		panic(err)
	}
	return string(out)
}

// A malformed campaign is refused, naming the field to fix, before any
// command is written: nothing reaches notify.campaigns.
func TestCampaignCreateBadInput(t *testing.T) {
	t.Parallel()
	e := newCampaignEnv(t)
	now := e.clock()
	e.seedCampaign(schemas.Campaign{ID: "taken", Template: "welcome", AudienceKind: processors.AudienceTopic, AudienceID: "news",
		State: processors.CampaignPending, CreatedBy: "config:other", CreatedAt: now.UnixMilli(),
		ApprovalDeadline: now.Add(time.Hour).UnixMilli()})
	audience := func(kv ...string) map[string]any {
		m := map[string]any{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	rfc := func(d time.Duration) string { return now.Add(d).Format(time.RFC3339) }
	post := func(name, body string, status int, code, field string) badRequest {
		return badRequest{name: name, method: "POST", path: "/v1/campaigns", body: body, status: status, code: code, field: field}
	}
	const bad = "invalid_argument"
	e.refuse(t, []badRequest{
		// The body itself.
		post("not JSON", `{"template": "welcome",`, 400, bad, ""),
		post("empty body", ``, 400, bad, ""),
		post("not an object", `["welcome"]`, 400, bad, ""),
		post("two JSON values", campaignBodyWith()+` {}`, 400, bad, ""),
		post("unknown field", campaignBodyWith("audiance", audience("topic", "news")), 400, bad, "audiance"),
		post("over MaxBodyBytes", campaignBodyWith("name", strings.Repeat("x", 70<<10)), 413, "payload_too_large", ""),
		// The campaign id.
		post("id too long", campaignBodyWith("id", strings.Repeat("c", 65)), 400, bad, "id"),
		post("id with |", campaignBodyWith("id", "a|b"), 400, bad, "id"),
		post("id with /", campaignBodyWith("id", "a/b"), 400, bad, "id"),
		post("id not a string", campaignBodyWith("id", 7), 400, bad, "id"),
		post("id taken", campaignBodyWith("id", "taken"), 409, "conflict", "id"),
		// The template.
		post("no template", campaignBodyWith("template", nil), 400, bad, "template"),
		post("empty template", campaignBodyWith("template", ""), 400, bad, "template"),
		post("template with |", campaignBodyWith("template", "a|b"), 400, bad, "template"),
		post("unknown template", campaignBodyWith("template", "nope"), 400, "unknown_template", "template"),
		// The audience.
		post("no audience", campaignBodyWith("audience", nil), 400, bad, "audience"),
		post("empty audience", campaignBodyWith("audience", audience()), 400, bad, "audience"),
		post("two audiences", campaignBodyWith("audience", audience("topic", "news", "list", "vip")), 400, bad, "audience"),
		post("audience not an object", campaignBodyWith("audience", "topic:news"), 400, bad, "audience"),
		// An unknown audience kind is an unknown field; the decoder names it
		// without its parent (encoding/json gives no path for these).
		post("unknown audience kind", campaignBodyWith("audience", audience("group", "g1")), 400, bad, "group"),
		post("topic id with |", campaignBodyWith("audience", audience("topic", "a|b")), 400, bad, "audience.topic"),
		post("list id too long", campaignBodyWith("audience", audience("list", strings.Repeat("l", 65))), 400, bad, "audience.list"),
		post("segment unparsable", campaignBodyWith("audience", audience("segment", `locale =`)), 400, bad, "audience.segment"),
		post("segment unknown field", campaignBodyWith("audience", audience("segment", `plan = "pro"`)), 400, bad, "audience.segment"),
		post("segment unbalanced", campaignBodyWith("audience", audience("segment", `(locale = "de"`)), 400, bad, "audience.segment"),
		post("segment too long", campaignBodyWith("audience", audience("segment", strings.Repeat(`locale = "de" OR `, 300)+`locale = "en"`)),
			400, bad, "audience.segment"),
		post("user id with |", campaignBodyWith("audience", map[string]any{"users": []string{"u1", "a|b"}}), 400, bad, "audience.users[1]"),
		post("empty user id", campaignBodyWith("audience", map[string]any{"users": []string{""}}), 400, bad, "audience.users[0]"),
		// The rate: 0 means the default, below or above the bounds is refused.
		post("negative rate", campaignBodyWith("rate", -1), 400, bad, "rate"),
		post("rate over the maximum", campaignBodyWith("rate", processors.MaxCampaignRate+1), 400, bad, "rate"),
		post("rate over int32", campaignBodyWith("rate", int64(1)<<40), 400, bad, "rate"),
		post("fractional rate", campaignBodyWith("rate", 1.5), 400, bad, "rate"),
		post("rate as a string", campaignBodyWith("rate", "fast"), 400, bad, "rate"),
		// Times.
		post("approval deadline in the past", campaignBodyWith("approvalDeadline", rfc(-time.Hour)), 400, bad, "approvalDeadline"),
		post("approval deadline now", campaignBodyWith("approvalDeadline", rfc(0)), 400, bad, "approvalDeadline"),
		post("approval deadline beyond 30 days", campaignBodyWith("approvalDeadline", rfc(31*24*time.Hour)), 400, bad, "approvalDeadline"),
		post("approval deadline not RFC 3339", campaignBodyWith("approvalDeadline", "next week"), 400, bad, "approvalDeadline"),
		post("expiry in the past", campaignBodyWith("expiresAt", rfc(-time.Minute)), 400, bad, "expiresAt"),
		post("sendAt not RFC 3339", campaignBodyWith("sendAt", "tomorrow"), 400, bad, "sendAt"),
		post("expiry before sendAt", campaignBodyWith("sendAt", rfc(2*time.Hour), "expiresAt", rfc(time.Hour)), 400, bad, "expiresAt"),
		post("expiry at sendAt", campaignBodyWith("sendAt", rfc(time.Hour), "expiresAt", rfc(time.Hour)), 400, bad, "expiresAt"),
		post("localTime out of range", campaignBodyWith("localTime", "25:00"), 400, bad, "localTime"),
		post("localTime without a leading zero", campaignBodyWith("localTime", "9:05"), 400, bad, "localTime"),
		// The rest of the send.
		post("unknown priority", campaignBodyWith("priority", "urgent"), 400, bad, "priority"),
		post("name too long", campaignBodyWith("name", strings.Repeat("n", 201)), 400, bad, "name"),
		post("data not an object", campaignBodyWith("data", []int{1}), 400, bad, "data"),
		post("data a string", campaignBodyWith("data", "x"), 400, bad, "data"),
		post("channels not a list", campaignBodyWith("channels", "email"), 400, bad, "channels"),
		post("unknown channel", campaignBodyWith("channels", []string{"email", "fax"}), 400, bad, "channels[1]"),
	})
	// Nothing was created: the seeded campaign is the only one listed.
	rec := e.do(rootKey, "GET", "/v1/campaigns", nil)
	expect(t, rec, http.StatusOK, "")
	var list struct{ Campaigns []campaignJSON }
	if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil || len(list.Campaigns) != 1 || list.Campaigns[0].ID != "taken" {
		t.Fatalf("campaigns after refused creates: %s", rec.Body)
	}
}

// A decision on an unknown campaign is 404 for every op, a malformed one is
// 400 naming the field, and one the campaign's state does not allow is a
// conflict (or 403 for its creator's approval); none writes a command or a
// cancellation, and the campaign is left as it was.
func TestCampaignDecisionBadInput(t *testing.T) {
	t.Parallel()
	e := newCampaignEnv(t)
	now := e.clock()
	pending := func(id, createdBy string, deadline time.Duration) schemas.Campaign {
		return schemas.Campaign{ID: id, Template: "welcome", AudienceKind: processors.AudienceTopic, AudienceID: "news",
			State: processors.CampaignPending, CreatedBy: createdBy, CreatedAt: now.UnixMilli(), Rate: processors.DefaultCampaignRate,
			ApprovalDeadline: now.Add(deadline).UnixMilli()}
	}
	e.seedCampaign(pending("spring", "config:other", time.Hour))
	e.seedCampaign(pending("mine", "config:root", time.Hour))
	e.seedCampaign(pending("late", "config:other", -time.Minute))
	rejected := pending("rejected", "config:other", time.Hour)
	rejected.State = processors.CampaignRejected
	e.seedCampaign(rejected)

	var cases []badRequest
	for _, op := range []string{"approve", "reject", "cancel", "pause", "resume"} {
		for _, id := range []string{"nope", "a%2Fb", strings.Repeat("c", 65)} {
			cases = append(cases, badRequest{name: op + " unknown " + id, method: "POST", path: "/v1/campaigns/" + id + "/" + op,
				status: 404, code: "not_found"})
		}
		// An id with the tenant separator is no id at all.
		cases = append(cases, badRequest{name: op + " separator", method: "POST", path: "/v1/campaigns/a%7Cb/" + op,
			status: 400, code: "invalid_argument", field: "id"})
	}
	cases = append(cases, badRequest{name: "get unknown", method: "GET", path: "/v1/campaigns/nope", status: 404, code: "not_found"})
	decide := func(name, op, id, body string, status int, code, field string) badRequest {
		return badRequest{name: name, method: "POST", path: "/v1/campaigns/" + id + "/" + op, body: body, status: status, code: code, field: field}
	}
	const bad = "invalid_argument"
	cases = append(cases,
		decide("body not JSON", "approve", "spring", `{"comment": `, 400, bad, ""),
		decide("body not an object", "reject", "spring", `"no"`, 400, bad, ""),
		decide("unknown field", "reject", "spring", `{"reason": "too loud"}`, 400, bad, "reason"),
		decide("comment not a string", "approve", "spring", `{"comment": 5}`, 400, bad, "comment"),
		decide("comment over 1000 bytes", "reject", "spring", fmt.Sprintf(`{"comment": %q}`, strings.Repeat("c", 1001)), 400, bad, "comment"),
		decide("body over 64 KiB", "approve", "spring", fmt.Sprintf(`{"comment": %q}`, strings.Repeat("c", 65<<10)), 413, "payload_too_large", ""),
		decide("bad body on an unknown campaign", "approve", "nope", `{"comment": `, 400, bad, ""),
		decide("creator approves", "approve", "mine", `{"comment": "ok"}`, 403, "forbidden", ""),
		decide("creator rejects", "reject", "mine", ``, 403, "forbidden", ""),
		decide("reject without a comment", "reject", "spring", ``, 400, bad, "comment"),
		decide("reject with a blank comment", "reject", "spring", `{"comment": "  "}`, 400, bad, "comment"),
		decide("approval past the deadline", "approve", "late", ``, 409, "conflict", ""),
		decide("pause a pending campaign", "pause", "spring", ``, 409, "conflict", ""),
		decide("resume a pending campaign", "resume", "spring", ``, 409, "conflict", ""),
		decide("approve a rejected campaign", "approve", "rejected", ``, 409, "conflict", ""),
		decide("cancel a rejected campaign", "cancel", "rejected", ``, 409, "conflict", ""),
		decide("a template version on a cancel", "cancel", "spring", `{"templateVersion": 1}`, 400, bad, "templateVersion"),
		decide("templateVersion not a number", "approve", "spring", `{"templateVersion": "1"}`, 400, bad, "templateVersion"),
		decide("approval of another version", "approve", "spring", `{"templateVersion": 99}`, 409, "conflict", ""),
		decide("approval of another hash", "approve", "spring", `{"templateHash": "sha256:00"}`, 409, "conflict", ""),
		decide("re-pin without a version", "template", "spring", `{}`, 400, bad, "version"),
		decide("re-pin to version 0", "template", "spring", `{"version": 0}`, 400, bad, "version"),
		decide("re-pin to a missing version", "template", "spring", `{"version": 99}`, 404, "not_found", "version"),
		decide("re-pin unknown field", "template", "spring", `{"version": 1, "hash": "x"}`, 400, bad, "hash"),
		decide("re-pin not JSON", "template", "spring", `{"version": `, 400, bad, ""),
		decide("re-pin an unknown campaign", "template", "nope", `{"version": 1}`, 404, "not_found", ""),
		decide("re-pin a rejected campaign", "template", "rejected", `{"version": 1}`, 409, "conflict", ""),
	)
	e.refuse(t, cases)

	rec := e.do(rootKey, "GET", "/v1/campaigns/spring", nil)
	expect(t, rec, http.StatusOK, "")
	var c campaignJSON
	if err := json.Unmarshal(rec.Body.Bytes(), &c); err != nil || c.State != processors.CampaignPending || len(c.Decisions) != 0 {
		t.Fatalf("campaign after refused decisions: %s", rec.Body)
	}
	if e.srv.canceledKey(processors.CampaignCancelKey("", "rejected")) {
		t.Fatal("a refused cancel is readable on notify.cancels")
	}
}

// Bad topic ids, user ids and bodies are refused before any membership is
// written: a call subscribes all of its users or none.
func TestAudienceTopicBadInput(t *testing.T) {
	t.Parallel()
	e := newCampaignEnv(t)
	const bad = "invalid_argument"
	users := func(ids ...string) string {
		b, _ := json.Marshal(map[string]any{"userIds": ids})
		return string(b)
	}
	many := make([]string, MaxSubscribersPerCall+1)
	for i := range many {
		many[i] = fmt.Sprintf("u%d", i)
	}
	sub := func(name, id, body string, status int, code, field string) badRequest {
		return badRequest{name: name, method: "POST", path: "/v1/topics/" + id + "/subscribers", body: body, status: status, code: code, field: field}
	}
	cases := []badRequest{
		sub("not JSON", "news", `{"userIds": [`, 400, bad, ""),
		sub("empty body", "news", ``, 400, bad, ""),
		sub("unknown field", "news", `{"users": ["u1"]}`, 400, bad, "users"),
		sub("userIds not a list", "news", `{"userIds": "u1"}`, 400, bad, "userIds"),
		sub("no userIds", "news", `{}`, 400, bad, "userIds"),
		sub("empty userIds", "news", users(), 400, bad, "userIds"),
		sub("too many userIds", "news", users(many...), 400, bad, "userIds"),
		sub("user id with | after a good one", "news", users("u1", "a|b"), 400, bad, "userIds[1]"),
		sub("empty user id", "news", users("u1", ""), 400, bad, "userIds[1]"),
		sub("user id too long", "news", users(strings.Repeat("u", 201)), 400, bad, "userIds[0]"),
		sub("over MaxBodyBytes", "news", users(strings.Repeat("u", 70<<10)), 413, "payload_too_large", ""),
		{name: "unsubscribe a user id with |", method: "DELETE", path: "/v1/topics/news/subscribers/a%7Cb", status: 400, code: bad, field: "userId"},
		{name: "limit 0", method: "GET", path: "/v1/topics/news/subscribers?limit=0", status: 400, code: bad, field: "limit"},
		{name: "limit over 1000", method: "GET", path: "/v1/topics/news/subscribers?limit=1001", status: 400, code: bad, field: "limit"},
		{name: "limit not a number", method: "GET", path: "/v1/topics/news/subscribers?limit=ten", status: 400, code: bad, field: "limit"},
	}
	for _, id := range []string{strings.Repeat("t", 65), "a%7Cb", "a%2Fb", "a.b"} {
		cases = append(cases,
			sub("subscribe to topic "+id, id, users("u1"), 400, bad, "id"),
			badRequest{name: "unsubscribe from topic " + id, method: "DELETE", path: "/v1/topics/" + id + "/subscribers/u1", status: 400, code: bad, field: "id"},
			badRequest{name: "list topic " + id, method: "GET", path: "/v1/topics/" + id + "/subscribers", status: 400, code: bad, field: "id"},
		)
	}
	e.refuse(t, cases)
	rec := e.do(rootKey, "GET", "/v1/topics/news/subscribers", nil)
	if expect(t, rec, http.StatusOK, ""); !strings.Contains(rec.Body.String(), `"users":[]`) {
		t.Fatalf("subscribers after refused calls: %s", rec.Body)
	}
}

// listReport is the answer to a list upload, refused or not.
type listReport struct {
	Error  *Error
	Report processors.ListReport
}

func (e *campaignEnv) upload(t *testing.T, list, csv string) (*httptest.ResponseRecorder, listReport) {
	t.Helper()
	rec := e.serve(rootKey, "POST", "/v1/lists/"+list+"/members", "text/csv", csv)
	var out listReport
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("upload answer %d %s: %v", rec.Code, rec.Body, err)
	}
	return rec, out
}

func (e *campaignEnv) listMembers(t *testing.T, list string) []string {
	t.Helper()
	rec := e.do(rootKey, "GET", "/v1/lists/"+list+"/members?limit=1000", nil)
	expect(t, rec, http.StatusOK, "")
	var out struct{ Users []string }
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	return out.Users
}

// A list without a user id column, or of another media type, or under a bad
// list id, is refused whole; one over the configured bytes or lines stops
// there, with a report of exactly what it added, never a user id cut short.
func TestAudienceListUploadBadInput(t *testing.T) {
	t.Parallel()
	e := newCampaignEnv(t)
	const bad = "invalid_argument"
	upload := func(name, id, contentType, csv string, status int, code, field string) badRequest {
		return badRequest{name: name, method: "POST", path: "/v1/lists/" + id + "/members", body: csv, contentType: contentType,
			status: status, code: code, field: field}
	}
	cases := []badRequest{
		upload("no user id column", "vip", "text/csv", "email,name\na@example.com,A\nb@example.com,B\n", 400, "invalid_list", ""),
		upload("two user id columns", "vip", "text/csv", "userId,UserID\nu1,u2\n", 400, "invalid_list", ""),
		upload("empty list", "vip", "text/csv", "", 400, "invalid_list", ""),
		upload("blank header", "vip", "text/csv", "\n\nu1\n", 400, "invalid_list", ""),
		upload("malformed header", "vip", "text/csv", "\"userId\n", 400, "invalid_list", ""),
		upload("JSON body", "vip", "application/json", `{"userIds": ["u1"]}`, 415, "unsupported_media_type", ""),
		{name: "list members limit 0", method: "GET", path: "/v1/lists/vip/members?limit=0", status: 400, code: bad, field: "limit"},
	}
	for _, id := range []string{strings.Repeat("l", 65), "a%7Cb", "a%2Fb"} {
		cases = append(cases,
			upload("upload to list "+id, id, "text/csv", "userId\nu1\n", 400, bad, "id"),
			badRequest{name: "list members of " + id, method: "GET", path: "/v1/lists/" + id + "/members", status: 400, code: bad, field: "id"})
	}
	e.refuse(t, cases)
	if got := e.listMembers(t, "vip"); len(got) != 0 {
		t.Fatalf("vip after refused uploads: %v", got)
	}

	// Bad lines are reported by line number and skipped; the good ones are in.
	rec, out := e.upload(t, "mixed", "userId,plan\nu1,pro\na|b,pro\n,free\nu2\n")
	if rec.Code != http.StatusOK || out.Report.Accepted != 2 || out.Report.Rejected != 2 || len(out.Report.Errors) != 2 ||
		out.Report.Errors[0].Line != 3 || out.Report.Errors[1].Line != 4 {
		t.Fatalf("mixed list: %d %s", rec.Code, rec.Body)
	}
	if got := e.listMembers(t, "mixed"); !slices.Equal(got, []string{"u1", "u2"}) {
		t.Fatalf("mixed list members %v", got)
	}

	// Over MaxListBytes: the lines wholly inside the limit are in, the line
	// the limit cuts is not, and the report says so.
	var csv strings.Builder
	csv.WriteString("userId\n")
	var ids []string
	for i := 0; csv.Len() < 3*testMaxListBytes; i++ {
		ids = append(ids, fmt.Sprintf("member-%04d", i))
		csv.WriteString(ids[i] + "\n")
	}
	whole := (testMaxListBytes - len("userId\n")) / len("member-0000\n")
	if (testMaxListBytes-len("userId\n"))%len("member-0000\n") == 0 {
		t.Fatal("the limit must cut a line for this test")
	}
	before := e.ends()
	rec, out = e.upload(t, "big", csv.String())
	if rec.Code != http.StatusRequestEntityTooLarge || out.Error == nil || out.Error.Code != "invalid_list" || out.Report.Accepted != whole {
		t.Fatalf("list over %d bytes: %d %s; want 413 with %d accepted", testMaxListBytes, rec.Code, rec.Body, whole)
	}
	if got := e.listMembers(t, "big"); !slices.Equal(got, ids[:whole]) {
		t.Fatalf("members of a list cut at %d bytes: %v, want the %d whole lines", testMaxListBytes, got, whole)
	}
	if n := e.ends()[string(topology.Audiences)] - before[string(topology.Audiences)]; n != int64(whole) {
		t.Fatalf("%d memberships written for %d accepted", n, whole)
	}

	// Over MaxListLines: the first MaxListLines are in.
	csv.Reset()
	csv.WriteString("id\n")
	for i := 0; i < testMaxListLines+5; i++ {
		fmt.Fprintf(&csv, "l%03d\n", i)
	}
	if csv.Len() >= testMaxListBytes {
		t.Fatal("the list over MaxListLines must be under MaxListBytes")
	}
	rec, out = e.upload(t, "long", csv.String())
	if rec.Code != http.StatusBadRequest || out.Error == nil || out.Error.Code != "invalid_list" || out.Report.Accepted != testMaxListLines {
		t.Fatalf("list over %d lines: %d %s", testMaxListLines, rec.Code, rec.Body)
	}
	if got := e.listMembers(t, "long"); len(got) != testMaxListLines || got[0] != "l000" || got[len(got)-1] != fmt.Sprintf("l%03d", testMaxListLines-1) {
		t.Fatalf("members of a list over %d lines: %v", testMaxListLines, got)
	}
}

// A schedule with a bad cron expression, time zone, id or send body is
// refused naming the field; nothing reaches notify.schedules. Ops on an
// unknown schedule are 404.
func TestScheduleBadInput(t *testing.T) {
	t.Parallel()
	e := newCampaignEnv(t)
	const bad = "invalid_argument"
	send := map[string]any{"template": "welcome", "recipients": []any{map[string]any{"userId": "u1"}}}
	schedule := func(cron, tz string, request any) string {
		b := map[string]any{"cron": cron}
		if tz != "" {
			b["timeZone"] = tz
		}
		if request != nil {
			b["request"] = request
		}
		out, _ := json.Marshal(b)
		return string(out)
	}
	sendWith := func(k string, v any) map[string]any {
		m := maps.Clone(send)
		m[k] = v
		return m
	}
	put := func(name, body string, status int, code, field string) badRequest {
		return badRequest{name: name, method: "PUT", path: "/v1/schedules/weekly", body: body, status: status, code: code, field: field}
	}
	cases := []badRequest{
		put("not JSON", `{"cron": "0 9 * * MON",`, 400, bad, ""),
		put("empty body", ``, 400, bad, ""),
		put("unknown field", `{"cron": "0 9 * * MON", "tz": "UTC", "request": {}}`, 400, bad, "tz"),
		put("cron not a string", `{"cron": 9}`, 400, bad, "cron"),
		put("over MaxBodyBytes", schedule("0 9 * * MON", "", sendWith("data", map[string]any{"x": strings.Repeat("x", 70<<10)})),
			413, "payload_too_large", ""),
		put("no cron", schedule("", "", send), 400, bad, "cron"),
		put("three cron fields", schedule("* * *", "", send), 400, bad, "cron"),
		put("seconds field", schedule("0 0 9 * * MON", "", send), 400, bad, "cron"),
		put("cron out of range", schedule("61 9 * * *", "", send), 400, bad, "cron"),
		put("cron that never fires", schedule("0 0 30 2 *", "", send), 400, bad, "cron"),
		put("@every", schedule("@every 1m", "", send), 400, bad, "cron"),
		put("TZ= prefix", schedule("TZ=UTC 0 9 * * *", "", send), 400, bad, "cron"),
		put("cron over 200 bytes", schedule("0 9 * * "+strings.Repeat("1,", 100)+"1", "", send), 400, bad, "cron"),
		// ParseCron's one error covers the zone too: a bad time zone is
		// named cron, not timeZone.
		put("unknown time zone", schedule("0 9 * * MON", "Mars/Olympus", send), 400, bad, "timeZone"),
		put("Local time zone", schedule("0 9 * * MON", "Local", send), 400, bad, "timeZone"),
		put("time zone path", schedule("0 9 * * MON", "../../etc/passwd", send), 400, bad, "timeZone"),
		put("no send body", schedule("0 9 * * MON", "", nil), 400, bad, "request"),
		put("send body not an object", schedule("0 9 * * MON", "", 5), 400, bad, "request"),
		put("send body null", schedule("0 9 * * MON", "", json.RawMessage("null")), 400, bad, "request.template"),
		put("send body with sendAt", schedule("0 9 * * MON", "", sendWith("sendAt", "2026-12-24T09:00:00Z")), 400, bad, "request"),
		put("send body with eventId", schedule("0 9 * * MON", "", sendWith("eventId", "e1")), 400, bad, "request"),
		put("send body with otp", schedule("0 9 * * MON", "", sendWith("otp", true)), 400, bad, "request"),
		put("send body without template", schedule("0 9 * * MON", "", sendWith("template", "")), 400, bad, "request.template"),
		put("send body with an unknown template", schedule("0 9 * * MON", "", sendWith("template", "nope")), 400, "unknown_template", "request.template"),
		put("send body without recipients", schedule("0 9 * * MON", "", sendWith("recipients", []any{})), 400, bad, "request.recipients"),
		put("send body with a bad user id", schedule("0 9 * * MON", "", sendWith("recipients", []any{map[string]any{"userId": "a|b"}})),
			400, bad, "request.recipients[0].userId"),
		put("send body with an unknown field", schedule("0 9 * * MON", "", sendWith("chanels", []string{"sms"})), 400, bad, "request.chanels"),
		put("send body with recipients not a list", schedule("0 9 * * MON", "", sendWith("recipients", "u1")), 400, bad, "request.recipients"),
		put("send body with an inline email", schedule("0 9 * * MON", "", sendWith("recipients", []any{map[string]any{"userId": "u1", "email": "a@example.com"}})),
			400, bad, "request.recipients[0]"),
		put("send body with a bad channel", schedule("0 9 * * MON", "", sendWith("channels", []string{"fax"})), 400, bad, "request.channels[0]"),
		put("send body with an expiry in the past", schedule("0 9 * * MON", "", sendWith("expiresAt", "2020-01-01T00:00:00Z")),
			400, bad, "request.expiresAt"),
	}
	for _, id := range []string{strings.Repeat("s", 65), "a%7Cb", "a%2Fb"} {
		cases = append(cases, badRequest{name: "schedule id " + id, method: "PUT", path: "/v1/schedules/" + id,
			body: schedule("0 9 * * MON", "", send), status: 400, code: bad, field: "id"})
	}
	for _, op := range []struct{ method, suffix string }{{"GET", ""}, {"DELETE", ""}, {"POST", "/pause"}, {"POST", "/resume"}} {
		cases = append(cases, badRequest{name: op.method + " unknown schedule" + op.suffix, method: op.method,
			path: "/v1/schedules/nope" + op.suffix, status: 404, code: "not_found"})
	}
	e.refuse(t, cases)
}

// Cancelling a notification that does not exist, is another tenant's, or
// has an invalid id is refused, as is one a provider already took; none
// writes a cancellation.
func TestCancelNotificationBadInput(t *testing.T) {
	t.Parallel()
	e := newCampaignEnv(t)
	e.seedLifecycle(schemas.Lifecycle{ID: "n-acme", UserID: "u1", Template: "welcome", Status: processors.StatusScheduled, Tenant: "acme"})
	e.seedLifecycle(schemas.Lifecycle{ID: "n-sent", UserID: "u1", Template: "welcome", Status: processors.StatusSent,
		Channels: map[string]string{"email": processors.StatusSent}})
	cancel := func(name, id string, status int, code, field string) badRequest {
		return badRequest{name: name, method: "POST", path: "/v1/notifications/" + id + "/cancel", status: status, code: code, field: field}
	}
	e.refuse(t, []badRequest{
		cancel("unknown", "nope", 404, "not_found", ""),
		cancel("unknown with /", "a%2Fb", 404, "not_found", ""),
		cancel("id with |", "a%7Cb", 400, "invalid_argument", "id"),
		cancel("id too long", strings.Repeat("n", 201), 400, "invalid_argument", "id"),
		cancel("another tenant's", "n-acme", 404, "not_found", ""),
		cancel("already sent", "n-sent", 409, "conflict", ""),
	})
	for _, id := range []string{"n-acme", "n-sent"} {
		if e.srv.canceledKey(processors.CancelKey(id)) {
			t.Fatalf("%s: a refused cancel is readable on notify.cancels", id)
		}
	}
}

// The campaign-era fields of templates and profiles: a template's digest
// and a profile's attributes (what segments select on).
func TestCampaignInputsOnTemplatesAndProfiles(t *testing.T) {
	t.Parallel()
	e := newCampaignEnv(t)
	const bad = "invalid_argument"
	digest := func(d any) string {
		b, _ := json.Marshal(map[string]any{"channels": map[string]any{"email": map[string]any{"subject": "s", "text": "t"}}, "digest": d})
		return string(b)
	}
	attrs := func(a any) string {
		b, _ := json.Marshal(map[string]any{"locale": "en", "attributes": a})
		return string(b)
	}
	many := map[string]string{}
	for i := 0; i <= MaxAttributes; i++ {
		many[fmt.Sprintf("a%d", i)] = "x"
	}
	tmpl := func(name, body, field string) badRequest {
		return badRequest{name: name, method: "PUT", path: "/v1/templates/daily", body: body, status: 400, code: bad, field: field}
	}
	profile := func(name, body, field string) badRequest {
		return badRequest{name: name, method: "PUT", path: "/v1/profiles/u1", body: body, status: 400, code: bad, field: field}
	}
	e.refuse(t, []badRequest{
		tmpl("digest not an object", digest("10m"), "digest"),
		tmpl("digest unknown field", digest(map[string]any{"window": "10m", "size": 3}), "size"),
		tmpl("digest without window", digest(map[string]any{"max": 3}), "digest.window"),
		tmpl("digest window not a duration", digest(map[string]any{"window": "soon"}), "digest.window"),
		tmpl("digest window under 1s", digest(map[string]any{"window": "500ms"}), "digest.window"),
		tmpl("digest window negative", digest(map[string]any{"window": "-10m"}), "digest.window"),
		tmpl("digest window over the maximum", digest(map[string]any{"window": (processors.MaxDigestWindow + time.Second).String()}), "digest.window"),
		tmpl("digest max negative", digest(map[string]any{"window": "10m", "max": -1}), "digest.max"),
		tmpl("digest max over the maximum", digest(map[string]any{"window": "10m", "max": processors.MaxDigestMax + 1}), "digest.max"),
		tmpl("digest max over int32", digest(map[string]any{"window": "10m", "max": int64(1) << 40}), "digest.max"),
		profile("attributes not an object", attrs("plan=pro"), "attributes"),
		profile("attribute value not a string", attrs(map[string]any{"plan": 5}), "attributes"),
		profile("attribute name with a space", attrs(map[string]string{"a b": "x"}), "attributes.a b"),
		profile("attribute name with |", attrs(map[string]string{"a|b": "x"}), "attributes.a|b"),
		profile("empty attribute name", attrs(map[string]string{"": "x"}), "attributes."),
		profile("attribute name over 64 bytes", attrs(map[string]string{strings.Repeat("a", 65): "x"}), "attributes."+strings.Repeat("a", 64)+"…"),
		profile("attribute value over 1024 bytes", attrs(map[string]string{"plan": strings.Repeat("p", 1025)}), "attributes.plan"),
		profile("too many attributes", attrs(many), "attributes"),
	})
	rec := e.do(rootKey, "GET", "/v1/profiles/u1", nil)
	expect(t, rec, http.StatusNotFound, "not_found")
	expect(t, e.do(rootKey, "GET", "/v1/templates/daily", nil), http.StatusNotFound, "not_found")
}

// commandTable stands in for the campaign group in FuzzCampaignBody: as a
// producer hook it applies each command on notify.campaigns the moment it
// is produced, with the group's own transition, so a create is readable
// when the handler looks for it.
type commandTable struct {
	mu        sync.Mutex
	campaigns map[string]*schemas.Campaign
}

func (c *commandTable) OnProduceRecordBuffered(r *kgo.Record) {
	if r.Topic != string(topology.Campaigns) {
		return
	}
	cmd, err := schemas.CampaignCommandCodec.Decode(r.Value)
	if err != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if next, err := processors.CampaignTransition(c.campaigns[string(r.Key)], cmd, time.UnixMilli(cmd.At)); err == nil {
		c.campaigns[string(r.Key)] = next
	}
}

func (c *commandTable) Get(key string) (any, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v := c.campaigns[key]; v != nil {
		return v, nil
	}
	return nil, nil
}

func (c *commandTable) IteratorWithRange(string, string) (goka.Iterator, error) {
	return nil, fmt.Errorf("commandTable is not iterable")
}

func (c *commandTable) reset() {
	c.mu.Lock()
	c.campaigns = map[string]*schemas.Campaign{}
	c.mu.Unlock()
}

// FuzzCampaignBody sends any body to POST /v1/campaigns: it never panics and
// answers 202 or 4xx, a 4xx with an error body; a 202 answers a pending
// campaign, and what it stored passes the campaign checks.
func FuzzCampaignBody(f *testing.F) {
	srv := newTestServer(f)
	brokers, _ := srv.Producer.OptValue(kgo.SeedBrokers).([]string)
	table := &commandTable{}
	p, err := topology.NewProducer(brokers, kgo.WithHooks(table))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(p.Close)
	srv.Producer, srv.NoAudit, srv.WriteWait = p, true, 0
	srv.Now = func() time.Time { return time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC) }
	srv.Campaigns = &Campaigns{Table: table}
	h := srv.Handler()
	seed := func(v any) { b, _ := json.Marshal(v); f.Add(b) }
	seed(map[string]any{"template": "t", "audience": map[string]any{"topic": "news"}})
	seed(map[string]any{"id": "spring-sale", "name": "Spring", "template": "t", "data": map[string]any{"x": 1}, "priority": "low",
		"channels": []string{"email"}, "audience": map[string]any{"list": "vip"}, "rate": 100, "sendAt": "2026-12-02T09:00:00Z",
		"expiresAt": "2026-12-03T09:00:00Z", "localTime": "09:00", "approvalDeadline": "2026-12-02T00:00:00Z"})
	seed(map[string]any{"template": "t", "audience": map[string]any{"segment": `attributes.plan = "pro" AND NOT locale ^= "de"`}})
	seed(map[string]any{"template": "t", "audience": map[string]any{"users": []string{"u1", "u2"}}})
	seed(map[string]any{"template": "t", "audience": map[string]any{"segment": `(((`}, "rate": -1})
	seed(map[string]any{"template": "t", "audience": map[string]any{"topic": "a|b", "list": "x"}, "approvalDeadline": "2020-01-01T00:00:00Z"})
	f.Add([]byte(`{"template":`))
	f.Add([]byte(`{"template":"t","audience":{"users":["\u0000"]},"data":null}`))
	f.Add([]byte(`{"template":"t","audience":{"topic":"news"},"rate":1e40}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		table.reset()
		req := httptest.NewRequest("POST", "/v1/campaigns", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer k")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch {
		case rec.Code == http.StatusAccepted:
			var out campaignJSON
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.State != processors.CampaignPending {
				t.Fatalf("202 without a pending campaign: %s", rec.Body)
			}
			c := srv.campaign("", out.ID)
			if c == nil {
				t.Fatalf("202 for %q, not stored", out.ID)
			}
			if err := processors.ValidateCampaign(c); err != nil {
				t.Fatalf("stored an invalid campaign from %q: %v", body, err)
			}
		case rec.Code >= 400 && rec.Code < 500:
			var out struct{ Error *Error }
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Error == nil || out.Error.Code == "" || out.Error.Message == "" {
				t.Fatalf("%d without an error body: %s", rec.Code, rec.Body)
			}
		default:
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
	})
}
