package sinks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// AnalyticsGroup is the consumer group of the analytics sink.
const AnalyticsGroup = "notify.analytics"

// eventColumns is the INSERT column list (18.16 and clickhouse-go need it spelled out).
const eventColumns = "id, notification_id, event_id, user_id, template, channel, priority, category, provider, status, reason, at, at_ms, accepted_at_ms, attempt, provider_message_id, tenant, campaign"

// maxCampaign bounds the campaign written with an event: campaign ids are
// ids (at most 200 bytes), so only a malformed record is cut.
const maxCampaign = 200

// AnalyticsSink streams notify.events into ClickHouse in batches. It commits a
// batch's offsets only after the insert succeeded (DESIGN rule 4). While
// ClickHouse is down it keeps the batch, retries with backoff and reads no
// further; the pipeline does not wait for it. A batch inserted but not
// committed (a crash in between) is inserted again on restart: the events table
// folds rows by event id and the rollups count distinct notification ids, so
// nothing counts twice. Every row carries its event's tenant ("" = the
// default tenant), which every report filters by, and its campaign ("" = none).
type AnalyticsSink struct {
	Brokers    []string
	Conn       driver.Conn
	DB         string
	BatchSize  int
	FlushEvery time.Duration
	Backoff    time.Duration // first retry delay, doubled up to MaxBackoff
	MaxBackoff time.Duration
	Log        *slog.Logger
	Metrics    *AnalyticsMetrics

	afterInsert func() // test hook: runs between a successful insert and its commit
}

// AnalyticsMetrics are the analytics sink's Prometheus series; nil records nothing.
type AnalyticsMetrics struct {
	rows, failures, skipped prometheus.Counter
	batchSeconds            prometheus.Histogram
}

// NewAnalyticsMetrics registers the analytics sink series on reg.
func NewAnalyticsMetrics(reg prometheus.Registerer) *AnalyticsMetrics {
	m := &AnalyticsMetrics{
		rows: prometheus.NewCounter(prometheus.CounterOpts{Name: "notifyd_analytics_rows_total",
			Help: "Status events inserted into ClickHouse (a redelivered batch counts again)."}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "notifyd_analytics_insert_failures_total",
			Help: "Failed insert attempts; the batch is retried."}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{Name: "notifyd_analytics_undecodable_total",
			Help: "Records on notify.events that are not StatusEvents (the status group dead-letters them)."}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "notifyd_analytics_insert_seconds",
			Help: "Time to insert one batch.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
	}
	reg.MustRegister(m.rows, m.failures, m.skipped, m.batchSeconds)
	return m
}

// Run consumes until ctx ends.
func (a *AnalyticsSink) Run(ctx context.Context) error {
	if a.Log == nil {
		a.Log = slog.Default()
	}
	cl, err := topology.NewClient(a.Brokers,
		kgo.ConsumerGroup(AnalyticsGroup),
		kgo.ConsumeTopics(string(topology.Events)),
		kgo.DisableAutoCommit(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(200*time.Millisecond),
		kgo.SessionTimeout(10*time.Second),
		kgo.HeartbeatInterval(time.Second),
		kgo.RebalanceTimeout(10*time.Second),
	)
	if err != nil {
		return fmt.Errorf("analytics sink: %w", err)
	}
	defer cl.CloseAllowingRebalance()

	var batch []*kgo.Record
	var rows []*schemas.StatusEvent
	deadline := time.Now().Add(a.FlushEvery)
	for {
		pctx, cancel := context.WithDeadline(ctx, deadline)
		fetches := cl.PollRecords(pctx, a.BatchSize-len(batch))
		cancel()
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return nil
		}
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				a.Log.Warn("analytics fetch", "topic", t, "partition", p, "err", err)
			}
		})
		fetches.EachRecord(func(r *kgo.Record) {
			batch = append(batch, r)
			ev, err := schemas.StatusEventCodec.Decode(r.Value)
			if err != nil {
				a.Metrics.skip()
				return
			}
			rows = append(rows, ev)
		})
		if len(batch) < a.BatchSize && time.Now().Before(deadline) {
			continue
		}
		if len(batch) > 0 {
			if err := a.insertWithRetry(ctx, rows); err != nil {
				return nil // stopping: the batch is read again by the next owner
			}
			if a.afterInsert != nil {
				a.afterInsert()
				if ctx.Err() != nil {
					return nil
				}
			}
			if err := cl.CommitRecords(ctx, batch...); err != nil && ctx.Err() == nil {
				a.Log.Warn("analytics commit", "err", err) // the batch comes again; it cannot count twice
			}
			batch, rows = batch[:0], rows[:0]
		}
		deadline = time.Now().Add(a.FlushEvery)
	}
}

func (a *AnalyticsSink) insertWithRetry(ctx context.Context, rows []*schemas.StatusEvent) error {
	backoff := a.Backoff
	for attempt := 1; ; attempt++ {
		start := time.Now()
		err := a.insert(ctx, rows)
		if err == nil {
			a.Metrics.inserted(len(rows), time.Since(start))
			if attempt > 1 {
				a.Log.Info("analytics insert recovered", "rows", len(rows), "attempts", attempt)
			}
			return nil
		}
		a.Metrics.failed()
		a.Log.Warn("analytics insert failed; retrying", "rows", len(rows), "attempt", attempt, "in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		if backoff *= 2; backoff > a.MaxBackoff {
			backoff = a.MaxBackoff
		}
	}
}

func (a *AnalyticsSink) insert(ctx context.Context, rows []*schemas.StatusEvent) error {
	if len(rows) == 0 {
		return nil
	}
	b, err := a.Conn.PrepareBatch(ctx, "INSERT INTO "+a.DB+".events ("+eventColumns+")")
	if err != nil {
		return err
	}
	add := func(e *schemas.StatusEvent) error {
		return b.Append(e.ID, e.NotificationID, e.EventID, e.UserID, e.Template, e.Channel, e.Priority, e.Category,
			e.Provider, e.Status, e.Reason, time.UnixMilli(e.At), uint64(max(e.At, 0)), uint64(max(e.AcceptedAt, 0)), uint32(max(e.Attempt, 0)),
			e.ProviderMessageID, schemas.NormTenant(e.Tenant), processors.Clip(e.Campaign, maxCampaign))
	}
	for _, e := range rows {
		err := add(e)
		if q := processors.QueuedEvent(e); q != nil && err == nil {
			// The routing a sink's event states is a row of its own, as the
			// deliver group's queued event was: the same id each time, so the
			// table folds the repeats (ReplacingMergeTree) like a redelivery.
			err = add(q)
		}
		if err != nil {
			_ = b.Abort()
			return err
		}
	}
	return b.Send()
}

func (m *AnalyticsMetrics) inserted(n int, d time.Duration) {
	if m != nil {
		m.rows.Add(float64(n))
		m.batchSeconds.Observe(d.Seconds())
	}
}

func (m *AnalyticsMetrics) failed() {
	if m != nil {
		m.failures.Inc()
	}
}

func (m *AnalyticsMetrics) skip() {
	if m != nil {
		m.skipped.Inc()
	}
}
