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

// Sweeper gives a goka group a clock. goka has no timers, and only a group may
// write its own table, so every Every the sweeper walks a view of the table and,
// for each entry Due says is due, produces a command keyed by the entry's key to
// Topic, one of the group's inputs. The group re-checks and acts (DESIGN rule:
// only the owner writes a table). Commands are idempotent; a key is not sent
// again within Every*10 while the group catches up.
type Sweeper struct {
	Name     string
	View     *goka.View
	Producer *kgo.Client
	Topic    goka.Stream
	Every    time.Duration
	// Range bounds the iteration ("" = unbounded), letting time-ordered keys
	// stop at the first entry not yet due.
	Range func(now time.Time) (start, limit string)
	Due   func(key string, value any, now time.Time) bool
	Now   func() time.Time
	Log   *slog.Logger

	sent map[string]time.Time
}

// Run sweeps until ctx ends.
func (s *Sweeper) Run(ctx context.Context) error {
	t := time.NewTicker(s.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if n, err := s.Sweep(ctx); err != nil {
				s.Log.Warn("sweep", "sweeper", s.Name, "err", err)
			} else if n > 0 {
				s.Log.Debug("sweep", "sweeper", s.Name, "commands", n)
			}
		}
	}
}

// Sweep produces the commands for every due entry, waits until they are
// written, and returns how many it sent.
func (s *Sweeper) Sweep(ctx context.Context) (int, error) {
	now := time.Now()
	if s.Now != nil {
		now = s.Now()
	}
	if s.sent == nil {
		s.sent = map[string]time.Time{}
	}
	for k, at := range s.sent {
		if now.Sub(at) > 10*s.Every {
			delete(s.sent, k)
		}
	}
	var start, limit string
	if s.Range != nil {
		start, limit = s.Range(now)
	}
	var it goka.Iterator
	var err error
	if start == "" && limit == "" {
		it, err = s.View.Iterator()
	} else {
		it, err = s.View.IteratorWithRange(start, limit)
	}
	if err != nil {
		return 0, err
	}
	defer it.Release()
	n := 0
	for it.Next() {
		v, err := it.Value()
		if err != nil || v == nil {
			continue
		}
		key := it.Key()
		if _, recent := s.sent[key]; recent || !s.Due(key, v, now) {
			continue
		}
		s.Producer.Produce(ctx, &kgo.Record{Topic: string(s.Topic), Key: []byte(key), Value: []byte{}}, nil)
		s.sent[key] = now
		n++
	}
	return n, s.Producer.Flush(ctx)
}

// DedupSweeper expires dedup entries past the window.
func DedupSweeper(view *goka.View, producer *kgo.Client, window, every time.Duration, now func() time.Time, log *slog.Logger) *Sweeper {
	return &Sweeper{Name: "dedup", View: view, Producer: producer, Topic: DedupExpire, Every: every, Now: now, Log: log,
		Due: func(_ string, v any, now time.Time) bool {
			entry, _ := v.(*schemas.DedupEntry)
			return entry != nil && processors.DedupExpired(entry, now, window)
		}}
}

// SchedulerSweeper releases scheduled notifications whose time has come; the
// table's keys start with the due time, so only the due range is read.
func SchedulerSweeper(view *goka.View, producer *kgo.Client, every time.Duration, now func() time.Time, log *slog.Logger) *Sweeper {
	return &Sweeper{Name: "scheduler", View: view, Producer: producer, Topic: SchedulerDue, Every: every, Now: now, Log: log,
		Range: func(now time.Time) (string, string) { return "", processors.ScheduleKey(now.UnixMilli()+1, "") },
		Due:   func(string, any, time.Time) bool { return true }}
}

// DedupTableCodec is the codec of the dedup group table, for views of it.
func DedupTableCodec() goka.Codec { return dedupCodec }

// ScheduleTableCodec is the codec of the scheduler group table, for views of it.
func ScheduleTableCodec() goka.Codec { return notifCodec }

// LifecycleTableCodec is the codec of the status group table, for views of it.
func LifecycleTableCodec() goka.Codec { return lifecycleCodec }

// ProfileTableCodec and TemplateTableCodec read the compacted input tables leniently.
func ProfileTableCodec() goka.Codec  { return profileTable }
func TemplateTableCodec() goka.Codec { return templateTable }
