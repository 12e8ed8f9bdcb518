package sinks

// Early release of parked notifications when their provider recovers.
//
// A notification whose providers failed transiently waits on a retry tier
// (retry). The tiers run on their own clock, so after a short outage the
// last parked notifications would wait for the longest tier although the
// provider has been back for minutes. Instead, when a breaker of a sink
// closes again (its probes succeeded), the sink writes a Recovery to
// notify.recoveries (compacted, key <channel>/<provider>). Every Retrier
// reads that topic whole, whichever process wrote it, and puts back on
// their queue at once the records it holds (or fetches later) that a failure
// of that provider parked before the recovery. Sends still go through the
// sink's lanes, so the provider's rate limit governs them.
//
// A retry record says what parked it in its headers (no schema change): the
// time (the failure, or the end of the Retry-After a provider asked for)
// and every provider of the chain that failed it plus the channel's chain
// breaker. A record parked again after the recovery (the provider failed
// again, or another instance's breaker is still open) is parked after it,
// so one recovery releases a record at most once: no hot loop.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/topology"
)

// Recovery says that a provider of a channel (or the channel's whole chain,
// provider "channel:<channel>") works again since RecoveredAt (Unix ms).
type Recovery struct {
	Channel     string `json:"channel"`
	Provider    string `json:"provider"`
	RecoveredAt int64  `json:"recoveredAt"`
}

// recoveryKey names a provider of a channel in parking headers and as the
// key of its recoveries.
func recoveryKey(channel, provider string) string { return channel + "/" + provider }

// maxRecoveryBytes bounds a recovery record; anything larger is not one.
const maxRecoveryBytes = 4 << 10

func (rc Recovery) record() *kgo.Record {
	value, _ := json.Marshal(rc)
	return &kgo.Record{Topic: string(topology.Recoveries), Key: []byte(recoveryKey(rc.Channel, rc.Provider)), Value: value}
}

// decodeRecovery reads a record of notify.recoveries; anything else is an error.
func decodeRecovery(rec *kgo.Record) (Recovery, error) {
	var rc Recovery
	if len(rec.Value) > maxRecoveryBytes {
		return rc, fmt.Errorf("%d bytes", len(rec.Value))
	}
	dec := json.NewDecoder(bytes.NewReader(rec.Value))
	if err := dec.Decode(&rc); err != nil {
		return rc, err
	}
	switch {
	case rc.Channel == "" || rc.Provider == "" || rc.RecoveredAt <= 0:
		return rc, errors.New("channel, provider and recoveredAt are required")
	case string(rec.Key) != recoveryKey(rc.Channel, rc.Provider):
		return rc, fmt.Errorf("key %q does not name %s", clipKey(rec.Key), recoveryKey(rc.Channel, rc.Provider))
	case dec.More():
		return rc, errors.New("trailing data")
	}
	return rc, nil
}

func clipKey(k []byte) string {
	if len(k) > 64 {
		k = k[:64]
	}
	return string(k)
}

// recovered announces that the breaker name (a provider's, or the channel's
// "channel:<channel>") closed again. It runs inside the breaker's state
// change, under the breaker's lock: it must not block.
func (s *Sink) recovered(name string) {
	if s.Producer == nil {
		return
	}
	rc := Recovery{Channel: s.Channel, Provider: name, RecoveredAt: s.now().UnixMilli()}
	produceRecovery(s.Producer, rc.record(), s.Log, 1)
}

// produceRecovery produces a recovery without blocking, retrying a few times:
// a lost one only leaves the parked notifications to their tiers.
func produceRecovery(cl *kgo.Client, rec *kgo.Record, log *slog.Logger, attempt int) {
	cl.TryProduce(context.Background(), rec, func(r *kgo.Record, err error) {
		if err == nil {
			return
		}
		if attempt >= 5 || errors.Is(err, kgo.ErrClientClosed) {
			log.Warn("recovery not announced; what it parked waits for its retry tier", "key", string(r.Key), "err", err)
			return
		}
		time.AfterFunc(time.Duration(attempt)*200*time.Millisecond, func() { produceRecovery(cl, rec, log, attempt+1) })
	})
}

// Headers of a retry record that say what parked it.
const (
	headerParkedAt = "notifyd.parked-at" // Unix ms
	headerParkedBy = "notifyd.parked-by" // <channel>/<provider>, one header each
)

// parking is why and since when a retry record waits: a recovery of any of
// by (recovery keys) after at releases it.
type parking struct {
	at time.Time
	by []string
}

