package analytics

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func TestMigrateIsIdempotentAndRecordsVersion(t *testing.T) {
	conn, db := testDB(t)
	ctx := context.Background()
	applied, err := Migrate(ctx, conn, db)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != len(Migrations) || applied[len(applied)-1] != SchemaVersion() {
		t.Fatalf("applied %v", applied)
	}
	again, err := Migrate(ctx, conn, db)
	if err != nil || len(again) != 0 {
		t.Fatalf("second run applied %v (%v), want nothing", again, err)
	}
	var v uint32
	if err := conn.QueryRow(ctx, "SELECT toUInt32(max(version)) FROM "+db+".schema_migrations").Scan(&v); err != nil || v != SchemaVersion() {
		t.Fatalf("recorded version %d %v", v, err)
	}
	// A migration interrupted after its DDL but before its version row runs again cleanly.
	if err := conn.Exec(ctx, "TRUNCATE TABLE "+db+".schema_migrations"); err != nil {
		t.Fatal(err)
	}
	if again, err := Migrate(ctx, conn, db); err != nil || len(again) != len(Migrations) {
		t.Fatalf("rerun after lost version: %v %v", again, err)
	}
	if _, err := Migrate(ctx, conn, "bad-name; DROP"); err == nil {
		t.Fatal("accepted a database name that is not an identifier")
	}
}

func TestRollupAndCostCountRedeliveredRowsOnce(t *testing.T) {
	conn, db := testDB(t)
	ctx := context.Background()
	if _, err := Migrate(ctx, conn, db); err != nil {
		t.Fatal(err)
	}
	if err := LoadPrices(ctx, conn, db, []Price{{Provider: "smtp-main", Channel: "email", PriceMicros: 1500, Currency: "USD"}}); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	insert := func() {
		b, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".events (id, notification_id, channel, provider, status, at, at_ms, accepted_at_ms)")
		if err != nil {
			t.Fatal(err)
		}
		for i, st := range []string{"queued", "sent", "queued", "sent", "queued", "failed"} {
			n := []string{"n1", "n1", "n2", "n2", "n3", "n3"}[i]
			ms := uint64(at.UnixMilli()) + uint64(i)*100
			if err := b.Append(n+"-"+st, n, "email", "smtp-main", st, at, ms, uint64(at.UnixMilli())); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Send(); err != nil {
			t.Fatal(err)
		}
	}
	insert()
	insert() // the same batch again, as after a crash before the commit
	var sent uint64
	if err := conn.QueryRow(ctx, "SELECT uniqExactMerge(notifications) FROM "+db+".events_per_minute WHERE status = 'sent'").Scan(&sent); err != nil {
		t.Fatal(err)
	}
	var finalRows uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".events FINAL").Scan(&finalRows); err != nil {
		t.Fatal(err)
	}
	var cost float64
	var costSent uint64
	if err := conn.QueryRow(ctx, "SELECT sent, cost FROM "+db+".cost_per_day WHERE provider = 'smtp-main'").Scan(&costSent, &cost); err != nil {
		t.Fatal(err)
	}
	if sent != 2 || finalRows != 6 || costSent != 2 || cost != 0.003 {
		t.Fatalf("sent %d, rows %d, cost %d × = %v; want 2, 6, 2, 0.003", sent, finalRows, costSent, cost)
	}
	var sentMs int64
	if err := conn.QueryRow(ctx, "SELECT sent_ms - accepted_ms FROM "+db+".latency WHERE notification_id = 'n2'").Scan(&sentMs); err != nil || sentMs != 300 {
		t.Fatalf("latency of n2: %d %v", sentMs, err)
	}
}

