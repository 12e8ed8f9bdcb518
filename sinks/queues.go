package sinks

import (
	"sort"
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
)

// queues hold polled records per priority (one topic each, highest first) and
// per partition, in offset order, until the dispatcher takes them.
type queues struct {
	mu     sync.Mutex
	topics []string
	byTop  map[string]int
	parts  []map[int32][]*kgo.Record // per priority: partition → records
	count  []int                     // per priority: records queued
	rr     []int                     // per priority: round-robin cursor over partitions
	paused map[string]bool
}

func newQueues(topics []string) *queues {
	q := &queues{topics: topics, byTop: map[string]int{}, parts: make([]map[int32][]*kgo.Record, len(topics)),
		count: make([]int, len(topics)), rr: make([]int, len(topics)), paused: map[string]bool{}}
	for i, t := range topics {
		q.byTop[t] = i
		q.parts[i] = map[int32][]*kgo.Record{}
	}
	return q
}

func (q *queues) push(r *kgo.Record) {
	q.mu.Lock()
	defer q.mu.Unlock()
	i, ok := q.byTop[r.Topic]
	if !ok {
		return
	}
	q.parts[i][r.Partition] = append(q.parts[i][r.Partition], r)
	q.count[i]++
}

// take removes the next record of priority i from a partition ready says may
// go on, taking partitions in turn; nil if there is none.
func (q *queues) take(i int, ready func(tp) bool) *kgo.Record {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.count[i] == 0 {
		return nil
	}
	keys := make([]int32, 0, len(q.parts[i]))
	for p := range q.parts[i] {
		keys = append(keys, p)
	}
	sort.Slice(keys, func(a, b int) bool { return keys[a] < keys[b] })
	for n := 0; n < len(keys); n++ {
		p := keys[(q.rr[i]+n)%len(keys)]
		if !ready(tp{q.topics[i], p}) {
			continue
		}
		l := q.parts[i][p]
		r := l[0]
		if len(l) == 1 {
			delete(q.parts[i], p)
		} else {
			q.parts[i][p] = l[1:]
		}
		q.count[i]--
		q.rr[i] = (q.rr[i] + n + 1) % len(keys)
		return r
	}
	return nil
}

func (q *queues) len(i int) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.count[i]
}

// throttle pauses fetching a topic whose queue is full and resumes it when it
// has drained, bounding memory without ever pausing a higher priority.
func (q *queues) throttle(cl *kgo.Client, max int) {
	q.mu.Lock()
	var pause, resume []string
	for i, t := range q.topics {
		full := q.count[i] >= max
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
		for _, p := range parts {
			q.count[i] -= len(q.parts[i][p])
			delete(q.parts[i], p)
		}
	}
}

// clear forgets every queued record (the sink is stopping).
func (q *queues) clear() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := range q.parts {
		q.parts[i] = map[int32][]*kgo.Record{}
		q.count[i] = 0
	}
}
