package topology

import (
	"fmt"
	"sort"
	"sync"
	"time"
)

// Watchdog knows since when each record in work has been in work, per
// consumer and partition. Readiness fails while one has been stuck longer than
// a bound: budgets keep a single record from running away, and this is the
// alarm for whatever they do not cover (a hung broker call, a deadlock).
type Watchdog struct {
	mu   sync.Mutex
	seq  uint64
	busy map[uint64]inWork
}

// inWork names where a record is in work; the name is formatted only when
// Stuck reports it (Begin runs for every record of every group).
type inWork struct {
	consumer  string
	partition int32
	since     time.Time
}

// NewWatchdog returns a watchdog with nothing in work.
func NewWatchdog() *Watchdog { return &Watchdog{busy: map[uint64]inWork{}} }

// Begin marks a record of consumer/partition in work; the returned func marks
// it done. A nil Watchdog does nothing.
func (w *Watchdog) Begin(consumer string, partition int32) func() {
	if w == nil {
		return func() {}
	}
	w.mu.Lock()
	w.seq++
	id := w.seq
	w.busy[id] = inWork{consumer: consumer, partition: partition, since: time.Now()}
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		delete(w.busy, id)
		w.mu.Unlock()
	}
}

// Stuck lists "consumer/partition for 12s" for every partition with a record in
// work longer than after (the oldest one counts).
func (w *Watchdog) Stuck(after time.Duration) []string {
	if w == nil {
		return nil
	}
	now := time.Now()
	w.mu.Lock()
	oldest := map[string]time.Duration{}
	for _, b := range w.busy {
		d := now.Sub(b.since)
		if d <= after {
			continue
		}
		if where := fmt.Sprintf("%s/%d", b.consumer, b.partition); d > oldest[where] {
			oldest[where] = d
		}
	}
	w.mu.Unlock()
	out := make([]string, 0, len(oldest))
	for where, d := range oldest {
		out = append(out, fmt.Sprintf("%s for %s", where, d.Round(time.Second)))
	}
	sort.Strings(out)
	return out
}
