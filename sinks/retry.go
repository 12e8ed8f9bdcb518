package sinks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// RetryPlan is what becomes of a notification whose providers failed
// transiently: due again after Delay on the tier's topic, or, when no tier
// fits before its deadline, expired (past expiresAt) or failed (past the
// priority's retry horizon).
type RetryPlan struct {
	Delay   time.Duration // 0: no retry
	Due     time.Time
	Expired bool // the deadline is the notification's expiresAt
}

// PlanRetry picks the next retry of n at now. The tiers are tried in order,
// one per retry, the last repeating; a retry that would come after the
// deadline (acceptance + horizon of its priority, or expiresAt if earlier)
// takes the longest tier that still fits, and none fitting ends the retries.
func PlanRetry(n *schemas.Notification, now time.Time, r config.Retry) RetryPlan {
	tiers := r.Tiers
	if len(tiers) == 0 {
		return RetryPlan{}
	}
	horizon, ok := r.Horizon[n.Priority]
	if !ok {
		horizon = r.Horizon["normal"]
	}
	start := n.AcceptedAt
	if start == 0 {
		start = n.FirstFailedAt
	}
	if start == 0 {
		start = now.UnixMilli()
	}
	deadline := time.UnixMilli(start).Add(horizon)
	byExpiry := false
	if n.ExpiresAt > 0 && time.UnixMilli(n.ExpiresAt).Before(deadline) {
		deadline, byExpiry = time.UnixMilli(n.ExpiresAt), true
	}
	delay := tiers[min(int(n.Retries), len(tiers)-1)]
	if !now.Add(delay).Before(deadline) {
		delay = 0
		sorted := append([]time.Duration(nil), tiers...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i] > sorted[j] })
		for _, d := range sorted {
			if now.Add(d).Before(deadline) {
				delay = d
				break
			}
		}
	}
	if delay == 0 {
		return RetryPlan{Expired: byExpiry}
	}
	return RetryPlan{Delay: delay, Due: now.Add(delay)}
}

// PlanRetryAfter is PlanRetry for a provider that asked to wait at least
// after (Retry-After): the shortest tier that waits that long, the longest
// tier when none does.
func PlanRetryAfter(n *schemas.Notification, now time.Time, r config.Retry, after time.Duration) RetryPlan {
	plan := PlanRetry(n, now, r)
	if plan.Delay == 0 || plan.Delay >= after {
		return plan
	}
	longer := slices.Max(r.Tiers)
	for _, d := range r.Tiers {
		if d >= after && d < longer {
			longer = d
		}
	}
	m := *n
	for i, d := range r.Tiers {
		if d == longer {
			m.Retries = int32(i)
			break
		}
	}
	if p := PlanRetry(&m, now, r); p.Delay > 0 {
		return p
	}
	return plan
}

// maxLastError bounds the provider error a retry record carries (it is
// repeated in the retrying event's reason).
const maxLastError = 1024

// retry puts the notification on the retry topic of its next tier, or ends
// it when its deadline leaves no retry.
func (s *Sink) retry(j *job) {
	now := s.now()
	n := *j.n
	if len(n.Targets) > 0 {
		n.Targets = j.remaining // invalid ones are not tried again
	}
	n.Attempts += j.calls
	if n.FirstFailedAt == 0 {
		n.FirstFailedAt = now.UnixMilli()
	}
	n.LastError = processors.Redact(errString(j.lastErr), processors.Sensitive(&n), maxLastError)
	plan := PlanRetryAfter(&n, now, s.Opts.Retry, j.after)
	if plan.Delay == 0 {
		j.calls = 0
		j.n = &n
		if plan.Expired {
			s.expire(j, "expired at "+time.UnixMilli(n.ExpiresAt).UTC().Format(time.RFC3339)+
				" before a provider took it; last: "+n.LastError)
			return
		}
		s.fail(j, true)
		return
	}
	n.Retries++
	n.RetryAt = plan.Due.UnixMilli()
	// Sealed again: the retry topic holds the remaining targets, never in clear.
	sealed, err := processors.SealNotification(j.ctx, s.Keys, &n)
	var b []byte
	if err == nil {
		b, err = schemas.NotificationCodec.Encode(sealed)
	}
	if err == nil && !topology.Fits(n.ID, b) {
		sealed.LastError = ""
		b, err = schemas.NotificationCodec.Encode(sealed)
	}
	if err != nil {
		j.lastErr = Permanent(fmt.Errorf("encode retry: %w", err))
		s.fail(j, false)
		return
	}
	tier := config.RetryTierName(plan.Delay)
	s.ledger.Release(n.ID, s.Channel)
	s.produce(j, s.Producer, &kgo.Record{Topic: topology.RetryTopic(plan.Delay), Key: []byte(n.ID), Value: b})
	reason := fmt.Sprintf("%s; retry %d at %s", n.LastError, n.Retries, plan.Due.UTC().Format(time.RFC3339))
	s.event(j, s.notificationEvent(&n, processors.StatusRetrying, j.lastProv, reason, n.Retries, ""))
	s.Metrics.retried(s.Channel, tier)
	j.done()
}

