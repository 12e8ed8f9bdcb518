package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// rootKey is a configured key without scopes: every scope, default tenant.
const rootKey = "root-key-0001"

// keysEnv is an API server on a real kfake broker whose tables, managed keys
// included, are real goka views of it, with a clock the test moves.
type keysEnv struct {
	t       *testing.T
	srv     *Server
	h       http.Handler
	brokers []string

	mu  sync.Mutex
	now time.Time
}

func newKeysEnv(t *testing.T, keys ...config.APIKey) *keysEnv {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	brokers := c.ListenAddrs()
	if err := topology.CreateTopics(ctx, brokers, 1, 1, topology.Topic{Name: KeysTopic, Compact: true},
		topology.Topic{Name: AuditTopic}); err != nil {
		t.Fatal(err)
	}
	p, err := topology.NewProducer(brokers)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	views := []*goka.View{
		startView(t, brokers, topology.Templates, topology.TemplateTableCodec()),
		startView(t, brokers, topology.Profiles, topology.ProfileTableCodec()),
		startView(t, brokers, goka.GroupTable(topology.StatusGroup), topology.LifecycleTableCodec()),
		startView(t, brokers, goka.Table(KeysTopic), schemas.Lenient[schemas.APIKey]{C: schemas.APIKeyCodec}),
		startView(t, brokers, topology.TemplateVersions, topology.TemplateTableCodec()),
	}
	for _, v := range views {
		awaitRecovered(t, ctx, v)
	}
	e := &keysEnv{t: t, brokers: brokers, now: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	e.srv = &Server{Producer: p, Templates: views[0], Profiles: views[1], Status: views[2], ManagedKeys: views[3], TemplateVersions: views[4],
		Keys: NewKeys(append([]config.APIKey{{Name: "root", Key: rootKey}}, keys...)), MaxBodyBytes: 64 << 10,
		MaxBatch: 10, WriteWait: 5 * time.Second, Now: e.clock, Inbox: &Inbox{Secret: []byte("inbox-secret-0123456789")}}
	e.h = e.srv.Handler()
	return e
}

// startView runs a view of table until the test ends.
func startView(t *testing.T, brokers []string, table goka.Table, codec goka.Codec) *goka.View {
	t.Helper()
	kafka := topology.Kafka{Brokers: brokers, Replication: 1}
	v, err := goka.NewView(brokers, table, codec, kafka.ViewOptions(t.Name()+string(table))...)
	if err != nil {
		t.Fatal(err)
	}
	vctx, vcancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = v.Run(vctx) }()
	t.Cleanup(func() { vcancel(); <-done })
	return v
}

