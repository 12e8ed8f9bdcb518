package topology

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
)

// Flow control for goka's consumer groups: one partition's backlog must not
// hold the records of the others, a high-priority lane among them.
//
// sarama's consumer sends one fetch request for every partition it reads from
// a broker, and the next only when each partition has pushed all it got into
// its channel. A partition with a backlog keeps its channel full: goka takes
// its records one at a time, so the fetch cycle of the whole group waits for
// goka to work through a record batch of that partition (a 64 KiB batch is
// ~200 notifications, ~125 ms on this machine), and a high-priority request
// produced meanwhile waits as long (docs/TOPICS.md, "Priority lanes").
//
// flowControl pauses a partition (sarama's ConsumerGroup.Pause) once its
// channel holds flowPauseAt records, so the next fetch requests leave it out
// and return at once for the others, and resumes it when goka has taken it
// down to flowResumeAt. The channel is sized to take a whole fetched batch on
// top of flowPauseAt without blocking, so pausing never holds a cycle.
const (
	// flowPauseAt records in a partition's channel pause its fetching.
	flowPauseAt = 512
	// flowResumeAt: fetching resumes when goka has taken the channel down to
	// this. It lasts longer than flowMaxWait at the rates a partition is
	// processed at (1,500–3,000 records/s), so a resumed partition has records
	// left when a fetch that left it out comes back empty.
	flowResumeAt = 256
	// flowBuffer is the channel of each partition: flowPauseAt plus a
	// fetched batch (the fetch asks for 16 KiB; a broker returns at least one
	// whole batch, up to 1 MiB from a foreign producer).
	flowBuffer = flowPauseAt + 1536
	// flowEvery is how often paused partitions are looked at.
	flowEvery = 5 * time.Millisecond
	// flowMaxWait bounds how long a fetch of only idle partitions waits at
	// the broker (sarama's default is 500 ms): a resumed partition is in the
	// next request at most this late.
	flowMaxWait = 100 * time.Millisecond
)

type flowKey struct {
	topic     string
	partition int32
}

type flowPart struct {
	ch     <-chan *sarama.ConsumerMessage
	paused atomic.Bool
}

// flowControl is a sarama ConsumerInterceptor (it sees every record as the
// partition's feeder is about to push it into the channel) and the resumer.
type flowControl struct {
	group sarama.ConsumerGroup
	mu    sync.Mutex                            // writers of parts
	parts atomic.Pointer[map[flowKey]*flowPart] // copied on write: read per record
	kick  chan struct{}
	stop  chan struct{}
	// gate is told of every high-priority record (nil: none); gated says
	// which of the group's claims wait while it holds.
	gate  *PriorityGate
	gated func(topic string) bool
}

func newFlowControl() *flowControl {
	f := &flowControl{kick: make(chan struct{}, 1), stop: make(chan struct{})}
	f.parts.Store(&map[flowKey]*flowPart{})
	return f
}

// flowConfig makes c a flow-controlled consumer group's config.
func flowConfig(c *sarama.Config, f *flowControl) {
	c.ChannelBufferSize = flowBuffer
	c.Consumer.MaxWaitTime = flowMaxWait
	c.Consumer.Interceptors = append(c.Consumer.Interceptors, f)
}

// OnConsume runs in the partition's feeder before each record is pushed; when
// the channel holds flowPauseAt records it pauses the partition, so the fetch
// after the one being fed leaves it out.
func (f *flowControl) OnConsume(m *sarama.ConsumerMessage) {
	if f.gate != nil && IsHighLane(m.Topic) {
		f.gate.High()
	}
	p := (*f.parts.Load())[flowKey{m.Topic, m.Partition}]
	if p == nil || len(p.ch) < flowPauseAt || p.paused.Load() {
		return
	}
	if p.paused.CompareAndSwap(false, true) {
		f.group.Pause(map[string][]int32{m.Topic: {m.Partition}})
		select {
		case f.kick <- struct{}{}:
		default:
		}
	}
}

func (f *flowControl) register(topic string, partition int32, ch <-chan *sarama.ConsumerMessage) *flowPart {
	p := &flowPart{ch: ch}
	f.mu.Lock()
	defer f.mu.Unlock()
	old := *f.parts.Load()
	next := make(map[flowKey]*flowPart, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[flowKey{topic, partition}] = p
	f.parts.Store(&next)
	return p
}

func (f *flowControl) unregister(topic string, partition int32, p *flowPart) {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := *f.parts.Load()
	k := flowKey{topic, partition}
	if old[k] != p {
		return
	}
	next := make(map[flowKey]*flowPart, len(old))
	for kk, v := range old {
		if kk != k {
			next[kk] = v
		}
	}
	f.parts.Store(&next)
}

// resume looks at the paused partitions every flowEvery while there are any,
// and resumes each that goka has taken down to flowResumeAt.
func (f *flowControl) resume() {
	for {
		select {
		case <-f.stop:
			return
		case <-f.kick:
		}
		t := time.NewTicker(flowEvery)
		for waiting := true; waiting; {
			select {
			case <-f.stop:
				t.Stop()
				return
			case <-t.C:
			}
			waiting = false
			for k, p := range *f.parts.Load() {
				if !p.paused.Load() {
					continue
				}
				if len(p.ch) > flowResumeAt {
					waiting = true
					continue
				}
				p.paused.Store(false)
				f.group.Resume(map[string][]int32{k.topic: {k.partition}})
			}
		}
		t.Stop()
	}
}

// flowGroup is the sarama consumer group goka runs on, with flow control.
type flowGroup struct {
	sarama.ConsumerGroup
	flow      *flowControl
	closeOnce sync.Once
}

func newFlowGroup(cg sarama.ConsumerGroup, f *flowControl) *flowGroup {
	f.group = cg
	go f.resume()
	return &flowGroup{ConsumerGroup: cg, flow: f}
}

func (g *flowGroup) Consume(ctx context.Context, topics []string, h sarama.ConsumerGroupHandler) error {
	return g.ConsumerGroup.Consume(ctx, topics, flowHandler{ConsumerGroupHandler: h, flow: g.flow})
}

func (g *flowGroup) Close() error {
	g.closeOnce.Do(func() { close(g.flow.stop) })
	return g.ConsumerGroup.Close()
}

type flowHandler struct {
	sarama.ConsumerGroupHandler
	flow *flowControl
}

func (h flowHandler) ConsumeClaim(s sarama.ConsumerGroupSession, c sarama.ConsumerGroupClaim) error {
	p := h.flow.register(c.Topic(), c.Partition(), c.Messages())
	defer h.flow.unregister(c.Topic(), c.Partition(), p)
	if h.flow.gate != nil && h.flow.gated(c.Topic()) {
		g := gateClaim(s.Context(), h.flow.gate, c)
		defer drainGated(g)
		return h.ConsumerGroupHandler.ConsumeClaim(s, g)
	}
	return h.ConsumerGroupHandler.ConsumeClaim(s, c)
}
