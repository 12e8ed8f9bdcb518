package api

import (
	"fmt"
	"maps"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

// mint is a key record id minted by createdBy.
func mint(id, createdBy string) *schemas.APIKey {
	return &schemas.APIKey{ID: id, CreatedBy: createdBy}
}

// rotate makes succ the successor of pred, as POST /v1/keys/{id}/rotate by
// rotator writes it: the successor names its predecessor (v2), the
// predecessor its successor.
func rotate(pred *schemas.APIKey, succ, rotator string) *schemas.APIKey {
	pred.RotatedTo = succ
	return &schemas.APIKey{ID: succ, CreatedBy: rotator, Replaces: pred.ID}
}

func lineageOf(keys []*schemas.APIKey, id string) []string {
	return slices.Sorted(maps.Keys(newKeyGraph(keys).lineage(id)))
}

// The lineage of a key: what it was minted from and what was minted from
// it, through rotations; never a sibling, a cousin, or another root.
func TestKeyLineage(t *testing.T) {
	root := "config:root"
	admin := mint("admin", root)
	boss := mint("boss", root) // a second admin minted by the root
	creator := mint("creator", "admin")
	child := mint("child", "creator")
	grandchild := mint("grandchild", "child")
	lead := mint("lead", "admin")          // a sibling of creator
	leadChild := mint("leadchild", "lead") // a nephew
	cousin := mint("cousin", "boss")
	keys := []*schemas.APIKey{admin, boss, creator, child, grandchild, lead, leadChild, cousin}
	// admin is rotated by the root, creator rotated by admin (each successor
	// minted by its rotator), child rotated by itself.
	keys = append(keys, rotate(admin, "admin2", root), rotate(creator, "creator2", "admin"), rotate(child, "child2", "child"))

	want := []string{"admin", "admin2", "child", "child2", root, "creator", "creator2", "grandchild"}
	if got := lineageOf(keys, "creator"); !slices.Equal(got, want) {
		t.Fatalf("lineage of creator %v, want %v", got, want)
	}
	// Symmetric: every member of the lineage has the creator in its own.
	for _, id := range want {
		if !newKeyGraph(keys).lineage(id)["creator"] {
			t.Errorf("creator is not in the lineage of %s", id)
		}
	}
	for _, id := range []string{"lead", "leadchild", "boss", "cousin", "config:other"} {
		if newKeyGraph(keys).lineage("creator")[id] || newKeyGraph(keys).lineage(id)["creator"] {
			t.Errorf("%s shares the creator's lineage", id)
		}
	}
	// The root's lineage is everything it minted.
	if got := lineageOf(keys, root); len(got) != len(keys)+1 {
		t.Errorf("root's lineage %v", got)
	}
	// A configured key nobody minted from is a lineage of its own.
	if got := lineageOf(keys, "config:other"); !slices.Equal(got, []string{"config:other"}) {
		t.Errorf("config:other's lineage %v", got)
	}
}

// A rotation links its two keys from either record alone: a v1 record has
// only the predecessor's rotatedTo, and a view may read the successor (which
// names what it replaces) before the retired predecessor.
func TestKeyLineageRotationFromEitherRecord(t *testing.T) {
	// The admin rotates the creator: the successor is minted by the admin,
	// so without the rotation link it would pass for a sibling.
	onlySuccessor := []*schemas.APIKey{mint("admin", "config:root"), mint("creator", "admin"),
		{ID: "creator2", CreatedBy: "admin", Replaces: "creator"}}
	onlyPredecessor := []*schemas.APIKey{mint("admin", "config:root"), {ID: "creator", CreatedBy: "admin", RotatedTo: "creator2"},
		mint("creator2", "admin")}
	unlinked := []*schemas.APIKey{mint("admin", "config:root"), mint("creator", "admin"), mint("creator2", "admin")}
	for name, keys := range map[string][]*schemas.APIKey{"successor's replaces": onlySuccessor, "predecessor's rotatedTo": onlyPredecessor} {
		if !newKeyGraph(keys).lineage("creator")["creator2"] {
			t.Errorf("%s: the rotation is not one lineage", name)
		}
	}
	if newKeyGraph(unlinked).lineage("creator")["creator2"] {
		t.Error("siblings are one lineage")
	}
}

// Whoever rotates a key learns the successor's secret, so the rotator is
// an ancestor of the principal it rotated. A key that rotates the key it
// was minted by closes a cycle of mints; a sibling that rotates a key's
// creator becomes that key's ancestor. Hostile records (a key minted by
// itself, two keys minting each other, rotations in a ring) end too.
func TestKeyLineageCycles(t *testing.T) {
	// x mints y (an admin too) and z; y rotates x into x2; admin mints s,
	// and s rotates admin into admin2.
	x := mint("x", "admin")
	admin := mint("admin", "config:root")
	keys := []*schemas.APIKey{admin, x, mint("y", "x"), mint("z", "x"), rotate(x, "x2", "y"), mint("w", "x2"),
		mint("s", "admin"), rotate(admin, "admin2", "s")}
	want := []string{"admin", "admin2", "config:root", "s", "x", "x2", "y", "z"}
	if got := lineageOf(keys, "z"); !slices.Equal(got, want) {
		t.Fatalf("lineage of z %v, want %v (w is z's sibling)", got, want)
	}
	if got := lineageOf(keys, "y"); !slices.Contains(got, "z") || !slices.Contains(got, "w") {
		t.Fatalf("lineage of y %v: y holds x2, which is x", got)
	}
	hostile := []*schemas.APIKey{
		mint("self", "self"),
		mint("a", "b"), mint("b", "a"),
		{ID: "r1", RotatedTo: "r2", Replaces: "r3"}, {ID: "r2", RotatedTo: "r3", Replaces: "r1"}, {ID: "r3", RotatedTo: "r1", Replaces: "r2", CreatedBy: "a"},
		nil, {ID: ""},
	}
	if got := lineageOf(hostile, "self"); !slices.Equal(got, []string{"self"}) {
		t.Errorf("self-minted: %v", got)
	}
	if got := lineageOf(hostile, "r1"); !slices.Equal(got, []string{"a", "b", "r1", "r2", "r3"}) {
		t.Errorf("ring: %v", got)
	}
}

// A chain of 20,000 keys, each minted by the one before and rotated, is
// walked once each way: both ends are one lineage, and a sibling of the
// last key's parent is not.
func TestKeyLineageLongChain(t *testing.T) {
	const n = 20_000
	keys := make([]*schemas.APIKey, 0, 2*n+1)
	prev := "config:root"
	for i := range n {
		k := mint(fmt.Sprintf("k%d", i), prev)
		keys = append(keys, k)
		prev = k.ID
		if i%2 == 1 {
			keys = append(keys, rotate(k, k.ID+"r", k.ID))
			prev = k.ID + "r"
		}
	}
	keys = append(keys, mint("aside", fmt.Sprintf("k%d", n-3)))
	start := time.Now()
	g := newKeyGraph(keys)
	last := g.lineage(fmt.Sprintf("k%d", n-1))
	first := g.lineage("k0")
	if !last["config:root"] || !last["k0"] || !first[fmt.Sprintf("k%d", n-1)] || last["aside"] || !first["aside"] {
		t.Fatalf("chain: last reaches root %v, k0 %v; first reaches the last %v; aside in last %v, in first %v",
			last["config:root"], last["k0"], first[fmt.Sprintf("k%d", n-1)], last["aside"], first["aside"])
	}
	t.Logf("%d keys: graph and two lineages in %v", len(keys), time.Since(start))
}

// An instance without the managed keys' view decides between two
// configured keys (two roots) and refuses to guess about a managed one.
func TestCheckDeciderWithoutManagedKeys(t *testing.T) {
	s := &Server{}
	approver := &Principal{KeyID: "config:lead", Name: "lead"}
	byConfig := &schemas.Campaign{ID: "c", CreatedBy: "config:marketing"}
	byManaged := &schemas.Campaign{ID: "c", CreatedBy: "0123456789abcdef"}
	if err := s.checkDecider(processors.OpApprove, approver, byConfig); err != nil {
		t.Fatalf("two configured keys: %v", err)
	}
	if err := s.checkDecider(processors.OpReject, approver, byManaged); err == nil || err.Status != http.StatusServiceUnavailable {
		t.Fatalf("a managed creator without the view: %v", err)
	}
	if err := s.checkDecider(processors.OpApprove, &Principal{KeyID: "config:marketing"}, byConfig); err == nil || err.Status != http.StatusForbidden {
		t.Fatalf("the creator: %v", err)
	}
	if err := s.checkDecider(processors.OpCancel, &Principal{KeyID: "config:marketing"}, byManaged); err != nil {
		t.Fatalf("a cancel is not an approval: %v", err)
	}
}
