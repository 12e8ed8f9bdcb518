package topology

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lovoo/goka/storage"
	"github.com/syndtr/goleveldb/leveldb"
	"github.com/syndtr/goleveldb/leveldb/filter"
	ldbiter "github.com/syndtr/goleveldb/leveldb/iterator"
	"github.com/syndtr/goleveldb/leveldb/opt"
	"github.com/syndtr/goleveldb/leveldb/util"
)

// offsetKey is where goka keeps a partition's table offset (same key as goka's
// own LevelDB storage, so either can open the other's files).
const offsetKey = "__offset"

// maxPending forces a flush when this many keys wait, bounding memory.
const maxPending = 20000

// BatchedLevelDB is goka storage on LevelDB that writes behind: Set and Delete
// land in a pending map that reads see at once, and every flushEvery the
// pending writes and the partition offset go to LevelDB as one atomic batch.
//
// goka's own LevelDB storage pays a journal write(2) for every value and
// another for every offset; at notifyd's rates that was the largest cost of the
// pipeline (docs/PERFORMANCE.md). A crash loses at most the unflushed tail, and
// because the offset is in the same batch, goka replays exactly that tail from
// the table topic: the local state is a cache of the topic either way.
func BatchedLevelDB(dir string, flushEvery time.Duration) storage.Builder {
	return batchedLevelDB(dir, flushEvery, 0)
}

// viewWriteBuffer is the LevelDB write buffer (memtable) of a view's
// partition. goleveldb allocates its default, 4 MiB, up front for every
// partition of every table: with a dozen tables of 4 partitions that was
// most of the process's heap (docs/PERFORMANCE.md). Views are read far more
// than written (profiles, templates, keys...), so 1 MiB costs them nothing
// measurable; the groups' own tables, written on every notification, keep
// the default (1 MiB there cost 8 % of bulk throughput).
const viewWriteBuffer = 1 << 20

func batchedLevelDB(dir string, flushEvery time.Duration, writeBuffer int) storage.Builder {
	return func(topic string, partition int32) (storage.Storage, error) {
		path := filepath.Join(dir, fmt.Sprintf("%s.%d", topic, partition))
		// The state is personal data: the owner's alone (LevelDB would make
		// the directory 0755; its files follow the process's umask).
		if err := os.MkdirAll(path, 0o700); err != nil {
			return nil, fmt.Errorf("leveldb %s: %w", path, err)
		}
		// Most reads are of keys that do not exist yet (a new eventId, a new
		// notification); the bloom filter answers those without touching every level.
		db, err := leveldb.OpenFile(path, &opt.Options{Filter: filter.NewBloomFilter(10), WriteBuffer: writeBuffer})
		if err != nil {
			return nil, fmt.Errorf("open leveldb %s: %w", path, err)
		}
		return newBatchedStorage(db, flushEvery), nil
	}
}

func newBatchedStorage(db *leveldb.DB, flushEvery time.Duration) *batchedStorage {
	return &batchedStorage{db: db, every: flushEvery, pending: map[string]pendingWrite{}, flushed: map[string]pendingWrite{},
		stop: make(chan struct{}), stopped: make(chan struct{})}
}

type pendingWrite struct {
	value   []byte
	deleted bool
}

type batchedStorage struct {
	db    *leveldb.DB
	every time.Duration

	// flushMu lets one flush run at a time. It is not mu: LevelDB's write
	// can take hundreds of milliseconds when its compactions fall behind
	// (its level-0 slowdown and pause), and the partition's reads and writes
	// must not wait for it (docs/PERFORMANCE.md, issue 17, ninth sitting).
	flushMu sync.Mutex
	mu      sync.RWMutex
	pending map[string]pendingWrite
	// writing holds what the flush in progress writes (nil when none):
	// readable until LevelDB has it.
	writing map[string]pendingWrite
	// flushed keeps the previous flush's writes readable from memory: the
	// events of one notification arrive within milliseconds of each other.
	flushed map[string]pendingWrite
	// spare is an emptied map, the next pending.
	spare       map[string]pendingWrite
	offset      atomic.Int64
	savedOffset int64 // guarded by flushMu
	// batch is reused by every flush (guarded by flushMu): a new one grew
	// from nothing each time, 6 % of the bytes the pipeline allocated in bulk.
	batch leveldb.Batch

	stop, stopped chan struct{}
	closeOnce     sync.Once
}

func (s *batchedStorage) Open() error {
	go func() {
		defer close(s.stopped)
		t := time.NewTicker(s.every)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				_ = s.Flush()
			}
		}
	}()
	return nil
}

func (s *batchedStorage) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.stopped
		err = errors.Join(s.Flush(), s.db.Close())
	})
	return err
}

// Flush writes the pending changes and the offset as one batch.
func (s *batchedStorage) Flush() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	return s.flushLocked()
}

