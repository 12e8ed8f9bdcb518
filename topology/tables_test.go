package topology

import (
	"strings"
	"testing"
	"time"

	"github.com/lovoo/goka/storage"
)

// Tables sees exactly the partitions goka has open: a partition closed (taken
// away by a rebalance) is no longer swept by this process.
func TestTablesIterateOnlyOpenPartitions(t *testing.T) {
	tables := NewTables()
	build := tables.Wrap(func(string, int32) (storage.Storage, error) { return storage.NewMemory(), nil })
	p0, _ := build("notify.scheduler-table", 0)
	p1, _ := build("notify.scheduler-table", 1)
	other, _ := build("notify.dedup-table", 0)
	for _, st := range []storage.Storage{p0, p1, other} {
		if err := st.Open(); err != nil {
			t.Fatal(err)
		}
	}
	_ = p0.Set("a", []byte("1"))
	_ = p0.Set("c", []byte("3"))
	_ = p1.Set("b", []byte("2"))
	_ = other.Set("x", []byte("9"))
	keys := func(start, limit string) string {
		var got []string
		if err := tables.Each("notify.scheduler-table", start, limit, func(_ int32, k string, _ []byte) bool {
			got = append(got, k)
			return true
		}); err != nil {
			t.Fatal(err)
		}
		return strings.Join(sorted(got), ",")
	}
	if got := keys("", ""); got != "a,b,c" {
		t.Fatalf("keys %s", got)
	}
	if got := keys("", "c"); got != "a,b" {
		t.Fatalf("keys before c: %s (the limit is exclusive)", got)
	}
	if err := p1.Close(); err != nil {
		t.Fatal(err)
	}
	if got := keys("", ""); got != "a,c" {
		t.Fatalf("after closing partition 1: %s", got)
	}
	if ps := tables.Partitions("notify.scheduler-table"); len(ps) != 1 || ps[0] != 0 {
		t.Fatalf("open partitions %v", ps)
	}
}

func sorted(ss []string) []string {
	for i := range ss {
		for j := i + 1; j < len(ss); j++ {
			if ss[j] < ss[i] {
				ss[i], ss[j] = ss[j], ss[i]
			}
		}
	}
	return ss
}

func TestWatchdogReportsRecordsInWorkTooLong(t *testing.T) {
	w := NewWatchdog()
	doneA := w.Begin("notify.deliver", 3)
	doneB := w.Begin("notify.deliver", 3) // another record of the same partition
	if s := w.Stuck(time.Hour); len(s) != 0 {
		t.Fatalf("stuck right away: %v", s)
	}
	time.Sleep(20 * time.Millisecond)
	if s := w.Stuck(10 * time.Millisecond); len(s) != 1 || !strings.HasPrefix(s[0], "notify.deliver/3 for") {
		t.Fatalf("stuck %v", s)
	}
	doneA()
	if s := w.Stuck(10 * time.Millisecond); len(s) != 1 {
		t.Fatalf("the other record is still in work: %v", s)
	}
	doneB()
	if s := w.Stuck(0); len(s) != 0 {
		t.Fatalf("nothing in work but stuck %v", s)
	}
	var nilDog *Watchdog
	nilDog.Begin("x", 0)()
	if nilDog.Stuck(0) != nil {
		t.Fatal("a nil watchdog reports")
	}
}

// BenchmarkWatchdogBegin is the watchdog's cost per record of every group.
func BenchmarkWatchdogBegin(b *testing.B) {
	w := NewWatchdog()
	b.ReportAllocs()
	for b.Loop() {
		w.Begin("notify.deliver", 3)()
	}
}
