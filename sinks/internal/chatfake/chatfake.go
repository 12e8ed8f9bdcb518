// Package chatfake is the plumbing the chat test servers (slacktest,
// telegramtest, whatsapptest, dingtalktest, wecomtest, feishutest) share: the
// lock and counters of a server, the recorder of the messages it accepted,
// queues of scripted answers for the next requests, and token checks.
package chatfake

import (
	"crypto/subtle"
	"io"
	"net/http"
	"strings"
	"sync"
)

// Recorder is the state every fake server keeps: the lock that guards the
// server, the requests received, those refused for their credentials, and the
// messages accepted, in arrival order.
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

// Accept records m (under the lock) unless the sender gave up on req, when
// the message counts as not delivered; it reports whether m was recorded.
func (r *Recorder[M]) Accept(req *http.Request, m M) bool {
	if req.Context().Err() != nil {
		return false
	}
	r.messages = append(r.messages, m)
	return true
}

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

// Queue is a scripted answer A for the next n requests (under the server's
// lock).
type Queue[A any] struct {
	n      int
	answer A
}

// Set queues answer for the next n requests (n <= 0 empties the queue).
func (q *Queue[A]) Set(n int, answer A) { q.n, q.answer = n, answer }

// Next takes one answer from the queue: ok is false when it is empty.
func (q *Queue[A]) Next() (answer A, ok bool) {
	if q.n <= 0 {
		return answer, false
	}
	q.n--
	return q.answer, true
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

// Robots is the common part of a group-robot webhook endpoint (DingTalk,
// WeCom, Feishu): the robots' tokens, the scripted answers and the recorder.
// A server embeds it and serves its requests with Serve.
type Robots[M any] struct {
	rec      Recorder[M]
	tokens   Tokens
	throttle Countdown
	unavail  Queue[string]
	failCode int
	failMsg  string
}

// RobotAnswers are how one kind of robot endpoint answers.
type RobotAnswers struct {
	// Answer writes the body with the error code (0 = ok) and its message.
	Answer func(w http.ResponseWriter, code int, msg string)
	// ThrottleCode and ThrottleMsg answer a throttled request.
	ThrottleCode int
	ThrottleMsg  string
	// OK is the message of a success.
	OK string
}

// Exchange is one request being served, under the server's lock.
type Exchange struct {
	// Body is the request body (up to 1 MiB); Err the error reading it.
	Body []byte
	Err  error

	tokens *Tokens
	reject func()
}

// Secret is the secret of the robot with token, ok when it is known and not
// removed.
func (x *Exchange) Secret(token string) (secret string, ok bool) { return x.tokens.Check(token) }

// Reject counts the request as refused for its credentials.
func (x *Exchange) Reject() { x.reject() }

// AddToken adds a robot by its token and, when not empty, its secret.
func (g *Robots[M]) AddToken(token, secret string) { g.rec.Do(func() { g.tokens.Add(token, secret) }) }

// RemoveToken marks the robot with token as removed from its group.
func (g *Robots[M]) RemoveToken(token string) { g.rec.Do(func() { g.tokens.Revoke(token) }) }

// Throttle answers the next n valid requests with the endpoint's throttle code.
func (g *Robots[M]) Throttle(n int) { g.rec.Do(func() { g.throttle = Countdown(n) }) }

// Unavailable answers the next n requests with HTTP 503 and, when not empty,
// the Retry-After header.
func (g *Robots[M]) Unavailable(n int, retryAfter string) {
	g.rec.Do(func() { g.unavail.Set(n, retryAfter) })
}

// FailWith answers every valid request with the error code and message (code
// 0 stops it), as a robot whose security check refuses every message would.
func (g *Robots[M]) FailWith(code int, msg string) {
	g.rec.Do(func() { g.failCode, g.failMsg = code, msg })
}

// Messages returns a copy of the accepted messages, in arrival order.
func (g *Robots[M]) Messages() []M { return g.rec.Messages() }

// Accepted counts the accepted messages.
func (g *Robots[M]) Accepted() int { return g.rec.Accepted() }

// Requests counts every request received.
func (g *Robots[M]) Requests() int { return g.rec.Requests() }

// Rejected counts the requests refused for their token or signature.
func (g *Robots[M]) Rejected() int { return g.rec.Rejected() }

// Serve answers one request: 503 while Unavailable is queued, then read
// checks the request and returns its message (ok false when read answered it
// itself); a valid message is then throttled, failed as FailWith says, or
// accepted and answered with a.OK.
func (g *Robots[M]) Serve(w http.ResponseWriter, r *http.Request, a RobotAnswers,
	read func(w http.ResponseWriter, r *http.Request, x *Exchange) (M, bool)) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	g.rec.Begin()
	defer g.rec.Unlock()
	if Unavailable(w, &g.unavail) {
		return
	}
	m, ok := read(w, r, &Exchange{Body: body, Err: err, tokens: &g.tokens, reject: g.rec.Reject})
	switch {
	case !ok:
	case g.throttle.Take():
		a.Answer(w, a.ThrottleCode, a.ThrottleMsg)
	case g.failCode != 0:
		a.Answer(w, g.failCode, g.failMsg)
	case g.rec.Accept(r, m): // else the sender gave up: not delivered
		a.Answer(w, 0, a.OK)
	}
}
