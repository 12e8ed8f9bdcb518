package topology

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/syndtr/goleveldb/leveldb"
	lstorage "github.com/syndtr/goleveldb/leveldb/storage"
)

func TestBatchedLevelDBReadsPendingWritesAndPersistsOnFlush(t *testing.T) {
	dir := t.TempDir()
	open := func() *batchedStorage {
		st, err := BatchedLevelDB(dir, time.Hour)("tbl", 0) // flush only when asked
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Open(); err != nil {
			t.Fatal(err)
		}
		return st.(*batchedStorage)
	}
	s := open()
	if off, _ := s.GetOffset(-2); off != -2 {
		t.Fatalf("fresh offset %d, want the default", off)
	}
	buf := []byte("v1")
	_ = s.Set("a", buf)
	buf[0] = 'X' // the caller reusing its slice must not change what was stored
	_ = s.Set("b", []byte("v2"))
	_ = s.Delete("b")
	_ = s.SetOffset(41)
	if v, _ := s.Get("a"); string(v) != "v1" {
		t.Fatalf("pending read %q", v)
	}
	if ok, _ := s.Has("b"); ok {
		t.Fatal("deleted key still readable")
	}
	// Iteration flushes first and skips the offset key.
	it, err := s.Iterator()
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for it.Next() {
		keys = append(keys, string(it.Key()))
	}
	it.Release()
	if len(keys) != 1 || keys[0] != "a" {
		t.Fatalf("iterated %v", keys)
	}
	_ = s.Set("c", []byte("v3"))
	_ = s.SetOffset(42)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open()
	defer s.Close()
	if v, _ := s.Get("c"); string(v) != "v3" {
		t.Fatalf("write lost by Close: %q", v)
	}
	if off, _ := s.GetOffset(-2); off != 42 {
		t.Fatalf("offset after reopen %d, want 42", off)
	}
}

// Without a flush nothing reaches disk, and the offset stays with the data it
// covers: a crash replays from the last flushed offset.
func TestBatchedLevelDBOffsetTravelsWithItsData(t *testing.T) {
	dir := t.TempDir()
	st, _ := BatchedLevelDB(dir, time.Hour)("tbl", 1)
	s := st.(*batchedStorage)
	_ = s.Open()
	_ = s.Set("k", []byte("flushed"))
	_ = s.SetOffset(10)
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = s.Set("k", []byte("lost"))
	_ = s.SetOffset(11)
	// Simulate a crash: close LevelDB without flushing.
	close(s.stop)
	<-s.stopped
	_ = s.db.Close()

	st2, _ := BatchedLevelDB(dir, time.Hour)("tbl", 1)
	s2 := st2.(*batchedStorage)
	defer s2.db.Close()
	if v, _ := s2.Get("k"); string(v) != "flushed" {
		t.Fatalf("value %q", v)
	}
	if off, _ := s2.GetOffset(-2); off != 10 {
		t.Fatalf("offset %d, want 10 (the tail is replayed from the topic)", off)
	}
}

