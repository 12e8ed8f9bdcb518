package analytics

import (
	"context"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

type ev struct {
	id, notification, channel, provider, status string
	at                                          time.Time
	accepted                                    time.Time
}

// insertEvents writes evs as tenant's events.
func insertEvents(t *testing.T, conn driver.Conn, db, tenant string, evs []ev) {
	t.Helper()
	b, err := conn.PrepareBatch(context.Background(), "INSERT INTO "+db+".events (tenant, id, notification_id, channel, provider, status, template, priority, at, at_ms, accepted_at_ms)")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if err := b.Append(tenant, e.id, e.notification, e.channel, e.provider, e.status, "t", "normal", e.at, uint64(e.at.UnixMilli()), uint64(e.accepted.UnixMilli())); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
}

// The tenants of reportFixture: every report of one must see none of the other's rows.
const (
	tenantA = "acme"
	tenantB = "globex"
)

// A day of tenant A: n1..n3 sent by sms-a (n1, n2 delivered later), n4 sent
// by smtp with no receipt, n5 suppressed. The same day of tenant B, on the
// same providers and template, with other numbers: b1 sent by sms-a after
// 5 s and delivered 9 s later, b2 sent by smtp with no receipt, b3 suppressed.
func reportFixture(t *testing.T) (driver.Conn, string, time.Time) {
	conn, db := testDB(t)
	if _, err := Migrate(context.Background(), conn, db); err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	acc := day.Add(9 * time.Hour)
	ms := func(d int) time.Time { return acc.Add(time.Duration(d) * time.Millisecond) }
	insertEvents(t, conn, db, tenantA, []ev{
		{"1a", "n1", "", "", "accepted", acc, acc}, {"1s", "n1", "sms", "sms-a", "sent", ms(100), acc}, {"1d", "n1", "sms", "sms-a", "delivered", ms(1100), acc},
		{"2a", "n2", "", "", "accepted", acc, acc}, {"2s", "n2", "sms", "sms-a", "sent", ms(200), acc}, {"2d", "n2", "sms", "sms-a", "delivered", ms(3200), acc},
		{"3a", "n3", "", "", "accepted", acc, acc}, {"3s", "n3", "sms", "sms-a", "sent", ms(300), acc},
		{"4a", "n4", "", "", "accepted", acc, acc}, {"4s", "n4", "email", "smtp", "sent", ms(50), acc},
		{"5a", "n5", "", "", "accepted", acc, acc}, {"5x", "n5", "email", "", "suppressed", ms(5), acc},
		// the next hour: n6 sent late in the day, still within the grace period at "now"
		{"6s", "n6", "sms", "sms-a", "sent", day.Add(23*time.Hour + 59*time.Minute), day.Add(23*time.Hour + 59*time.Minute)},
	})
	insertEvents(t, conn, db, tenantB, []ev{
		{"b1a", "b1", "", "", "accepted", acc, acc}, {"b1s", "b1", "sms", "sms-a", "sent", ms(5000), acc}, {"b1d", "b1", "sms", "sms-a", "delivered", ms(14000), acc},
		{"b2a", "b2", "", "", "accepted", acc, acc}, {"b2s", "b2", "email", "smtp", "sent", ms(7000), acc},
		{"b3a", "b3", "", "", "accepted", acc, acc}, {"b3x", "b3", "email", "", "suppressed", ms(5), acc},
	})
	return conn, db, day
}

func TestSummaryCountsPerStatusAndHour(t *testing.T) {
	conn, db, day := reportFixture(t)
	tab, err := Summary(context.Background(), conn, db, SummaryQuery{Tenant: tenantA, From: day, To: day.Add(24 * time.Hour), GroupBy: []string{"status"}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, r := range tab.Rows {
		got[r[0].(string)] = r[1].(uint64)
	}
	want := map[string]uint64{"accepted": 5, "sent": 5, "delivered": 2, "suppressed": 1}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("summary %v, want %v", got, want)
		}
	}
	// Asked 0.5 s into the minute its events are in (the default To is now):
	// that minute counts.
	early, err := Summary(context.Background(), conn, db, SummaryQuery{Tenant: tenantA, From: day, To: day.Add(9*time.Hour + 500*time.Millisecond), GroupBy: []string{"status"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(early.Rows) == 0 || early.Rows[0][0] != "accepted" || early.Rows[0][1] != uint64(5) {
		t.Fatalf("summary to half a second into 09:00: %v, want the 5 accepted at 09:00:00", early.Rows)
	}
	hourly, err := Summary(context.Background(), conn, db, SummaryQuery{Tenant: tenantA, From: day, To: day.Add(24 * time.Hour),
		GroupBy: []string{"channel"}, Interval: "hour"})
	if err != nil {
		t.Fatal(err)
	}
	if hourly.Columns[0] != "time" || len(hourly.Rows) == 0 || hourly.Rows[0][0].(time.Time).Hour() != 9 {
		t.Fatalf("hourly %v %v", hourly.Columns, hourly.Rows)
	}
	if _, err := Summary(context.Background(), conn, db, SummaryQuery{GroupBy: []string{"status; DROP TABLE x"}}); err == nil {
		t.Fatal("accepted an unknown dimension")
	}
	if _, err := Summary(context.Background(), conn, db, SummaryQuery{Interval: "week"}); err == nil {
		t.Fatal("accepted an unknown interval")
	}
}

func TestLatencyPercentiles(t *testing.T) {
	conn, db, day := reportFixture(t)
	tab, err := Latency(context.Background(), conn, db, LatencyQuery{Tenant: tenantA, From: day, To: day.Add(24 * time.Hour), GroupBy: []string{"provider"}})
	if err != nil {
		t.Fatal(err)
	}
	rows := tab.Objects()
	var smsA map[string]any
	for _, r := range rows {
		if r["provider"] == "sms-a" {
			smsA = r
		}
	}
	// sms-a: accept→sent 0 (n6), 100, 200, 300 ms; sent→delivered 1000 and 3000 ms.
	// Exact percentiles take the value at ⌊p·n⌋: p50 of 4 values is the third.
	if smsA == nil || smsA["sent"] != uint64(4) || smsA["delivered"] != uint64(2) || smsA["accept_to_sent_p50_ms"] != int64(200) ||
		smsA["accept_to_sent_p99_ms"] != int64(300) || smsA["sent_to_delivered_p99_ms"] != int64(3000) {
		t.Fatalf("sms-a latency %v", smsA)
	}
}

func TestReconciliationFindsSentWithoutReceipt(t *testing.T) {
	conn, db, day := reportFixture(t)
	now := day.Add(24*time.Hour + 30*time.Minute) // n6 was sent 31 minutes ago
	rec, err := Reconcile(context.Background(), conn, db, ReconcileQuery{Tenant: tenantA, Day: day, Grace: time.Hour, Now: now, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]any{}
	for _, r := range rec.Summary.Rows {
		got[r[0].(string)] = r[2:]
	}
	// sms-a: 4 sent, 2 receipts, 1 missing (n3), 1 still within the grace period (n6); smtp: 1 sent, 1 missing.
	if a := got["sms-a"]; a == nil || a[0] != uint64(4) || a[1] != uint64(2) || a[2] != uint64(1) || a[3] != uint64(1) {
		t.Fatalf("sms-a %v", got["sms-a"])
	}
	if s := got["smtp"]; s == nil || s[0] != uint64(1) || s[2] != uint64(1) {
		t.Fatalf("smtp %v", got["smtp"])
	}
	var ids []string
	for _, r := range rec.Missing.Rows {
		ids = append(ids, r[2].(string))
	}
	if len(ids) != 2 || ids[0] != "n3" || ids[1] != "n4" && ids[0] != "n4" {
		t.Fatalf("missing %v", ids)
	}
}

// Every report of a tenant counts its own rows only: B's numbers from the
// same day, providers and template, and nothing at all for a tenant without
// rows (the default tenant here).
func TestReportsSeeOnlyTheirTenant(t *testing.T) {
	conn, db, day := reportFixture(t)
	ctx := context.Background()
	if err := LoadPrices(ctx, conn, db, []Price{{Provider: "sms-a", Channel: "sms", PriceMicros: 50000, Currency: "USD"}}); err != nil {
		t.Fatal(err)
	}
	end := day.Add(24 * time.Hour)
	sum, err := Summary(ctx, conn, db, SummaryQuery{Tenant: tenantB, From: day, To: end, GroupBy: []string{"status"}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, r := range sum.Rows {
		got[r[0].(string)] = r[1].(uint64)
	}
	if len(got) != 4 || got["accepted"] != 3 || got["sent"] != 2 || got["delivered"] != 1 || got["suppressed"] != 1 {
		t.Fatalf("summary of B %v", got)
	}
	lat, err := Latency(ctx, conn, db, LatencyQuery{Tenant: tenantB, From: day, To: end, GroupBy: []string{"provider"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range lat.Objects() {
		if r["provider"] == "sms-a" && (r["sent"] != uint64(1) || r["accept_to_sent_p50_ms"] != int64(5000) || r["sent_to_delivered_p99_ms"] != int64(9000)) {
			t.Fatalf("latency of B on sms-a %v", r)
		}
	}
	if len(lat.Rows) != 3 { // sms-a, smtp, and "" for the suppressed b3
		t.Fatalf("latency of B %v", lat.Rows)
	}
	rec, err := Reconcile(ctx, conn, db, ReconcileQuery{Tenant: tenantB, Day: day, Grace: time.Hour, Now: end.Add(time.Hour), Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Summary.Rows) != 2 || len(rec.Missing.Rows) != 1 || rec.Missing.Rows[0][2] != "b2" {
		t.Fatalf("reconciliation of B %v, missing %v", rec.Summary.Rows, rec.Missing.Rows)
	}
	for _, r := range rec.Summary.Rows {
		if r[2] != uint64(1) {
			t.Fatalf("reconciliation of B %v", rec.Summary.Rows)
		}
	}
	// Cost per tenant: what each sent on sms-a, at the one global price.
	for tenant, want := range map[string]float64{tenantA: 4 * 0.05, tenantB: 0.05} {
		var cost float64
		if err := conn.QueryRow(ctx, "SELECT sum(cost) FROM "+db+".cost_per_day WHERE tenant = ? AND provider = 'sms-a'", tenant).Scan(&cost); err != nil {
			t.Fatal(err)
		}
		if cost < want-1e-9 || cost > want+1e-9 {
			t.Fatalf("cost of %s %v, want %v", tenant, cost, want)
		}
	}
	// A tenant with no rows sees none, whichever name it is given by.
	for _, tenant := range []string{"", "default"} {
		sum, err := Summary(ctx, conn, db, SummaryQuery{Tenant: tenant, From: day, To: end, GroupBy: []string{"status"}})
		if err != nil || len(sum.Rows) != 0 {
			t.Fatalf("summary of the default tenant %v %v", sum.Rows, err)
		}
		lat, err := Latency(ctx, conn, db, LatencyQuery{Tenant: tenant, From: day, To: end})
		if err != nil || len(lat.Rows) != 1 || lat.Rows[0][0] != uint64(0) {
			t.Fatalf("latency of the default tenant %v %v", lat.Rows, err)
		}
		rec, err := Reconcile(ctx, conn, db, ReconcileQuery{Tenant: tenant, Day: day, Now: end, Limit: 100})
		if err != nil || len(rec.Summary.Rows) != 0 || len(rec.Missing.Rows) != 0 {
			t.Fatalf("reconciliation of the default tenant %v %v %v", rec.Summary.Rows, rec.Missing.Rows, err)
		}
	}
}