// awaitRecovered waits until v has recovered, or fails the test when ctx ends.
func awaitRecovered(t *testing.T, ctx context.Context, v *goka.View) {
	t.Helper()
	for !v.Recovered() {
		if ctx.Err() != nil {
			t.Fatal("view did not recover")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (e *keysEnv) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

func (e *keysEnv) advance(d time.Duration) {
	e.mu.Lock()
	e.now = e.now.Add(d)
	e.mu.Unlock()
}

// do serves one request with key; body may be a string or a value to marshal.
func (e *keysEnv) do(key, method, path string, body any) *httptest.ResponseRecorder {
	e.t.Helper()
	var b []byte
	switch v := body.(type) {
	case nil:
	case string:
		b = []byte(v)
	default:
		b, _ = json.Marshal(v)
	}
	req := httptest.NewRequest(method, path, bytes.NewReader(b))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	return rec
}

// create makes a managed key with creator and returns the answer.
func (e *keysEnv) create(creator string, body any) keyJSON {
	e.t.Helper()
	rec := e.do(creator, "POST", "/v1/keys", body)
	if rec.Code != http.StatusCreated {
		e.t.Fatalf("create %v: %d %s", body, rec.Code, rec.Body)
	}
	var k keyJSON
	if err := json.Unmarshal(rec.Body.Bytes(), &k); err != nil || k.Key == "" || k.ID == "" {
		e.t.Fatalf("create answer %s: %v", rec.Body, err)
	}
	return k
}

// expect asserts a status code and, for errors, the error code.
func expect(t *testing.T, rec *httptest.ResponseRecorder, status int, code string) {
	t.Helper()
	if rec.Code != status {
		t.Fatalf("status %d, want %d: %s", rec.Code, status, rec.Body)
	}
	if code != "" {
		var out struct{ Error *Error }
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Error == nil || out.Error.Code != code {
			t.Fatalf("want error code %q: %s", code, rec.Body)
		}
	}
}

// routeScopes is every route that takes an API key, with its scope.
var routeScopes = []struct {
	method, path, body, scope string
}{
	{"POST", "/v1/notifications", `{}`, ScopeSend},
	{"POST", "/v1/notifications/batch", `{}`, ScopeSend},
	{"GET", "/v1/notifications/n1", ``, ScopeNotificationsRead},
	{"POST", "/v1/notifications/n1/recall", ``, ScopeSend},
	{"POST", "/v1/notifications/n1/cancel", ``, ScopeSend},
	{"POST", "/v1/campaigns", `{}`, ScopeSend},
	{"GET", "/v1/campaigns", ``, ScopeNotificationsRead},
	{"GET", "/v1/campaigns/c1", ``, ScopeNotificationsRead},
	{"POST", "/v1/campaigns/c1/approve", `{}`, ScopeApprove},
	{"POST", "/v1/campaigns/c1/reject", `{}`, ScopeApprove},
	{"POST", "/v1/campaigns/c1/cancel", `{}`, ScopeSend},
	{"POST", "/v1/campaigns/c1/pause", `{}`, ScopeSend},
	{"POST", "/v1/campaigns/c1/resume", `{}`, ScopeSend},
	{"POST", "/v1/campaigns/c1/template", `{"version": 1}`, ScopeSend},
	{"POST", "/v1/topics/t1/subscribers", `{}`, ScopeProfilesWrite},
	{"DELETE", "/v1/topics/t1/subscribers/u1", ``, ScopeProfilesWrite},
	{"GET", "/v1/topics/t1/subscribers", ``, ScopeProfilesRead},
	{"POST", "/v1/lists/l1/members", `userId`, ScopeProfilesWrite},
	{"GET", "/v1/lists/l1/members", ``, ScopeProfilesRead},
	{"PUT", "/v1/schedules/s1", `{}`, ScopeSend},
	{"GET", "/v1/schedules/s1", ``, ScopeNotificationsRead},
	{"POST", "/v1/schedules/s1/pause", ``, ScopeSend},
	{"POST", "/v1/schedules/s1/resume", ``, ScopeSend},
	{"DELETE", "/v1/schedules/s1", ``, ScopeSend},
	{"PUT", "/v1/profiles/u1", `{"locale": "en"}`, ScopeProfilesWrite},
	{"GET", "/v1/profiles/u1", ``, ScopeProfilesRead},
	{"DELETE", "/v1/profiles/u1", ``, ScopeProfilesWrite},
	{"PUT", "/v1/templates/t1", `{}`, ScopeTemplatesWrite},
	{"GET", "/v1/templates/t1", ``, ScopeTemplatesRead},
	{"GET", "/v1/templates", ``, ScopeTemplatesRead},
	{"DELETE", "/v1/templates/t1", ``, ScopeTemplatesWrite},
	{"POST", "/v1/templates/t1/preview", `{}`, ScopeTemplatesRead},
	{"GET", "/v1/templates/t1/versions", ``, ScopeTemplatesRead},
	{"GET", "/v1/templates/t1/versions/1", ``, ScopeTemplatesRead},
	{"POST", "/v1/receipts", `{}`, ScopeReceiptsWrite},
	{"GET", "/v1/analytics/summary", ``, ScopeAnalyticsRead},
	{"GET", "/v1/analytics/latency", ``, ScopeAnalyticsRead},
	{"GET", "/v1/analytics/reconciliation", ``, ScopeAnalyticsRead},
	{"GET", "/v1/inbox/u1/token", ``, ScopeInboxToken},
	{"POST", "/v1/keys", `{}`, ScopeAdmin},
	{"GET", "/v1/keys", ``, ScopeAdmin},
	{"GET", "/v1/keys/0123456789abcdef", ``, ScopeAdmin},
	{"DELETE", "/v1/keys/0123456789abcdef", ``, ScopeAdmin},
	{"POST", "/v1/keys/0123456789abcdef/rotate", `{}`, ScopeAdmin},
}

// sameShape tells whether a concrete path fits a route pattern: every
// segment equal, or a wildcard.
func sameShape(concrete, pattern string) bool {
	c, p := strings.Split(concrete, "/"), strings.Split(pattern, "/")
	if len(c) != len(p) {
		return false
	}
	for i := range c {
		if c[i] != p[i] && !strings.HasPrefix(p[i], "{") {
			return false
		}
	}
	return true
}

// allBut is every scope except scope and those that imply it.
func allBut(scope string) []string {
	var out []string
	for _, s := range allScopes {
		p := &Principal{Scopes: []string{s}}
		if s != ScopeTenants && !p.Can(scope) {
			out = append(out, s)
		}
	}
	if scope != ScopeTenants && scope != ScopeAdmin {
		out = append(out, ScopeTenants)
	}
	return out
}

// Each route refuses a key without its scope (403, naming the scope) and
// lets a key with only that scope through to its handler.
func TestEveryRouteNeedsItsScope(t *testing.T) {
	var keys []config.APIKey
	for _, s := range allScopes {
		keys = append(keys, config.APIKey{Name: "with " + s, Key: "with-" + s, Scopes: []string{s}},
			config.APIKey{Name: "without " + s, Key: "without-" + s, Scopes: allBut(s)})
	}
	t.Parallel()
	e := newKeysEnv(t, keys...)
	// The list below covers every route that takes an API key: a route
	// added without its line here fails this test.
	listed := map[string]bool{}
	for _, rt := range routeScopes {
		listed[rt.method+" "+rt.path] = true
	}
	for _, pattern := range e.srv.Routes() {
		method, path, _ := strings.Cut(pattern, " ")
		if strings.HasPrefix(path, "/t/") || path == "/v1/receipts/{provider}" ||
			(strings.HasPrefix(path, "/v1/inbox/") && !strings.HasSuffix(path, "/token")) {
			continue // authenticated by a token or a provider's signature, not a key
		}
		found := false
		for l := range listed {
			lm, lp, _ := strings.Cut(l, " ")
			found = found || (lm == method && sameShape(lp, path))
		}
		if !found {
			t.Errorf("route %s is not in routeScopes", pattern)
		}
	}
	for _, rt := range routeScopes {
		t.Run(rt.method+" "+rt.path, func(t *testing.T) {
			rec := e.do("without-"+rt.scope, rt.method, rt.path, rt.body)
			expect(t, rec, http.StatusForbidden, "forbidden")
			if want := fmt.Sprintf(`this key lacks scope \"%s\"`, rt.scope); !strings.Contains(rec.Body.String(), want) {
				t.Fatalf("403 does not name the scope: %s", rec.Body)
			}
			for _, key := range []string{"with-" + rt.scope, rootKey} {
				if rec := e.do(key, rt.method, rt.path, rt.body); rec.Code == 401 || rec.Code == 403 {
					t.Fatalf("%s refused: %d %s", key, rec.Code, rec.Body)
				}
			}
			expect(t, e.do("", rt.method, rt.path, rt.body), http.StatusUnauthorized, "unauthenticated")
		})
	}
	// send:transactional implies send; admin implies all but tenants.
	tx := &Principal{Scopes: []string{ScopeSendTransactional}}
	admin := &Principal{Scopes: []string{ScopeAdmin}}
	if !tx.Can(ScopeSend) || tx.Can(ScopeProfilesRead) || !admin.Can(ScopeProfilesWrite) || admin.Can(ScopeTenants) {
		t.Fatal("scope implications")
	}
}

// A managed key works at once on the instance that made it, is listed
// without its secret, keeps working through a rotation's overlap and is
// refused after it, and is refused at once when revoked.
func TestManagedKeyLifecycle(t *testing.T) {
	t.Parallel()
	e := newKeysEnv(t)
	k := e.create(rootKey, map[string]any{"name": "reader", "scopes": []string{"profiles:read"}})
	if k.Tenant != "default" || k.Status != "active" || len(k.Scopes) != 1 || !strings.HasPrefix(k.Key, "ndk_"+k.ID+"_") {
		t.Fatalf("created %+v", k)
	}
	expect(t, e.do(k.Key, "GET", "/v1/profiles/u1", nil), http.StatusNotFound, "not_found")
	expect(t, e.do(k.Key, "PUT", "/v1/profiles/u1", `{}`), http.StatusForbidden, "forbidden")

	list := e.do(rootKey, "GET", "/v1/keys", nil)
	expect(t, list, http.StatusOK, "")
	secret := k.Key[len("ndk_"+k.ID+"_"):]
	if !strings.Contains(list.Body.String(), k.ID) || strings.Contains(list.Body.String(), secret) ||
		strings.Contains(list.Body.String(), `"key"`) || strings.Contains(list.Body.String(), "hash") {
		t.Fatalf("list: %s", list.Body)
	}
	expect(t, e.do(rootKey, "GET", "/v1/keys/"+k.ID, nil), http.StatusOK, "")
	expect(t, e.do(rootKey, "GET", "/v1/keys/ffffffffffffffff", nil), http.StatusNotFound, "not_found")

	// Rotation with a 1h overlap: both work, then only the new one.
	rec := e.do(rootKey, "POST", "/v1/keys/"+k.ID+"/rotate", `{"overlap": "1h"}`)
	expect(t, rec, http.StatusCreated, "")
	var next keyJSON
	_ = json.Unmarshal(rec.Body.Bytes(), &next)
	if next.Key == "" || next.ID == k.ID || next.Name != "reader" || next.Replaces != k.ID || len(next.Scopes) != 1 {
		t.Fatalf("rotated %s", rec.Body)
	}
	for _, key := range []string{k.Key, next.Key} {
		expect(t, e.do(key, "GET", "/v1/profiles/u1", nil), http.StatusNotFound, "not_found")
	}
	e.advance(59 * time.Minute)
	expect(t, e.do(k.Key, "GET", "/v1/profiles/u1", nil), http.StatusNotFound, "")
	e.advance(2 * time.Minute)
	expired := e.do(k.Key, "GET", "/v1/profiles/u1", nil)
	expect(t, expired, http.StatusUnauthorized, "unauthenticated")
	expect(t, e.do(next.Key, "GET", "/v1/profiles/u1", nil), http.StatusNotFound, "")
	expect(t, e.do(rootKey, "POST", "/v1/keys/"+k.ID+"/rotate", nil), http.StatusConflict, "conflict")

	// Revocation takes effect at once, and says no more than an unknown key.
	expect(t, e.do(rootKey, "DELETE", "/v1/keys/"+next.ID, nil), http.StatusNoContent, "")
	revoked := e.do(next.Key, "GET", "/v1/profiles/u1", nil)
	expect(t, revoked, http.StatusUnauthorized, "unauthenticated")
	unknown := e.do("ndk_0123456789abcdef_"+strings.Repeat("0", 64), "GET", "/v1/profiles/u1", nil)
	if revoked.Body.String() != expired.Body.String() || unknown.Body.String() != expired.Body.String() {
		t.Fatalf("401s differ: %s / %s / %s", revoked.Body, expired.Body, unknown.Body)
	}
	expect(t, e.do(rootKey, "DELETE", "/v1/keys/"+next.ID, nil), http.StatusNoContent, "")
	var got keyJSON
	rec = e.do(rootKey, "GET", "/v1/keys/"+next.ID, nil)
	if _ = json.Unmarshal(rec.Body.Bytes(), &got); got.Status != "revoked" || got.RevokedAt == "" {
		t.Fatalf("revoked key reads %s", rec.Body)
	}

	// An expiry of its own.
	short := e.create(rootKey, map[string]any{"name": "short", "scopes": []string{"send"},
		"expiresAt": e.clock().Add(time.Minute).Format(time.RFC3339)})
	expect(t, e.do(short.Key, "POST", "/v1/notifications", `{}`), http.StatusBadRequest, "")
	e.advance(time.Minute)
	expect(t, e.do(short.Key, "POST", "/v1/notifications", `{}`), http.StatusUnauthorized, "unauthenticated")

	// The topic holds each key's hash, never its secret.
	raw := readTopic(t, e.brokers, KeysTopic, 5)
	for _, key := range []string{k.Key, next.Key, short.Key} {
		_, sec, _ := ParseManagedKey(key)
		h := sha256.Sum256([]byte(sec))
		if bytes.Contains(raw, []byte(sec)) || !bytes.Contains(raw, h[:]) {
			t.Fatalf("key %s: secret stored or hash missing", key[:20])
		}
	}
}

// A key never makes a key more powerful than itself: scopes, tenant,
// expiry and rate limit; and it cannot revoke a key holding scopes it lacks.
func TestKeysCannotGrantMoreThanTheirCreator(t *testing.T) {
	t.Parallel()
	e := newKeysEnv(t, config.APIKey{Name: "limited", Key: "limited-admin", Scopes: []string{ScopeAdmin}, RateLimit: 100, Burst: 100})
	admin := e.create(rootKey, map[string]any{"name": "admin", "scopes": []string{"admin"},
		"expiresAt": e.clock().Add(48 * time.Hour).Format(time.RFC3339)})
	cases := []struct {
		name string
		body map[string]any
	}{
		{"tenants scope", map[string]any{"name": "x", "scopes": []string{"tenants"}}},
		{"another tenant", map[string]any{"name": "x", "scopes": []string{"send"}, "tenant": "acme"}},
		{"outlives its creator", map[string]any{"name": "x", "scopes": []string{"send"},
			"expiresAt": e.clock().Add(72 * time.Hour).Format(time.RFC3339)}},
	}
	for _, c := range cases {
		expect(t, e.do(admin.Key, "POST", "/v1/keys", c.body), http.StatusForbidden, "forbidden")
	}
	child := e.create(admin.Key, map[string]any{"name": "child", "scopes": []string{"send", "admin"}})
	if child.ExpiresAt != admin.ExpiresAt {
		t.Fatalf("child of an expiring key expires %q, creator %q", child.ExpiresAt, admin.ExpiresAt)
	}
	sender := e.create(child.Key, map[string]any{"name": "sender", "scopes": []string{"send"}})
	expect(t, e.do(sender.Key, "POST", "/v1/keys", map[string]any{"name": "x", "scopes": []string{"send"}}), http.StatusForbidden, "forbidden")

	// Rate limits pass down and cannot be raised.
	for _, body := range []map[string]any{
		{"name": "x", "scopes": []string{"send"}, "rateLimit": 0},
		{"name": "x", "scopes": []string{"send"}, "rateLimit": 101},
		{"name": "x", "scopes": []string{"send"}, "rateLimit": 100, "burst": 101},
	} {
		expect(t, e.do("limited-admin", "POST", "/v1/keys", body), http.StatusForbidden, "forbidden")
	}
	inherited := e.create("limited-admin", map[string]any{"name": "y", "scopes": []string{"send"}})
	if inherited.RateLimit != 100 || inherited.Burst != 100 {
		t.Fatalf("limits not inherited: %+v", inherited)
	}

	// Tenants: only a key with `tenants` makes keys elsewhere; a tenant's
	// admin sees and manages its own tenant's keys only.
	acme := e.create(rootKey, map[string]any{"name": "acme admin", "scopes": []string{"admin"}, "tenant": "acme"})
	if acme.Tenant != "acme" {
		t.Fatalf("tenant %q", acme.Tenant)
	}
	rec := e.do(acme.Key, "GET", "/v1/keys", nil)
	if expect(t, rec, http.StatusOK, ""); strings.Contains(rec.Body.String(), admin.ID) || !strings.Contains(rec.Body.String(), acme.ID) {
		t.Fatalf("acme lists %s", rec.Body)
	}
	expect(t, e.do(acme.Key, "GET", "/v1/keys?tenant=default", nil), http.StatusForbidden, "forbidden")
	expect(t, e.do(acme.Key, "GET", "/v1/keys/"+admin.ID, nil), http.StatusNotFound, "not_found")
	expect(t, e.do(acme.Key, "DELETE", "/v1/keys/"+admin.ID, nil), http.StatusNotFound, "not_found")
	expect(t, e.do(rootKey, "GET", "/v1/keys?tenant=acme", nil), http.StatusOK, "")

	// An admin cannot revoke or rotate a key that holds `tenants`.
	super := e.create(rootKey, map[string]any{"name": "super", "scopes": []string{"admin", "tenants"}})
	expect(t, e.do(admin.Key, "DELETE", "/v1/keys/"+super.ID, nil), http.StatusForbidden, "forbidden")
	expect(t, e.do(admin.Key, "POST", "/v1/keys/"+super.ID+"/rotate", nil), http.StatusForbidden, "forbidden")
	expect(t, e.do(super.Key, "GET", "/v1/keys", nil), http.StatusOK, "")
}

// Over its rate a key gets 429 with a Retry-After of whole seconds.
func TestKeyRateLimit(t *testing.T) {
	t.Parallel()
	e := newKeysEnv(t, config.APIKey{Name: "slow", Key: "slow-key-0001", Scopes: []string{ScopeProfilesRead}, RateLimit: 1, Burst: 2})
	for i := 0; i < 2; i++ {
		expect(t, e.do("slow-key-0001", "GET", "/v1/profiles/u1", nil), http.StatusNotFound, "")
	}
	rec := e.do("slow-key-0001", "GET", "/v1/profiles/u1", nil)
	expect(t, rec, http.StatusTooManyRequests, "rate_limited")
	if rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("Retry-After %q", rec.Header().Get("Retry-After"))
	}
	expect(t, e.do(rootKey, "GET", "/v1/profiles/u1", nil), http.StatusNotFound, "") // other keys are not limited
	e.advance(time.Second)
	expect(t, e.do("slow-key-0001", "GET", "/v1/profiles/u1", nil), http.StatusNotFound, "")

	k := e.create(rootKey, map[string]any{"name": "trickle", "scopes": []string{"profiles:read"}, "rateLimit": 0.2})
	expect(t, e.do(k.Key, "GET", "/v1/profiles/u1", nil), http.StatusNotFound, "")
	rec = e.do(k.Key, "GET", "/v1/profiles/u1", nil)
	if expect(t, rec, http.StatusTooManyRequests, "rate_limited"); rec.Header().Get("Retry-After") != "5" {
		t.Fatalf("Retry-After %q at 0.2/s", rec.Header().Get("Retry-After"))
	}
}

// Every authenticated write leaves an audit event with its final status;
// reads and unauthenticated requests leave none, and no body is recorded.
func TestAuditEventsForWrites(t *testing.T) {
	t.Parallel()
	e := newKeysEnv(t, config.APIKey{Name: "reader", Key: "reader-key-1", Scopes: []string{ScopeProfilesRead}},
		config.APIKey{Name: "slow", Key: "slow-key-0001", Scopes: []string{ScopeTemplatesWrite}, RateLimit: 1, Burst: 1})
	expect(t, e.do(rootKey, "PUT", "/v1/profiles/u1", `{"email": "secret.person@example.com"}`), http.StatusOK, "")
	expect(t, e.do(rootKey, "GET", "/v1/profiles/u1", nil), http.StatusOK, "")
	expect(t, e.do(rootKey, "DELETE", "/v1/templates/missing", nil), http.StatusNotFound, "")
	expect(t, e.do("reader-key-1", "DELETE", "/v1/profiles/u1", nil), http.StatusForbidden, "")
	expect(t, e.do("nobody", "DELETE", "/v1/profiles/u1", nil), http.StatusUnauthorized, "")
	expect(t, e.do("slow-key-0001", "DELETE", "/v1/templates/gone", nil), http.StatusNotFound, "")
	expect(t, e.do("slow-key-0001", "DELETE", "/v1/templates/gone", nil), http.StatusTooManyRequests, "") // not audited
	k := e.create(rootKey, map[string]any{"name": "acme", "scopes": []string{"send"}, "tenant": "acme"})
	expect(t, e.do(k.Key, "POST", "/v1/notifications", `{}`), http.StatusBadRequest, "")

	type seen struct {
		key string
		ev  *schemas.AuditEvent
	}
	var evs []seen
	var raw []byte
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(AuditTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for len(evs) < 6 && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			ev, err := schemas.AuditEventCodec.Decode(r.Value)
			if err != nil {
				t.Fatal(err)
			}
			raw = append(raw, r.Value...)
			evs = append(evs, seen{string(r.Key), ev})
		})
	}
	want := []struct {
		key, action, keyName string
		status               int32
		resources            map[string]string
	}{
		{"default", "PUT /v1/profiles/{userId}", "root", 200, map[string]string{"userId": "u1"}},
		{"default", "DELETE /v1/templates/{id}", "root", 404, map[string]string{"id": "missing"}},
		{"default", "DELETE /v1/profiles/{userId}", "reader", 403, map[string]string{"userId": "u1"}},
		{"default", "DELETE /v1/templates/{id}", "slow", 404, map[string]string{"id": "gone"}},
		{"default", "POST /v1/keys", "root", 201, map[string]string{"keyId": k.ID}},
		{"acme", "POST /v1/notifications", "acme", 400, map[string]string{}},
	}
	if len(evs) != len(want) {
		t.Fatalf("%d audit events, want %d: %+v", len(evs), len(want), evs)
	}
	for i, w := range want {
		ev := evs[i].ev
		if evs[i].key != w.key || ev.Action != w.action || ev.KeyName != w.keyName || ev.Status != w.status ||
			fmt.Sprint(ev.Resources) != fmt.Sprint(w.resources) || ev.RemoteAddr == "" || ev.ID == "" ||
			ev.At != e.clock().UnixMilli() {
			t.Errorf("event %d: key %s %+v, want %+v", i, evs[i].key, ev, w)
		}
	}
	if evs[5].ev.Tenant != "acme" || evs[5].ev.KeyID != k.ID || evs[0].ev.KeyID != "config:root" {
		t.Errorf("principals: %+v %+v", evs[5].ev, evs[0].ev)
	}
	if bytes.Contains(raw, []byte("secret.person")) || bytes.Contains(raw, []byte(k.Key[20:])) {
		t.Fatal("an audit event holds a body or a secret")
	}
	// Nothing more: the GET, the 401 and the 429 left none.
	pctx, pcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer pcancel()
	if n := cl.PollFetches(pctx).NumRecords(); n != 0 {
		t.Fatalf("%d more audit events", n)
	}
}

