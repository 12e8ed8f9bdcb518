package sinks

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
)

// tracker knows, per partition, which taken records are finished (their side
// effects produced and acknowledged) and so how far the partition may be
// committed: up to the first record not finished. Records finish out of order
// (a slow provider, a retry); the commit never passes an unfinished one
// (DESIGN rule 4).
type tracker struct {
	mu    sync.Mutex
	parts map[tp]*partTrack
}

type tp struct {
	topic     string
	partition int32
}

type partTrack struct {
	pending []*kgo.Record // taken, in offset order
	done    map[int64]bool
	commit  *kgo.Record // the last record finished with all before it
	dirty   bool
}

func newTracker() *tracker { return &tracker{parts: map[tp]*partTrack{}} }

// take registers a record handed to the dispatcher; records of a partition
// are taken in offset order. The record is finished against the returned
// track: once its partition is forgotten (revoked), a late finish cannot
// touch the track of a later assignment of the same partition.
func (t *tracker) take(r *kgo.Record) *partTrack {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := tp{r.Topic, r.Partition}
	pt := t.parts[k]
	if pt == nil {
		pt = &partTrack{done: map[int64]bool{}}
		t.parts[k] = pt
	}
	pt.pending = append(pt.pending, r)
	return pt
}

// finish marks a record of pt finished.
func (t *tracker) finish(pt *partTrack, r *kgo.Record) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if pt == nil || t.parts[tp{r.Topic, r.Partition}] != pt {
		return // the partition was revoked meanwhile
	}
	pt.done[r.Offset] = true
	for len(pt.pending) > 0 && pt.done[pt.pending[0].Offset] {
		head := pt.pending[0]
		delete(pt.done, head.Offset)
		pt.pending = pt.pending[1:]
		pt.commit = head
		pt.dirty = true
	}
}

// committable returns the records to commit (one per partition moved since
// the last call; only = nil means every partition).
func (t *tracker) committable(only map[string][]int32) []*kgo.Record {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*kgo.Record
	for k, pt := range t.parts {
		if only != nil && !contains(only[k.topic], k.partition) {
			continue
		}
		if pt.dirty && pt.commit != nil {
			out = append(out, pt.commit)
			pt.dirty = false
		}
	}
	return out
}

// recommit marks records whose commit failed to be committed again.
func (t *tracker) recommit(rs []*kgo.Record) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range rs {
		if pt := t.parts[tp{r.Topic, r.Partition}]; pt != nil && pt.commit == r {
			pt.dirty = true
		}
	}
}

// forget drops the partitions (revoked or lost).
func (t *tracker) forget(parts map[string][]int32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for topic, ps := range parts {
		for _, p := range ps {
			delete(t.parts, tp{topic, p})
		}
	}
}

func contains(ps []int32, p int32) bool {
	for _, x := range ps {
		if x == p {
			return true
		}
	}
	return false
}
