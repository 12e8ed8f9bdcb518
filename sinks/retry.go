package sinks

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

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
	// The headers say what parked it: a recovery of one of those providers
	// releases it before its tier (Retrier).
	s.produce(j, s.Producer, &kgo.Record{Topic: topology.RetryTopic(plan.Delay), Key: []byte(n.ID), Value: b,
		Headers: s.parkingOf(j, now).headers()})
	reason := fmt.Sprintf("%s; retry %d at %s", n.LastError, n.Retries, plan.Due.UTC().Format(time.RFC3339))
	s.event(j, s.notificationEvent(&n, processors.StatusRetrying, j.lastProv, reason, n.Retries, ""))
	s.Metrics.retried(s.Channel, tier)
	j.done()
}

// Retrier is the retry group: it reads every retry topic and puts each
// notification back on its channel's queue when it is due. Within a tier
// every record waits the same delay, so a partition's records fall due in
// order: the head is the only one to wait for. A record whose provider
// recovered since it was parked (notify.recoveries, see recovery.go) goes
// back at once, wherever it is in its partition.
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

	ready     chan struct{}
	once      sync.Once
	recovered *recoveries
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

// held is a retry record waiting in the retrier, read once when fetched.
type held struct {
	rec    *kgo.Record
	due    time.Time // zero: unreadable, due now (requeue dead-letters it)
	parked parking
	// by is the recovery that released it early ("" when due by its tier).
	by string
}

func newHeld(rec *kgo.Record) *held {
	h := &held{rec: rec, parked: parkedBy(rec)}
	if n, err := schemas.NotificationCodec.Decode(rec.Value); err == nil && rec.Value != nil {
		h.due = time.UnixMilli(n.RetryAt)
	}
	return h
}

