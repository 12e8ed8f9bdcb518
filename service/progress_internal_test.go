package service

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/notifyd/notifyd/processors"
)

// A campaign's progress is counted once for concurrent readers and reused
// for twice as long as the count took; a later read counts again.
func TestProgressCacheSharesOneScan(t *testing.T) {
	var mu sync.Mutex
	clock := time.Unix(1_000_000, 0)
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }
	var scans atomic.Int64
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	c := newProgressCache(func(ctx context.Context, prefix string) (processors.Progress, error) {
		n := scans.Add(1)
		started <- struct{}{}
		<-release
		advance(100 * time.Millisecond) // the scan takes 100 ms
		return processors.Progress{Targeted: n}, nil
	}, now)
	var wg sync.WaitGroup
	got := make([]processors.Progress, 5)
	ctx, cancel := context.WithCancel(context.Background())
	for i := range got {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p, err := c.get(ctx, "c:spring:")
			if err != nil {
				t.Error(err)
			}
			got[i] = p
		}(i)
	}
	<-started
	cancel() // a reader that leaves does not stop the scan others wait for
	// Give the other readers time to join the scan in flight.
	for i := 0; i < 50; i++ {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if scans.Load() != 1 {
		t.Fatalf("%d scans for concurrent readers, want 1", scans.Load())
	}
	for _, p := range got {
		if p.Targeted != 1 {
			t.Fatalf("reader got %+v", p)
		}
	}
	ctx = context.Background()
	advance(150 * time.Millisecond) // within 2× the scan's 100 ms
	if p, _ := c.get(ctx, "c:spring:"); p.Targeted != 1 || scans.Load() != 1 {
		t.Fatalf("within the reuse window: %+v after %d scans", p, scans.Load())
	}
	if p, _ := c.get(ctx, "c:other:"); p.Targeted != 2 {
		t.Fatalf("another campaign shares a count: %+v", p)
	}
	<-started
	advance(100 * time.Millisecond)
	if p, _ := c.get(ctx, "c:spring:"); p.Targeted != 3 {
		t.Fatalf("after the reuse window: %+v, want a new count", p)
	}
	<-started
}
