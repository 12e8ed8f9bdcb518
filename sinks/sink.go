package sinks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// Options tune a sink.
type Options struct {
	Chunk       int           // records delivered between two commits
	Concurrency int           // provider calls in flight
	Attempts    int           // tries per provider for transient errors
	Backoff     time.Duration // first retry delay, doubled each try
	SendTimeout time.Duration
	// LedgerLookback is how far back the ledger is reloaded at start and how
	// long entries are kept.
	LedgerLookback time.Duration
}

// Sink is the consumer group of one channel.
type Sink struct {
	Channel   string
	Brokers   []string
	Providers []Provider // failover order
	Producer  *kgo.Client
	Opts      Options
	Log       *slog.Logger
	Metrics   *Metrics
	Now       func() time.Time

	ledger *Ledger
	ready  chan struct{}
	once   sync.Once
}

func (s *Sink) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Ready is closed when the sink has loaded its ledger and joined its group.
func (s *Sink) Ready() <-chan struct{} {
	s.once.Do(func() { s.ready = make(chan struct{}) })
	return s.ready
}

func (s *Sink) topics() []string {
	out := make([]string, len(processors.Priorities))
	for i, p := range processors.Priorities {
		out[i] = string(topology.Out(s.Channel, p))
	}
	return out
}

// Run consumes until ctx ends.
func (s *Sink) Run(ctx context.Context) error {
	s.Ready()
	if s.Log == nil {
		s.Log = slog.Default()
	}
	s.Log = s.Log.With("sink", s.Channel)
	s.ledger = NewLedger(s.Opts.LedgerLookback)
	if err := s.loadLedger(ctx); err != nil {
		return fmt.Errorf("sink %s: load ledger: %w", s.Channel, err)
	}
	topics := s.topics()
	q := newQueues(topics)
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(s.Brokers...),
		kgo.ConsumerGroup(topology.SinkGroup(s.Channel)),
		kgo.ConsumeTopics(topics...),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond),
		// A crashed member holds its partitions until its session expires: keep
		// that short so a restarted or surviving sink takes over quickly.
		kgo.SessionTimeout(10*time.Second),
		kgo.HeartbeatInterval(time.Second),
		kgo.RebalanceTimeout(10*time.Second),
		kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, lost map[string][]int32) { q.drop(lost) }),
		kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, lost map[string][]int32) { q.drop(lost) }),
	)
	if err != nil {
		return fmt.Errorf("sink %s: %w", s.Channel, err)
	}
	defer func() {
		cl.CloseAllowingRebalance()
		for _, p := range s.Providers {
			if c, ok := p.(Closer); ok {
				_ = c.Close()
			}
		}
	}()
	close(s.ready)
	maxQueued := 4 * s.Opts.Chunk
	lastExpire := s.now()
	for {
		// Block for records only when nothing is queued; otherwise take what is
		// buffered (nil context) so a high-priority record queued meanwhile is seen
		// before the next lower-priority chunk.
		var fetches kgo.Fetches
		if q.empty() {
			fetches = cl.PollRecords(ctx, maxQueued)
		} else {
			fetches = cl.PollRecords(nil, maxQueued) //nolint:staticcheck // nil = do not wait
		}
		if fetches.IsClientClosed() || ctx.Err() != nil {
			return nil
		}
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				s.Log.Warn("fetch", "topic", t, "partition", p, "err", err)
			}
		})
		fetches.EachRecord(q.push)
		q.throttle(cl, maxQueued)
		if chunk := q.take(s.Opts.Chunk); len(chunk) > 0 {
			if err := s.deliverChunk(ctx, chunk); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			if err := cl.CommitRecords(ctx, chunk...); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				s.Log.Warn("commit", "err", err)
			}
		}
		if now := s.now(); now.Sub(lastExpire) > time.Minute {
			s.ledger.Expire(now)
			lastExpire = now
		}
		cl.AllowRebalance()
	}
}

