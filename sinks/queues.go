package sinks

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
)

// queues hold polled records per priority (one topic each, highest first) so
// that a chunk is always taken from the highest priority that has records.
type queues struct {
	mu     sync.Mutex
	topics []string
	byTop  map[string]int
	q      [][]*kgo.Record
	paused map[string]bool
}

func newQueues(topics []string) *queues {
	q := &queues{topics: topics, byTop: map[string]int{}, q: make([][]*kgo.Record, len(topics)), paused: map[string]bool{}}
	for i, t := range topics {
		q.byTop[t] = i
	}
	return q
}

func (q *queues) push(r *kgo.Record) {
	q.mu.Lock()
	defer q.mu.Unlock()
	i := q.byTop[r.Topic]
	q.q[i] = append(q.q[i], r)
}

func (q *queues) empty() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, l := range q.q {
		if len(l) > 0 {
			return false
		}
	}
	return true
}

// take removes up to n records from the highest non-empty priority.
func (q *queues) take(n int) []*kgo.Record {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, l := range q.q {
		if len(l) == 0 {
			continue
		}
		if n > len(l) {
			n = len(l)
		}
		out := append([]*kgo.Record(nil), l[:n]...)
		q.q[i] = l[n:]
		if len(q.q[i]) == 0 {
			q.q[i] = nil
		}
		return out
	}
	return nil
}

// throttle pauses fetching a topic whose queue is full and resumes it when it
// has drained, bounding memory without ever pausing a higher priority.
func (q *queues) throttle(cl *kgo.Client, max int) {
	q.mu.Lock()
	var pause, resume []string
	for i, t := range q.topics {
		full := len(q.q[i]) >= max
		if full && !q.paused[t] {
			pause = append(pause, t)
			q.paused[t] = true
		} else if !full && q.paused[t] {
			resume = append(resume, t)
			q.paused[t] = false
		}
	}
	q.mu.Unlock()
	if len(pause) > 0 {
		cl.PauseFetchTopics(pause...)
	}
	if len(resume) > 0 {
		cl.ResumeFetchTopics(resume...)
	}
}

// drop forgets queued records of partitions this member no longer owns; their
// new owner starts from the last commit.
func (q *queues) drop(lost map[string][]int32) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for t, parts := range lost {
		i, ok := q.byTop[t]
		if !ok {
			continue
		}
		gone := map[int32]bool{}
		for _, p := range parts {
			gone[p] = true
		}
		kept := q.q[i][:0]
		for _, r := range q.q[i] {
			if !gone[r.Partition] {
				kept = append(kept, r)
			}
		}
		q.q[i] = kept
	}
}
