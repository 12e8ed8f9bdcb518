package topology

import (
	"context"
	"log/slog"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

// DedupSweeper bounds the dedup table: every Every it walks a view of the table
// and, for each entry past the window, sends an expiry command to
// notify.dedup.expire. The dedup group deletes the entry (it owns the table;
// nothing else may write it), after checking again that it is still old.
type DedupSweeper struct {
	View     *goka.View
	Producer *kgo.Client
	Window   time.Duration
	Every    time.Duration
	Now      func() time.Time
	Log      *slog.Logger
}

// Run sweeps until ctx ends.
func (s *DedupSweeper) Run(ctx context.Context) error {
	t := time.NewTicker(s.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if n, err := s.Sweep(ctx); err != nil {
				s.Log.Warn("dedup sweep", "err", err)
			} else if n > 0 {
				s.Log.Debug("dedup sweep", "expired", n)
			}
		}
	}
}

// Sweep sends expiry commands for every entry past the window and waits until
// they are produced. It returns how many it sent.
func (s *DedupSweeper) Sweep(ctx context.Context) (int, error) {
	now := time.Now()
	if s.Now != nil {
		now = s.Now()
	}
	it, err := s.View.Iterator()
	if err != nil {
		return 0, err
	}
	defer it.Release()
	n := 0
	for it.Next() {
		v, err := it.Value()
		if err != nil {
			continue
		}
		entry, _ := v.(*schemas.DedupEntry)
		if entry == nil || !processors.DedupExpired(entry, now, s.Window) {
			continue
		}
		b, err := schemas.DedupEntryCodec.Encode(entry)
		if err != nil {
			return n, err
		}
		s.Producer.Produce(ctx, &kgo.Record{Topic: string(DedupExpire), Key: []byte(it.Key()), Value: b}, nil)
		n++
	}
	return n, s.Producer.Flush(ctx)
}

// DedupTableCodec is the codec of the dedup group table, for views of it.
func DedupTableCodec() goka.Codec { return dedupCodec }

// LifecycleTableCodec is the codec of the status group table, for views of it.
func LifecycleTableCodec() goka.Codec { return lifecycleCodec }

// ProfileTableCodec and TemplateTableCodec read the compacted input tables leniently.
func ProfileTableCodec() goka.Codec  { return profileTable }
func TemplateTableCodec() goka.Codec { return templateTable }