// deliverChunk delivers every record of a chunk (concurrently), produces their
// status events and ledger entries, and returns once all are flushed: only then
// may the chunk be committed (DESIGN rule 4).
func (s *Sink) deliverChunk(ctx context.Context, chunk []*kgo.Record) error {
	sem := make(chan struct{}, s.Opts.Concurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for _, r := range chunk {
		sem <- struct{}{}
		wg.Add(1)
		go func(r *kgo.Record) {
			defer func() { <-sem; wg.Done() }()
			if err := s.deliverRecord(ctx, r); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}(r)
	}
	wg.Wait()
	// Flush even when cancelled: ledger entries of sends that happened must get out.
	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Producer.Flush(fctx); err != nil {
		return fmt.Errorf("sink %s: flush: %w", s.Channel, err)
	}
	return firstErr
}

// deliverRecord returns an error only when the record must not be committed
// (the process is stopping or the status could not be produced).
func (s *Sink) deliverRecord(ctx context.Context, r *kgo.Record) error {
	n, err := schemas.NotificationCodec.Decode(r.Value)
	if err != nil || n.ID == "" || n.Channel != s.Channel {
		if err == nil {
			err = fmt.Errorf("notification %q routed to %s is for channel %q", n.ID, r.Topic, n.Channel)
		}
		s.deadLetter(r, "sink."+s.Channel, err)
		s.produceEvent(&schemas.StatusEvent{ID: processors.StatusEventID(recordID(r), processors.StatusRejected, s.Channel, 0),
			NotificationID: recordID(r), Channel: s.Channel, Status: processors.StatusRejected,
			Reason: "sink: " + err.Error(), At: s.now().UnixMilli()})
		s.Metrics.outcome(s.Channel, "", processors.StatusRejected)
		return nil
	}
	if n.ExpiresAt > 0 && s.now().UnixMilli() >= n.ExpiresAt {
		s.produceEvent(s.event(n, processors.StatusExpired, "", "expired at "+
			time.UnixMilli(n.ExpiresAt).UTC().Format(time.RFC3339)+" before a provider took it", 0, ""))
		s.Metrics.outcome(s.Channel, "", processors.StatusExpired)
		return nil
	}
	if !s.ledger.Claim(n.ID, s.Channel) {
		s.Metrics.skipped(s.Channel)
		s.Log.Debug("already delivered", "id", n.ID)
		return nil
	}
	provider, msgID, attempt, err := s.send(ctx, n)
	if err != nil {
		s.ledger.Release(n.ID, s.Channel)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.deadLetter(r, "sink."+s.Channel, err)
		s.produceEvent(s.event(n, processors.StatusFailed, provider, err.Error(), attempt, ""))
		s.Metrics.outcome(s.Channel, provider, processors.StatusFailed)
		return nil
	}
	now := s.now()
	s.ledger.Record(n.ID, s.Channel, now)
	entry, _ := schemas.LedgerEntryCodec.Encode(&schemas.LedgerEntry{NotificationID: n.ID, Channel: s.Channel,
		Provider: provider, Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, At: now.UnixMilli()})
	s.Producer.Produce(context.Background(), &kgo.Record{Topic: string(topology.Ledger), Key: []byte(n.ID + "/" + s.Channel), Value: entry}, s.logProduceErr)
	s.produceEvent(s.event(n, processors.StatusSent, provider, "", attempt, msgID))
	s.Metrics.sent(s.Channel, provider, now.Sub(time.UnixMilli(n.AcceptedAt)))
	return nil
}

// send walks the failover chain, retrying transient errors with backoff.
func (s *Sink) send(ctx context.Context, n *schemas.Notification) (provider, msgID string, attempt int32, err error) {
	for _, p := range s.Providers {
		backoff := s.Opts.Backoff
		for try := 1; try <= s.Opts.Attempts; try++ {
			attempt++
			sctx, cancel := context.WithTimeout(ctx, s.Opts.SendTimeout)
			msgID, err = p.Send(sctx, n)
			cancel()
			if err == nil {
				return p.Name(), msgID, attempt, nil
			}
			provider = p.Name()
			s.Log.Warn("send failed", "id", n.ID, "provider", p.Name(), "try", try, "err", err)
			if ctx.Err() != nil {
				return provider, "", attempt, ctx.Err()
			}
			if IsPermanent(err) || try == s.Opts.Attempts {
				break
			}
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return provider, "", attempt, ctx.Err()
			}
			backoff *= 2
		}
	}
	if err == nil {
		err = fmt.Errorf("no provider configured for channel %s", s.Channel)
	}
	return provider, "", attempt, fmt.Errorf("all providers failed, last: %w", err)
}