// Flushes reuse one batch: what a flush wrote is not what the next one writes
// again, and the buffer of a burst is not kept.
func TestBatchedLevelDBFlushesReuseTheirBatch(t *testing.T) {
	dir := t.TempDir()
	st, err := BatchedLevelDB(dir, time.Hour)("tbl", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Open(); err != nil {
		t.Fatal(err)
	}
	s := st.(*batchedStorage)
	_ = s.Set("a", []byte("first"))
	_ = s.Set("b", []byte("first"))
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if s.batch.Len() != 0 || cap(s.batch.Dump()) == 0 {
		t.Fatalf("after a flush the batch holds %d records in a buffer of %d bytes, want it empty and kept", s.batch.Len(), cap(s.batch.Dump()))
	}
	_ = s.Set("b", []byte("second"))
	_ = s.Delete("a")
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 64<<10)
	for i := range 2 * maxKeptBatch / len(big) {
		_ = s.Set(string(rune('c'+i)), big)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if c := cap(s.batch.Dump()); c > maxKeptBatch {
		t.Fatalf("a burst's batch of %d bytes was kept, at most %d", c, maxKeptBatch)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	st, err = BatchedLevelDB(dir, time.Hour)("tbl", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Open(); err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if v, _ := st.Get("a"); v != nil {
		t.Fatalf("a deleted in the second flush reads %q", v)
	}
	if v, _ := st.Get("b"); string(v) != "second" {
		t.Fatalf("b reads %q, want the second flush's", v)
	}
	if v, _ := st.Get("d"); len(v) != len(big) {
		t.Fatalf("d of the burst reads %d bytes, want %d", len(v), len(big))
	}
}

// BenchmarkBatchedLevelDBFlush: a flush of 200 values of 600 bytes (20 ms of
// a status partition in bulk).
func BenchmarkBatchedLevelDBFlush(b *testing.B) {
	st, err := BatchedLevelDB(b.TempDir(), time.Hour)("tbl", 0)
	if err != nil {
		b.Fatal(err)
	}
	if err := st.Open(); err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	s := st.(*batchedStorage)
	v := make([]byte, 600)
	keys := make([]string, 200)
	for i := range keys {
		keys[i] = strconv.Itoa(i)
	}
	b.ReportAllocs()
	for b.Loop() {
		for _, k := range keys {
			_ = s.Set(k, v)
		}
		if err := s.Flush(); err != nil {
			b.Fatal(err)
		}
	}
}

// stallingStorage is LevelDB's file storage whose journal writes wait while
// stall is set: a disk whose writes block, as LevelDB's own are held when its
// compactions fall behind.
type stallingStorage struct {
	lstorage.Storage
	stall   atomic.Bool
	stalled chan struct{} // a write is waiting
	resume  chan struct{}
	fail    atomic.Bool
}

type stallingWriter struct {
	lstorage.Writer
	s *stallingStorage
}

func (s *stallingStorage) Create(fd lstorage.FileDesc) (lstorage.Writer, error) {
	w, err := s.Storage.Create(fd)
	if err != nil || fd.Type != lstorage.TypeJournal {
		return w, err
	}
	return stallingWriter{w, s}, nil
}

func (w stallingWriter) Write(p []byte) (int, error) {
	if w.s.fail.Load() {
		return 0, errors.New("disk failed")
	}
	if w.s.stall.Load() {
		w.s.stalled <- struct{}{}
		<-w.s.resume
	}
	return w.Writer.Write(p)
}

// A flush whose LevelDB write is held (a stalled disk, or LevelDB slowing
// its writers while compactions catch up) must not hold the partition:
// reads see what is being written, and writes go on into the next flush.
// Before, the flush held the storage's lock while it wrote, and a goka
// partition waited up to 800 ms behind it (docs/PERFORMANCE.md, issue 17,
// ninth sitting).
func TestBatchedLevelDBReadsAndWritesWhileAFlushIsHeld(t *testing.T) {
	fs, err := lstorage.OpenFile(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	st := &stallingStorage{Storage: fs, stalled: make(chan struct{}), resume: make(chan struct{})}
	db, err := leveldb.Open(st, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := newBatchedStorage(db, time.Hour) // flushes only when asked
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	var once sync.Once
	unstall := func() { once.Do(func() { close(st.resume) }) }
	t.Cleanup(unstall) // before Close, whatever failed: the held flush ends
	_ = s.Set("a", []byte("1"))
	_ = s.Set("gone", []byte("x"))
	_ = s.SetOffset(7)
	st.stall.Store(true)
	flushed := make(chan error, 1)
	go func() { flushed <- s.Flush() }()
	select {
	case <-st.stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("the flush never wrote")
	}
	st.stall.Store(false)
	// The flush is held inside LevelDB's write. The partition goes on.
	ops := make(chan error, 1)
	go func() {
		if v, _ := s.Get("a"); string(v) != "1" {
			ops <- fmt.Errorf("a being written reads %q", v)
			return
		}
		_ = s.Set("b", []byte("2"))
		_ = s.Delete("gone")
		_ = s.SetOffset(9)
		if v, _ := s.Get("b"); string(v) != "2" {
			ops <- fmt.Errorf("b reads %q", v)
			return
		}
		if ok, _ := s.Has("gone"); ok {
			ops <- errors.New("a key deleted during the flush still reads")
			return
		}
		ops <- nil
	}()
	select {
	case err := <-ops:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reads and writes waited for the held flush")
	}
	unstall()
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Get("a"); string(v) != "1" {
		t.Fatalf("a after the flush: %q", v)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	// Everything reached LevelDB, the later writes over the earlier.
	for k, want := range map[string]string{"a": "1", "b": "2", "__offset": "9"} {
		if v, err := db.Get([]byte(k), nil); err != nil || string(v) != want {
			t.Errorf("LevelDB %s = %q (%v), want %q", k, v, err, want)
		}
	}
	if _, err := db.Get([]byte("gone"), nil); !errors.Is(err, leveldb.ErrNotFound) {
		t.Errorf("a key deleted during the flush is in LevelDB: %v", err)
	}
}

// A flush LevelDB refuses loses nothing: its writes stay readable and go
// with the next flush, and a later write of the same key wins.
func TestBatchedLevelDBKeepsWhatAFailedFlushHeld(t *testing.T) {
	fs, err := lstorage.OpenFile(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	st := &stallingStorage{Storage: fs}
	db, err := leveldb.Open(st, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := newBatchedStorage(db, time.Hour)
	_ = s.Set("a", []byte("1"))
	_ = s.Set("b", []byte("1"))
	st.fail.Store(true)
	if err := s.Flush(); err == nil {
		t.Fatal("a failed write was not reported")
	}
	_ = s.Set("b", []byte("2"))
	for k, want := range map[string]string{"a": "1", "b": "2"} {
		if v, _ := s.Get(k); string(v) != want {
			t.Errorf("%s after a failed flush reads %q, want %q", k, v, want)
		}
	}
	s.mu.RLock()
	a, b := s.pending["a"], s.pending["b"]
	s.mu.RUnlock()
	if string(a.value) != "1" || string(b.value) != "2" {
		t.Fatalf("the next flush would write a=%q b=%q, want 1 and 2", a.value, b.value)
	}
}
