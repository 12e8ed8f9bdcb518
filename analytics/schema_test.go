package analytics

import (
	"context"
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
