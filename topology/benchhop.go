package topology

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/codec"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

// The bare stateful hop `notifyd bench` measures its ceiling with: one goka
// group, one input, its group table, one output, bytes codecs. It is not part
// of the pipeline; it runs on a broker of its own, with ProcessorOptions like
// every group of the pipeline, so its rate is goka + broker + storage alone.
const (
	BenchHopGroup  goka.Group  = "notifyd.bench.hop"
	BenchHopInput  goka.Stream = "notifyd.bench.hop.in"
	BenchHopOutput goka.Stream = "notifyd.bench.hop.out"
)

// Sizes of the hop's table value and output record.
const (
	BenchHopStateBytes  = 100
	BenchHopOutputBytes = 300
)

// BenchHopTopics are the hop's input and output (goka creates the group table).
func BenchHopTopics() []Topic {
	return []Topic{{Name: string(BenchHopInput)}, {Name: string(BenchHopOutput)}}
}

// BenchHopGraph reads the key's table value, writes a new one of
// BenchHopStateBytes and emits BenchHopOutputBytes to BenchHopOutput. The
// input's first 8 bytes are its sequence number (big endian); the new value
// holds that and how many messages the key has had (BenchHopState), so a
// test can tell the value was read as well as written. first, when set, holds
// the unix nanos of the first message.
func BenchHopGraph(first *atomic.Int64) *goka.GroupGraph {
	return goka.DefineGroup(BenchHopGroup,
		goka.Input(BenchHopInput, new(codec.Bytes), func(ctx goka.Context, msg any) {
			if first != nil && first.Load() == 0 {
				first.CompareAndSwap(0, time.Now().UnixNano())
			}
			in, _ := msg.([]byte)
			_, count := BenchHopState(ctx.Value())
			state := make([]byte, BenchHopStateBytes)
			if len(in) >= 8 {
				copy(state, in[:8])
			}
			binary.BigEndian.PutUint64(state[8:16], count+1)
			ctx.SetValue(state)
			out := make([]byte, BenchHopOutputBytes)
			copy(out, state[:16])
			ctx.Emit(BenchHopOutput, ctx.Key(), out)
		}),
		goka.Output(BenchHopOutput, new(codec.Bytes)),
		goka.Persist(new(codec.Bytes)),
	)
}

// BenchHopState decodes a hop table value: the sequence number of the key's
// last message and how many messages the key has had (0, 0 for none).
func BenchHopState(v any) (seq, count uint64) {
	b, _ := v.([]byte)
	if len(b) < 16 {
		return 0, 0
	}
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:16])
}

// CreateOwnTopics creates topics, and none of the pipeline's, with the
// pipeline's topic configs and partitions each; topics that exist are left alone.
func CreateOwnTopics(ctx context.Context, brokers []string, partitions, replication int, topics ...Topic) error {
	cl, err := NewClient(brokers)
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	for _, t := range topics {
		resp, err := adm.CreateTopic(ctx, int32(partitions), int16(replication), t.configs(), t.Name)
		if err == nil {
			err = resp.Err
		}
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", t.Name, err)
		}
	}
	return nil
}
