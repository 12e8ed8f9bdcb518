package topology

import (
	"context"
	"time"

	"github.com/IBM/sarama"
	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kgo"
)

// gokaProducer is goka's Producer on a franz-go client: every record a goka
// processor or emitter writes (its emits and its table's changelog) goes
// through it. goka's own producer is sarama's AsyncProducer, whose per-record
// channels, goroutine hops and encoding were the largest share of a
// notification's produce cost (docs/PERFORMANCE.md, issue 17, eighth
// sitting); franz-go writes the same records, to the same partitions
// (Partitioner agrees with goka's hasher), with one callback per record.
//
// The promise of a record is finished once the broker acknowledged it (acks
// of all in-sync replicas, idempotent, as every notifyd franz-go producer),
// with the offset goka stores as its table's changelog position.
type gokaProducer struct {
	cl *kgo.Client
}

// NewGokaProducer returns a goka.Producer writing through a franz-go client.
func NewGokaProducer(brokers []string, clientID string, linger time.Duration) (goka.Producer, error) {
	opts := []kgo.Opt{kgo.ProducerLinger(linger)}
	if clientID != "" {
		opts = append(opts, kgo.ClientID(clientID))
	}
	cl, err := NewProducer(brokers, opts...)
	if err != nil {
		return nil, err
	}
	return &gokaProducer{cl: cl}, nil
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
	p.cl.Produce(context.Background(), r, func(r *kgo.Record, err error) {
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
	err := p.cl.Flush(ctx)
	p.cl.Close()
	return err
}