// flushLocked (flushMu held) takes the pending changes aside and writes them
// without holding mu: Get, Set and Delete go on meanwhile, reading what is
// being written from memory.
func (s *batchedStorage) flushLocked() error {
	s.mu.Lock()
	off := s.offset.Load()
	if len(s.pending) == 0 && off == s.savedOffset {
		s.mu.Unlock()
		return nil
	}
	writing := s.pending
	s.writing = writing
	s.pending = s.spare
	if s.pending == nil {
		s.pending = map[string]pendingWrite{}
	}
	s.spare = nil
	s.mu.Unlock()

	b := &s.batch
	defer s.keepBatch()
	for k, w := range writing {
		if w.deleted {
			b.Delete([]byte(k))
		} else {
			b.Put([]byte(k), w.value)
		}
	}
	if off != 0 && off != s.savedOffset {
		b.Put([]byte(offsetKey), []byte(strconv.FormatInt(off, 10)))
	}
	err := s.db.Write(b, nil)

	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		// Not written: what was not changed since waits for the next flush.
		for k, w := range writing {
			if _, ok := s.pending[k]; !ok {
				s.pending[k] = w
			}
		}
		s.writing = nil
		return fmt.Errorf("leveldb batch: %w", err)
	}
	spare := s.flushed
	clear(spare)
	s.flushed, s.writing, s.spare = writing, nil, spare
	s.savedOffset = off
	return nil
}

// keepBatch empties the batch for the next flush, keeping its buffer unless
// a burst made it large (maxPending values): that one is left to the GC.
func (s *batchedStorage) keepBatch() {
	if cap(s.batch.Dump()) > maxKeptBatch {
		s.batch = leveldb.Batch{}
		return
	}
	s.batch.Reset()
}

// maxKeptBatch is the largest batch buffer a storage keeps between flushes.
const maxKeptBatch = 1 << 20

func (s *batchedStorage) Has(key string) (bool, error) {
	v, err := s.Get(key)
	return v != nil, err
}

func (s *batchedStorage) Get(key string) ([]byte, error) {
	s.mu.RLock()
	w, ok := s.pending[key]
	if !ok {
		w, ok = s.writing[key]
	}
	if !ok {
		w, ok = s.flushed[key]
	}
	s.mu.RUnlock()
	if ok {
		if w.deleted {
			return nil, nil
		}
		return w.value, nil
	}
	v, err := s.db.Get([]byte(key), nil)
	if errors.Is(err, leveldb.ErrNotFound) {
		return nil, nil
	}
	return v, err
}

func (s *batchedStorage) Set(key string, value []byte) error {
	v := append([]byte(nil), value...) // goka may reuse the slice
	s.mu.Lock()
	s.pending[key] = pendingWrite{value: v}
	full := len(s.pending) >= maxPending
	s.mu.Unlock()
	if full {
		return s.Flush()
	}
	return nil
}

func (s *batchedStorage) Delete(key string) error {
	s.mu.Lock()
	s.pending[key] = pendingWrite{deleted: true}
	full := len(s.pending) >= maxPending
	s.mu.Unlock()
	if full {
		return s.Flush()
	}
	return nil
}

func (s *batchedStorage) GetOffset(def int64) (int64, error) {
	if off := s.offset.Load(); off != 0 {
		return off, nil
	}
	v, err := s.db.Get([]byte(offsetKey), nil)
	if errors.Is(err, leveldb.ErrNotFound) {
		return def, nil
	}
	if err != nil {
		return 0, err
	}
	off, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("decode offset: %w", err)
	}
	return off, nil
}

func (s *batchedStorage) SetOffset(offset int64) error {
	s.offset.Store(offset)
	return nil
}

func (s *batchedStorage) MarkRecovered() error { return s.Flush() }

func (s *batchedStorage) Iterator() (storage.Iterator, error) {
	return s.IteratorWithRange(nil, nil)
}

// IteratorWithRange flushes first, so the iteration sees every write made before it.
func (s *batchedStorage) IteratorWithRange(start, limit []byte) (storage.Iterator, error) {
	if err := s.Flush(); err != nil {
		return nil, err
	}
	var r *util.Range
	if start != nil || limit != nil {
		r = &util.Range{Start: start, Limit: limit}
	}
	return &skipOffsetIter{it: s.db.NewIterator(r, nil)}, nil
}

type skipOffsetIter struct{ it ldbiter.Iterator }

func (i *skipOffsetIter) Next() bool {
	for i.it.Next() {
		if string(i.it.Key()) != offsetKey {
			return true
		}
	}
	return false
}
func (i *skipOffsetIter) Err() error             { return i.it.Error() }
func (i *skipOffsetIter) Key() []byte            { return i.it.Key() }
func (i *skipOffsetIter) Value() ([]byte, error) { return i.it.Value(), nil }
func (i *skipOffsetIter) Release()               { i.it.Release() }
func (i *skipOffsetIter) Seek(key []byte) bool {
	if !i.it.Seek(key) {
		return false
	}
	if string(i.it.Key()) == offsetKey {
		return i.Next()
	}
	return true
}
