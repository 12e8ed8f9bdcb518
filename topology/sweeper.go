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
// write its own table, so every Every the sweeper walks the group-table
// partitions this process owns (Tables) and, for each entry Due says is due,
// produces a command keyed by the entry's key to Topic, one of the group's
// inputs. The group re-checks and acts. Because only owned partitions are
// walked, each entry is swept by exactly one instance, whatever the number of
// instances. Commands are idempotent; a key is not sent again within Every*10
// while the group catches up.
type Sweeper struct {
	Name     string
	Tables   *Tables
	Group    goka.Group // whose table is swept
	Producer *kgo.Client
	Topic    goka.Stream
	Every    time.Duration
	// Range bounds the iteration ("" = unbounded), letting time-ordered keys
	// stop at the first entry not yet due.
	Range func(now time.Time) (start, limit string)
	Due   func(key string, value []byte, now time.Time) bool
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

// Sweep produces the commands for every due entry of the owned partitions,
// waits until they are written, and returns how many it sent.
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
	n := 0
	err := s.Tables.Each(string(goka.GroupTable(s.Group)), start, limit, func(_ int32, key string, v []byte) bool {
		if _, recent := s.sent[key]; recent || !s.Due(key, v, now) {
			return true
		}
		// Keyed like the entry, the command reaches the partition it lives on.
		s.Producer.Produce(ctx, &kgo.Record{Topic: string(s.Topic), Key: []byte(key), Value: []byte{}}, nil)
		s.sent[key] = now
		n++
		return ctx.Err() == nil
	})
	if err != nil {
		return n, err
	}
	return n, s.Producer.Flush(ctx)
}

// DedupSweeper expires dedup entries past the window.
func DedupSweeper(tables *Tables, producer *kgo.Client, window, every time.Duration, now func() time.Time, log *slog.Logger) *Sweeper {
	return &Sweeper{Name: "dedup", Tables: tables, Group: DedupGroup, Producer: producer, Topic: DedupExpire,
		Every: every, Now: now, Log: log,
		Due: func(_ string, v []byte, now time.Time) bool {
			entry, err := schemas.DedupEntryCodec.Decode(v)
			return err == nil && processors.DedupExpired(entry, now, window)
		}}
}

// SchedulerSweeper releases scheduled notifications whose time has come and,
// a grace period after their release, has the group delete them; the table's
// keys start with the due time, so only the due range is read.
func SchedulerSweeper(tables *Tables, producer *kgo.Client, every, grace time.Duration, now func() time.Time, log *slog.Logger) *Sweeper {
	return &Sweeper{Name: "scheduler", Tables: tables, Group: SchedulerGroup, Producer: producer, Topic: SchedulerDue,
		Every: every, Now: now, Log: log,
		Range: func(now time.Time) (string, string) { return "", processors.ScheduleKey(now.UnixMilli()+1, "") },
		Due: func(_ string, v []byte, now time.Time) bool {
			e, err := decodeScheduled(v)
			if err != nil {
				return false
			}
			return e.ReleasedBy == "" || now.Sub(time.UnixMilli(e.ReleasedAt)) >= grace
		}}
}
