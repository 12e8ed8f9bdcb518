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

// A goka group reads a lane with a backlog and a lane with nothing waiting, as
// dedup reads notify.ingest.low and notify.ingest.high. A record on the idle
// lane is processed after a handful of the backlog's records, not after
// goka has worked through the batch sarama fetched for the backlog while the
// record was produced (docs/TOPICS.md, "Priority lanes"). Without flow control
// each high record waits for 0 to ~600 low ones (a 64 KiB batch); five in a
// row all under 100 happens about once in ten thousand runs. Every record of
// the backlog is still processed: a paused partition is resumed.
func TestBacklogOnOneLaneDoesNotHoldTheOther(t *testing.T) {
	brokers := testBrokers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const (
		group   goka.Group  = "flow"
		low     goka.Stream = "flow-low"
		high    goka.Stream = "flow-high"
		backlog             = 4000
		highs               = 5
		spacing             = 150 // low records processed between two high ones
		bound               = 100
	)
	k := Kafka{Brokers: brokers, Replication: 1}
	ensureGroupTopics(t, k, group, 1, low, high)
	var lowDone atomic.Int64
	highAt := make(chan int64, highs)
	g := goka.DefineGroup(group,
		goka.Input(low, new(codec.String), func(ctx goka.Context, msg any) {
			time.Sleep(time.Millisecond) // a busy notification's worth of work
			lowDone.Add(1)
		}),
		goka.Input(high, new(codec.String), func(ctx goka.Context, msg any) {
			highAt <- lowDone.Load()
		}),
		goka.Persist(new(codec.Int64)))
	_, done := runProcessor(ctx, t, k, group, g)

	// The backlog in 64 KiB batches, as the API writes the ingest lanes.
	cl, err := NewProducer(brokers, kgo.ProducerBatchMaxBytes(64<<10), kgo.ProducerLinger(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	value := make([]byte, 100)
	for i := 0; i < backlog; i++ {
		cl.Produce(ctx, &kgo.Record{Topic: string(low), Key: []byte(fmt.Sprintf("low-%d", i)), Value: value}, nil)
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	hp, err := NewProducer(brokers)
	if err != nil {
		t.Fatal(err)
	}
	defer hp.Close()

	waitLow := func(n int64) {
		for lowDone.Load() < n {
			if ctx.Err() != nil {
				t.Fatalf("%d of %d low records processed, waiting for %d", lowDone.Load(), backlog, n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitLow(spacing)
	for i := 0; i < highs; i++ {
		before := lowDone.Load()
		if err := hp.ProduceSync(ctx, &kgo.Record{Topic: string(high), Key: []byte(fmt.Sprintf("high-%d", i)), Value: value}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		var at int64
		select {
		case at = <-highAt:
		case <-ctx.Done():
			t.Fatalf("high record %d was not processed", i)
		}
		if behind := at - before; behind >= bound {
			t.Errorf("high record %d was processed after %d records of the backlog, want fewer than %d", i, behind, bound)
		} else {
			t.Logf("high record %d: %d backlog records processed before it", i, behind)
		}
		waitLow(at + spacing)
	}
	if lowDone.Load() >= backlog {
		t.Fatalf("the backlog was drained (%d) before the high records were sent: make it longer", lowDone.Load())
	}
	waitLow(backlog)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// ensureGroupTopics creates a group's input streams and table, each of
// partitions partitions.
func ensureGroupTopics(t *testing.T, k Kafka, group goka.Group, partitions int32, streams ...goka.Stream) {
	t.Helper()
	tm, err := k.topicManager()(k.Brokers)
	if err != nil {
		t.Fatal(err)
	}
	defer tm.Close()
	for _, s := range streams {
		if err := tm.EnsureStreamExists(string(s), int(partitions)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tm.EnsureTableExists(string(goka.GroupTable(group)), int(partitions)); err != nil {
		t.Fatal(err)
	}
}
