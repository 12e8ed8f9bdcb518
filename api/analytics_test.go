package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/notifyd/notifyd/analytics"
	"github.com/notifyd/notifyd/config"
)

// The analytics endpoints answer with the rows of the calling key's tenant
// only: the same day, template and channel, different numbers per tenant.
func TestAnalyticsEndpointsFilterByTheKeysTenant(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ch, err := analytics.StartLocal(ctx, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Stop()
	conn, err := analytics.Open(ch.Addr, "default", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := analytics.Migrate(ctx, conn, "api_reports"); err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	at := day.Add(9 * time.Hour)
	b, err := conn.PrepareBatch(ctx, "INSERT INTO api_reports.events (tenant, id, notification_id, channel, provider, status, at, at_ms, accepted_at_ms)")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct {
		tenant, id, n, provider, status string
		after                           time.Duration
	}{
		{"", "d1s", "d1", "smtp", "sent", 100 * time.Millisecond},
		{"", "d1d", "d1", "smtp", "delivered", time.Second},
		{"", "d2s", "d2", "smtp", "sent", 200 * time.Millisecond},
		{"acme", "a1s", "a1", "smtp-acme", "sent", 300 * time.Millisecond},
	} {
		when := at.Add(e.after)
		if err := b.Append(e.tenant, e.id, e.n, "email", e.provider, e.status, when, uint64(when.UnixMilli()), uint64(at.UnixMilli())); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	srv := &Server{
		Keys: NewKeys([]config.APIKey{
			{Name: "default-analyst", Key: "kd", Scopes: []string{ScopeAnalyticsRead}},
			{Name: "acme-analyst", Key: "ka", Tenant: "acme", Scopes: []string{ScopeAnalyticsRead}},
		}),
		Reports: Analytics{Conn: func() driver.Conn { return conn }, DB: "api_reports"},
		Now:     func() time.Time { return day.Add(48 * time.Hour) },
	}
	h := srv.Handler()
	get := func(key, path string) map[string]any {
		t.Helper()
		req := httptest.NewRequest("GET", path, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", path, rec.Code, rec.Body)
		}
		var out map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	// rows reduces a report's list to "key=value" of two columns.
	rows := func(list any, key, value string) map[string]float64 {
		m := map[string]float64{}
		for _, r := range list.([]any) {
			r := r.(map[string]any)
			m[r[key].(string)] = r[value].(float64)
		}
		return m
	}
	window := "from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z"
	for key, want := range map[string]map[string]float64{"kd": {"sent": 2, "delivered": 1}, "ka": {"sent": 1}} {
		got := rows(get(key, "/v1/analytics/summary?groupBy=status&"+window)["rows"], "status", "notifications")
		if len(got) != len(want) || got["sent"] != want["sent"] || got["delivered"] != want["delivered"] {
			t.Fatalf("summary for %s: %v, want %v", key, got, want)
		}
	}
	for key, want := range map[string]string{"kd": "smtp", "ka": "smtp-acme"} {
		got := rows(get(key, "/v1/analytics/latency?groupBy=provider&"+window)["rows"], "provider", "sent")
		if len(got) != 1 || got[want] == 0 {
			t.Fatalf("latency for %s: %v, want only %s", key, got, want)
		}
		rec := get(key, "/v1/analytics/reconciliation?day=2026-11-20&grace=0s")
		if got := rows(rec["providers"], "provider", "missing"); len(got) != 1 || got[want] != 1 {
			t.Fatalf("reconciliation for %s: %v, want only %s", key, got, want)
		}
		if missing := rec["missing"].([]any); len(missing) != 1 {
			t.Fatalf("missing for %s: %v", key, missing)
		}
	}
}
