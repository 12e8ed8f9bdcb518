package topology

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/lovoo/goka"
	"github.com/lovoo/goka/codec"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// DESIGN rule 1: franz-go producers must put every key on the partition goka
// reads it from. goka partitions with sarama's hash partitioner over Hasher.
func TestFranzGoAndGokaAgreeOnPartitions(t *testing.T) {
	franz := Partitioner().ForTopic("t")
	gokaSide := sarama.NewCustomHashPartitioner(Hasher)("t")
	for _, n := range []int32{1, 2, 3, 4, 6, 8, 12, 32, 100} {
		for i := 0; i < 5000; i++ {
			key := fmt.Sprintf("key-%d-%x", i, i*7919)
			want, err := gokaSide.Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(key)}, n)
			if err != nil {
				t.Fatal(err)
			}
			if got := franz.Partition(&kgo.Record{Key: []byte(key)}, int(n)); int32(got) != want {
				t.Fatalf("key %q with %d partitions: franz-go %d, goka %d", key, n, got, want)
			}
		}
	}
	// The default franz-go partitioner does not agree; this is why the rule exists.
	def := kgo.StickyKeyPartitioner(nil).ForTopic("t")
	differ := 0
	for i := 0; i < 1000; i++ {
		key := fmt.Sprintf("key-%d", i)
		want, _ := gokaSide.Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(key)}, 8)
		if int32(def.Partition(&kgo.Record{Key: []byte(key)}, 8)) != want {
			differ++
		}
	}
	if differ < 500 {
		t.Fatalf("expected murmur2 to disagree for most keys, disagreed for %d of 1000", differ)
	}
}

// The same, through a real broker: records produced by franz-go update the
// goka group table entry of their key.
func TestFranzGoRecordsReachGokaTableOfTheirKey(t *testing.T) {
	brokers := testBrokers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const group goka.Group = "partition-agreement"
	const input goka.Stream = "partition-agreement-in"
	k := Kafka{Brokers: brokers, Replication: 1}
	ensureGroupTopics(t, k, group, 6, input)
	g := goka.DefineGroup(group, goka.Input(input, new(codec.String), func(ctx goka.Context, msg any) {
		n, _ := ctx.Value().(int64)
		ctx.SetValue(n + 1)
	}), goka.Persist(new(codec.Int64)))
	p, done := runProcessor(ctx, t, k, group, g)
	cl, err := NewProducer(brokers)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	keys := make([]string, 60)
	for i := range keys {
		keys[i] = fmt.Sprintf("user-%d", i)
		for j := 0; j < 3; j++ {
			cl.Produce(ctx, &kgo.Record{Topic: string(input), Key: []byte(keys[i]), Value: []byte("x")}, nil)
		}
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Processor.Get looks in the partition goka computes for the key.
	for _, key := range keys {
		for {
			v, err := p.Get(key)
			if err != nil {
				t.Fatal(err)
			}
			if n, _ := v.(int64); n == 3 {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("key %s: goka's partition holds %v, want 3", key, v)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// DESIGN rule 2: a topic created with another partition count than configured
// is refused at start, not silently used.
func TestCreateTopicsRefusesPartitionMismatch(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := CreateTopics(ctx, c.ListenAddrs(), 4, 1); err != nil {
		t.Fatal(err)
	}
	if err := CreateTopics(ctx, c.ListenAddrs(), 4, 1); err != nil {
		t.Fatalf("creating again with the same count must be a no-op: %v", err)
	}
	err = CreateTopics(ctx, c.ListenAddrs(), 8, 1)
	if err == nil || !strings.Contains(err.Error(), "notify.ingest has 4 partitions, config says 8") {
		t.Fatalf("want a partition mismatch error, got %v", err)
	}
}

// testBrokers starts an embedded broker for the test and closes it after.
func testBrokers(t *testing.T) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// runProcessor runs the group's processor with the options notifyd uses,
// until ctx ends, and waits until it is ready; done reports its end.
func runProcessor(ctx context.Context, t *testing.T, k Kafka, group goka.Group, g *goka.GroupGraph) (*goka.Processor, chan error) {
	t.Helper()
	p, err := goka.NewProcessor(k.Brokers, g, k.ProcessorOptions(group)...)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	if err := p.WaitForReadyContext(ctx); err != nil {
		t.Fatal(err)
	}
	return p, done
}