// Bad input to /v1/keys is refused with the field named.
func TestKeysBadInput(t *testing.T) {
	t.Parallel()
	e := newKeysEnv(t)
	k := e.create(rootKey, map[string]any{"name": "k", "scopes": []string{"send"}})
	cases := []struct {
		method, path, body string
		status             int
		field              string
	}{
		{"POST", "/v1/keys", `{"name": "x", "scopes": ["send", "fly"]}`, 400, "scopes[1]"},
		{"POST", "/v1/keys", `{"name": "x", "scopes": []}`, 400, "scopes"},
		{"POST", "/v1/keys", `{"scopes": ["send"]}`, 400, "name"},
		{"POST", "/v1/keys", `{"name": "a\u0000b", "scopes": ["send"]}`, 400, "name"},
		{"POST", "/v1/keys", `{"name": "x", "scopes": ["send"], "tenant": "Acme|x"}`, 400, "tenant"},
		{"POST", "/v1/keys", `{"name": "x", "scopes": ["send"], "expiresAt": "tomorrow"}`, 400, "expiresAt"},
		{"POST", "/v1/keys", `{"name": "x", "scopes": ["send"], "expiresAt": "2000-01-01T00:00:00Z"}`, 400, "expiresAt"},
		{"POST", "/v1/keys", `{"name": "x", "scopes": ["send"], "rateLimit": -1}`, 400, "rateLimit"},
		{"POST", "/v1/keys", `{"name": "x", "scopes": ["send"], "burst": -1}`, 400, "burst"},
		{"POST", "/v1/keys", `{"name": "x", "scopes": ["send"], "admin": true}`, 400, "admin"},
		{"POST", "/v1/keys", `{"name": "x", "scopes": "send"}`, 400, "scopes"},
		{"POST", "/v1/keys", `{"name": `, 400, ""},
		{"POST", "/v1/keys", `{"name": "` + strings.Repeat("x", 20<<10) + `", "scopes": ["send"]}`, 413, ""},
		{"POST", "/v1/keys/" + k.ID + "/rotate", `{"overlap": "31d"}`, 400, "overlap"},
		{"POST", "/v1/keys/" + k.ID + "/rotate", `{"overlap": "721h"}`, 400, "overlap"},
		{"POST", "/v1/keys/" + k.ID + "/rotate", `{"overlap": "-1h"}`, 400, "overlap"},
		{"POST", "/v1/keys/" + k.ID + "/rotate", `{"overlap": 5}`, 400, "overlap"},
	}
	for _, c := range cases {
		rec := e.do(rootKey, c.method, c.path, c.body)
		var out struct{ Error *Error }
		_ = json.Unmarshal(rec.Body.Bytes(), &out)
		if rec.Code != c.status || out.Error == nil || out.Error.Field != c.field {
			t.Errorf("%s %s %.60s: %d %.200s, want %d field %q", c.method, c.path, c.body, rec.Code, rec.Body, c.status, c.field)
		}
	}
	if _, err := LoadKeys([]config.APIKey{{Name: "x", Key: "some-key-1", Scopes: []string{"sned"}}}); err == nil {
		t.Error("a configured key with an unknown scope loaded")
	}
	if _, err := LoadKeys([]config.APIKey{{Name: "x", Key: "some-key-1", Tenant: "Bad Tenant"}}); err == nil {
		t.Error("a configured key with a bad tenant loaded")
	}
}

func FuzzParseManagedKey(f *testing.F) {
	_, key, _ := newManagedKey()
	f.Add(key)
	f.Add("ndk_0123456789abcdef_" + strings.Repeat("a", 64))
	f.Add("ndk_0123456789ABCDEF_" + strings.Repeat("a", 64))
	f.Add("ndk_0123456789abcdef" + strings.Repeat("a", 65))
	f.Add("ndk_0123456789abcdef_")
	f.Add("ndk_" + strings.Repeat("0", 36))
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		id, secret, ok := ParseManagedKey(s)
		if !ok {
			if id != "" || secret != "" {
				t.Fatal("parts of a refused key")
			}
			return
		}
		if "ndk_"+id+"_"+secret != s || len(id) != keyIDLen || len(secret) != keySecretLen || !lowerHex(id+secret) {
			t.Fatalf("%q parsed as %q %q", s, id, secret)
		}
	})
}

// readTopic returns the values of a topic's first n records, concatenated.
func readTopic(t *testing.T, brokers []string, topic string, n int) []byte {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []byte
	for got := 0; got < n && ctx.Err() == nil; {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			out = append(out, r.Value...)
			got++
		})
	}
	return out
}