// Run moves due notifications until ctx ends.
func (r *Retrier) Run(ctx context.Context) error {
	r.Ready()
	if r.Log == nil {
		r.Log = slog.Default()
	}
	if r.MaxHeld <= 0 {
		r.MaxHeld = 10_000
	}
	r.recovered = newRecoveries()
	log := r.Log.With("component", "retry")
	heldBy := map[tp][]*held{}
	paused := map[tp]bool{}
	owned := map[tp]bool{}
	// next is, per partition, the offset after the last record put back:
	// what to commit once nothing before it is held.
	next := map[tp]kgo.EpochOffset{}
	var revokedMu = make(chan struct{}, 1)
	revokedMu <- struct{}{}
	drop := func(m map[string][]int32) {
		<-revokedMu
		for _, k := range tps(m) {
			delete(heldBy, k)
			delete(paused, k)
			delete(owned, k)
			delete(next, k)
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
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			<-revokedMu
			for _, k := range tps(m) {
				owned[k] = true
			}
			revokedMu <- struct{}{}
		}),
		kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) { drop(m) }),
		kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, m map[string][]int32) { drop(m) }),
	)
	if err != nil {
		return fmt.Errorf("retry: %w", err)
	}
	defer cl.CloseAllowingRebalance()
	wctx, stopWatch := context.WithCancel(ctx)
	var watching sync.WaitGroup
	watching.Add(1)
	go func() { defer watching.Done(); r.watchRecoveries(wctx, log) }()
	defer func() { stopWatch(); watching.Wait() }()
	close(r.ready)
	var seen uint64 // generation of the recoveries last applied to every held record
	for {
		wait := 500 * time.Millisecond
		<-revokedMu
		due := nextDue(heldBy)
		revokedMu <- struct{}{}
		if !due.IsZero() {
			wait = min(wait, max(time.Until(due), 5*time.Millisecond))
		}
		pctx, cancel := context.WithTimeout(ctx, wait)
		go func() {
			select {
			case <-r.recovered.wake: // a recovery: release now, not after the wait
				cancel()
			case <-pctx.Done():
			}
		}()
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
		recovered, gen := r.recovered.snapshot()
		<-revokedMu
		// Fetched records are checked against the recoveries known; every held
		// record is when a recovery is news.
		from := map[tp]int{}
		fetches.EachRecord(func(rec *kgo.Record) {
			k := tp{rec.Topic, rec.Partition}
			if _, ok := from[k]; !ok {
				from[k] = len(heldBy[k])
			}
			heldBy[k] = append(heldBy[k], newHeld(rec))
		})
		if gen != seen {
			from, seen = nil, gen
		}
		out := takeReleased(heldBy, recovered, from)
		released := len(out)
		out = append(out, takeDue(heldBy, r.now())...)
		var pause, resume []tp
		for k, l := range heldBy {
			if len(l) >= r.MaxHeld && !paused[k] {
				paused[k] = true
				pause = append(pause, k)
			}
		}
		// A paused partition may hold nothing any more (all of it was due, or
		// released): it is not in heldBy then, and must be resumed all the same.
		for k := range paused {
			if len(heldBy[k]) < r.MaxHeld/2 {
				delete(paused, k)
				resume = append(resume, k)
			}
		}
		revokedMu <- struct{}{}
		setPaused(cl, pause, true)
		setPaused(cl, resume, false)
		if len(out) > 0 {
			recs := make([]*kgo.Record, len(out))
			for i, h := range out {
				recs[i] = h.rec
			}
			if err := r.requeue(ctx, recs, log); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				// Held again (not committed): tried again on the next round.
				log.Warn("requeue failed; will retry", "err", err)
				<-revokedMu
				holdAgain(heldBy, owned, out)
				revokedMu <- struct{}{}
				cl.AllowRebalance()
				continue
			}
			if released > 0 {
				r.noteReleased(out[:released], log)
			}
			<-revokedMu
			offsets := commitPoints(heldBy, owned, next, out)
			revokedMu <- struct{}{}
			if err := commitOffsets(ctx, cl, offsets); err != nil && ctx.Err() == nil {
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

// nextDue is when the first held record falls due by its tier.
func nextDue(heldBy map[tp][]*held) time.Time {
	var next time.Time
	for _, l := range heldBy {
		if len(l) == 0 {
			continue
		}
		if d := l[0].due; next.IsZero() || d.Before(next) {
			next = d
		}
	}
	return next
}

// takeDue removes the due heads of every partition, in order.
func takeDue(heldBy map[tp][]*held, now time.Time) []*held {
	var out []*held
	for k, l := range heldBy {
		i := 0
		for i < len(l) && !l[i].due.After(now) {
			i++
		}
		out = append(out, l[:i]...)
		if i == len(l) {
			delete(heldBy, k)
		} else {
			heldBy[k] = l[i:]
		}
	}
	return out
}

// takeReleased removes the held records that a provider's recovery since
// they were parked releases, wherever they are in their partition. Each
// partition is looked at from from[k] on (the records just fetched), every
// partition whole when from is nil.
func takeReleased(heldBy map[tp][]*held, recovered map[string]time.Time, from map[tp]int) []*held {
	if len(recovered) == 0 {
		return nil
	}
	var out []*held
	release := func(k tp, start int) {
		l := heldBy[k]
		kept := l[:start]
		for _, h := range l[start:] {
			if h.by = h.parked.releasedBy(recovered); h.by != "" {
				out = append(out, h)
			} else {
				kept = append(kept, h)
			}
		}
		clear(l[len(kept):])
		if len(kept) == 0 {
			delete(heldBy, k)
		} else {
			heldBy[k] = kept
		}
	}
	if from == nil {
		for k := range heldBy {
			release(k, 0)
		}
		return out
	}
	for k, start := range from {
		release(k, start)
	}
	return out
}

// holdAgain puts records whose requeue failed back among the held ones, in
// offset order, unless their partition has moved meanwhile.
func holdAgain(heldBy map[tp][]*held, owned map[tp]bool, hs []*held) {
	touched := map[tp]bool{}
	for _, h := range hs {
		k := tp{h.rec.Topic, h.rec.Partition}
		if owned[k] {
			h.by = ""
			heldBy[k] = append(heldBy[k], h)
			touched[k] = true
		}
	}
	for k := range touched {
		slices.SortFunc(heldBy[k], func(a, b *held) int { return cmp.Compare(a.rec.Offset, b.rec.Offset) })
	}
}

// commitPoints are the offsets to commit once out is back on its queues:
// each partition of out up to its first record still held (a record released
// early leaves older ones held behind it), or past everything put back.
func commitPoints(heldBy map[tp][]*held, owned map[tp]bool, next map[tp]kgo.EpochOffset, out []*held) map[string]map[int32]kgo.EpochOffset {
	touched := map[tp]bool{}
	for _, h := range out {
		k := tp{h.rec.Topic, h.rec.Partition}
		if !owned[k] {
			continue // moved meanwhile: its next owner reads it again
		}
		touched[k] = true
		if h.rec.Offset+1 > next[k].Offset {
			next[k] = kgo.EpochOffset{Epoch: h.rec.LeaderEpoch, Offset: h.rec.Offset + 1}
		}
	}
	offsets := map[string]map[int32]kgo.EpochOffset{}
	for k := range touched {
		at := next[k]
		if l := heldBy[k]; len(l) > 0 {
			at = kgo.EpochOffset{Epoch: l[0].rec.LeaderEpoch, Offset: l[0].rec.Offset}
		}
		if offsets[k.topic] == nil {
			offsets[k.topic] = map[int32]kgo.EpochOffset{}
		}
		offsets[k.topic][k.partition] = at
	}
	return offsets
}

func commitOffsets(ctx context.Context, cl *kgo.Client, offsets map[string]map[int32]kgo.EpochOffset) error {
	if len(offsets) == 0 {
		return nil
	}
	var failed error
	cl.CommitOffsetsSync(ctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		failed = commitError(resp, err)
	})
	return failed
}

// noteReleased counts and logs the records put back early, by recovery.
func (r *Retrier) noteReleased(hs []*held, log *slog.Logger) {
	by := map[string]int{}
	for _, h := range hs {
		by[h.by]++
		channel, provider, _ := strings.Cut(h.by, "/")
		r.Metrics.release(channel, provider) // a recovery key, as a sink wrote it: not the record's own words
	}
	keys := slices.Sorted(maps.Keys(by))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, by[k])
	}
	log.Info("parked notifications released: their provider recovered", "released", len(hs), "by", strings.Join(parts, ","))
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
