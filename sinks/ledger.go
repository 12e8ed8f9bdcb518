package sinks

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// Ledger remembers which (notificationId, channel) were handed to a provider in
// the last window, so a record redelivered after a crash, or routed twice by an
// upstream stage that crashed, is not sent twice (DESIGN rule 5). Entries live in
// per-minute buckets so expiry is dropping a bucket.
type Ledger struct {
	mu       sync.Mutex
	window   time.Duration
	buckets  map[int64]map[[16]byte]Sent
	inFlight map[[16]byte]struct{}
}

// Sent is what the ledger knows of a delivery: enough to state it again.
type Sent struct {
	Provider string
	At       int64 // unix ms
}

// NewLedger keeps entries for window.
func NewLedger(window time.Duration) *Ledger {
	return &Ledger{window: window, buckets: map[int64]map[[16]byte]Sent{}, inFlight: map[[16]byte]struct{}{}}
}

func ledgerKey(notificationID, channel string) [16]byte {
	s := sha256.Sum256([]byte(notificationID + "\x00" + channel))
	var k [16]byte
	copy(k[:], s[:16])
	return k
}

func (l *Ledger) find(k [16]byte) (Sent, bool) {
	for _, b := range l.buckets {
		if s, ok := b[k]; ok {
			return s, true
		}
	}
	return Sent{}, false
}

func (l *Ledger) has(k [16]byte) bool { _, ok := l.find(k); return ok }

// Delivered tells whether (and how) a notification was handed to a provider.
func (l *Ledger) Delivered(notificationID, channel string) (Sent, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.find(ledgerKey(notificationID, channel))
}

// Claim reserves a delivery: false means it was already delivered or is being
// delivered right now.
func (l *Ledger) Claim(notificationID, channel string) bool {
	k := ledgerKey(notificationID, channel)
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, busy := l.inFlight[k]; busy || l.has(k) {
		return false
	}
	l.inFlight[k] = struct{}{}
	return true
}

// Release gives a claim back after the delivery failed.
func (l *Ledger) Release(notificationID, channel string) {
	k := ledgerKey(notificationID, channel)
	l.mu.Lock()
	delete(l.inFlight, k)
	l.mu.Unlock()
}

// Record marks a delivery as done at time at (from a claim or from the ledger topic).
func (l *Ledger) Record(notificationID, channel string, at time.Time) {
	l.RecordSent(notificationID, channel, Sent{At: at.UnixMilli()})
}

// RecordSent marks a delivery as done, with its provider.
func (l *Ledger) RecordSent(notificationID, channel string, s Sent) {
	at := time.UnixMilli(s.At)
	k := ledgerKey(notificationID, channel)
	minute := at.Unix() / 60
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.inFlight, k)
	b := l.buckets[minute]
	if b == nil {
		b = map[[16]byte]Sent{}
		l.buckets[minute] = b
	}
	b[k] = s
}

// Expire drops the buckets older than the window.
func (l *Ledger) Expire(now time.Time) {
	cutoff := now.Add(-l.window).Unix() / 60
	l.mu.Lock()
	defer l.mu.Unlock()
	for m := range l.buckets {
		if m < cutoff {
			delete(l.buckets, m)
		}
	}
}

// Len counts the entries kept.
func (l *Ledger) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, b := range l.buckets {
		n += len(b)
	}
	return n
}

// ledgerLoader reads the ledger of partitions a sink is assigned. Ledger
// entries are written to the ledger partition numbered like the partition of
// the record they acknowledge (a notification's records always hash to one
// partition), so the owner of a partition finds every entry of its
// notifications there. Each assignment reads it afresh: the previous owner may
// have sent (and not committed) until the moment the partition moved.
type ledgerLoader struct {
	brokers  []string
	channel  string
	lookback time.Duration
	ledger   *Ledger
	now      func() time.Time

	mu     sync.Mutex
	loaded map[tp]bool
}

func (l *ledgerLoader) ready(k tp) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.loaded[k]
}

// forget marks partitions not loaded.
func (l *ledgerLoader) forget(m map[string][]int32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for t, ps := range m {
		for _, p := range ps {
			delete(l.loaded, tp{t, p})
		}
	}
}

// load reads the ledger partitions of the newly assigned partitions up to
// their current end, retrying until done or ctx ends, then marks them loaded
// and calls done.
func (l *ledgerLoader) load(ctx context.Context, assigned []tp, log *slog.Logger, done func()) {
	if len(assigned) == 0 {
		return
	}
	seen := map[int32]bool{}
	var parts []int32
	for _, k := range assigned {
		if !seen[k.partition] {
			seen[k.partition] = true
			parts = append(parts, k.partition)
		}
	}
	go func() {
		backoff := 100 * time.Millisecond
		for {
			n, err := l.read(ctx, parts)
			if err == nil {
				log.Debug("ledger loaded", "partitions", parts, "entries", n)
				break
			}
			if ctx.Err() != nil {
				return
			}
			log.Warn("ledger load failed; retrying", "partitions", parts, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
		}
		l.mu.Lock()
		for _, k := range assigned {
			l.loaded[k] = true
		}
		l.mu.Unlock()
		done()
	}()
}

func (l *ledgerLoader) read(ctx context.Context, parts []int32) (int, error) {
	since := l.now().Add(-l.lookback).UnixMilli()
	topic := string(topology.Ledger)
	lctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	meta, err := topology.NewClient(l.brokers)
	if err != nil {
		return 0, err
	}
	adm := kadm.NewClient(meta)
	starts, err := adm.ListOffsetsAfterMilli(lctx, since, topic)
	if err != nil {
		meta.Close()
		return 0, err
	}
	ends, err := adm.ListEndOffsets(lctx, topic)
	meta.Close()
	if err != nil {
		return 0, err
	}
	offsets := map[int32]kgo.Offset{}
	pending := map[int32]int64{}
	for _, p := range parts {
		s, ok1 := starts.Lookup(topic, p)
		e, ok2 := ends.Lookup(topic, p)
		if !ok1 || !ok2 || s.Err != nil || e.Err != nil {
			return 0, fmt.Errorf("offsets of %s/%d: %v %v", topic, p, s.Err, e.Err)
		}
		if s.Offset < e.Offset {
			offsets[p] = kgo.NewOffset().At(s.Offset)
			pending[p] = e.Offset
		}
	}
	if len(pending) == 0 {
		return 0, nil
	}
	cl, err := topology.NewClient(l.brokers,
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets}))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	n := 0
	for len(pending) > 0 {
		fs := cl.PollFetches(lctx)
		if err := lctx.Err(); err != nil {
			return n, fmt.Errorf("ledger not loaded: %w", err)
		}
		var fetchErr error
		fs.EachError(func(_ string, _ int32, err error) { fetchErr = err })
		if fetchErr != nil {
			return n, fetchErr
		}
		fs.EachPartition(func(fp kgo.FetchTopicPartition) {
			for _, r := range fp.Records {
				if e, err := schemas.LedgerEntryCodec.Decode(r.Value); err == nil && e.Channel == l.channel {
					l.ledger.RecordSent(e.NotificationID, e.Channel, Sent{Provider: e.Provider, At: e.At})
					n++
				}
				if end, ok := pending[fp.Partition]; ok && r.Offset+1 >= end {
					delete(pending, fp.Partition)
				}
			}
		})
	}
	return n, nil
}
