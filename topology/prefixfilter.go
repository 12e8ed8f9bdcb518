package topology

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/bits-and-blooms/bloom/v3"
	"github.com/lovoo/goka/storage"
)

// PrefixFilter answers "may this view hold a key under prefix?" without
// opening an iterator on every partition: a Bloom filter of the prefixes
// (prefixOf of each key) of every key the view's storages hold. It has no
// false negatives: every key a storage holds when it opens, and every key
// set since, is in it; deleted keys stay (a false positive costs the scan the
// caller would have made anyway).
//
// The keyring asks it before it scans notify.datakeys for a subject's key: a
// user never seen before has none, and the scan (goka opens a LevelDB
// iterator on each partition and merges them) was 8–10 % of the CPU of a
// pipeline sending to new users (docs/PERFORMANCE.md).
type PrefixFilter struct {
	prefixOf func(key string) string

	mu       sync.RWMutex
	bloom    *bloom.BloomFilter
	capacity uint
	added    uint
	opened   []storage.Storage // to rebuild a larger filter from

	watch atomic.Pointer[func(key string, value []byte)]
}

// Watch calls fn with every key a storage sets (value) or deletes (nil),
// once the change is readable from the storage: a cache over the view can
// keep what it read until the view changes it. One watcher; a later call
// replaces it.
func (f *PrefixFilter) Watch(fn func(key string, value []byte)) { f.watch.Store(&fn) }

func (f *PrefixFilter) changed(key string, value []byte) {
	if fn := f.watch.Load(); fn != nil {
		(*fn)(key, value)
	}
}

// prefixFilterFP is the share of absent prefixes the filter lets through.
const prefixFilterFP = 0.01

// NewPrefixFilter is a filter of prefixOf(key) for capacity keys; it doubles
// (rebuilt from the storages) whenever more are added.
func NewPrefixFilter(prefixOf func(key string) string, capacity uint) *PrefixFilter {
	capacity = max(capacity, 1024)
	return &PrefixFilter{prefixOf: prefixOf, capacity: capacity, bloom: bloom.NewWithEstimates(capacity, prefixFilterFP)}
}

// MayHave tells whether some key with this prefix may be held; false is certain.
func (f *PrefixFilter) MayHave(prefix string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.bloom.TestString(prefix)
}

func (f *PrefixFilter) add(key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bloom.AddString(f.prefixOf(key))
	f.added++
	if f.added <= f.capacity {
		return nil
	}
	return f.rebuildLocked(2 * f.capacity)
}

// rebuildLocked fills a filter of capacity from every opened storage. A
// storage's Set is in it before it reaches add (which waits for f.mu), so
// nothing set meanwhile is missed.
func (f *PrefixFilter) rebuildLocked(capacity uint) error {
	b := bloom.NewWithEstimates(capacity, prefixFilterFP)
	var n uint
	for _, st := range f.opened {
		c, err := addKeys(b, st, f.prefixOf)
		if err != nil {
			return fmt.Errorf("prefix filter: %w", err)
		}
		n += c
	}
	f.bloom, f.capacity, f.added = b, capacity, n
	return nil
}

func addKeys(b *bloom.BloomFilter, st storage.Storage, prefixOf func(string) string) (uint, error) {
	it, err := st.Iterator()
	if err != nil {
		return 0, err
	}
	defer it.Release()
	var n uint
	for it.Next() {
		b.AddString(prefixOf(string(it.Key())))
		n++
	}
	return n, it.Err()
}

// Wrap makes every storage the builder opens feed the filter.
func (f *PrefixFilter) Wrap(b storage.Builder) storage.Builder {
	return func(topic string, partition int32) (storage.Storage, error) {
		st, err := b(topic, partition)
		if err != nil {
			return nil, err
		}
		return &filteredStorage{Storage: st, f: f}, nil
	}
}

type filteredStorage struct {
	storage.Storage
	f *PrefixFilter
}

// Open adds what the storage already holds (a restart resumes from its
// offset: goka sets none of those keys again).
func (s *filteredStorage) Open() error {
	if err := s.Storage.Open(); err != nil {
		return err
	}
	f := s.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.opened = append(f.opened, s.Storage)
	n, err := addKeys(f.bloom, s.Storage, f.prefixOf)
	if err != nil {
		return fmt.Errorf("prefix filter: %w", err)
	}
	f.added += n
	if f.added > f.capacity {
		return f.rebuildLocked(2 * f.added)
	}
	return nil
}

func (s *filteredStorage) Set(key string, value []byte) error {
	if err := s.Storage.Set(key, value); err != nil {
		return err
	}
	s.f.changed(key, value)
	return s.f.add(key)
}

func (s *filteredStorage) Delete(key string) error {
	if err := s.Storage.Delete(key); err != nil {
		return err
	}
	s.f.changed(key, nil)
	return nil
}

func (s *filteredStorage) Close() error {
	f := s.f
	f.mu.Lock()
	for i, st := range f.opened {
		if st == s.Storage {
			f.opened = append(f.opened[:i], f.opened[i+1:]...)
			break
		}
	}
	f.mu.Unlock()
	return s.Storage.Close()
}