func (s *Sink) event(n *schemas.Notification, status, provider, reason string, attempt int32, msgID string) *schemas.StatusEvent {
	ev := processors.NotificationEvent(n, status, s.Channel, reason, s.now())
	ev.ID = processors.StatusEventID(n.ID, status, s.Channel, attempt)
	ev.Provider, ev.Attempt, ev.ProviderMessageID = provider, attempt, msgID
	return ev
}

func (s *Sink) produceEvent(ev *schemas.StatusEvent) {
	b, err := schemas.StatusEventCodec.Encode(ev)
	if err != nil {
		s.Log.Error("encode status event", "err", err)
		return
	}
	s.Producer.Produce(context.Background(), &kgo.Record{Topic: string(topology.Events), Key: []byte(ev.NotificationID), Value: b}, s.logProduceErr)
}

func (s *Sink) deadLetter(r *kgo.Record, stage string, cause error) {
	b, _ := schemas.DeadLetterCodec.Encode(&schemas.DeadLetter{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset,
		Key: r.Key, Value: r.Value, Reason: cause.Error(), Stage: stage, At: s.now().UnixMilli()})
	s.Producer.Produce(context.Background(), &kgo.Record{Topic: string(topology.DLQ), Key: r.Key, Value: b}, s.logProduceErr)
}

func (s *Sink) logProduceErr(r *kgo.Record, err error) {
	if err != nil {
		s.Log.Error("produce", "topic", r.Topic, "err", err)
	}
}

func recordID(r *kgo.Record) string { return processors.RecordID(r.Topic, r.Partition, r.Offset) }

// loadLedger reads the ledger topic from LedgerLookback ago to its end.
func (s *Sink) loadLedger(ctx context.Context) error {
	since := s.now().Add(-s.Opts.LedgerLookback).UnixMilli()
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.Brokers...),
		kgo.ConsumeTopics(string(topology.Ledger)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AfterMilli(since)))
	if err != nil {
		return err
	}
	defer cl.Close()
	starts, ends, err := offsetRange(ctx, cl, string(topology.Ledger), since)
	if err != nil {
		return err
	}
	done := map[int32]bool{}
	for p, e := range ends {
		if starts[p] >= e {
			done[p] = true
		}
	}
	lctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for len(done) < len(ends) {
		fs := cl.PollFetches(lctx)
		if err := lctx.Err(); err != nil {
			return fmt.Errorf("ledger not loaded: %w", err)
		}
		fs.EachPartition(func(p kgo.FetchTopicPartition) {
			for _, r := range p.Records {
				if e, err := schemas.LedgerEntryCodec.Decode(r.Value); err == nil && e.Channel == s.Channel {
					s.ledger.Record(e.NotificationID, e.Channel, time.UnixMilli(e.At))
				}
			}
			if len(p.Records) > 0 && p.Records[len(p.Records)-1].Offset+1 >= ends[p.Partition] {
				done[p.Partition] = true
			}
		})
	}
	s.Log.Info("ledger loaded", "entries", s.ledger.Len())
	return nil
}
