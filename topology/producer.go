package topology

import (
	"context"
	"errors"
	"time"

	"github.com/IBM/sarama"
	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kgo"
)

// gokaProducer is goka's Producer on a franz-go client: every record a goka
// processor or emitter writes (its emits and its table's changelog) goes
// through it. goka's own producer is sarama's AsyncProducer, whose per-record
// channels and goroutines were 16 % of the bulk's CPU (docs/PERFORMANCE.md,
// issue 17, eighth sitting); franz-go writes the same records, to the same
// partitions (Partitioner agrees with goka's hasher), with one callback per
// record.
//
// The promise of a record is finished once the broker acknowledged it (acks
// of all in-sync replicas, idempotent, as every notifyd franz-go producer),
// with the offset goka stores as its table's changelog position.
type gokaProducer struct {
	// cl writes every record; a priority lane's in batches of at most
	// IngestBatchBytes (see laneBatchBytes).
	cl *kgo.Client
	// big writes a lane's record too large for such a batch (franz-go fails
	// a record larger than its batch limit).
	big *kgo.Client
}

// NewGokaProducer returns a goka.Producer writing through franz-go clients
// that let a partition's records wait linger for more.
func NewGokaProducer(brokers []string, clientID string, linger time.Duration) (goka.Producer, error) {
	opts := []kgo.Opt{kgo.ProducerLinger(linger)}
	if clientID != "" {
		opts = append(opts, kgo.ClientID(clientID))
	}
	cl, err := NewProducer(brokers, append(opts, kgo.ProducerBatchMaxBytesFn(laneBatchBytes))...)
	if err != nil {
		return nil, err
	}
	big, err := NewProducer(brokers, opts...)
	if err != nil {
		cl.Close()
		return nil, err
	}
	return &gokaProducer{cl: cl, big: big}, nil
}

// laneBatchBytes bounds the batches of the priority lanes (notify.ingest*,
// notify.accepted*) as the API's ingest producer does: a consumer's fetch
// takes at least a whole batch of a partition, and the next fetch, the one
// that brings a high-priority record, waits until goka took it in
// (docs/TOPICS.md, "Small batches on the lanes").
func laneBatchBytes(topic string) int32 {
	if isLane(topic) {
		return IngestBatchBytes
	}
	return producerMaxBytes
}

func isLane(topic string) bool {
	for _, l := range IngestLanes {
		if topic == string(l) {
			return true
		}
	}
	for _, l := range AcceptedLanes {
		if topic == string(l) {
			return true
		}
	}
	return false
}

func (p *gokaProducer) Emit(topic, key string, value []byte) *goka.Promise {
	return p.EmitWithHeaders(topic, key, value, nil)
}

func (p *gokaProducer) EmitWithHeaders(topic, key string, value []byte, headers goka.Headers) *goka.Promise {
	promise, finish := goka.NewPromiseWithFinisher()
	r := &kgo.Record{Topic: topic, Key: []byte(key), Value: value}
	if len(headers) > 0 {
		r.Headers = make([]kgo.RecordHeader, 0, len(headers))
		for k, v := range headers {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: k, Value: v})
		}
	}
	cl := p.cl
	if isLane(topic) && !FitsIngestBatch(r.Key, value) {
		cl = p.big
	}
	cl.Produce(context.Background(), r, func(r *kgo.Record, err error) {
		if err != nil {
			finish(nil, err)
			return
		}
		// goka reads the offset of a table write (its changelog position).
		finish(&sarama.ProducerMessage{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset}, nil)
	})
	return promise
}

// producerCloseTimeout bounds how long Close waits for buffered records,
// as goka's own producer does.
const producerCloseTimeout = time.Minute

// Close writes what is buffered, then closes the client; a record it could
// not write in time has its promise failed.
func (p *gokaProducer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), producerCloseTimeout)
	defer cancel()
	err := errors.Join(p.cl.Flush(ctx), p.big.Flush(ctx))
	p.cl.Close()
	p.big.Close()
	return err
}
