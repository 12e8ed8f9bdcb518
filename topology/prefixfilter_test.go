package topology

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func ownerOf(key string) string { return key[:strings.LastIndexByte(key, '/')+1] }

// The filter never says "no" for a prefix its storages hold: keys set while it
// grows past its capacity (rebuilt from the storages), and keys a restarted
// process finds in LevelDB without goka setting them again. It says "no" for
// nearly every prefix they do not hold.
func TestPrefixFilterHasNoFalseNegatives(t *testing.T) {
	dir := t.TempDir()
	const owners, perOwner = 3000, 2
	open := func(f *PrefixFilter) []*filteredStorage {
		var out []*filteredStorage
		build := f.Wrap(BatchedLevelDB(dir, 20*time.Millisecond))
		for p := int32(0); p < 3; p++ {
			st, err := build("notify.datakeys", p)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Open(); err != nil {
				t.Fatal(err)
			}
			out = append(out, st.(*filteredStorage))
		}
		return out
	}
	closeAll := func(sts []*filteredStorage) {
		for _, st := range sts {
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func(f *PrefixFilter, when string) {
		t.Helper()
		for i := 0; i < owners; i++ {
			if p := fmt.Sprintf("subject/acme|user-%d/", i); !f.MayHave(p) {
				t.Fatalf("%s: %s is held but the filter says no", when, p)
			}
		}
		through := 0
		for i := 0; i < 10000; i++ {
			if f.MayHave(fmt.Sprintf("subject/acme|absent-%d/", i)) {
				through++
			}
		}
		if through > 300 {
			t.Fatalf("%s: %d of 10000 absent prefixes let through, want about 1 %%", when, through)
		}
	}

	f := NewPrefixFilter(ownerOf, 1024) // grows twice on the way
	sts := open(f)
	for i := 0; i < owners; i++ {
		for j := 0; j < perOwner; j++ {
			key := fmt.Sprintf("subject/acme|user-%d/%016x", i, j)
			if err := sts[i%len(sts)].Set(key, []byte("k")); err != nil {
				t.Fatal(err)
			}
		}
	}
	if f.capacity < owners*perOwner {
		t.Fatalf("capacity %d after %d keys: the filter did not grow", f.capacity, owners*perOwner)
	}
	check(f, "after the writes")
	closeAll(sts)

	// A restart: the keys are in LevelDB, goka resumes after them.
	g := NewPrefixFilter(ownerOf, 1024)
	sts = open(g)
	defer closeAll(sts)
	check(g, "after a restart")
}
