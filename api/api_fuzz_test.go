package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/tester"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// newTestServer serves the API over a real kfake broker; its tables are goka
// views on the goka tester, seeded with one template.
func newTestServer(t testing.TB) *Server {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := topology.CreateTopics(ctx, c.ListenAddrs(), 1, 1); err != nil {
		t.Fatal(err)
	}
	p, err := topology.NewProducer(c.ListenAddrs())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	tt := tester.New(t)
	view := func(table goka.Table, codec goka.Codec) *goka.View {
		v, err := goka.NewView(nil, table, codec, goka.WithViewTester(tt))
		if err != nil {
			t.Fatal(err)
		}
		vctx, vcancel := context.WithCancel(context.Background())
		go func() { _ = v.Run(vctx) }()
		t.Cleanup(vcancel)
		return v
	}
	templates := view(topology.Templates, topology.TemplateTableCodec())
	profiles := view(topology.Profiles, topology.ProfileTableCodec())
	status := view(goka.GroupTable(topology.StatusGroup), topology.LifecycleTableCodec())
	tt.SetTableValue(topology.Templates, "t", &schemas.Template{ID: "t", Channels: map[string]schemas.ChannelContent{"email": {Text: "{{.x}}"}}})
	versions := view(topology.TemplateVersions, topology.TemplateTableCodec())
	return &Server{Producer: p, Templates: templates, TemplateVersions: versions, Profiles: profiles, Status: status,
		Keys: NewKeys([]config.APIKey{{Name: "k", Key: "k"}}), MaxBodyBytes: 64 << 10, MaxBatch: 10, WriteWait: time.Second}
}

func FuzzSendBody(f *testing.F) {
	srv := newTestServer(f)
	h := srv.Handler()
	seed := func(v any) { b, _ := json.Marshal(v); f.Add(b) }
	seed(map[string]any{"template": "t", "recipients": []any{map[string]any{"userId": "u", "email": "a@example.com"}}})
	seed(map[string]any{"template": "t", "recipients": []any{map[string]any{"userId": "u", "phone": "+14155550100"}}, "data": map[string]any{"x": 1}})
	seed(map[string]any{"template": "t", "recipients": []any{}, "sendAt": "2026-01-01T00:00:00Z"})
	f.Add([]byte(`{"template":`))
	f.Add([]byte(`{"template":"t","recipients":[{"userId":"\u0000"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, path := range []string{"/v1/notifications", "/v1/notifications/batch"} {
			req := httptest.NewRequest("POST", path, bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer k")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			switch {
			case rec.Code == http.StatusAccepted && path == "/v1/notifications":
				var out sendResponse
				if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.EventID == "" || len(out.Notifications) == 0 {
					t.Fatalf("202 without ids: %s", rec.Body)
				}
			case rec.Code == http.StatusOK && path == "/v1/notifications/batch":
			case rec.Code >= 400 && rec.Code < 500:
				var out struct{ Error *Error }
				if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Error == nil || out.Error.Message == "" {
					t.Fatalf("%d without an error body: %s", rec.Code, rec.Body)
				}
			default:
				t.Fatalf("%s: status %d for %q: %s", path, rec.Code, body, rec.Body)
			}
		}
	})
}

func TestProfileAndTemplateBadInput(t *testing.T) {
	srv := newTestServer(t)
	h := srv.Handler()
	cases := []struct {
		method, path, body string
		status             int
		field              string
	}{
		{"PUT", "/v1/profiles/u1", `{"email": "nope"}`, 400, "email"},
		{"PUT", "/v1/profiles/u1", `{"timezone": "Mars/Olympus"}`, 400, "timezone"},
		{"PUT", "/v1/profiles/u1", `{"devices": [{"platform": "fax"}]}`, 400, "devices[0].platform"},
		{"PUT", "/v1/profiles/u1", `{"devices": [{"platform": "webpush"}]}`, 400, "devices[0].subscription"},
		{"PUT", "/v1/profiles/u1", `{"preferences": {"quietHours": {"start": "25:00", "end": "08:00"}}}`, 400, "preferences.quietHours.start"},
		{"PUT", "/v1/profiles/u1", `{"preferences": {"categories": {"marketing": {"fax": false}}}}`, 400, "preferences.categories.marketing.fax"},
		{"PUT", "/v1/profiles/u1", `{"userId": "u2"}`, 400, "userId"},
		{"PUT", "/v1/profiles/u%20x", `{}`, 400, "userId"},
		{"PUT", "/v1/templates/t2", `{"channels": {}}`, 400, "channels"},
		{"PUT", "/v1/templates/t2", `{"channels": {"email": {"subject": "{{.x"}}}`, 400, "channels.email.subject"},
		{"PUT", "/v1/templates/t2", `{"channels": {"email": {"text": "x"}}, "priority": "now"}`, 400, "priority"},
		{"POST", "/v1/templates/t/preview", `{"channel": "email"}`, 400, "data"},
		{"POST", "/v1/templates/t/preview", `{"channel": "sms", "data": {}}`, 400, "channel"},
		{"POST", "/v1/templates/missing/preview", `{"channel": "email"}`, 404, ""},
		{"GET", "/v1/notifications/nope", ``, 404, ""},
		{"GET", "/v1/profiles/nobody", ``, 404, ""},
		{"DELETE", "/v1/templates/missing", ``, 404, ""},
		{"GET", "/v2/anything", ``, 404, ""},
	}
	for _, c := range cases {
		req := httptest.NewRequest(c.method, c.path, bytes.NewBufferString(c.body))
		req.Header.Set("Authorization", "Bearer k")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var out struct{ Error *Error }
		_ = json.Unmarshal(rec.Body.Bytes(), &out)
		if rec.Code != c.status || out.Error == nil || out.Error.Field != c.field {
			t.Errorf("%s %s %s: %d %s, want %d field %q", c.method, c.path, c.body, rec.Code, rec.Body, c.status, c.field)
		}
	}
	// A good preview renders.
	req := httptest.NewRequest("POST", "/v1/templates/t/preview", bytes.NewBufferString(`{"channel": "email", "data": {"x": 12345678901234567}}`))
	req.Header.Set("Authorization", "Bearer k")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 200 || !bytes.Contains(rec.Body.Bytes(), []byte(`"text":"12345678901234567"`)) {
		t.Fatalf("preview: %d %s", rec.Code, rec.Body)
	}
}

func TestKeysNeverMatchAnEmptyToken(t *testing.T) {
	k := NewKeys([]config.APIKey{{Name: "unset", Key: ""}, {Name: "real", Key: "real-key-123"}})
	if k.Check("") != "" {
		t.Fatal("an empty token matched")
	}
	if k.Check("real-key-123") != "real" || k.Check("real-key-12") != "" {
		t.Fatal("key check")
	}
}
