package main

import (
	"context"
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/notifyd/notifyd/analytics"
	"github.com/notifyd/notifyd/schemas"
)

const reportUsage = `usage: notifyd report <summary|latency|reconciliation> [flags]

  summary         notifications per status (and --group-by) between --from and --to, per --interval
  latency         accept→sent and sent→delivered p50/p95/p99 per --group-by
  reconciliation  per provider: sent on --day vs receipts, and the ids without one after --grace

flags: --addr (default analytics.addr), --config, --tenant (default: the default tenant),
       --from, --to (RFC 3339; default the last 24 h), --group-by channel,status,
       --interval minute|hour|day, --day 2026-11-22, --grace 1h, --format table|csv
`

func runReport(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return errors.New(reportUsage)
	}
	kind, args := args[0], args[1:]
	fs := flag.NewFlagSet("report "+kind, flag.ContinueOnError)
	addr := fs.String("addr", "", "ClickHouse native address (default analytics.addr)")
	tenant := fs.String("tenant", schemas.DefaultTenant, "tenant whose notifications are reported")
	from := fs.String("from", "", "start, RFC 3339")
	to := fs.String("to", "", "end, RFC 3339")
	groupBy := fs.String("group-by", "", "comma-separated dimensions")
	interval := fs.String("interval", "", "minute, hour or day")
	day := fs.String("day", "", "reconciliation day, 2026-11-22")
	grace := fs.String("grace", "", "reconciliation grace, e.g. 1h (default analytics.receiptGrace)")
	format := fs.String("format", "table", "table or csv")
	cfg, err := loadConfig(fs, args)
	if err != nil {
		return err
	}
	if *addr == "" {
		*addr = cfg.Analytics.Addr
	}
	if *addr == "" {
		return errors.New("report: --addr or analytics.addr is required (the all-in-one logs its ClickHouse address at start)")
	}
	if !schemas.ValidTenant(*tenant) {
		return fmt.Errorf("report: --tenant %q is not a tenant name (lower-case letters, digits, _ and -)", *tenant)
	}
	if *format != "table" && *format != "csv" {
		return fmt.Errorf("report: --format must be table or csv, got %q", *format)
	}
	end, start := time.Now(), time.Time{}
	if *to != "" {
		if end, err = time.Parse(time.RFC3339, *to); err != nil {
			return fmt.Errorf("report: --to: %w", err)
		}
	}
	start = end.Add(-24 * time.Hour)
	if *from != "" {
		if start, err = time.Parse(time.RFC3339, *from); err != nil {
			return fmt.Errorf("report: --from: %w", err)
		}
	}
	var dims []string
	for _, d := range strings.Split(*groupBy, ",") {
		if d = strings.TrimSpace(d); d != "" {
			dims = append(dims, d)
		}
	}
	conn, err := analytics.Open(*addr, cfg.Analytics.User, cfg.Analytics.Password)
	if err != nil {
		return err
	}
	defer conn.Close()
	db := cfg.Analytics.Database
	var tables []analytics.Table
	switch kind {
	case "summary":
		t, err := analytics.Summary(ctx, conn, db, analytics.SummaryQuery{Tenant: *tenant, From: start, To: end, GroupBy: dims, Interval: *interval})
		if err != nil {
			return err
		}
		tables = append(tables, t)
	case "latency":
		t, err := analytics.Latency(ctx, conn, db, analytics.LatencyQuery{Tenant: *tenant, From: start, To: end, GroupBy: dims})
		if err != nil {
			return err
		}
		tables = append(tables, t)
	case "reconciliation":
		d, err := time.Parse("2006-01-02", *day)
		if err != nil {
			return fmt.Errorf("report: --day must be a date like 2026-11-22")
		}
		g := cfg.Analytics.ReceiptGrace
		if *grace != "" {
			if g, err = time.ParseDuration(*grace); err != nil || g < 0 {
				return fmt.Errorf("report: --grace must be a duration like 1h")
			}
		}
		rec, err := analytics.Reconcile(ctx, conn, db, analytics.ReconcileQuery{
			Tenant: *tenant, Day: d, Grace: g, Now: time.Now(), Limit: 10000})
		if err != nil {
			return err
		}
		tables = append(tables, rec.Summary, rec.Missing)
	default:
		return fmt.Errorf("report: unknown report %q\n\n%s", kind, reportUsage)
	}
	for i, t := range tables {
		if i > 0 {
			fmt.Fprintln(out)
		}
		if err := printTable(out, t, *format); err != nil {
			return err
		}
	}
	return nil
}

func cell(v any) string {
	if t, ok := v.(time.Time); ok {
		return t.UTC().Format(time.RFC3339)
	}
	return fmt.Sprint(v)
}

func printTable(out io.Writer, t analytics.Table, format string) error {
	if format == "csv" {
		w := csv.NewWriter(out)
		_ = w.Write(t.Columns)
		for _, r := range t.Rows {
			rec := make([]string, len(r))
			for i, v := range r {
				rec[i] = cell(v)
			}
			_ = w.Write(rec)
		}
		w.Flush()
		return w.Error()
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, strings.Join(t.Columns, "\t"))
	for _, r := range t.Rows {
		cells := make([]string, len(r))
		for i, v := range r {
			cells[i] = cell(v)
		}
		fmt.Fprintln(w, strings.Join(cells, "\t"))
	}
	return w.Flush()
}