// Retrier is the retry group: it reads every retry topic and puts each
// notification back on its channel's queue when it is due. Within a tier
// every record waits the same delay, so a partition's records fall due in
// order: the head is the only one to wait for.
type Retrier struct {
	Brokers  []string
	Producer *kgo.Client // goka-compatible partitioning (topology.NewProducer)
	Log      *slog.Logger
	Metrics  *Metrics
	Now      func() time.Time
	// MaxHeld bounds the records held per partition while they wait.
	MaxHeld int
	// SessionTimeout of the consumer group (10s when zero).
	SessionTimeout time.Duration

	ready chan struct{}
	once  sync.Once
}

// Ready is closed once the retrier has joined its group.
func (r *Retrier) Ready() <-chan struct{} {
	r.once.Do(func() { r.ready = make(chan struct{}) })
	return r.ready
}

func (r *Retrier) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

var retryTopics = "^" + regexp.QuoteMeta(topology.RetryPrefix) + ".+"

// Run moves due notifications until ctx ends.
func (r *Retrier) Run(ctx context.Context) error {
	r.Ready()
	if r.Log == nil {
		r.Log = slog.Default()
	}
	if r.MaxHeld <= 0 {
		r.MaxHeld = 10_000
	}
	log := r.Log.With("component", "retry")
	held := map[tp][]*kgo.Record{}
	paused := map[tp]bool{}
	var revokedMu = make(chan struct{}, 1)
	revokedMu <- struct{}{}
	drop := func(m map[string][]int32) {
		<-revokedMu
		for t, ps := range m {
			for _, p := range ps {
				delete(held, tp{t, p})
				delete(paused, tp{t, p})
			}
		}
		revokedMu <- struct{}{}
	}
	cl, err := topology.NewClient(r.Brokers,
		kgo.ConsumerGroup(topology.RetryGroup),
		kgo.ConsumeRegex(),
		kgo.ConsumeTopics(retryTopics),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(200*time.Millisecond),
		kgo.MetadataMaxAge(30*time.Second),
		kgo.SessionTimeout(topology.SessionTimeout(r.SessionTimeout)),
		kgo.HeartbeatInterval(topology.SessionTimeout(r.SessionTimeout)/10),
		kgo.RebalanceTimeout(10*time.Second),
		kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) { drop(m) }),
		kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, m map[string][]int32) { drop(m) }),
	)
	if err != nil {
		return fmt.Errorf("retry: %w", err)
	}
	defer cl.CloseAllowingRebalance()
	close(r.ready)
	for {
		wait := 500 * time.Millisecond
		<-revokedMu
		next := r.nextDue(held)
		revokedMu <- struct{}{}
		if !next.IsZero() {
			wait = min(wait, max(time.Until(next), 5*time.Millisecond))
		}
		pctx, cancel := context.WithTimeout(ctx, wait)
		fetches := cl.PollRecords(pctx, 1000)
		cancel()
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return nil
		}
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				log.Warn("fetch", "topic", t, "partition", p, "err", err)
			}
		})
		<-revokedMu
		fetches.EachRecord(func(rec *kgo.Record) {
			k := tp{rec.Topic, rec.Partition}
			held[k] = append(held[k], rec)
		})
		due := r.takeDue(held)
		var pause, resume []tp
		for k, l := range held {
			if len(l) >= r.MaxHeld && !paused[k] {
				paused[k] = true
				pause = append(pause, k)
			} else if len(l) < r.MaxHeld/2 && paused[k] {
				paused[k] = false
				resume = append(resume, k)
			}
		}
		revokedMu <- struct{}{}
		setPaused(cl, pause, true)
		setPaused(cl, resume, false)
		if len(due) > 0 {
			if err := r.requeue(ctx, due, log); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				// Not committed: the records are held again from the last commit.
				log.Warn("requeue failed; will retry", "err", err)
				cl.AllowRebalance()
				continue
			}
			if err := cl.CommitRecords(ctx, due...); err != nil && ctx.Err() == nil {
				log.Warn("commit", "err", err)
			}
		}
		cl.AllowRebalance()
	}
}

