package analytics

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/notifyd/notifyd/schemas"
)

// Table is a report: named columns and typed rows, printed as a table or CSV by
// `notifyd report` and as a list of objects by the API.
type Table struct {
	Columns []string
	Rows    [][]any
}

// Objects turns the rows into column → value maps (the API's JSON form).
func (t Table) Objects() []map[string]any {
	out := make([]map[string]any, 0, len(t.Rows))
	for _, r := range t.Rows {
		m := make(map[string]any, len(r))
		for i, c := range t.Columns {
			m[c] = r[i]
		}
		out = append(out, m)
	}
	return out
}

// Dimensions a summary may group by, and the buckets it may group time into.
var (
	Dimensions = []string{"channel", "provider", "template", "priority", "status"}
	Intervals  = map[string]string{"minute": "minute", "hour": "toStartOfHour(minute)", "day": "toStartOfDay(minute)"}
)

// SummaryQuery asks how many of a tenant's notifications reached each status
// (or other dimensions) between From and To, optionally per Interval.
type SummaryQuery struct {
	Tenant   string // "" or "default" is the default tenant
	From, To time.Time
	GroupBy  []string
	Interval string // "", minute, hour, day
}

func checkDims(dims, allowed []string, what string) error {
	for _, d := range dims {
		ok := false
		for _, a := range allowed {
			ok = ok || d == a
		}
		if !ok {
			return fmt.Errorf("%s: unknown dimension %q (allowed: %s)", what, d, strings.Join(allowed, ", "))
		}
	}
	return nil
}

// Summary counts distinct notifications per group from the per-minute rollup.
// A notification counts once per status it reached, however often its events
// were delivered to ClickHouse.
func Summary(ctx context.Context, conn driver.Conn, db string, q SummaryQuery) (Table, error) {
	if err := checkDims(q.GroupBy, Dimensions, "groupBy"); err != nil {
		return Table{}, err
	}
	var sel, group []string
	t := Table{}
	if q.Interval != "" {
		expr, ok := Intervals[q.Interval]
		if !ok {
			return Table{}, fmt.Errorf("interval: must be minute, hour or day, got %q", q.Interval)
		}
		sel, group = append(sel, expr+" AS time"), append(group, "time")
		t.Columns = append(t.Columns, "time")
	}
	sel, group = append(sel, q.GroupBy...), append(group, q.GroupBy...)
	t.Columns = append(append(t.Columns, q.GroupBy...), "notifications")
	sql := "SELECT " + strings.Join(append(sel, "uniqExactMerge(notifications) AS notifications"), ", ") +
		" FROM " + db + ".events_per_minute WHERE tenant = ? AND minute >= toDateTime(?) AND minute < toDateTime(?)"
	if len(group) > 0 {
		sql += " GROUP BY " + strings.Join(group, ", ") + " ORDER BY " + strings.Join(group, ", ")
	}
	// A minute counts when it began before To: To is rounded up to the
	// second, or a report asked in the first second of a minute (To = now)
	// would leave that minute out.
	return query(ctx, conn, t, sql, schemas.NormTenant(q.Tenant), q.From.Unix(), ceilUnix(q.To))
}

// ceilUnix is t in whole seconds, rounded up.
func ceilUnix(t time.Time) int64 {
	if t.Nanosecond() > 0 {
		return t.Unix() + 1
	}
	return t.Unix()
}

// LatencyQuery asks for accept→sent and sent→delivered percentiles of a
// tenant's notifications.
type LatencyQuery struct {
	Tenant   string // "" or "default" is the default tenant
	From, To time.Time
	GroupBy  []string // channel, provider, template, priority
}

