package topology

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/lovoo/goka"
)

// PriorityGate makes a process give its CPU to high-priority work first.
//
// Lanes keep a high-priority record from waiting behind a low one's backlog
// in a topic or a fetch, but not from waiting for the CPU: with a backlog of
// low-priority work, every goroutine of every stage competes for the two
// cores, and a high-priority notification takes its turn at each of its
// stages (docs/PERFORMANCE.md, issue 17). Go's scheduler has no priorities.
// The gate gives them: every stage that sees a high-priority request or
// record calls High, and for Hold after the last such call the stages take
// no new lower-priority work (the goka groups' normal and low lanes, the
// status group, the sinks' normal and low queues). Work already started
// finishes; records wait in their channels and topics, nothing is dropped.
//
// So that a stream of high-priority work cannot starve the lower lanes, a
// hold lasts at most maxHold, and after one that long they run for as long
// before the next: they keep at least half of the time whatever comes.
//
// The gate is the process's: in scale-out each role holds its own lower
// work while it handles high-priority work. A nil gate holds nothing.
type PriorityGate struct {
	hold    time.Duration
	maxHold time.Duration
	// clock is the time since the gate was made (a test's own clock).
	clock func() time.Duration
	until atomic.Int64 // clock time (ns) at which the current hold ends
	mu    sync.Mutex   // High's writers
	start int64        // when the current hold began
	cut   bool         // the current hold reached maxHold
	holds atomic.Int64 // holds begun (metrics, tests)
	// heldBefore is how long the holds before the current one lasted.
	heldBefore int64
}

// NewPriorityGate holds lower-priority work for hold after each High call, a
// hold at most maxHold long (at least hold). hold ≤ 0 gives nil: no gate.
func NewPriorityGate(hold, maxHold time.Duration) *PriorityGate {
	if hold <= 0 {
		return nil
	}
	maxHold = max(maxHold, hold)
	base := time.Now()
	return &PriorityGate{hold: hold, maxHold: maxHold, clock: func() time.Duration { return time.Since(base) }}
}

func (g *PriorityGate) now() int64 { return int64(g.clock()) }

// High says high-priority work is here: the lower lanes hold (or keep
// holding) for the gate's hold from now.
func (g *PriorityGate) High() {
	if g == nil {
		return
	}
	now := g.now()
	if until := g.until.Load(); now < until && until-now > int64(g.hold)*3/4 {
		return // held long enough already: no lock per record of a burst
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	until := g.until.Load()
	switch {
	case now < until: // extend the hold, up to maxHold from its start
		if g.cut {
			return
		}
		next := now + int64(g.hold)
		if limit := g.start + int64(g.maxHold); next >= limit {
			next, g.cut = limit, true
		}
		if next > until {
			g.until.Store(next)
		}
	case g.cut && now < until+int64(g.maxHold):
		// The last hold ran to maxHold: the lower lanes get as long open.
	default:
		if g.holds.Load() > 0 {
			g.heldBefore += until - g.start
		}
		g.start, g.cut = now, false
		g.until.Store(now + int64(g.hold))
		g.holds.Add(1)
	}
}

// Held tells whether lower-priority work waits now.
func (g *PriorityGate) Held() bool {
	return g != nil && g.now() < g.until.Load()
}

// Left is how long the current hold lasts yet (0: none).
func (g *PriorityGate) Left() time.Duration {
	if g == nil {
		return 0
	}
	return max(0, time.Duration(g.until.Load()-g.now()))
}

// Wait returns when lower-priority work may go on, or when ctx ends.
func (g *PriorityGate) Wait(ctx context.Context) {
	if g == nil {
		return
	}
	for {
		left := time.Duration(g.until.Load() - g.now())
		if left <= 0 {
			return
		}
		t := time.NewTimer(min(left, waitStep))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// waitStep is how often a waiter looks at the gate again: a hold that
// ends sooner than it was meant to (release) lets it go within this.
const waitStep = 10 * time.Millisecond

// release ends the current hold now (tests).
func (g *PriorityGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.until.Store(min(g.until.Load(), g.now()))
	g.cut = false
}

// HeldFor is how long the lower lanes were held, in all.
func (g *PriorityGate) HeldFor() time.Duration {
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	t := g.heldBefore
	if g.holds.Load() > 0 {
		t += min(g.now(), g.until.Load()) - g.start
	}
	return time.Duration(t)
}

// Holds is how many holds began.
func (g *PriorityGate) Holds() int64 {
	if g == nil {
		return 0
	}
	return g.holds.Load()
}

// IsHighLane tells whether topic carries high-priority records: the ingest
// and accepted lanes' and the channels' queues of priority high.
func IsHighLane(topic string) bool { return strings.HasSuffix(topic, ".high") }

// gatedClaim is a consumer group claim whose records goka takes only while
// the gate is open: a goroutine between sarama's channel and goka's.
type gatedClaim struct {
	sarama.ConsumerGroupClaim
	out chan *sarama.ConsumerMessage
}

func (c *gatedClaim) Messages() <-chan *sarama.ConsumerMessage { return c.out }

// gateClaim starts handing c's records on when gate is open, one at a time
// (a buffer would let records past a hold that began after they were
// taken). It ends, closing what it gives goka, when c's channel closes:
// the caller drains what goka no longer takes once its ConsumeClaim
// returned (drainGated), and those records, not marked, are consumed again
// by the partition's next owner. No select per record: the hop costs two
// goroutine switches and nothing else (docs/PERFORMANCE.md, ninth sitting).
func gateClaim(ctx context.Context, gate *PriorityGate, c sarama.ConsumerGroupClaim) *gatedClaim {
	g := &gatedClaim{ConsumerGroupClaim: c, out: make(chan *sarama.ConsumerMessage)}
	go func() {
		defer close(g.out)
		for m := range c.Messages() {
			gate.Wait(ctx)
			g.out <- m
		}
	}()
	return g
}

// drainGated takes what g still hands on after goka stopped reading it, until
// sarama closes the claim (at the session's end), so its goroutine ends.
func drainGated(g *gatedClaim) {
	go func() {
		for range g.out {
		}
	}()
}

// heldByPriority says which claims of group wait while the PriorityGate
// holds: every one of the status group (it is on no notification's way to
// its provider), and the normal and low lanes of the others.
func heldByPriority(group goka.Group) func(topic string) bool {
	if group == StatusGroup {
		return func(string) bool { return true }
	}
	return isLowerLane
}

// isLowerLane tells whether topic is a priority lane below high.
func isLowerLane(topic string) bool {
	switch goka.Stream(topic) {
	case Ingest, IngestLow, Accepted, AcceptedLow:
		return true
	}
	return false
}
