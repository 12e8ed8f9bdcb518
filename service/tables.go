package service

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/notifyd/notifyd/topology"
)

// syncedView is a view of a compacted table that can catch up on demand: Sync
// waits until the view has read everything written to the key's partition
// before the call. A write made through another API instance is then visible
// here (read-after-write across instances).
type syncedView struct {
	*goka.View
	adm        *kadm.Client
	topic      string
	partitions int
}

// Sync waits (until ctx ends) for the view to reach the current end of key's partition.
func (v *syncedView) Sync(ctx context.Context, key string) error {
	p := topology.PartitionFor(key, v.partitions)
	ends, err := v.adm.ListEndOffsets(ctx, v.topic)
	if err != nil {
		return err
	}
	end, ok := ends.Lookup(v.topic, p)
	if !ok || end.Err != nil {
		return fmt.Errorf("end offset of %s/%d: %v", v.topic, p, end.Err)
	}
	for {
		if applied(v.View.Stats(ctx), p) >= end.Offset-1 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// SyncAll waits (until ctx ends) for the view to reach the current end of
// every partition: what a scan of a key range needs.
func (v *syncedView) SyncAll(ctx context.Context) error {
	ends, err := v.adm.ListEndOffsets(ctx, v.topic)
	if err != nil {
		return err
	}
	for p := int32(0); p < int32(v.partitions); p++ {
		end, ok := ends.Lookup(v.topic, p)
		if !ok || end.Err != nil {
			return fmt.Errorf("end offset of %s/%d: %v", v.topic, p, end.Err)
		}
		for applied(v.View.Stats(ctx), p) < end.Offset-1 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	return nil
}

// applied is the offset of the last record a view partition has applied.
func applied(st *goka.ViewStats, p int32) int64 {
	ts := st.Partitions[p]
	if ts == nil {
		return -1
	}
	if ts.Input != nil && ts.Input.Count > 0 {
		return ts.Input.LastOffset
	}
	if ts.Recovery != nil && ts.Status == goka.PartitionRunning {
		// Recovered without reading anything since the start: up to date as of then.
		return ts.Recovery.Hwm - 1
	}
	return -1
}

// statusTable serves lifecycles: from this process's status processor for the
// partitions it owns, and from a view of the whole table for the others — a
// view started the first time another instance is found to own some.
type statusTable struct {
	proc  *goka.Processor // nil when this process runs no status group
	start func() (*goka.View, error)
	// sync, when set, makes a view of the table catch up on demand (Sync).
	sync func(*goka.View) *syncedView

	mu   sync.Mutex
	view *goka.View
	err  error
}

// ErrRecovering tells that the status view is not ready yet.
var ErrRecovering = errors.New("the status table is still being read; retry shortly")

func (t *statusTable) Get(key string) (any, error) {
	if t.proc != nil {
		if v, err := t.proc.Get(key); err == nil {
			return v, nil
		}
		// Not a partition this process owns (another instance runs it, or a
		// rebalance is in progress): read the view.
	}
	v, err := t.ensureView()
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for !v.Recovered() {
		if time.Now().After(deadline) {
			return nil, ErrRecovering
		}
		time.Sleep(20 * time.Millisecond)
	}
	return v.Get(key)
}

func (t *statusTable) ensureView() (*goka.View, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.view == nil && t.err == nil {
		t.view, t.err = t.start()
	}
	return t.view, t.err
}

// Sync waits until a read of key sees every write made to its partition of
// the table before the call: at once when this process's processor owns the
// partition, else once the view has caught up (read-after-write across
// instances). sync is nil for tables read without it.
func (t *statusTable) Sync(ctx context.Context, key string) error {
	if t.proc != nil {
		if _, err := t.proc.Get(key); err == nil {
			return nil
		}
	}
	if t.sync == nil {
		return nil
	}
	v, err := t.ensureView()
	if err != nil {
		return err
	}
	return t.sync(v).Sync(ctx, key)
}

// recovered tells whether the view, if one runs, has caught up.
func (t *statusTable) recovered() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.view == nil || t.view.Recovered()
}
