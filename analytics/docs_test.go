package analytics

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/notifyd/notifyd/analytics/analyticstest"
)

// Every SQL block of docs/ANALYTICS.md runs against the real server and returns
// rows on a small data set, so the documentation cannot rot. The examples ask
// about tenant acme; each must filter by tenant, so the same query for a
// tenant without rows returns none although another tenant has some.
func TestAnalyticsDocQueriesRun(t *testing.T) {
	blocks, err := analyticstest.DocQueries("../docs/ANALYTICS.md")
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) < 10 {
		t.Fatalf("docs/ANALYTICS.md has %d SQL examples, want at least 10", len(blocks))
	}
	conn, _ := testDB(t)
	ctx := context.Background()
	// The examples name the database notifyd; give this server one.
	_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS notifyd")
	if _, err := Migrate(ctx, conn, "notifyd"); err != nil {
		t.Fatal(err)
	}
	if err := LoadPrices(ctx, conn, "notifyd", []Price{{Provider: "smtp", Channel: "email", PriceMicros: 100, Currency: "USD"}}); err != nil {
		t.Fatal(err)
	}
	two := time.Now().Add(-2 * time.Hour)
	ms := func(d time.Duration) time.Time { return two.Add(d) }
	var evs []ev
	for _, n := range []struct{ id, status string }{{"n1", "delivered"}, {"n2", "opened"}, {"n3", "clicked"}, {"n4", ""}, {"n5", "failed"}} {
		evs = append(evs, ev{n.id + "-acc", n.id, "", "", "accepted", two, two},
			ev{n.id + "-q", n.id, "email", "", "queued", ms(10 * time.Millisecond), two},
			ev{n.id + "-s", n.id, "email", "smtp", "sent", ms(50 * time.Millisecond), two})
		if n.status == "opened" || n.status == "clicked" {
			evs = append(evs, ev{n.id + "-d", n.id, "email", "smtp", "delivered", ms(time.Second), two})
		}
		if n.status != "" {
			evs = append(evs, ev{n.id + "-" + n.status, n.id, "email", "smtp", n.status, ms(2 * time.Second), two})
		}
	}
	evs = append(evs, ev{"n6-sup", "n6", "email", "", "suppressed", two, two}, ev{"n7-rej", "n7", "email", "", "rejected", two, two})
	insertEvents(t, conn, "notifyd", docTenant, evs)
	insertEvents(t, conn, "notifyd", "other", evs)
	for i, sql := range blocks {
		rows, err := conn.Query(ctx, sql)
		if err != nil {
			t.Fatalf("example %d fails: %v\n%s", i+1, err, sql)
		}
		n := 0
		for rows.Next() {
			n++
		}
		rows.Close()
		if n == 0 {
			t.Errorf("example %d returns no row on the fixture:\n%s", i+1, sql)
		}
		if !strings.Contains(sql, "tenant = '"+docTenant+"'") {
			t.Errorf("example %d does not filter by tenant = '%s':\n%s", i+1, docTenant, sql)
		} else if n := countRows(t, conn, strings.ReplaceAll(sql, "'"+docTenant+"'", "'nobody'")); n != 0 {
			t.Errorf("example %d returns %d rows for a tenant without any:\n%s", i+1, n, sql)
		}
		// And as an analyst runs it: clickhouse-client against the server.
		out, err := analyticstest.Client(server.Addr, sql)
		if err != nil || len(bytes.TrimSpace(out)) == 0 {
			t.Errorf("example %d with clickhouse-client: %v\n%s", i+1, err, out)
		}
	}
}

// docTenant is the tenant the examples of docs/ANALYTICS.md ask about.
const docTenant = "acme"

func countRows(t *testing.T, conn driver.Conn, sql string) int {
	t.Helper()
	rows, err := conn.Query(context.Background(), sql)
	if err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		n++
	}
	return n
}