// parkingOf is what parked j: every provider of its chain (all of them failed
// or refused it) and the channel's chain breaker. A provider that asked to
// wait (Retry-After) is waited for: only a recovery after that releases it.
func (s *Sink) parkingOf(j *job, now time.Time) parking {
	p := parking{at: now.Add(j.after)}
	for _, l := range j.chain {
		p.by = append(p.by, recoveryKey(s.Channel, l.p.Name()))
	}
	p.by = append(p.by, recoveryKey(s.Channel, "channel:"+s.Channel))
	return p
}

func (p parking) headers() []kgo.RecordHeader {
	h := []kgo.RecordHeader{{Key: headerParkedAt, Value: []byte(strconv.FormatInt(p.at.UnixMilli(), 10))}}
	for _, k := range p.by {
		h = append(h, kgo.RecordHeader{Key: headerParkedBy, Value: []byte(k)})
	}
	return h
}

// parkedBy reads a retry record's parking; a record without one (or with an
// unreadable one, or written before there were any) waits for its tier.
func parkedBy(rec *kgo.Record) parking {
	var p parking
	for _, h := range rec.Headers {
		switch h.Key {
		case headerParkedAt:
			ms, err := strconv.ParseInt(string(h.Value), 10, 64)
			if err != nil || ms <= 0 {
				return parking{}
			}
			p.at = time.UnixMilli(ms)
		case headerParkedBy:
			p.by = append(p.by, string(h.Value))
		}
	}
	if p.at.IsZero() {
		return parking{}
	}
	return p
}

// releasedBy is the recovery that frees a parked record: the first provider
// that parked it and recovered after it was parked; "" when none did.
func (p parking) releasedBy(recovered map[string]time.Time) string {
	if p.at.IsZero() {
		return ""
	}
	for _, k := range p.by {
		if t, ok := recovered[k]; ok && t.After(p.at) {
			return k
		}
	}
	return ""
}

// recoveries is what a retrier knows of notify.recoveries: the latest
// recovery of every provider, and a generation that grows with each news.
type recoveries struct {
	mu   sync.Mutex
	at   map[string]time.Time
	gen  uint64
	wake chan struct{} // poked on news: the retrier stops waiting for its poll
}

func newRecoveries() *recoveries {
	return &recoveries{at: map[string]time.Time{}, wake: make(chan struct{}, 1)}
}

// note records a recovery and tells whether it is news.
func (rs *recoveries) note(rc Recovery) bool {
	k, t := recoveryKey(rc.Channel, rc.Provider), time.UnixMilli(rc.RecoveredAt)
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if !t.After(rs.at[k]) {
		return false
	}
	rs.at[k] = t
	rs.gen++
	select {
	case rs.wake <- struct{}{}:
	default:
	}
	return true
}

// snapshot is a copy of the recoveries known, and their generation.
func (rs *recoveries) snapshot() (map[string]time.Time, uint64) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	out := make(map[string]time.Time, len(rs.at))
	for k, t := range rs.at {
		out[k] = t
	}
	return out, rs.gen
}

// watchRecoveries reads notify.recoveries whole, from its start (no group:
// every retrier needs every recovery), until ctx ends. A record that is not
// a recovery is logged and skipped.
func (r *Retrier) watchRecoveries(ctx context.Context, log *slog.Logger) {
	cl, err := topology.NewClient(r.Brokers,
		kgo.ConsumeTopics(string(topology.Recoveries)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(200*time.Millisecond),
		kgo.MetadataMaxAge(30*time.Second),
	)
	if err != nil {
		log.Warn("cannot read provider recoveries; parked notifications wait for their tier", "err", err)
		return
	}
	defer cl.Close()
	for {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return
		}
		fetches.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				log.Warn("fetch", "topic", t, "partition", p, "err", err)
			}
		})
		fetches.EachRecord(func(rec *kgo.Record) {
			rc, err := decodeRecovery(rec)
			if err != nil {
				log.Warn("unreadable provider recovery ignored", "topic", rec.Topic, "partition", rec.Partition,
					"offset", rec.Offset, "err", err)
				return
			}
			if r.recovered.note(rc) {
				log.Info("provider recovered", "channel", rc.Channel, "provider", rc.Provider,
					"at", time.UnixMilli(rc.RecoveredAt).UTC().Format(time.RFC3339Nano))
			}
		})
	}
}
