package sinks

import (
	"crypto/sha256"
	"sync"
	"time"
)

// Ledger remembers which (notificationId, channel) were handed to a provider in
// the last window, so a record redelivered after a crash, or routed twice by an
// upstream stage that crashed, is not sent twice (DESIGN rule 5). Entries live in
// per-minute buckets so expiry is dropping a bucket.
type Ledger struct {
	mu       sync.Mutex
	window   time.Duration
	buckets  map[int64]map[[16]byte]struct{}
	inFlight map[[16]byte]struct{}
}

// NewLedger keeps entries for window.
func NewLedger(window time.Duration) *Ledger {
	return &Ledger{window: window, buckets: map[int64]map[[16]byte]struct{}{}, inFlight: map[[16]byte]struct{}{}}
}

func ledgerKey(notificationID, channel string) [16]byte {
	s := sha256.Sum256([]byte(notificationID + "\x00" + channel))
	var k [16]byte
	copy(k[:], s[:16])
	return k
}

func (l *Ledger) has(k [16]byte) bool {
	for _, b := range l.buckets {
		if _, ok := b[k]; ok {
			return true
		}
	}
	return false
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
	k := ledgerKey(notificationID, channel)
	minute := at.Unix() / 60
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.inFlight, k)
	b := l.buckets[minute]
	if b == nil {
		b = map[[16]byte]struct{}{}
		l.buckets[minute] = b
	}
	b[k] = struct{}{}
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
