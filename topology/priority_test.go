package topology

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/codec"
	"github.com/twmb/franz-go/pkg/kgo"
)

// testGate is a gate on a clock the test moves.
func testGate(hold, maxHold time.Duration) (*PriorityGate, *atomic.Int64) {
	g := NewPriorityGate(hold, maxHold)
	var now atomic.Int64
	g.clock = func() time.Duration { return time.Duration(now.Load()) }
	return g, &now
}

func TestPriorityGateHoldsAfterEachHighAndNeverStarvesTheLowerLanes(t *testing.T) {
	const ms = int64(time.Millisecond)
	g, now := testGate(20*time.Millisecond, 100*time.Millisecond)
	at := func(t0 int64) { now.Store(t0 * ms) }
	if g.Held() {
		t.Fatal("held before any high-priority work")
	}
	at(5)
	g.High()
	at(24)
	if !g.Held() || g.Left() != time.Millisecond {
		t.Fatalf("at 24 ms after a high at 5: held %v, left %v; want held, 1ms", g.Held(), g.Left())
	}
	at(25)
	if g.Held() {
		t.Fatal("still held a hold's length after the last high")
	}
	// A stream of high work extends the hold up to maxHold from its start...
	for t0 := int64(30); t0 <= 125; t0 += 5 {
		at(t0)
		g.High()
		if !g.Held() {
			t.Fatalf("not held at %d ms with a high every 5 ms", t0)
		}
	}
	at(129)
	if !g.Held() || g.Holds() != 2 {
		t.Fatalf("at 129 ms: held %v, holds %d; want one hold since 30 ms", g.Held(), g.Holds())
	}
	// ...then the lower lanes get as long open, whatever comes.
	for t0 := int64(130); t0 < 230; t0 += 5 {
		at(t0)
		g.High()
		if g.Held() {
			t.Fatalf("held at %d ms: a hold that ran to maxHold (30–130 ms) must leave 100 ms open", t0)
		}
	}
	at(230)
	g.High()
	if !g.Held() || g.Holds() != 3 {
		t.Fatalf("after the open time a high holds again: held %v, holds %d (want 3)", g.Held(), g.Holds())
	}
	at(240)
	// 5–25, 30–130 and 230–240 ms.
	if got := g.HeldFor(); got != 130*time.Millisecond {
		t.Fatalf("held for %v in all, want 130ms", got)
	}
	// A nil gate (priority.enabled: false) holds nothing and costs nothing.
	var off *PriorityGate
	off.High()
	off.Wait(context.Background())
	if off.Held() || off.Left() != 0 || off.Holds() != 0 || off.HeldFor() != 0 || NewPriorityGate(0, time.Second) != nil {
		t.Fatal("a nil gate held")
	}
}

func TestPriorityGateWaitEndsWithTheHoldOrTheContext(t *testing.T) {
	g := NewPriorityGate(time.Hour, time.Hour)
	g.High()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { g.Wait(ctx); close(done) }()
	select {
	case <-done:
		t.Fatal("Wait returned while the gate held")
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not end with its context")
	}
	done = make(chan struct{})
	go func() { g.Wait(context.Background()); close(done) }()
	g.release()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not end with the hold")
	}
}

func TestGroupsHoldTheirLowerLanesAndStatusWhileHighPriorityWorkPasses(t *testing.T) {
	for _, topic := range []goka.Stream{Ingest, IngestLow, Accepted, AcceptedLow} {
		if !heldByPriority(DeliverGroup)(string(topic)) || !heldByPriority(DedupGroup)(string(topic)) {
			t.Errorf("%s is not held", topic)
		}
	}
	for _, topic := range []goka.Stream{IngestHigh, AcceptedHigh, Events, Feedback} {
		if heldByPriority(DeliverGroup)(string(topic)) {
			t.Errorf("%s is held in the deliver group", topic)
		}
	}
	if !heldByPriority(StatusGroup)(string(Events)) {
		t.Error("the status group's events are not held")
	}
	for _, topic := range []string{string(IngestHigh), string(AcceptedHigh), string(Out("email", "high"))} {
		if !IsHighLane(topic) {
			t.Errorf("%s is not a high lane", topic)
		}
	}
	for _, topic := range []string{string(Ingest), string(AcceptedLow), string(Out("sms", "normal")), "notify.highlights"} {
		if IsHighLane(topic) {
			t.Errorf("%s is a high lane", topic)
		}
	}
}

// A goka group reading the accepted lanes, as the deliver group does: while
// the gate holds, records of the low lane wait and a high-priority record
// goes through; when the hold ends, every low record is processed. A high
// record seen by the group holds the gate itself.
func TestGokaGroupTakesNoLowerLaneRecordWhileTheGateHolds(t *testing.T) {
	brokers := testBrokers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const group goka.Group = "gate"
	gate := NewPriorityGate(time.Hour, time.Hour)
	k := Kafka{Brokers: brokers, Replication: 1, Priority: gate}
	ensureGroupTopics(t, k, group, 1, AcceptedLow, AcceptedHigh)
	var low, high atomic.Int64
	g := goka.DefineGroup(group,
		goka.Input(AcceptedLow, new(codec.String), func(goka.Context, any) { low.Add(1) }),
		goka.Input(AcceptedHigh, new(codec.String), func(goka.Context, any) { high.Add(1) }),
		goka.Persist(new(codec.Int64)))
	_, done := runProcessor(ctx, t, k, group, g)
	cl, err := NewProducer(brokers)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	produce := func(topic goka.Stream, n int) {
		for i := 0; i < n; i++ {
			if err := cl.ProduceSync(ctx, &kgo.Record{Topic: string(topic), Key: []byte(fmt.Sprint(i)), Value: []byte("v")}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor := func(what string, c *atomic.Int64, n int64) {
		for c.Load() < n {
			if ctx.Err() != nil {
				t.Fatalf("%s: %d of %d processed", what, c.Load(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	// The group is up and reads both lanes.
	produce(AcceptedLow, 1)
	waitFor("first low record", &low, 1)
	if gate.Holds() != 0 {
		t.Fatal("a low record held the gate")
	}

	produce(AcceptedHigh, 1)
	waitFor("high record", &high, 1)
	if gate.Holds() != 1 || !gate.Held() {
		t.Fatalf("the group's high record did not hold the gate (holds %d)", gate.Holds())
	}
	produce(AcceptedLow, 20)
	produce(AcceptedHigh, 3)
	waitFor("high records during the hold", &high, 4)
	time.Sleep(300 * time.Millisecond) // ample for 20 records of nothing to do
	if n := low.Load(); n != 1 {
		t.Fatalf("%d low records processed while the gate held, want none", n-1)
	}
	gate.release()
	waitFor("low records after the hold", &low, 21)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