func setPaused(cl *kgo.Client, ks []tp, pause bool) {
	if len(ks) == 0 {
		return
	}
	m := map[string][]int32{}
	for _, k := range ks {
		m[k.topic] = append(m[k.topic], k.partition)
	}
	if pause {
		cl.PauseFetchPartitions(m)
	} else {
		cl.ResumeFetchPartitions(m)
	}
}

// retryDue reads when a held record is due; an unreadable record is due now
// (requeue dead-letters it).
func retryDue(rec *kgo.Record) time.Time {
	n, err := schemas.NotificationCodec.Decode(rec.Value)
	if err != nil || rec.Value == nil {
		return time.Time{}
	}
	return time.UnixMilli(n.RetryAt)
}

func (r *Retrier) nextDue(held map[tp][]*kgo.Record) time.Time {
	var next time.Time
	for _, l := range held {
		if len(l) == 0 {
			continue
		}
		if d := retryDue(l[0]); next.IsZero() || d.Before(next) {
			next = d
		}
	}
	return next
}

// takeDue removes the due heads of every partition, in order.
func (r *Retrier) takeDue(held map[tp][]*kgo.Record) []*kgo.Record {
	now := r.now()
	var out []*kgo.Record
	for k, l := range held {
		i := 0
		for i < len(l) && !retryDue(l[i]).After(now) {
			i++
		}
		out = append(out, l[:i]...)
		if i == len(l) {
			delete(held, k)
		} else {
			held[k] = l[i:]
		}
	}
	return out
}

// requeue puts due notifications back on their queues (and unreadable ones
// in the DLQ) and waits until the broker has them all.
func (r *Retrier) requeue(ctx context.Context, recs []*kgo.Record, log *slog.Logger) error {
	var out []*kgo.Record
	for _, rec := range recs {
		n, err := schemas.NotificationCodec.Decode(rec.Value)
		if err == nil && rec.Value == nil {
			err = errors.New("null value")
		}
		if err == nil && (!processors.KnownChannel(n.Channel) || !validPriority(n.Priority) || !processors.ValidID(n.ID)) {
			err = fmt.Errorf("retry record names channel %q, priority %q, id %q", processors.Clip(n.Channel, 64),
				processors.Clip(n.Priority, 64), processors.Clip(n.ID, 200))
		}
		if err != nil {
			key, value := topology.EncodeDeadLetter(&schemas.DeadLetter{Topic: rec.Topic, Partition: rec.Partition,
				Offset: rec.Offset, Key: rec.Key, Value: rec.Value, Reason: processors.Redact(err.Error(), nil, processors.MaxReason),
				Stage: "retry", At: r.now().UnixMilli()})
			out = append(out, &kgo.Record{Topic: string(topology.DLQ), Key: []byte(key), Value: value})
			log.Warn("unreadable retry record dead-lettered", "topic", rec.Topic, "offset", rec.Offset, "err", err)
			continue
		}
		n.RetryAt = 0
		b, err := schemas.NotificationCodec.Encode(n)
		if err != nil {
			return err
		}
		out = append(out, &kgo.Record{Topic: string(topology.Out(n.Channel, n.Priority)), Key: []byte(n.ID), Value: b})
		r.Metrics.requeue(n.Channel)
	}
	return r.Producer.ProduceSync(ctx, out...).FirstErr()
}

func validPriority(p string) bool { return p == "high" || p == "normal" || p == "low" }
