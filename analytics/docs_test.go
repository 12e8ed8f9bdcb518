package analytics

import (
	"bytes"
	"context"
	"fmt"
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
	// Campaign spring sent n1..n5 (template t) and n8..n11 (template t2):
	// n8 suppressed in the millisecond it was accepted, n9 sent and then
	// named by a repeated request, n10 still queued, n11 sent, delivered,
	// clicked and unsubscribed. Receipts and tracking events come without
	// the campaign (n1's delivered, n11's after sent) or the template (n11's).
	evs = append(evs,
		ev{"n8-acc", "n8", "", "", "accepted", two, two}, ev{"n8-sup", "n8", "email", "", "suppressed", two, two},
		ev{"n9-acc", "n9", "", "", "accepted", two, two}, ev{"n9-s", "n9", "email", "smtp", "sent", ms(50 * time.Millisecond), two},
		ev{"n9-dup", "n9", "", "", "duplicate", ms(3 * time.Second), two},
		ev{"n10-acc", "n10", "", "", "accepted", two, two}, ev{"n10-q", "n10", "email", "", "queued", ms(10 * time.Millisecond), two},
		ev{"n11-acc", "n11", "", "", "accepted", two, two}, ev{"n11-s", "n11", "email", "smtp", "sent", ms(50 * time.Millisecond), two},
		ev{"n11-d", "n11", "email", "smtp", "delivered", ms(time.Second), two}, ev{"n11-c", "n11", "email", "smtp", "clicked", ms(2 * time.Second), two},
		ev{"n11-u", "n11", "email", "", "unsubscribed", ms(3 * time.Second), two})
	campaignOf := func(e ev) (campaign, template string) {
		switch {
		case e.notification == "n6" || e.notification == "n7":
			return "", "t"
		case e.id == "n1-delivered":
			return "", "t"
		case e.notification == "n11" && (e.status == "delivered" || e.status == "clicked" || e.status == "unsubscribed"):
			return "", ""
		case len(e.notification) == 3 || e.notification >= "n8":
			return "spring", "t2"
		}
		return "spring", "t"
	}
	insertCampaignEvents(t, conn, "notifyd", docTenant, evs, campaignOf)
	insertCampaignEvents(t, conn, "notifyd", "other", evs, campaignOf)
	sawProgress, sawRates := false, false
	for i, sql := range blocks {
		switch {
		case strings.Contains(sql, "AS targeted"):
			sawProgress = true
			checkCampaignProgress(t, conn, sql)
		case strings.Contains(sql, "open_rate") && strings.Contains(sql, "campaign"):
			sawRates = true
			checkCampaignRates(t, conn, sql)
		}
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
	if !sawProgress || !sawRates {
		t.Errorf("docs/ANALYTICS.md lacks the campaign progress (%v) or the campaign rates (%v) example", sawProgress, sawRates)
	}
}

// checkCampaignProgress runs the campaign progress example: spring targeted
// n1..n5 and n8..n11; by latest status n10 is queued, n1..n4, n9 (a later
// duplicate does not count) and n11 (unsubscribed after it was sent) are
// sent, n8 is suppressed (in the millisecond it was accepted: the rank
// decides) and n5 failed. n6 and n7 belong to no campaign.
func checkCampaignProgress(t *testing.T, conn driver.Conn, sql string) {
	t.Helper()
	rows, err := conn.Query(context.Background(), sql)
	if err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var campaign string
		var targeted, queued, sent, suppressed, failed uint64
		if err := rows.Scan(&campaign, &targeted, &queued, &sent, &suppressed, &failed); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s targeted=%d queued=%d sent=%d suppressed=%d failed=%d", campaign, targeted, queued, sent, suppressed, failed))
	}
	if want := "spring targeted=9 queued=1 sent=6 suppressed=1 failed=1"; len(got) != 1 || got[0] != want {
		t.Errorf("campaign progress %q, want %q", got, want)
	}
}

// checkCampaignRates runs the open and click rates per campaign and
// template: t sent n1..n5, n2 opened, n3 clicked; t2 sent n9 and n11,
// n11 clicked (a click without campaign or template, counted through its
// notification).
func checkCampaignRates(t *testing.T, conn driver.Conn, sql string) {
	t.Helper()
	rows, err := conn.Query(context.Background(), sql)
	if err != nil {
		t.Fatalf("%v\n%s", err, sql)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var campaign, template string
		var sent, opened, clicked uint64
		var openRate, clickRate float64
		if err := rows.Scan(&campaign, &template, &sent, &opened, &clicked, &openRate, &clickRate); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s/%s %d %d %d %g %g", campaign, template, sent, opened, clicked, openRate, clickRate))
	}
	want := []string{"spring/t 5 2 1 0.4 0.2", "spring/t2 2 1 1 0.5 0.5"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("campaign rates %q, want %q", got, want)
	}
}

// insertCampaignEvents writes evs as tenant's events, each with the campaign
// and template campaignOf gives it.
func insertCampaignEvents(t *testing.T, conn driver.Conn, db, tenant string, evs []ev, campaignOf func(ev) (campaign, template string)) {
	t.Helper()
	b, err := conn.PrepareBatch(context.Background(), "INSERT INTO "+db+".events (tenant, campaign, id, notification_id, channel, provider, status, template, priority, at, at_ms, accepted_at_ms)")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		campaign, template := campaignOf(e)
		if err := b.Append(tenant, campaign, e.id, e.notification, e.channel, e.provider, e.status, template, "normal", e.at, uint64(e.at.UnixMilli()), uint64(e.accepted.UnixMilli())); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
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
