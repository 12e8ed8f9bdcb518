package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/service"
	"github.com/notifyd/notifyd/topology"
)

// The bench's ceiling: what the broker and goka do alone in this process, so
// that a phase's rate reads as a share of what the substrate allows rather
// than as a bare number that moves with the machine's noise.

// ceilingRawTopic is the topic of the raw broker pass-through.
const ceilingRawTopic = "notifyd.bench.raw"

// ceilingRecordBytes is the value size of the raw pass-through's records and
// of the hop's input.
const ceilingRecordBytes = 300

// ceilingHopKeys is how many distinct keys the hop's messages have.
const ceilingHopKeys = 2000

// rateFigures are count records in duration.
type rateFigures struct {
	Count      int     `json:"count"`
	DurationMS float64 `json:"duration_ms"`
	Rate       float64 `json:"rate"`
}

func newRate(count int, d time.Duration) rateFigures {
	return rateFigures{Count: count, DurationMS: msec(d), Rate: float64(count) / d.Seconds()}
}

// hopFigures are the bare hop's: the rate counts from its first message;
// StartMS is from the processor's start to that message (group join,
// recovery of the empty table), which the rate leaves out.
type hopFigures struct {
	rateFigures
	Keys    int     `json:"keys"`
	StartMS float64 `json:"start_ms"`
}

// ceiling is the bench's ceiling; a nil *ceiling means it was not measured.
type ceiling struct {
	Partitions int         `json:"partitions"`
	GokaState  string      `json:"goka_state"` // "disk" or "memory"
	RawBroker  rateFigures `json:"raw_broker"`
	GokaHop    hopFigures  `json:"goka_hop"`
}

// ratio is rate as a fraction of the bare hop's (nil without a ceiling).
func (c *ceiling) ratio(rate float64) *float64 {
	if c == nil || c.GokaHop.Rate <= 0 {
		return nil
	}
	r := rate / c.GokaHop.Rate
	return &r
}

// share says rate as a percentage of the bare hop ("" without a ceiling).
func (c *ceiling) share(rate float64) string {
	r := c.ratio(rate)
	if r == nil {
		return ""
	}
	return fmt.Sprintf("%.1f%% of a bare hop", *r*100)
}

// inParens is share in parentheses after a space, or "".
func (c *ceiling) inParens(rate float64) string {
	if s := c.share(rate); s != "" {
		return " (" + s + ")"
	}
	return ""
}

func (c *ceiling) print(w io.Writer) {
	fmt.Fprintf(w, "ceiling: raw broker %s msg/s · bare goka stateful hop %s msg/s\n",
		thousands(c.RawBroker.Rate), thousands(c.GokaHop.Rate))
	fmt.Fprintf(w, "  raw broker: %d records of %d bytes produced and consumed back in %s; goka hop (state %s): %d messages over %d keys in %s, first message %s after the processor started\n\n",
		c.RawBroker.Count, ceilingRecordBytes, msDur(c.RawBroker.DurationMS), c.GokaState, c.GokaHop.Count, c.GokaHop.Keys,
		msDur(c.GokaHop.DurationMS), msDur(c.GokaHop.StartMS))
}