// Latency reports per group the notifications sent and delivered and the p50,
// p95 and p99 of accept→sent and sent→delivered, in milliseconds. Percentiles
// are exact and not interpolated: the value at position ⌊p·n⌋ of the sorted
// values (the p50 of 1000 and 3000 is 3000).
func Latency(ctx context.Context, conn driver.Conn, db string, q LatencyQuery) (Table, error) {
	if err := checkDims(q.GroupBy, Dimensions[:4], "groupBy"); err != nil {
		return Table{}, err
	}
	t := Table{Columns: append(append([]string(nil), q.GroupBy...), "sent", "accept_to_sent_p50_ms", "accept_to_sent_p95_ms",
		"accept_to_sent_p99_ms", "delivered", "sent_to_delivered_p50_ms", "sent_to_delivered_p95_ms", "sent_to_delivered_p99_ms")}
	sel := append(append([]string(nil), q.GroupBy...),
		"countIf(sent_ms > 0) AS sent",
		"quantilesExactIf(0.5, 0.95, 0.99)(toInt64(sent_ms) - toInt64(accepted_ms), sent_ms > 0 AND accepted_ms > 0) AS a2s",
		"countIf(sent_ms > 0 AND delivered_ms > 0) AS delivered",
		"quantilesExactIf(0.5, 0.95, 0.99)(toInt64(delivered_ms) - toInt64(sent_ms), sent_ms > 0 AND delivered_ms > 0) AS s2d")
	sql := "SELECT " + strings.Join(sel, ", ") + " FROM (" + perNotification(db) + ")"
	if len(q.GroupBy) > 0 {
		sql += " GROUP BY " + strings.Join(q.GroupBy, ", ") + " ORDER BY " + strings.Join(q.GroupBy, ", ")
	}
	rows, err := conn.Query(ctx, sql, window(q.Tenant, q.From, q.To)...)
	if err != nil {
		return t, fmt.Errorf("latency: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		dims := make([]string, len(q.GroupBy))
		var sent, delivered uint64
		var a2s, s2d []int64
		dest := make([]any, 0, len(dims)+4)
		for i := range dims {
			dest = append(dest, &dims[i])
		}
		dest = append(dest, &sent, &a2s, &delivered, &s2d)
		if err := rows.Scan(dest...); err != nil {
			return t, fmt.Errorf("latency: %w", err)
		}
		row := make([]any, 0, len(t.Columns))
		for _, d := range dims {
			row = append(row, d)
		}
		row = append(row, sent, at(a2s, 0), at(a2s, 1), at(a2s, 2), delivered, at(s2d, 0), at(s2d, 1), at(s2d, 2))
		t.Rows = append(t.Rows, row)
	}
	return t, rows.Err()
}

func at(a []int64, i int) int64 {
	if i < len(a) {
		return a[i]
	}
	return 0
}

// perNotification is one row per notification and channel with its
// milestones, for the bound tenant's notifications with an event between the
// two bound times.
func perNotification(db string) string {
	return `SELECT notification_id, channel,
			anyIf(provider, status = 'sent') AS provider, any(template) AS template, any(priority) AS priority,
			max(accepted_at_ms) AS accepted_ms,
			minIf(at_ms, status = 'sent') AS sent_ms,
			minIf(at_ms, status = 'delivered') AS delivered_ms,
			maxIf(at_ms, status IN ('delivered', 'failed')) AS last_receipt_ms
		FROM ` + db + `.events
		WHERE tenant = ? AND at >= toDateTime(?) AND at <= toDateTime(?) AND at_ms >= ? AND at_ms < ? AND channel != ''
		GROUP BY notification_id, channel`
}

// window is the arguments of perNotification's filter: the tenant, whole
// seconds for the partition key (inclusive: DateTime has no milliseconds) and
// milliseconds for the exact half-open range.
func window(tenant string, from, to time.Time) []any {
	return []any{schemas.NormTenant(tenant), from.Unix(), to.Unix(), from.UnixMilli(), to.UnixMilli()}
}

// Reconciliation compares, per provider and channel, the notifications notifyd
// sent on a day with those the provider sent a receipt for (delivered, or
// failed after it took the message). Missing lists, per provider, the ids with
// no receipt that were sent more than grace before now (at most limit).
type Reconciliation struct {
	Summary Table
	Missing Table
}

// ReconcileQuery asks for the reconciliation of one tenant's UTC day.
type ReconcileQuery struct {
	Tenant string // "" or "default" is the default tenant
	Day    time.Time
	Grace  time.Duration // how long a sent notification may wait for its receipt
	Now    time.Time
	Limit  int // most missing ids listed
}

// Reconcile builds the reconciliation of one tenant's UTC day.
func Reconcile(ctx context.Context, conn driver.Conn, db string, q ReconcileQuery) (Reconciliation, error) {
	from := time.Date(q.Day.Year(), q.Day.Month(), q.Day.Day(), 0, 0, 0, 0, time.UTC)
	// Receipts may arrive after the day ends: look two days on for them.
	to := from.Add(3 * 24 * time.Hour)
	dayEnd := from.Add(24 * time.Hour).UnixMilli()
	cutoff := q.Now.Add(-q.Grace).UnixMilli()
	sent := "SELECT * FROM (" + perNotification(db) + ") WHERE sent_ms >= ? AND sent_ms < ?"
	sum := Table{Columns: []string{"provider", "channel", "sent", "receipts", "missing", "pending"}}
	var err error
	sum, err = query(ctx, conn, sum, `SELECT provider, channel, count() AS sent,
			countIf(last_receipt_ms >= sent_ms) AS receipts,
			countIf(last_receipt_ms < sent_ms AND sent_ms < ?) AS missing,
			countIf(last_receipt_ms < sent_ms AND sent_ms >= ?) AS pending
		FROM (`+sent+`) GROUP BY provider, channel ORDER BY provider, channel`,
		append(append([]any{cutoff, cutoff}, window(q.Tenant, from, to)...), from.UnixMilli(), dayEnd)...)
	if err != nil {
		return Reconciliation{}, fmt.Errorf("reconciliation: %w", err)
	}
	missing := Table{Columns: []string{"provider", "channel", "notification_id", "sent_at_ms"}}
	missing, err = query(ctx, conn, missing, `SELECT provider, channel, notification_id, sent_ms
		FROM (`+sent+`) WHERE last_receipt_ms < sent_ms AND sent_ms < ?
		ORDER BY provider, channel, sent_ms LIMIT ?`,
		append(window(q.Tenant, from, to), from.UnixMilli(), dayEnd, cutoff, q.Limit)...)
	if err != nil {
		return Reconciliation{}, fmt.Errorf("reconciliation: %w", err)
	}
	return Reconciliation{Summary: sum, Missing: missing}, nil
}

// query runs sql and reads every row into t (whose Columns must match the SELECT).
func query(ctx context.Context, conn driver.Conn, t Table, sql string, args ...any) (Table, error) {
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		return t, err
	}
	defer rows.Close()
	types := rows.ColumnTypes()
	for rows.Next() {
		dest := make([]any, len(types))
		for i, ct := range types {
			dest[i] = newScanTarget(ct.DatabaseTypeName())
		}
		if err := rows.Scan(dest...); err != nil {
			return t, err
		}
		row := make([]any, len(dest))
		for i, d := range dest {
			row[i] = deref(d)
		}
		t.Rows = append(t.Rows, row)
	}
	return t, rows.Err()
}

