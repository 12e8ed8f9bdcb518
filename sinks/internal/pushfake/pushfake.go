// Package pushfake is the plumbing shared by the push test servers (fcmtest,
// apnstest, webpushtest): queues of scripted answers, records of what a
// server accepted or refused, and the ES256 check of a JWT's signature. It is
// written independently of the providers: a test server verifies what a
// provider sends with its own code, never with the provider's.
package pushfake

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"math/big"
	"sync"
	"sync/atomic"
)

// Queue is a goroutine-safe FIFO of scripted answers (failures to give the
// next requests).
type Queue[T any] struct {
	mu    sync.Mutex
	items []T
}

// PushN appends n copies of v.
func (q *Queue[T]) PushN(n int, v T) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for range n {
		q.items = append(q.items, v)
	}
}

// Pop takes the first item; ok is false when the queue is empty.
func (q *Queue[T]) Pop() (v T, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		return v, false
	}
	v = q.items[0]
	q.items = q.items[1:]
	return v, true
}

// Log is a goroutine-safe record of items in arrival order (accepted
// messages, rejections).
type Log[T any] struct {
	mu    sync.Mutex
	items []T
}

// Add records v.
func (l *Log[T]) Add(v T) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.items = append(l.items, v)
}

// All is a copy of the items recorded, in arrival order.
func (l *Log[T]) All() []T {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]T(nil), l.items...)
}

// Counter counts requests; goroutine-safe.
type Counter struct{ n atomic.Int64 }

// Inc adds one.
func (c *Counter) Inc() { c.n.Add(1) }

// Get is the count.
func (c *Counter) Get() int { return int(c.n.Load()) }

// ES256Valid tells whether sig is a JWS ES256 signature of signingInput
// ("header.claims") by pub: the raw 64-byte R‖S of ECDSA P-256 over SHA-256.
func ES256Valid(pub *ecdsa.PublicKey, signingInput string, sig []byte) bool {
	if len(sig) != 64 {
		return false
	}
	digest := sha256.Sum256([]byte(signingInput))
	return ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
}
