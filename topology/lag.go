package topology

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"
)

// LagCollector is a prometheus.Collector reporting, per consumer group and topic, how many records
// the group has not yet committed (sum over partitions of end offset − committed offset; a partition
// with no commit counts from its start offset), and the number of records in notify.dlq.
//
// The topics of a group are the topics it has commits for. Offsets are read
// lazily on scrape, at most once per maxAge, and a read is bounded by timeout:
// /metrics must answer while the broker is down. When a read fails the error
// counter goes up and the last good values are reported again.
type LagCollector struct {
	client *kgo.Client
	adm    *kadm.Client
	groups []string
	log    *slog.Logger

	maxAge  time.Duration // a scrape within maxAge of the last read reuses its values
	timeout time.Duration // bounds one read of the offsets

	lagDesc, worstDesc, dlqDesc *prometheus.Desc
	scrapeErrors                prometheus.Counter

	mu   sync.Mutex // serializes reads; held by a scrape for at most timeout
	last lagSnapshot
	read time.Time // when the offsets were last read, successfully or not
}

type groupTopic struct{ group, topic string }

type topicLag struct {
	total, worst int64
}

// lagSnapshot is what one read of the offsets found.
type lagSnapshot struct {
	lags   map[groupTopic]topicLag
	dlq    int64
	hasDLQ bool // notify.dlq exists
}

// NewLagCollector reads offsets of groups through a client of its own on brokers.
func NewLagCollector(brokers []string, groups []string, log *slog.Logger) *LagCollector {
	c := &LagCollector{
		groups:  append([]string(nil), groups...),
		log:     log,
		maxAge:  2 * time.Second,
		timeout: 2 * time.Second,
		lagDesc: prometheus.NewDesc("notifyd_consumer_lag",
			"Records of the topic the consumer group has not committed yet (end offset minus committed offset, summed over partitions).",
			[]string{"group", "topic"}, nil),
		worstDesc: prometheus.NewDesc("notifyd_consumer_lag_max_partition",
			"The consumer lag of the group's worst partition of the topic.",
			[]string{"group", "topic"}, nil),
		dlqDesc: prometheus.NewDesc("notifyd_dlq_records",
			"Dead letters held by "+string(DLQ)+" (end minus start offsets, summed over partitions).", nil, nil),
		scrapeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "notifyd_lag_scrape_errors_total",
			Help: "Reads of consumer offsets that failed; the lag metrics then repeat the last good values."}),
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	cl, err := NewClient(brokers, kgo.ClientID("notifyd-lag"))
	if err != nil {
		// Only bad options fail here; every scrape then counts an error.
		c.log.Error("lag collector: kafka client", "err", err)
		return c
	}
	c.client, c.adm = cl, kadm.NewClient(cl)
	return c
}

// Close releases the collector's Kafka client.
func (c *LagCollector) Close() {
	if c.client != nil {
		c.client.Close()
	}
}

// Describe implements prometheus.Collector.
func (c *LagCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.lagDesc
	ch <- c.worstDesc
	ch <- c.dlqDesc
	c.scrapeErrors.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *LagCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.snapshot()
	for k, l := range s.lags {
		ch <- prometheus.MustNewConstMetric(c.lagDesc, prometheus.GaugeValue, float64(l.total), k.group, k.topic)
		ch <- prometheus.MustNewConstMetric(c.worstDesc, prometheus.GaugeValue, float64(l.worst), k.group, k.topic)
	}
	if s.hasDLQ {
		ch <- prometheus.MustNewConstMetric(c.dlqDesc, prometheus.GaugeValue, float64(s.dlq))
	}
	ch <- c.scrapeErrors
}

// snapshot returns fresh enough values, reading the offsets if they are not.
func (c *LagCollector) snapshot() lagSnapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.read.IsZero() && time.Since(c.read) < c.maxAge {
		return c.last
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	s, err := c.fetch(ctx)
	// Also after a failure: a dead broker costs one timeout per maxAge, not one per scrape.
	c.read = time.Now()
	if err != nil {
		c.scrapeErrors.Inc()
		c.log.Warn("consumer lag: reading offsets failed; reporting the last good values", "err", err)
		return c.last
	}
	c.last = s
	return s
}

func (c *LagCollector) fetch(ctx context.Context) (lagSnapshot, error) {
	if c.adm == nil {
		return lagSnapshot{}, errors.New("no kafka client")
	}
	// kadm's Lag is not used: against kfake it reported every commit as -1
	// while FetchOffsets on the same client returned them.
	commits := make([]kadm.OffsetResponses, len(c.groups))
	g, gctx := errgroup.WithContext(ctx)
	for i, group := range c.groups {
		g.Go(func() error {
			os, err := c.adm.FetchOffsets(gctx, group)
			if errors.Is(err, kerr.GroupIDNotFound) {
				return nil // never committed
			}
			if err != nil {
				return fmt.Errorf("committed offsets of %s: %w", group, err)
			}
			var perr error
			os.EachError(func(o kadm.OffsetResponse) {
				perr = fmt.Errorf("committed offset of %s on %s/%d: %w", group, o.Topic, o.Partition, o.Err)
			})
			commits[i] = os
			return perr
		})
	}
	if err := g.Wait(); err != nil {
		return lagSnapshot{}, err
	}

	topics := []string{string(DLQ)}
	seen := map[string]bool{string(DLQ): true}
	for _, os := range commits {
		for t := range os {
			if !seen[t] {
				seen[t] = true
				topics = append(topics, t)
			}
		}
	}
	ends, err := c.adm.ListEndOffsets(ctx, topics...)
	if err != nil {
		return lagSnapshot{}, fmt.Errorf("end offsets: %w", err)
	}
	starts, err := c.adm.ListStartOffsets(ctx, topics...)
	if err != nil {
		return lagSnapshot{}, fmt.Errorf("start offsets: %w", err)
	}
	for _, listed := range []kadm.ListedOffsets{ends, starts} {
		var lerr error
		listed.Each(func(o kadm.ListedOffset) {
			// A deleted topic that a group still has commits for is not lag.
			if o.Err != nil && !errors.Is(o.Err, kerr.UnknownTopicOrPartition) {
				lerr = fmt.Errorf("offsets of %s/%d: %w", o.Topic, o.Partition, o.Err)
			}
		})
		if lerr != nil {
			return lagSnapshot{}, lerr
		}
	}

	s := lagSnapshot{lags: map[groupTopic]topicLag{}}
	for _, end := range ends[string(DLQ)] {
		if start, ok := starts.Lookup(end.Topic, end.Partition); ok && end.Err == nil && start.Err == nil {
			s.dlq += end.Offset - start.Offset
			s.hasDLQ = true
		}
	}
	for i, os := range commits {
		for t := range os {
			var l topicLag
			found := false
			for p, end := range ends[t] {
				if end.Err != nil {
					continue
				}
				start, ok := starts.Lookup(t, p)
				if !ok || start.Err != nil {
					continue
				}
				found = true
				from := start.Offset // no commit: the group would read from the start
				if o, ok := os.Lookup(t, p); ok && o.At >= 0 {
					// Records below the start offset are gone: they are not lag.
					from = max(o.At, start.Offset)
				}
				n := max(end.Offset-from, 0)
				l.total += n
				l.worst = max(l.worst, n)
			}
			if found {
				s.lags[groupTopic{c.groups[i], t}] = l
			}
		}
	}
	return s, nil
}