func newScanTarget(typ string) any {
	switch typ {
	case "UInt64":
		return new(uint64)
	case "UInt32":
		return new(uint32)
	case "UInt8":
		return new(uint8)
	case "Int64":
		return new(int64)
	case "Float64":
		return new(float64)
	}
	if strings.HasPrefix(typ, "DateTime") || typ == "Date" { // DateTime('Etc/UTC') on some servers
		return new(time.Time)
	}
	return new(string)
}

func deref(p any) any {
	switch v := p.(type) {
	case *uint64:
		return *v
	case *uint32:
		return *v
	case *uint8:
		return *v
	case *int64:
		return *v
	case *float64:
		return *v
	case *time.Time:
		return v.UTC()
	case *string:
		return *v
	}
	return p
}

// CampaignProgress counts a campaign's notifications as query 11 of
// docs/ANALYTICS.md does: targeted (with an accepted event), and each in the
// bucket of its latest status (queued, sent, suppressed, failed). One row
// with the columns campaign, targeted, queued, sent, suppressed, failed;
// none when ClickHouse has no event of the campaign.
func CampaignProgress(ctx context.Context, conn driver.Conn, db, tenant, campaign string) (Table, error) {
	t := Table{Columns: []string{"campaign", "targeted", "queued", "sent", "suppressed", "failed"}}
	return query(ctx, conn, t, `SELECT notification_campaign AS campaign,
			countIf(targeted) AS targeted,
			countIf(latest IN ('accepted', 'scheduled', 'queued', 'retrying')) AS queued,
			countIf(latest IN ('sent', 'delivered', 'opened', 'clicked', 'unsubscribed')) AS sent,
			countIf(latest IN ('suppressed', 'duplicate', 'rate_limited', 'canceled', 'digested')) AS suppressed,
			countIf(latest IN ('failed', 'rejected', 'expired')) AS failed
		FROM (
			SELECT notification_id,
				anyIf(campaign, campaign != '') AS notification_campaign,
				max(status = 'accepted') AS targeted,
				if(countIf(status != 'duplicate') = 0, 'duplicate',
					argMaxIf(status, (at_ms, transform(status,
						['accepted', 'scheduled', 'queued', 'retrying', 'failed', 'sent', 'delivered', 'opened', 'clicked',
						 'unsubscribed', 'suppressed', 'rate_limited', 'rejected', 'expired', 'canceled', 'digested'],
						[1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10, 10, 10], 0)), status != 'duplicate')) AS latest
			FROM `+db+`.events
			WHERE tenant = ? AND notification_id IN (
				SELECT notification_id FROM `+db+`.events WHERE tenant = ? AND campaign = ?)
			GROUP BY notification_id
		)
		GROUP BY campaign`, schemas.NormTenant(tenant), schemas.NormTenant(tenant), campaign)
}
