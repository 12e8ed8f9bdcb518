// Package fake is the plumbing the loopback vendor stand-ins of the sinks
// tests share (the SMS, e-mail, chat and push test servers): a recorder of
// the requests they answered, refused and accepted, queues of scripted
// answers for the next requests, credential checks, and small helpers. It is
// written independently of the providers: a test server verifies what a
// provider sends with its own code, never with the provider's.
package fake

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/subtle"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
)

// Recorder is the state a fake server keeps: the lock that guards it, the
// requests received, those refused for their credentials, and the messages
// accepted, in arrival order. The zero value is ready.
//
// A server either calls the self-locking CountRequest, CountRejected and
// Accept, or serves a request under the lock with Begin, Reject,
// AcceptRequest and Unlock.
type Recorder[M any] struct {
	mu       sync.Mutex
	requests int
	rejected int
	messages []M
}

// Lock and Unlock guard the server's state.
func (r *Recorder[M]) Lock()   { r.mu.Lock() }
func (r *Recorder[M]) Unlock() { r.mu.Unlock() }

// Do runs f under the lock.
func (r *Recorder[M]) Do(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f()
}

// Begin locks the server for one request and counts it; Unlock ends it.
func (r *Recorder[M]) Begin() {
	r.mu.Lock()
	r.requests++
}

// Reject counts a request refused for its credentials (under the lock).
func (r *Recorder[M]) Reject() { r.rejected++ }

// AcceptRequest records m (under the lock) unless the sender gave up on req,
// when the message counts as not delivered; it reports whether m was
// recorded.
func (r *Recorder[M]) AcceptRequest(req *http.Request, m M) bool {
	if req.Context().Err() != nil {
		return false
	}
	r.messages = append(r.messages, m)
	return true
}

// CountRequest counts one request answered.
func (r *Recorder[M]) CountRequest() { r.Do(func() { r.requests++ }) }

// CountRejected counts one request refused for its credentials.
func (r *Recorder[M]) CountRejected() { r.Do(r.Reject) }

// Accept keeps m as accepted.
func (r *Recorder[M]) Accept(m M) { r.Do(func() { r.messages = append(r.messages, m) }) }

// Messages returns a copy of the accepted messages, in arrival order.
func (r *Recorder[M]) Messages() []M {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]M(nil), r.messages...)
}

// Accepted counts the accepted messages.
func (r *Recorder[M]) Accepted() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.messages)
}

// Requests counts every request received.
func (r *Recorder[M]) Requests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests
}

// Rejected counts the requests refused for their credentials.
func (r *Recorder[M]) Rejected() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rejected
}

// Queue holds scripted answers: queued ones for the next requests
// (FailNext, Set), and optionally one for every request (FailAlways).
// Embedded in a server, it gives it FailNext and FailAlways. The zero value
// is ready; it is safe for concurrent use.
type Queue[A any] struct {
	mu     sync.Mutex
	queued []A
	always *A
}

// FailNext answers the next n requests with a, after those already queued.
func (q *Queue[A]) FailNext(n int, a A) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for range n {
		q.queued = append(q.queued, a)
	}
}

// Set replaces the queue with a for the next n requests (n <= 0 empties it).
func (q *Queue[A]) Set(n int, a A) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.queued = nil
	for range n {
		q.queued = append(q.queued, a)
	}
}

// Script replaces everything scripted with a, for the next n requests, or
// for every request when n < 0.
func (q *Queue[A]) Script(n int, a A) {
	q.Set(n, a)
	q.mu.Lock()
	defer q.mu.Unlock()
	q.always = nil
	if n < 0 {
		q.always = &a
	}
}

// FailAlways answers every request with a (nil: stop).
func (q *Queue[A]) FailAlways(a *A) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.always = a
}

// Next is the scripted answer of this request: the FailAlways one, else the
// first queued (taken off the queue); false when nothing is scripted.
func (q *Queue[A]) Next() (A, bool) {
	if a, ok := q.Always(); ok {
		return a, true
	}
	return q.Pop()
}

// Always is the FailAlways answer; false when there is none.
func (q *Queue[A]) Always() (a A, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.always == nil {
		return a, false
	}
	return *q.always, true
}

// Pop takes the first queued answer off the queue; false when it is empty.
func (q *Queue[A]) Pop() (a A, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.queued) == 0 {
		return a, false
	}
	a = q.queued[0]
	q.queued = q.queued[1:]
	return a, true
}

// Countdown answers the next n requests a scripted way.
type Countdown int

// Take counts one answer down: false when none is left.
func (c *Countdown) Take() bool {
	if *c <= 0 {
		return false
	}
	*c--
	return true
}

// Unavailable answers HTTP 503 (with Retry-After when the queued value is not
// empty) when q has an answer left, and reports whether it did.
func Unavailable(w http.ResponseWriter, q *Queue[string]) bool {
	retryAfter, ok := q.Next()
	if !ok {
		return false
	}
	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	http.Error(w, "service unavailable", http.StatusServiceUnavailable)
	return true
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

// Set is a set of strings a test marks on a server (numbers to refuse,
// addresses to bounce). The zero value is empty and ready; it is safe for
// concurrent use.
type Set struct {
	mu sync.Mutex
	m  map[string]bool
}

// Add puts keys in the set.
func (s *Set) Add(keys ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]bool{}
	}
	for _, k := range keys {
		s.m[k] = true
	}
}

// Has tells whether key is in the set.
func (s *Set) Has(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[key]
}

// Digits tells whether s is min to max ASCII digits.
func Digits(s string, min, max int) bool {
	if len(s) < min || len(s) > max {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// Tokens are the credentials a server accepts, each with its secret ("" =
// none), and those revoked (the robot removed from its group).
type Tokens struct {
	secrets map[string]string
	gone    map[string]bool
}

// Add accepts token with its secret (again, when it was revoked).
func (t *Tokens) Add(token, secret string) {
	if t.secrets == nil {
		t.secrets, t.gone = map[string]string{}, map[string]bool{}
	}
	t.secrets[token] = secret
	delete(t.gone, token)
}

// Revoke refuses token from now on.
func (t *Tokens) Revoke(token string) {
	if t.gone == nil {
		t.secrets, t.gone = map[string]string{}, map[string]bool{}
	}
	t.gone[token] = true
}

// Check is token's secret, ok when token is accepted and not revoked.
func (t *Tokens) Check(token string) (secret string, ok bool) {
	secret, ok = t.secrets[token]
	return secret, ok && !t.gone[token]
}

// Same reports in constant time whether got is want.
func Same(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// Bearer reports whether r's Authorization is "Bearer <want>".
func Bearer(r *http.Request, want string) bool {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && Same(token, want)
}

// ES256Valid tells whether sig is a JWS ES256 signature of signingInput
// ("header.claims") by pub: the raw 64-byte R‖S of ECDSA P-256 over SHA-256.
func ES256Valid(pub *ecdsa.PublicKey, signingInput string, sig []byte) bool {
	if len(sig) != 64 {
		return false
	}
	digest := sha256.Sum256([]byte(signingInput))
	return ecdsa.Verify(pub, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
}