// measureCeiling runs a broker of the bench's kind (service.StartBroker, kfake
// with its data under a directory of its own) with k's settings, measures the
// raw pass-through of rawN records and the bare hop over hopN messages on it,
// and removes it again, so the phases run on a broker and heap of their own.
func measureCeiling(ctx context.Context, k config.Kafka, memState bool, rawN, hopN int) (*ceiling, error) {
	if rawN < 1 || hopN < 1 {
		return nil, errors.New("bench: -ceiling-n and -ceiling-hop-n must be at least 1")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "notifyd-bench-ceiling-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	cluster, err := service.StartBroker(dir, 0)
	if err != nil {
		return nil, err
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	c := &ceiling{Partitions: k.Partitions, GokaState: "disk"}
	if c.RawBroker, err = measureBroker(ctx, brokers, k.Partitions, k.Replication, rawN); err != nil {
		return nil, fmt.Errorf("ceiling, raw broker: %w", err)
	}
	// The same settings as the service's groups (service.Run).
	kafka := topology.Kafka{Brokers: brokers, Replication: k.Replication, FlushEvery: k.FlushEvery, SessionTimeout: k.SessionTimeout}
	if memState {
		c.GokaState = "memory"
	} else {
		kafka.StorageDir = filepath.Join(dir, "goka")
		if err := os.MkdirAll(kafka.StorageDir, 0o700); err != nil {
			return nil, err
		}
	}
	if c.GokaHop, err = measureHop(ctx, kafka, k.Partitions, hopN, min(ceilingHopKeys, hopN), nil); err != nil {
		return nil, fmt.Errorf("ceiling, goka hop: %w", err)
	}
	return c, nil
}

// measureBroker produces n keyed records of ceilingRecordBytes to a fresh topic
// while one consumer reads them back: n / (first produce → last record consumed).
func measureBroker(ctx context.Context, brokers []string, partitions, replication, n int) (rateFigures, error) {
	if err := topology.CreateOwnTopics(ctx, brokers, partitions, replication, topology.Topic{Name: ceilingRawTopic}); err != nil {
		return rateFigures{}, err
	}
	consumer, err := topology.NewClient(brokers, kgo.ConsumeTopics(ceilingRawTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return rateFigures{}, err
	}
	defer consumer.Close()
	producer, err := topology.NewProducer(brokers)
	if err != nil {
		return rateFigures{}, err
	}
	defer producer.Close()

	type consumed struct {
		last time.Time
		err  error
	}
	done := make(chan consumed, 1)
	go func() {
		got := 0
		for got < n {
			fs := consumer.PollFetches(ctx)
			if ctx.Err() != nil {
				done <- consumed{err: fmt.Errorf("%d of %d records consumed: %w", got, n, ctx.Err())}
				return
			}
			got += fs.NumRecords()
		}
		done <- consumed{last: time.Now()}
	}()
	value := bytes.Repeat([]byte{'r'}, ceilingRecordBytes)
	var produceErr atomic.Value
	start := time.Now()
	for i := 0; i < n; i++ {
		producer.Produce(ctx, &kgo.Record{Topic: ceilingRawTopic, Key: strconv.AppendInt(nil, int64(i), 10), Value: value},
			func(_ *kgo.Record, err error) {
				if err != nil {
					produceErr.CompareAndSwap(nil, err)
				}
			})
	}
	if err := producer.Flush(ctx); err != nil {
		return rateFigures{}, err
	}
	if err, _ := produceErr.Load().(error); err != nil {
		return rateFigures{}, err
	}
	c := <-done
	if c.err != nil {
		return rateFigures{}, c.err
	}
	return newRate(n, c.last.Sub(start)), nil
}

// measureHop produces n messages over keys keys to the hop's input, then runs
// the hop (topology.BenchHopGraph) with kafka's ProcessorOptions until its
// output holds n records: n / (first message → n records on the output).
// inspect, when set, sees the processor before it stops.
func measureHop(ctx context.Context, kafka topology.Kafka, partitions, n, keys int, inspect func(*goka.Processor) error) (hopFigures, error) {
	if err := topology.CreateOwnTopics(ctx, kafka.Brokers, partitions, kafka.Replication, topology.BenchHopTopics()...); err != nil {
		return hopFigures{}, err
	}
	producer, err := topology.NewProducer(kafka.Brokers)
	if err != nil {
		return hopFigures{}, err
	}
	defer producer.Close()
	var produceErr atomic.Value
	for i := 0; i < n; i++ {
		v := make([]byte, ceilingRecordBytes)
		binary.BigEndian.PutUint64(v, uint64(i))
		producer.Produce(ctx, &kgo.Record{Topic: string(topology.BenchHopInput), Key: []byte(benchHopKey(i % keys)), Value: v},
			func(_ *kgo.Record, err error) {
				if err != nil {
					produceErr.CompareAndSwap(nil, err)
				}
			})
	}
	if err := producer.Flush(ctx); err != nil {
		return hopFigures{}, err
	}
	if err, _ := produceErr.Load().(error); err != nil {
		return hopFigures{}, err
	}

	var first atomic.Int64
	opts := append(kafka.ProcessorOptions(topology.BenchHopGroup), goka.WithLogger(log.New(io.Discard, "", 0)))
	p, err := goka.NewProcessor(kafka.Brokers, topology.BenchHopGraph(&first), opts...)
	if err != nil {
		return hopFigures{}, err
	}
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	ran := make(chan error, 1)
	started := time.Now()
	go func() { ran <- p.Run(pctx) }()
	stopped := false
	halt := func() error {
		if stopped {
			return nil
		}
		stopped = true
		stop()
		return <-ran
	}
	defer halt()

	adm := kadm.NewClient(producer)
	var out int64
	for {
		if out, err = endOffsets(ctx, adm, string(topology.BenchHopOutput)); err == nil && out >= int64(n) {
			break
		}
		select {
		case err := <-ran:
			stopped = true
			return hopFigures{}, fmt.Errorf("processor stopped with %d of %d records on the output: %v", out, n, err)
		case <-ctx.Done():
			return hopFigures{}, fmt.Errorf("%d of %d records on the output: %w", out, n, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
	end := time.Now()
	if out != int64(n) {
		return hopFigures{}, fmt.Errorf("%d records on the output, want %d", out, n)
	}
	if inspect != nil {
		if err := inspect(p); err != nil {
			return hopFigures{}, err
		}
	}
	firstAt := time.Unix(0, first.Load())
	if err := halt(); err != nil {
		return hopFigures{}, fmt.Errorf("processor: %w", err)
	}
	return hopFigures{rateFigures: newRate(n, end.Sub(firstAt)), Keys: keys, StartMS: msec(firstAt.Sub(started))}, nil
}

// benchHopKey is the hop's key i.
func benchHopKey(i int) string { return fmt.Sprintf("hop-%05d", i) }

// endOffsets is the number of records topic holds, over its partitions.
func endOffsets(ctx context.Context, adm *kadm.Client, topic string) (int64, error) {
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return 0, err
	}
	var n int64
	var perr error
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			perr = o.Err
		}
		n += o.Offset
	})
	return n, perr
}

func msec(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// msDur prints milliseconds as a rounded duration.
func msDur(ms float64) time.Duration {
	return time.Duration(ms * float64(time.Millisecond)).Round(time.Millisecond)
}

// thousands prints v rounded, with a comma every three digits.
func thousands(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	var b []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b = append(b, ',')
		}
		b = append(b, s[i])
	}
	return string(b)
}