// schemaV1 is the DDL of version 1 as released, from testdata: what a
// deployment made before tenants existed has.
func schemaV1(t *testing.T, db string) []string {
	t.Helper()
	raw, err := os.ReadFile("testdata/schema_v1.sql")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range strings.Split(string(raw), ";\n") {
		var lines []string
		for _, l := range strings.Split(s, "\n") {
			if !strings.HasPrefix(strings.TrimSpace(l), "--") {
				lines = append(lines, l)
			}
		}
		if s = strings.TrimSpace(strings.Join(lines, "\n")); s != "" {
			out = append(out, strings.ReplaceAll(strings.TrimSuffix(s, ";"), "{db}", db))
		}
	}
	return out
}

// A database made by version 1, with rows, migrates in place: every table and
// view gains tenant, the old rows belong to the default tenant, and rows
// written afterwards are counted per tenant, also after merges.
func TestMigrateAddsTenantToAVersion1Database(t *testing.T) {
	conn, db := testDB(t)
	ctx := context.Background()
	exec := func(sql string, args ...any) {
		t.Helper()
		if err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%v\n%s", err, sql)
		}
	}
	exec("CREATE DATABASE " + db)
	exec("CREATE TABLE " + db + ".schema_migrations (version UInt32, name String, applied_at DateTime) ENGINE = MergeTree ORDER BY version")
	v1 := schemaV1(t, db)
	if len(v1) != 6 {
		t.Fatalf("testdata/schema_v1.sql has %d statements, want 6", len(v1))
	}
	for _, s := range v1 {
		exec(s)
	}
	batch := func(sql string, rows ...[]any) {
		t.Helper()
		b, err := conn.PrepareBatch(ctx, sql)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if err := b.Append(r...); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Send(); err != nil {
			t.Fatal(err)
		}
	}
	batch("INSERT INTO "+db+".schema_migrations (version, name, applied_at)", []any{uint32(1), "v1", time.Now()})
	at := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	ms := uint64(at.UnixMilli())
	// Written by a sink of the version before tenants: no tenant column.
	batch("INSERT INTO "+db+".events (id, notification_id, channel, provider, status, at, at_ms, accepted_at_ms)",
		[]any{"old-sent", "n-old", "email", "smtp", "sent", at, ms, ms})

	// Up to version 2, the tenant migration; later ones have their own test.
	applied, err := migrate(ctx, conn, db, Migrations[:2])
	if err != nil || len(applied) != 1 || applied[0] != 2 {
		t.Fatalf("applied %v, %v; want [2]", applied, err)
	}
	for _, table := range []string{"events", "events_per_minute", "latency", "cost_per_day"} {
		var inKey uint8
		if err := conn.QueryRow(ctx, "SELECT is_in_sorting_key FROM system.columns WHERE database = ? AND table = ? AND name = 'tenant'",
			db, table).Scan(&inKey); err != nil {
			t.Fatalf("%s has no tenant column: %v", table, err)
		}
		if (table == "events" || table == "events_per_minute") && inKey != 1 {
			t.Fatalf("tenant is not in the sorting key of %s", table)
		}
	}
	var views []string
	rows, err := conn.Query(ctx, "SELECT name FROM system.tables WHERE database = ? AND engine = 'MaterializedView' ORDER BY name", db)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		_ = rows.Scan(&n)
		views = append(views, n)
	}
	rows.Close()
	if len(views) != 1 || views[0] != "events_per_minute_tenant_mv" {
		t.Fatalf("materialized views %v, want only events_per_minute_tenant_mv", views)
	}
	var oldTenant string
	if err := conn.QueryRow(ctx, "SELECT tenant FROM "+db+".events WHERE id = 'old-sent'").Scan(&oldTenant); err != nil || oldTenant != "" {
		t.Fatalf("old row's tenant %q %v, want the default tenant", oldTenant, err)
	}

	// After the migration: one more default-tenant notification and one of
	// acme in the same minute, and an event id both tenants use.
	batch("INSERT INTO "+db+".events (tenant, id, notification_id, channel, provider, status, at, at_ms, accepted_at_ms)",
		[]any{"", "new-sent", "n-new", "email", "smtp", "sent", at, ms, ms},
		[]any{"acme", "acme-sent", "n-acme", "email", "smtp", "sent", at, ms, ms},
		[]any{"", "same-id", "n-same", "email", "smtp", "failed", at, ms, ms},
		[]any{"acme", "same-id", "n-same", "email", "smtp", "failed", at, ms, ms})
	check := func(when string) {
		t.Helper()
		for tenant, want := range map[string]uint64{"": 2, "acme": 1} {
			sum, err := Summary(ctx, conn, db, SummaryQuery{Tenant: tenant, From: at, To: at.Add(time.Hour), GroupBy: []string{"status"}})
			if err != nil {
				t.Fatal(err)
			}
			if len(sum.Rows) != 2 || sum.Rows[1][0] != "sent" || sum.Rows[1][1] != want {
				t.Fatalf("%s: summary of %q %v, want %d sent", when, tenant, sum.Rows, want)
			}
		}
		var copies uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".events FINAL WHERE id = 'same-id'").Scan(&copies); err != nil || copies != 2 {
			t.Fatalf("%s: %d rows of the id both tenants use (%v), want 2", when, copies, err)
		}
		var lat uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".latency WHERE tenant = '' AND sent_ms > 0").Scan(&lat); err != nil || lat != 2 {
			t.Fatalf("%s: latency rows of the default tenant %d %v", when, lat, err)
		}
	}
	check("before merges")
	exec("OPTIMIZE TABLE " + db + ".events FINAL")
	exec("OPTIMIZE TABLE " + db + ".events_per_minute FINAL")
	check("after merges")
	if again, err := migrate(ctx, conn, db, Migrations[:2]); err != nil || len(again) != 0 {
		t.Fatalf("second run applied %v (%v)", again, err)
	}
}

