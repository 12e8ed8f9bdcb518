package service_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/analytics"
	"github.com/notifyd/notifyd/analytics/analyticstest"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// 1,000 notifications through the all-in-one pipeline — email and webhook,
// three priorities, some suppressed by opt-outs, some failed at the provider,
// some rejected — and ClickHouse's counts equal the status table's, exactly.
func TestAnalyticsCountsEqualStatusTable(t *testing.T) {
	const total = 1000
	h := newHarness(t)
	on := true
	h.cfg.Analytics.Enabled = &on
	h.cfg.Analytics.FlushEvery = 200 * time.Millisecond
	h.cfg.Limits.DefaultPerDay = 0
	h.hook.Hook = func(r *http.Request, body []byte) int {
		if bytes.HasSuffix(body, []byte(`7"}`)) { // orderId ending in 7: the endpoint refuses it
			return http.StatusGone
		}
		return 0
	}
	h.start()
	// Analytics comes up beside the pipeline, not before it.
	for deadline := time.Now().Add(90 * time.Second); h.svc.AnalyticsAddr() == ""; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("all-in-one started no ClickHouse")
		}
	}
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/receipt", orderTemplate("transactional"))
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/promo", orderTemplate("marketing"))
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/hook", map[string]any{"category": "transactional",
		"channels": map[string]any{"webhook": map[string]any{"body": `{"orderId": "{{.orderId}}"}`}}})
	for i := 0; i < 20; i++ { // opted out of marketing email
		h.mustCall(http.StatusOK, "PUT", fmt.Sprintf("/v1/profiles/out-%d", i), map[string]any{"email": fmt.Sprintf("out-%d@example.com", i),
			"preferences": map[string]any{"categories": map[string]any{"marketing": map[string]any{"email": false}}}})
	}
	var requests []any
	for i := 0; i < total; i++ {
		prio := []string{"high", "normal", "low"}[i%3]
		data := map[string]any{"orderId": fmt.Sprint(i), "eta": "soon"}
		var r map[string]any
		switch {
		case i%10 < 5:
			r = map[string]any{"template": "receipt", "recipients": []any{map[string]any{"userId": fmt.Sprintf("u%d", i), "email": fmt.Sprintf("u%d@example.com", i)}}}
		case i%10 < 7:
			r = map[string]any{"template": "promo", "recipients": []any{map[string]any{"userId": fmt.Sprintf("out-%d", i%20)}}}
		case i%10 < 9:
			r = map[string]any{"template": "hook", "recipients": []any{map[string]any{"userId": fmt.Sprintf("w%d", i)}}}
		default: // no address for email
			r = map[string]any{"template": "receipt", "recipients": []any{map[string]any{"userId": fmt.Sprintf("nobody-%d", i)}}}
		}
		r["priority"], r["data"] = prio, data
		requests = append(requests, r)
	}
	out := h.mustCall(http.StatusOK, "POST", "/v1/notifications/batch", map[string]any{"requests": requests})
	var ids []string
	for i, res := range out["results"].([]any) {
		m := res.(map[string]any)
		if m["error"] != nil {
			t.Fatalf("request %d: %v", i, m["error"])
		}
		ids = append(ids, m["notifications"].([]any)[0].(map[string]any)["id"].(string))
	}

	// The status table: how many notifications reached each status.
	terminal := map[string]bool{"sent": true, "suppressed": true, "failed": true, "rejected": true, "rate_limited": true}
	want := map[string]uint64{}
	for _, id := range ids {
		var st map[string]any
		deadline := time.Now().Add(60 * time.Second)
		for {
			_, st = h.call("GET", "/v1/notifications/"+id, nil)
			if terminal[fmt.Sprint(st["status"])] {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s stuck at %v", id, st["status"])
			}
			time.Sleep(20 * time.Millisecond)
		}
		seen := map[string]bool{}
		for _, s := range historyStatuses(st) {
			seen[s] = true
		}
		for s := range seen {
			want[s]++
		}
	}
	for _, s := range []string{"sent", "suppressed", "failed", "rejected"} {
		if want[s] == 0 {
			t.Fatalf("the mix produced no %s notification: %v", s, want)
		}
	}

	conn, err := analytics.Open(h.svc.AnalyticsAddr(), "default", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	query := func(q string) map[string]uint64 {
		rows, err := conn.Query(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		got := map[string]uint64{}
		for rows.Next() {
			var s string
			var n uint64
			if err := rows.Scan(&s, &n); err != nil {
				t.Fatal(err)
			}
			got[s] = n
		}
		return got
	}
	raw := "SELECT status, uniqExact(notification_id) FROM notifyd.events WHERE status != 'duplicate' GROUP BY status"
	rollup := "SELECT status, uniqExactMerge(notifications) FROM notifyd.events_per_minute WHERE status != 'duplicate' GROUP BY status"
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, gotRollup := query(raw), query(rollup)
		if equal(got, want) && equal(gotRollup, want) {
			t.Logf("per status: %v", sorted(want))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ClickHouse %v\nrollup %v\nstatus table %v", sorted(got), sorted(gotRollup), sorted(want))
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The same through the API's summary.
	from := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	sum := h.mustCall(http.StatusOK, "GET", "/v1/analytics/summary?groupBy=status&from="+from, nil)
	api := map[string]uint64{}
	for _, r := range sum["rows"].([]any) {
		m := r.(map[string]any)
		if m["status"] != "duplicate" {
			api[m["status"].(string)] = uint64(m["notifications"].(float64))
		}
	}
	if !equal(api, want) {
		t.Fatalf("GET /v1/analytics/summary %v, status table %v", sorted(api), sorted(want))
	}
	lat := h.mustCall(http.StatusOK, "GET", "/v1/analytics/latency?groupBy=channel,provider&from="+from, nil)
	for _, r := range lat["rows"].([]any) {
		m := r.(map[string]any)
		// Queried right after the last send: events of the current second count too.
		if m["provider"] == "smtp-main" && (m["sent"].(float64) != 500 || m["accept_to_sent_p99_ms"].(float64) <= 0) {
			t.Fatalf("latency row %v", m)
		}
	}
	day := time.Now().UTC().Format("2006-01-02")
	rec := h.mustCall(http.StatusOK, "GET", "/v1/analytics/reconciliation?grace=0s&day="+day, nil)
	if provs := rec["providers"].([]any); len(provs) == 0 {
		t.Fatalf("reconciliation %v", rec)
	}
	for _, bad := range []struct{ path, field string }{
		{"/v1/analytics/summary?groupBy=status,color", "groupBy"},
		{"/v1/analytics/summary?interval=fortnight", "interval"},
		{"/v1/analytics/summary?from=yesterday", "from"},
		{"/v1/analytics/latency?groupBy=status", "groupBy"},
		{"/v1/analytics/reconciliation?day=22/11/2026", "day"},
		{"/v1/analytics/reconciliation?day=" + day + "&grace=soon", "grace"},
	} {
		code, out := h.call("GET", bad.path, nil)
		if e, _ := out["error"].(map[string]any); code != http.StatusBadRequest || e == nil || e["field"] != bad.field {
			t.Errorf("%s: %d %v", bad.path, code, out)
		}
	}
}

func TestAnalyticsEndpointsWithoutClickHouse(t *testing.T) {
	h := newHarness(t) // analytics off
	h.start()
	code, out := h.call("GET", "/v1/analytics/summary", nil)
	if code != http.StatusServiceUnavailable || !strings.Contains(fmt.Sprint(out["error"]), "analytics is not configured") {
		t.Fatalf("%d %v", code, out)
	}
}

func equal(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func sorted(m map[string]uint64) []string {
	var out []string
	for k, v := range m {
		out = append(out, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(out)
	return out
}

// ClickHouse stops for 12 s during a run of 5,000 notifications: the pipeline
// keeps delivering, and when ClickHouse is back every event arrives, none twice.
func TestClickHouseOutageLosesNothing(t *testing.T) {
	const total = 5000
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	ch, err := analytics.StartLocal(ctx, dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ch.Stop() }()
	relay, err := analyticstest.NewRelay(ch.Addr) // ClickHouse's address for notifyd, across the restart
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	h := newHarness(t)
	on := true
	h.cfg.Analytics.Enabled = &on
	h.cfg.Analytics.Addr = relay.Addr
	h.cfg.Analytics.FlushEvery = 100 * time.Millisecond
	h.cfg.Analytics.MaxBackoff = time.Second
	h.cfg.Limits.DefaultPerDay = 0
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/hook", map[string]any{"category": "transactional",
		"channels": map[string]any{"webhook": map[string]any{"body": `{"orderId": "{{.orderId}}"}`}}})
	conn, err := analytics.Open(relay.Addr, "default", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	produce := func(from, to int) {
		cl := h.producer()
		for i := from; i < to; i++ {
			req := &schemas.SendRequest{EventID: fmt.Sprintf("outage-%d", i), Template: "hook",
				Data: fmt.Sprintf(`{"orderId":"%d"}`, i), Recipients: []schemas.Recipient{{UserID: fmt.Sprintf("o%d", i)}}}
			v, _ := schemas.SendRequestCodec.Encode(req)
			cl.Produce(ctx, &kgo.Record{Topic: string(topology.Ingest), Key: []byte(req.EventID), Value: v}, nil)
		}
		if err := cl.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	produce(0, 1000)
	for len(h.hook.Deliveries()) < 500 && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	ch.Kill()
	outage := time.Now()
	before := len(h.hook.Deliveries())
	produce(1000, total)
	// Every notification is delivered while ClickHouse is still down: a
	// pipeline that waited for analytics would never get there. The outage
	// lasts at least 12 s (a dozen inserts refused at the 1 s maximum backoff),
	// so the sink's buffer and backoff are exercised.
	for len(h.hook.Deliveries()) < total && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	if during := len(h.hook.Deliveries()) - before; len(h.hook.Deliveries()) < total {
		t.Fatalf("only %d deliveries during the ClickHouse outage (of %d): the pipeline waited for analytics", during, total-before)
	}
	time.Sleep(12*time.Second - time.Since(outage))
	if ch, err = analytics.StartLocal(ctx, dir, 0); err != nil {
		t.Fatal(err)
	}
	relay.Retarget(ch.Addr)
	var ids, final uint64
	for ctx.Err() == nil {
		_ = conn.QueryRow(ctx, "SELECT uniqExact(id) FROM notifyd.events").Scan(&ids)
		if ids >= 3*total {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	if err := conn.QueryRow(ctx, "SELECT count() FROM notifyd.events FINAL").Scan(&final); err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	rows, err := conn.Query(ctx, "SELECT status, uniqExactMerge(notifications) FROM notifyd.events_per_minute GROUP BY status")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		var n uint64
		_ = rows.Scan(&s, &n)
		got[s] = n
	}
	rows.Close()
	want := map[string]uint64{"accepted": total, "queued": total, "sent": total}
	if ids != 3*total || final != 3*total || !equal(got, want) {
		t.Fatalf("event ids %d, rows %d (want %d each); rollup %v", ids, final, 3*total, sorted(got))
	}
}

// Provider receipts move notifications to delivered, and reconciliation finds
// the one the provider never reported on.
func TestReceiptsAndReconciliation(t *testing.T) {
	h := newHarness(t)
	on := true
	h.cfg.Analytics.Enabled = &on
	h.cfg.Analytics.FlushEvery = 100 * time.Millisecond
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/hook", map[string]any{"category": "transactional",
		"channels": map[string]any{"webhook": map[string]any{"body": `{"n": "{{.n}}"}`}}})
	var ids []string
	for i := 0; i < 3; i++ {
		out := h.send(map[string]any{"template": "hook", "data": map[string]any{"n": fmt.Sprint(i)},
			"recipients": []any{map[string]any{"userId": fmt.Sprintf("r%d", i)}}})
		ids = append(ids, out[fmt.Sprintf("r%d", i)])
	}
	for _, id := range ids {
		h.waitStatus(id, "sent")
	}
	receipt := func(id string) map[string]any {
		return map[string]any{"notificationId": id, "channel": "webhook", "provider": "hook-main", "status": "delivered", "providerMessageId": "pm-" + id}
	}
	// The provider reports twice on the first (as providers retry callbacks).
	h.mustCall(http.StatusAccepted, "POST", "/v1/receipts", map[string]any{"receipts": []any{receipt(ids[0]), receipt(ids[1]), receipt(ids[0])}})
	st := h.waitStatus(ids[0], "delivered")
	if st["provider"] != "hook-main" {
		t.Fatalf("status %v", st)
	}
	for deadline := time.Now().Add(90 * time.Second); h.svc.AnalyticsAddr() == ""; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no ClickHouse")
		}
	}
	day := time.Now().UTC().Format("2006-01-02")
	deadline := time.Now().Add(30 * time.Second)
	for {
		rec := h.mustCall(http.StatusOK, "GET", "/v1/analytics/reconciliation?grace=0s&day="+day, nil)
		provs, _ := rec["providers"].([]any)
		missing, _ := rec["missing"].([]any)
		if len(provs) == 1 {
			p := provs[0].(map[string]any)
			if p["provider"] == "hook-main" && p["sent"] == float64(3) && p["receipts"] == float64(2) && p["missing"] == float64(1) &&
				len(missing) == 1 && missing[0].(map[string]any)["notification_id"] == ids[2] {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("reconciliation %v", rec)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Every query of docs/ANALYTICS.md, with clickhouse-client, against the
	// ClickHouse this all-in-one notifyd started and filled.
	queries, err := analyticstest.DocQueries("../docs/ANALYTICS.md")
	if err != nil || len(queries) < 10 {
		t.Fatalf("%d queries in docs/ANALYTICS.md: %v", len(queries), err)
	}
	sawData := false
	for i, sql := range queries {
		// The examples are for tenant acme; this run's rows are the default
		// tenant's ('').
		sql = strings.ReplaceAll(sql, "tenant = 'acme'", "tenant = ''")
		out, err := analyticstest.Client(h.svc.AnalyticsAddr(), sql)
		if err != nil {
			t.Errorf("docs/ANALYTICS.md example %d against the all-in-one instance: %v\n%s", i+1, err, sql)
		}
		sawData = sawData || strings.Contains(string(out), "hook-main")
	}
	if !sawData { // the examples read the database the pipeline fills, not an empty one
		t.Error("no docs/ANALYTICS.md example shows the provider hook-main of this run")
	}

	for _, bad := range []struct {
		body  any
		field string
	}{
		{map[string]any{"receipts": []any{}}, "receipts"},
		{map[string]any{"receipts": []any{map[string]any{"notificationId": "x", "channel": "fax", "provider": "p", "status": "delivered"}}}, "receipts[0].channel"},
		{map[string]any{"receipts": []any{map[string]any{"notificationId": "x", "channel": "sms", "provider": "p", "status": "read"}}}, "receipts[0].status"},
		{map[string]any{"receipts": []any{map[string]any{"notificationId": "", "channel": "sms", "provider": "p", "status": "delivered"}}}, "receipts[0].notificationId"},
		{map[string]any{"receipts": []any{map[string]any{"notificationId": "x", "channel": "sms", "provider": "p", "status": "delivered", "at": "noon"}}}, "receipts[0].at"},
	} {
		code, out := h.call("POST", "/v1/receipts", bad.body)
		if e, _ := out["error"].(map[string]any); code != http.StatusBadRequest || e == nil || e["field"] != bad.field {
			t.Errorf("%v: %d %v", bad.body, code, out)
		}
	}
}
