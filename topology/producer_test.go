package topology

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/lovoo/goka"
	"github.com/lovoo/goka/codec"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
)

// goka's producer is a franz-go client (gokaProducer): each record goes to
// the partition goka reads its key from, keeps its headers and a nil value
// (a tombstone), and its promise carries the partition and offset the broker
// gave it.
func TestGokaProducerWritesWhatGokaReads(t *testing.T) {
	brokers := testBrokers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const topic = "goka-producer"
	const partitions = 6
	adm, err := kgo.NewClient(ClientOpts(brokers...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	if _, err := kadm.NewClient(adm).CreateTopic(ctx, partitions, 1, nil, topic); err != nil {
		t.Fatal(err)
	}
	p, err := NewGokaProducer(brokers, "producer-test", 0)
	if err != nil {
		t.Fatal(err)
	}
	type sent struct {
		key       string
		value     []byte
		headers   goka.Headers
		partition int32
		offset    int64
	}
	out := make([]*sent, 200)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []error
	for i := range out {
		s := &sent{key: fmt.Sprintf("key-%d", i), value: []byte(fmt.Sprintf("value-%d", i))}
		switch {
		case i%50 == 7:
			s.value = nil // a tombstone
		case i%10 == 3:
			s.headers = goka.Headers{"h1": []byte("a"), "h2": []byte(s.key)}
		}
		out[i] = s
		wg.Add(1)
		p.EmitWithHeaders(topic, s.key, s.value, s.headers).ThenWithMessage(func(msg *sarama.ProducerMessage, err error) {
			defer wg.Done()
			mu.Lock()
			defer mu.Unlock()
			if err != nil || msg == nil {
				failures = append(failures, fmt.Errorf("%s: %v (message %v)", s.key, err, msg))
				return
			}
			s.partition, s.offset = msg.Partition, msg.Offset
		})
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatal(failures)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	seen := map[[2]int64]*sent{}
	for _, s := range out {
		if want := PartitionFor(s.key, partitions); s.partition != want {
			t.Fatalf("%s went to partition %d, goka reads it from %d", s.key, s.partition, want)
		}
		at := [2]int64{int64(s.partition), s.offset}
		if other := seen[at]; other != nil {
			t.Fatalf("%s and %s were both given partition %d offset %d", s.key, other.key, s.partition, s.offset)
		}
		seen[at] = s
	}
	cl, err := kgo.NewClient(append(ClientOpts(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	read := 0
	for read < len(out) {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read back %d of %d records", read, len(out))
		}
		fs.EachRecord(func(r *kgo.Record) {
			read++
			s := seen[[2]int64{int64(r.Partition), r.Offset}]
			if s == nil || s.key != string(r.Key) {
				t.Fatalf("partition %d offset %d holds %q, which no promise named", r.Partition, r.Offset, r.Key)
			}
			if (s.value == nil) != (r.Value == nil) || !bytes.Equal(s.value, r.Value) {
				t.Fatalf("%s: value %q, want %q (nil: %v)", s.key, r.Value, s.value, s.value == nil)
			}
			if len(r.Headers) != len(s.headers) {
				t.Fatalf("%s: headers %v, want %v", s.key, r.Headers, s.headers)
			}
			for _, h := range r.Headers {
				if !bytes.Equal(s.headers[h.Key], h.Value) {
					t.Fatalf("%s: header %s = %q, want %q", s.key, h.Key, h.Value, s.headers[h.Key])
				}
			}
		})
	}
}

// A record the broker or the client refuses fails its promise (goka then
// stops the processor instead of committing past it).
func TestGokaProducerFailsTheRecordItCannotWrite(t *testing.T) {
	brokers := testBrokers(t)
	p, err := NewGokaProducer(brokers, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	done := make(chan error, 1)
	p.Emit("goka-producer-big", "k", make([]byte, producerMaxBytes+1)).Then(func(err error) { done <- err })
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a record above the producer's limit was acknowledged")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the promise of a refused record never finished")
	}
}

// goka stores, with a table's values, the changelog offset of the last value
// it wrote (the offset the producer's promise carries), and a restarted
// processor recovers its table from there: what the table holds after a
// restart is exactly what was processed, and its stored offset is the
// changelog's last.
func TestGokaTableKeepsItsChangelogOffsetAcrossRestarts(t *testing.T) {
	brokers := testBrokers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const group goka.Group = "changelog-offset"
	const input goka.Stream = "changelog-offset-in"
	const partitions = 4
	k := Kafka{Brokers: brokers, Replication: 1, StorageDir: t.TempDir()}
	ensureGroupTopics(t, k, group, partitions, input)
	g := goka.DefineGroup(group, goka.Input(input, new(codec.String), func(ctx goka.Context, msg any) {
		n, _ := ctx.Value().(int64)
		ctx.SetValue(n + 1)
	}), goka.Persist(new(codec.Int64)))
	cl, err := NewProducer(brokers)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	keys := make([]string, 40)
	for i := range keys {
		keys[i] = fmt.Sprintf("user-%d", i)
	}
	produce := func(times int) {
		for _, key := range keys {
			for j := 0; j < times; j++ {
				cl.Produce(ctx, &kgo.Record{Topic: string(input), Key: []byte(key), Value: []byte("x")}, nil)
			}
		}
		if err := cl.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	run := func(want int64) {
		pctx, stop := context.WithCancel(ctx)
		p, done := runProcessor(pctx, t, k, group, g)
		for _, key := range keys {
			for {
				v, err := p.Get(key)
				if err != nil {
					t.Fatal(err)
				}
				if n, _ := v.(int64); n == want {
					break
				} else if n > want {
					t.Fatalf("%s counted %d, want %d: a record was applied twice", key, n, want)
				}
				if ctx.Err() != nil {
					t.Fatalf("%s: table holds %v, want %d", key, v, want)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		stop()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	produce(3)
	run(3)

	adm, err := kgo.NewClient(ClientOpts(brokers...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ends, err := kadm.NewClient(adm).ListEndOffsets(ctx, string(goka.GroupTable(group)))
	if err != nil {
		t.Fatal(err)
	}
	builder := k.storage("processor-" + string(group))
	for part := int32(0); part < partitions; part++ {
		end, _ := ends.Lookup(string(goka.GroupTable(group)), part)
		if end.Offset == 0 {
			continue // no key of this partition
		}
		st, err := builder(string(goka.GroupTable(group)), part)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Open(); err != nil {
			t.Fatal(err)
		}
		stored, err := st.GetOffset(-100)
		st.Close()
		if err != nil {
			t.Fatal(err)
		}
		if stored != end.Offset-1 {
			t.Fatalf("partition %d: the table stored changelog offset %d, the changelog's last is %d", part, stored, end.Offset-1)
		}
	}

	produce(2)
	run(5)
}

// A priority lane is written in batches of at most IngestBatchBytes, as the
// API writes its lanes, whatever the load; a lane's record too large for such
// a batch still goes out. Other topics take batches of up to a MiB.
func TestGokaProducerWritesTheLanesInSmallBatches(t *testing.T) {
	brokers := testBrokers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	adm, err := kgo.NewClient(ClientOpts(brokers...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	other := "goka-producer-other"
	for _, topic := range []string{string(AcceptedLow), other} {
		if _, err := kadm.NewClient(adm).CreateTopic(ctx, 1, 1, nil, topic); err != nil {
			t.Fatal(err)
		}
	}
	// A long linger, so that records pile up into the largest batches allowed.
	p, err := NewGokaProducer(brokers, "", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var failed atomic.Int32
	emit := func(topic string, value []byte) {
		wg.Add(1)
		p.Emit(topic, "user-1", value).Then(func(err error) {
			if err != nil {
				failed.Add(1)
			}
			wg.Done()
		})
	}
	value := bytes.Repeat([]byte("v"), 300)
	for i := 0; i < 3000; i++ {
		emit(string(AcceptedLow), value)
		emit(other, value)
	}
	emit(string(AcceptedLow), bytes.Repeat([]byte("b"), 200<<10))
	wg.Wait()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if failed.Load() > 0 {
		t.Fatalf("%d records failed", failed.Load())
	}
	batches := func(topic string) (sizes []int, records int64) {
		req := kmsg.NewPtrFetchRequest()
		req.MaxWaitMillis = 100
		req.MaxBytes = 64 << 20
		req.ReplicaID = -1
		ft := kmsg.NewFetchRequestTopic()
		ft.Topic = topic
		fp := kmsg.NewFetchRequestTopicPartition()
		fp.PartitionMaxBytes = 64 << 20
		ft.Partitions = append(ft.Partitions, fp)
		req.Topics = append(req.Topics, ft)
		// Fetch before v13 names topics, not topic ids.
		old, err := kgo.NewClient(append(ClientOpts(brokers...), kgo.MaxVersions(kversion.V2_8_0()))...)
		if err != nil {
			t.Fatal(err)
		}
		defer old.Close()
		resp, err := req.RequestWith(ctx, old)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Topics) != 1 || len(resp.Topics[0].Partitions) != 1 {
			t.Fatalf("fetch of %s: %+v", topic, resp)
		}
		part := resp.Topics[0].Partitions[0]
		if err := kerr.ErrorForCode(part.ErrorCode); err != nil {
			t.Fatalf("fetch of %s: %v", topic, err)
		}
		b := part.RecordBatches
		for len(b) >= 12 {
			size := 12 + int(binary.BigEndian.Uint32(b[8:12]))
			var rb kmsg.RecordBatch
			if err := rb.ReadFrom(b[:size]); err != nil {
				t.Fatalf("a batch of %s: %v", topic, err)
			}
			sizes = append(sizes, size)
			records += int64(rb.NumRecords)
			b = b[size:]
		}
		return sizes, records
	}
	lane, n := batches(string(AcceptedLow))
	if n != 3001 {
		t.Fatalf("%s holds %d records, want 3001", AcceptedLow, n)
	}
	// Every batch is small but the large record's own.
	large := 0
	for i, size := range lane {
		switch {
		case size >= 200<<10 && large == 0:
			large++
		case size > IngestBatchBytes:
			t.Fatalf("batch %d of %s is %d bytes, want at most %d", i, AcceptedLow, size, IngestBatchBytes)
		}
	}
	if large != 1 {
		t.Fatalf("no batch of %s holds the large record: %v", AcceptedLow, lane)
	}
	others, n := batches(other)
	if n != 3000 {
		t.Fatalf("%s holds %d records, want 3000", other, n)
	}
	if slices.Max(others) <= IngestBatchBytes {
		t.Fatalf("batches of a topic that is no lane: %v bytes, want larger ones than a lane's", others)
	}
}
