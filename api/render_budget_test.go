package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

// withTemplates serves extra templates besides the test server's table, as if
// they had been stored (before validation refused such templates, say).
type withTemplates struct {
	IterableTable
	extra map[string]*schemas.Template
}

func (w withTemplates) Get(key string) (any, error) {
	if t, ok := w.extra[key]; ok {
		return schemas.Decoded[schemas.Template]{V: t}, nil
	}
	return w.IterableTable.Get(key)
}

func runawayServer(t *testing.T, lim processors.RenderLimits) http.Handler {
	srv := newTestServer(t)
	srv.Render = lim
	srv.Templates = withTemplates{srv.Templates, map[string]*schemas.Template{
		// 10^12 iterations over a list of the request's data.
		"cube": {ID: "cube", UpdatedAt: 1, Channels: map[string]schemas.ChannelContent{
			"email": {Subject: "s", HTML: "<p>{{range .a}}{{range $.a}}{{range $.a}}{{end}}{{end}}{{end}}</p>"}}},
		"nested": {ID: "nested", UpdatedAt: 1, Channels: map[string]schemas.ChannelContent{
			"email": {Text: "{{range 100000}}{{range 100000}}{{end}}{{end}}"}}},
		"echo": {ID: "echo", UpdatedAt: 1, Channels: map[string]schemas.ChannelContent{
			"sms": {Text: "{{.s}}"}}},
	}}
	return srv.Handler()
}

// preview serves one preview in a goroutine and fails the test if the handler
// does not return in a generous while.
func preview(t *testing.T, h http.Handler, ctx context.Context, id, body string) (int, *Error) {
	t.Helper()
	req := httptest.NewRequestWithContext(ctx, "POST", "/v1/templates/"+id+"/preview", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer k")
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() { defer close(done); h.ServeHTTP(rec, req) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("preview of %s still rendering after a minute", id)
	}
	var out struct{ Error *Error }
	_ = json.Unmarshal(rec.Body.Bytes(), &out)
	return rec.Code, out.Error
}

func cubeBody(n int) string {
	return `{"channel": "email", "data": {"a": [` + strings.TrimSuffix(strings.Repeat("0,", n), ",") + `]}}`
}

func TestPreviewOfARunawayTemplateIsStopped(t *testing.T) {
	lim := processors.LimitsFromConfig(config.Default().Render)
	lim.Timeout = time.Minute // only iterations or output stop it, however slow the machine
	cases := []struct {
		name    string
		lim     processors.RenderLimits
		id      string
		body    string
		message string
	}{
		{"time", processors.RenderLimits{Timeout: 200 * time.Millisecond}, "cube", cubeBody(10_000), "render cube/email html: render time exceeds 200ms"},
		{"iterations", lim, "cube", cubeBody(1_000), "render cube/email html: range iterations exceed 100000"},
		{"iterations of a template stored unchecked", lim, "nested", `{"channel": "email"}`, "render nested/email text: range iterations exceed 100000"},
		{"output", lim, "echo", `{"channel": "sms", "data": {"s": "` + strings.Repeat("短", 1601) + `"}}`, "render echo/sms text: output exceeds 1600 characters"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := runawayServer(t, c.lim)
			code, e := preview(t, h, context.Background(), c.id, c.body)
			if code != http.StatusUnprocessableEntity || e == nil || e.Code != "render_budget" || e.Field != "data" ||
				!strings.HasPrefix(e.Message, c.message) {
				t.Fatalf("%d %+v, want 422 render_budget %q", code, e, c.message)
			}
		})
	}
	// Within the budget, the same templates render.
	h := runawayServer(t, lim)
	if code, e := preview(t, h, context.Background(), "cube", cubeBody(40)); code != http.StatusOK {
		t.Fatalf("65,640 iterations: %d %+v", code, e)
	}
	if code, e := preview(t, h, context.Background(), "echo", `{"channel": "sms", "data": {"s": "`+strings.Repeat("短", 1600)+`"}}`); code != http.StatusOK {
		t.Fatalf("1,600 characters: %d %+v", code, e)
	}
}

func TestPreviewStopsWhenTheClientLeaves(t *testing.T) {
	h := runawayServer(t, processors.RenderLimits{}) // no budget at all: only the request's context stops it
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	if code, _ := preview(t, h, ctx, "cube", cubeBody(10_000)); code != statusClientClosedRequest {
		t.Fatalf("status %d", code)
	}
}

func TestPutTemplateRefusesWhatExceedsTheBudget(t *testing.T) {
	srv := newTestServer(t)
	srv.Render = processors.LimitsFromConfig(config.Default().Render)
	h := srv.Handler()
	cases := []struct{ body, field, message string }{
		{`{"channels": {"email": {"text": "{{range 100000}}{{range 100000}}{{end}}{{end}}"}}}`, "channels.email.text",
			"nested range of 10000000000 iterations exceeds 100000"},
		{`{"channels": {"email": {"subject": "{{range 1000000}}x{{end}}"}}}`, "channels.email.subject",
			"range of 1000000 iterations exceeds 100000"},
		{`{"channels": {"email": {"html": "{{define \"x\"}}{{template \"x\"}}{{end}}"}}}`, "channels.email.html",
			"{{define}}, {{template}} and {{block}} are not allowed: a notifyd template is one self-contained text"},
		{`{"channels": {"sms": {"text": "x"}}, "locales": {"de": {"sms": {"text": "{{$ = 1}}"}}}}`, "locales.de.sms.text",
			"$ cannot be declared or assigned"},
	}
	for _, c := range cases {
		req := httptest.NewRequest("PUT", "/v1/templates/t2", bytes.NewBufferString(c.body))
		req.Header.Set("Authorization", "Bearer k")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var out struct{ Error *Error }
		_ = json.Unmarshal(rec.Body.Bytes(), &out)
		if rec.Code != http.StatusBadRequest || out.Error == nil || out.Error.Field != c.field || out.Error.Message != c.message {
			t.Errorf("%s: %d %s, want 400 %s: %s", c.body, rec.Code, rec.Body, c.field, c.message)
		}
	}
}
