package topology

import (
	"sync"

	"github.com/lovoo/goka/storage"
)

// Tables keeps track of the group-table partitions this process owns: goka
// opens a partition's storage when the partition is assigned and closes it when
// it is taken away, so the open storages are exactly the owned partitions.
// Sweepers iterate them directly, so time-driven work runs once per partition
// owner and needs no view of the whole table in every instance.
type Tables struct {
	mu   sync.Mutex
	open map[string]map[int32]*trackedStorage
}

// NewTables returns an empty registry.
func NewTables() *Tables { return &Tables{open: map[string]map[int32]*trackedStorage{}} }

// Wrap registers every storage the builder opens.
func (t *Tables) Wrap(b storage.Builder) storage.Builder {
	return func(topic string, partition int32) (storage.Storage, error) {
		st, err := b(topic, partition)
		if err != nil {
			return nil, err
		}
		ts := &trackedStorage{Storage: st, tables: t, topic: topic, partition: partition}
		t.mu.Lock()
		if t.open[topic] == nil {
			t.open[topic] = map[int32]*trackedStorage{}
		}
		t.open[topic][partition] = ts
		t.mu.Unlock()
		return ts, nil
	}
}

// Partitions lists the partitions of topic open in this process.
func (t *Tables) Partitions(topic string) []int32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []int32
	for p := range t.open[topic] {
		out = append(out, p)
	}
	return out
}

// Each calls fn for every key in [start, limit) of every owned partition of
// topic ("" bounds are open), until fn returns false. A partition closed
// meanwhile waits for the iteration to end before it closes.
func (t *Tables) Each(topic string, start, limit string, fn func(partition int32, key string, value []byte) bool) error {
	t.mu.Lock()
	var parts []*trackedStorage
	for _, ts := range t.open[topic] {
		parts = append(parts, ts)
	}
	t.mu.Unlock()
	for _, ts := range parts {
		more, err := ts.each(start, limit, fn)
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
	}
	return nil
}

type trackedStorage struct {
	storage.Storage
	tables    *Tables
	topic     string
	partition int32

	mu     sync.RWMutex
	closed bool
}

func (s *trackedStorage) each(start, limit string, fn func(int32, string, []byte) bool) (bool, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return true, nil
	}
	var it storage.Iterator
	var err error
	if start == "" && limit == "" {
		it, err = s.Storage.Iterator()
	} else {
		var lo, hi []byte
		if start != "" {
			lo = []byte(start)
		}
		if limit != "" {
			hi = []byte(limit)
		}
		it, err = s.Storage.IteratorWithRange(lo, hi)
	}
	if err != nil {
		return false, err
	}
	defer it.Release()
	for it.Next() {
		k := string(it.Key())
		// goka's memory storage treats the limit as inclusive.
		if limit != "" && k >= limit {
			break
		}
		v, err := it.Value()
		if err != nil || v == nil {
			continue
		}
		if !fn(s.partition, k, v) {
			return false, nil
		}
	}
	return true, it.Err()
}

func (s *trackedStorage) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.tables.mu.Lock()
	if s.tables.open[s.topic][s.partition] == s {
		delete(s.tables.open[s.topic], s.partition)
	}
	s.tables.mu.Unlock()
	return s.Storage.Close()
}
