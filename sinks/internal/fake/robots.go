package fake

import (
	"io"
	"net/http"
)

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
	case g.rec.AcceptRequest(r, m): // else the sender gave up: not delivered
		a.Answer(w, 0, a.OK)
	}
}
