package sinks

import (
	"math"
	"sync"

	"github.com/sony/gobreaker/v2"
	"golang.org/x/time/rate"
)

// ProviderLimits are what the whole cluster may ask of one provider. Every
// sink instance takes the share of them that its partitions are of the
// channel's partitions, so the provider sees the configured bounds however
// many instances run.
type ProviderLimits struct {
	RateLimit   float64  // calls per second; 0 = unlimited
	Burst       int      // calls above the rate at once (default 1)
	Concurrency int      // calls in flight; 0 = the sink's own default, per instance
	Priorities  []string // the priorities it serves; none = all
}

func (l ProviderLimits) serves(priority string) bool {
	if len(l.Priorities) == 0 {
		return true
	}
	for _, p := range l.Priorities {
		if p == priority {
			return true
		}
	}
	return false
}

// lane is one provider's queue and workers. Jobs wait in the lane of the
// provider they are for, highest priority first, so a slow or hanging
// provider holds only its own workers: other providers, and other channels,
// go on.
type lane struct {
	p        Provider
	limits   ProviderLimits
	breaker  *gobreaker.CircuitBreaker[string]
	limiter  *rate.Limiter // nil = unlimited
	serve    func(*lane, *job)
	defConc  int
	mu       sync.Mutex
	cond     *sync.Cond
	queue    [3][]*job
	target   int
	running  int
	closed   bool
	stopping bool
}

func newLane(p Provider, limits ProviderLimits, breaker *gobreaker.CircuitBreaker[string], defConc int, serve func(*lane, *job)) *lane {
	l := &lane{p: p, limits: limits, breaker: breaker, serve: serve, defConc: defConc}
	l.cond = sync.NewCond(&l.mu)
	if limits.RateLimit > 0 {
		l.limiter = rate.NewLimiter(rate.Limit(limits.RateLimit), max(1, limits.Burst))
	}
	return l
}

// setShare sizes the lane to the share of the cluster's partitions this
// instance owns: rate and concurrency limits are divided accordingly.
func (l *lane) setShare(share float64) {
	// An instance that owns nothing may still finish a few records of a
	// partition being revoked: keep a trickle rather than a stop.
	share = math.Max(share, 0.01)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.limiter != nil {
		l.limiter.SetLimit(rate.Limit(l.limits.RateLimit * share))
		l.limiter.SetBurst(max(1, int(math.Round(float64(max(1, l.limits.Burst))*share))))
	}
	target := l.defConc
	if l.limits.Concurrency > 0 {
		target = max(1, int(math.Ceil(float64(l.limits.Concurrency)*share)))
	}
	l.target = target
	for l.running < l.target && !l.closed {
		l.running++
		go l.work()
	}
	l.cond.Broadcast() // surplus workers leave
}

func (l *lane) push(j *job) {
	l.mu.Lock()
	l.queue[j.pri] = append(l.queue[j.pri], j)
	l.mu.Unlock()
	l.cond.Signal()
}

// stop makes the lane abandon the jobs it has not started (the sink is
// stopping; they are redelivered after the restart).
func (l *lane) stop() {
	l.mu.Lock()
	l.stopping = true
	l.mu.Unlock()
	l.cond.Broadcast()
}

// purge removes the queued jobs (not yet started) that match and returns them.
func (l *lane) purge(match func(*job) bool) []*job {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*job
	for i := range l.queue {
		kept := l.queue[i][:0]
		for _, j := range l.queue[i] {
			if match(j) {
				out = append(out, j)
			} else {
				kept = append(kept, j)
			}
		}
		for k := len(kept); k < len(l.queue[i]); k++ {
			l.queue[i][k] = nil
		}
		l.queue[i] = kept
	}
	return out
}

func (l *lane) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.cond.Broadcast()
}

func (l *lane) next() (*job, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if l.closed || l.running > l.target {
			l.running--
			return nil, false
		}
		for i := range l.queue {
			if len(l.queue[i]) > 0 {
				j := l.queue[i][0]
				l.queue[i][0] = nil
				l.queue[i] = l.queue[i][1:]
				if l.stopping {
					j.abandon = true
				}
				return j, true
			}
		}
		l.cond.Wait()
	}
}

func (l *lane) work() {
	for {
		j, ok := l.next()
		if !ok {
			return
		}
		l.serve(l, j)
	}
}
