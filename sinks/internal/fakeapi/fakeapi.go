// Package fakeapi is the plumbing the loopback vendor stand-ins of the sinks
// tests share (twiliotest, sendgridtest, aliyunsmstest, tencentsmstest): a
// recorder of the requests they answered, refused and accepted, and a script
// of canned answers for the next requests.
package fakeapi

import "sync"

// Recorder counts the requests a fake API answered and those it refused for
// their credentials, and keeps the messages it accepted. Embedded in a
// server, it gives it Messages, Requests and Rejected. The zero value is
// ready; it is safe for concurrent use.
type Recorder[M any] struct {
	mu       sync.Mutex
	msgs     []M
	requests int
	rejected int
}

// CountRequest counts one request answered.
func (r *Recorder[M]) CountRequest() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
}

// CountRejected counts one request refused for its credentials.
func (r *Recorder[M]) CountRejected() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rejected++
}

// Accept keeps m as accepted.
func (r *Recorder[M]) Accept(m M) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, m)
}

// Messages returns a copy of the accepted messages, in arrival order.
func (r *Recorder[M]) Messages() []M {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]M(nil), r.msgs...)
}

// Requests counts every request answered.
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

// Script holds canned answers: one for every request (FailAlways), or
// queued ones for the next requests (FailNext). Embedded in a server, it
// gives it FailNext and FailAlways. The zero value is ready; it is safe for
// concurrent use.
type Script[A any] struct {
	mu     sync.Mutex
	queued []A
	always *A
}

// FailNext answers the next n requests the server scripts with a, after
// those already queued.
func (s *Script[A]) FailNext(n int, a A) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.queued = append(s.queued, a)
	}
}

// FailAlways answers every request the server scripts with a (nil: stop).
func (s *Script[A]) FailAlways(a *A) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.always = a
}

// Next is the scripted answer of this request: the FailAlways one, else the
// first queued (taken off the queue); false when nothing is scripted.
func (s *Script[A]) Next() (A, bool) {
	if a, ok := s.Always(); ok {
		return a, true
	}
	return s.Pop()
}

// Always is the FailAlways answer; false when there is none.
func (s *Script[A]) Always() (A, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.always == nil {
		var zero A
		return zero, false
	}
	return *s.always, true
}

// Pop takes the first queued answer off the queue; false when it is empty.
func (s *Script[A]) Pop() (A, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queued) == 0 {
		var zero A
		return zero, false
	}
	a := s.queued[0]
	s.queued = s.queued[1:]
	return a, true
}

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