// A database of version 2, with rows, migrates in place: events and the
// rollup gain campaign (in the rollup's sorting key), the old rows and rows
// written by a sink that does not know campaigns have none, and the rollup
// counts per tenant and campaign, also after merges, while totals over all
// campaigns stay exact.
func TestMigrateAddsCampaignToAVersion2Database(t *testing.T) {
	conn, db := testDB(t)
	ctx := context.Background()
	exec := func(sql string) {
		t.Helper()
		if err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%v\n%s", err, sql)
		}
	}
	if applied, err := migrate(ctx, conn, db, Migrations[:2]); err != nil || len(applied) != 2 {
		t.Fatalf("building version 2: %v %v", applied, err)
	}
	batch := func(sql string, rows ...[]any) {
		t.Helper()
		b, err := conn.PrepareBatch(ctx, sql)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if err := b.Append(r...); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Send(); err != nil {
			t.Fatal(err)
		}
	}
	at := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	ms := uint64(at.UnixMilli())
	// The column list of a sink of version 2: no campaign.
	const v2Insert = "INSERT INTO %s.events (tenant, id, notification_id, channel, provider, status, at, at_ms, accepted_at_ms)"
	batch(fmt.Sprintf(v2Insert, db), []any{"acme", "old-sent", "n-old", "email", "smtp", "sent", at, ms, ms})

	// Up to version 3; later ones have their own test.
	applied, err := migrate(ctx, conn, db, Migrations[:3])
	if err != nil || len(applied) != 1 || applied[0] != 3 {
		t.Fatalf("applied %v, %v; want [3]", applied, err)
	}
	for table, wantInKey := range map[string]uint8{"events": 0, "events_per_minute": 1} {
		var inKey uint8
		if err := conn.QueryRow(ctx, "SELECT is_in_sorting_key FROM system.columns WHERE database = ? AND table = ? AND name = 'campaign'",
			db, table).Scan(&inKey); err != nil {
			t.Fatalf("%s has no campaign column: %v", table, err)
		}
		if inKey != wantInKey {
			t.Fatalf("campaign in the sorting key of %s: %d, want %d", table, inKey, wantInKey)
		}
	}
	var views []string
	rows, err := conn.Query(ctx, "SELECT name FROM system.tables WHERE database = ? AND engine = 'MaterializedView' ORDER BY name", db)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		_ = rows.Scan(&n)
		views = append(views, n)
	}
	rows.Close()
	if len(views) != 1 || views[0] != "events_per_minute_campaign_mv" {
		t.Fatalf("materialized views %v, want only events_per_minute_campaign_mv", views)
	}
	var oldCampaign string
	if err := conn.QueryRow(ctx, "SELECT campaign FROM "+db+".events WHERE id = 'old-sent'").Scan(&oldCampaign); err != nil || oldCampaign != "" {
		t.Fatalf("old row's campaign %q %v, want none", oldCampaign, err)
	}

	// After the migration: acme's campaign spring (two notifications, one of
	// them also failed), one without a campaign, globex's spring, and a sink
	// of version 2 still writing (its rows have no campaign).
	batch("INSERT INTO "+db+".events (tenant, campaign, id, notification_id, channel, provider, status, at, at_ms, accepted_at_ms)",
		[]any{"acme", "spring", "s1-sent", "n-s1", "email", "smtp", "sent", at, ms, ms},
		[]any{"acme", "spring", "s2-sent", "n-s2", "email", "smtp", "sent", at, ms, ms},
		[]any{"acme", "spring", "s2-failed", "n-s2", "email", "smtp", "failed", at, ms, ms},
		[]any{"acme", "", "plain-sent", "n-plain", "email", "smtp", "sent", at, ms, ms},
		[]any{"globex", "spring", "g-sent", "n-g", "email", "smtp", "sent", at, ms, ms})
	batch(fmt.Sprintf(v2Insert, db), []any{"acme", "v2-sent", "n-v2", "email", "smtp", "sent", at, ms, ms})
	check := func(when string) {
		t.Helper()
		type key struct{ tenant, campaign string }
		want := map[key]uint64{{"acme", ""}: 3, {"acme", "spring"}: 2, {"globex", "spring"}: 1, {"globex", ""}: 0}
		for k, n := range want {
			var sent uint64
			if err := conn.QueryRow(ctx, "SELECT uniqExactMerge(notifications) FROM "+db+".events_per_minute WHERE tenant = ? AND campaign = ? AND status = 'sent'",
				k.tenant, k.campaign).Scan(&sent); err != nil || sent != n {
				t.Fatalf("%s: rollup of %v: %d sent (%v), want %d", when, k, sent, err, n)
			}
		}
		// The reports read the rollup over all campaigns.
		sum, err := Summary(ctx, conn, db, SummaryQuery{Tenant: "acme", From: at, To: at.Add(time.Hour), GroupBy: []string{"status"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(sum.Rows) != 2 || sum.Rows[0][0] != "failed" || sum.Rows[0][1] != uint64(1) || sum.Rows[1][0] != "sent" || sum.Rows[1][1] != uint64(5) {
			t.Fatalf("%s: summary of acme %v, want 1 failed, 5 sent", when, sum.Rows)
		}
		var final uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".events FINAL").Scan(&final); err != nil || final != 7 {
			t.Fatalf("%s: %d events after folding (%v), want 7", when, final, err)
		}
	}
	check("before merges")
	// A redelivered batch of the new sink folds with the first copy.
	batch("INSERT INTO "+db+".events (tenant, campaign, id, notification_id, channel, provider, status, at, at_ms, accepted_at_ms)",
		[]any{"acme", "spring", "s1-sent", "n-s1", "email", "smtp", "sent", at, ms, ms})
	exec("OPTIMIZE TABLE " + db + ".events FINAL")
	exec("OPTIMIZE TABLE " + db + ".events_per_minute FINAL")
	check("after merges")
	if again, err := migrate(ctx, conn, db, Migrations[:3]); err != nil || len(again) != 0 {
		t.Fatalf("second run applied %v (%v)", again, err)
	}
}
