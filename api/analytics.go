package api

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/notifyd/notifyd/analytics"
)

// Analytics is the ClickHouse the report endpoints read. Conn returns nil until
// analytics is up (or when it is not configured): the endpoints answer 503.
type Analytics struct {
	Conn  func() driver.Conn
	DB    string
	Grace time.Duration // reconciliation: how long a sent notification may wait for its receipt
}

// analyticsConn answers 503 and returns nil when analytics cannot be read.
func (s *Server) analyticsConn(w http.ResponseWriter) driver.Conn {
	var conn driver.Conn
	if s.Reports.Conn != nil {
		conn = s.Reports.Conn()
	}
	if conn == nil {
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable",
			Message: "analytics is not configured for this API (analytics.addr, or analytics.enabled in notifyd run), or not up yet"})
	}
	return conn
}

// timeRange reads from and to (RFC 3339); to defaults to now, from to 24 h before to.
func (s *Server) timeRange(r *http.Request) (from, to time.Time, err *Error) {
	to = s.now()
	if v := r.URL.Query().Get("to"); v != "" {
		t, perr := time.Parse(time.RFC3339, v)
		if perr != nil {
			return from, to, invalid("to", "to must be an RFC 3339 time: %v", perr)
		}
		to = t
	}
	from = to.Add(-24 * time.Hour)
	if v := r.URL.Query().Get("from"); v != "" {
		t, perr := time.Parse(time.RFC3339, v)
		if perr != nil {
			return from, to, invalid("from", "from must be an RFC 3339 time: %v", perr)
		}
		from = t
	}
	if !from.Before(to) {
		return from, to, invalid("from", "from must be before to")
	}
	return from, to, nil
}

func groupBy(r *http.Request) []string {
	var out []string
	for _, d := range strings.Split(r.URL.Query().Get("groupBy"), ",") {
		if d = strings.TrimSpace(d); d != "" {
			out = append(out, d)
		}
	}
	return out
}

func writeTable(w http.ResponseWriter, t analytics.Table, extra map[string]any) {
	body := map[string]any{"columns": t.Columns, "rows": t.Objects()}
	for k, v := range extra {
		body[k] = v
	}
	writeJSON(w, http.StatusOK, body)
}

// timeReport serves a report over a time range: from, to and groupBy from the
// query string, the table as JSON.
func (s *Server) timeReport(run func(ctx context.Context, conn driver.Conn, from, to time.Time, r *http.Request) (analytics.Table, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		conn := s.analyticsConn(w)
		if conn == nil {
			return
		}
		from, to, apiErr := s.timeRange(r)
		if apiErr != nil {
			writeError(w, apiErr)
			return
		}
		t, err := run(r.Context(), conn, from, to, r)
		if err != nil {
			writeReportError(w, err)
			return
		}
		writeTable(w, t, map[string]any{"from": from.UTC(), "to": to.UTC()})
	}
}

func (s *Server) analyticsSummary(w http.ResponseWriter, r *http.Request) {
	s.timeReport(func(ctx context.Context, conn driver.Conn, from, to time.Time, r *http.Request) (analytics.Table, error) {
		return analytics.Summary(ctx, conn, s.Reports.DB, analytics.SummaryQuery{Tenant: tenantFrom(r.Context()),
			From: from, To: to, GroupBy: groupBy(r), Interval: r.URL.Query().Get("interval")})
	})(w, r)
}

func (s *Server) analyticsLatency(w http.ResponseWriter, r *http.Request) {
	s.timeReport(func(ctx context.Context, conn driver.Conn, from, to time.Time, r *http.Request) (analytics.Table, error) {
		return analytics.Latency(ctx, conn, s.Reports.DB, analytics.LatencyQuery{Tenant: tenantFrom(r.Context()),
			From: from, To: to, GroupBy: groupBy(r)})
	})(w, r)
}

func (s *Server) analyticsReconciliation(w http.ResponseWriter, r *http.Request) {
	conn := s.analyticsConn(w)
	if conn == nil {
		return
	}
	day, err := time.Parse("2006-01-02", r.URL.Query().Get("day"))
	if err != nil {
		writeError(w, invalid("day", "day must be a date like 2026-11-22"))
		return
	}
	grace := s.Reports.Grace
	if v := r.URL.Query().Get("grace"); v != "" {
		if grace, err = time.ParseDuration(v); err != nil || grace < 0 {
			writeError(w, invalid("grace", "grace must be a duration like 1h"))
			return
		}
	}
	limit := 1000
	if v := r.URL.Query().Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 0 || limit > 100000 {
			writeError(w, invalid("limit", "limit must be 0 to 100000"))
			return
		}
	}
	rec, err := analytics.Reconcile(r.Context(), conn, s.Reports.DB, analytics.ReconcileQuery{
		Tenant: tenantFrom(r.Context()), Day: day, Grace: grace, Now: s.now(), Limit: limit})
	if err != nil {
		writeReportError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"day": day.Format("2006-01-02"), "grace": grace.String(),
		"providers": rec.Summary.Objects(), "missing": rec.Missing.Objects()})
}

// writeReportError tells a bad parameter (400) from ClickHouse being unavailable (503).
func writeReportError(w http.ResponseWriter, err error) {
	msg := err.Error()
	if strings.HasPrefix(msg, "groupBy:") || strings.HasPrefix(msg, "interval:") {
		field, rest, _ := strings.Cut(msg, ": ")
		writeError(w, invalid(field, "%s", rest))
		return
	}
	writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "analytics: " + msg})
}
