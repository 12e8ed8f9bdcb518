package api

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

// The two-person rule is about people, and the API sees keys. Whoever mints
// a key is shown its secret, and so is whoever rotates one; whoever holds a
// key may mint keys from it and keep them. So the key that created a
// campaign, every key minted from it (transitively), every key it was
// minted from (transitively), and the rotations of all of these (a
// rotation's successor and predecessor are one principal) are one lineage:
// none of them may approve or reject the campaign. Keys minted by a common
// ancestor but not from each other (siblings) are distinct principals.
// Configured keys, config:<name>, are minted by nobody: each is the root of
// its own lineage.

// keyGraph holds the mint and rotation relations of a set of key records.
// A node is a key id; a configured key's "config:<name>" appears only as a
// creator.
type keyGraph struct {
	minted   map[string][]string // id → keys it minted, or rotated into (their CreatedBy)
	mintedBy map[string][]string // id → the key that minted it (CreatedBy)
	rotation map[string][]string // id → its predecessor and successor (RotatedTo, Replaces)
}

func newKeyGraph(keys []*schemas.APIKey) *keyGraph {
	g := &keyGraph{minted: map[string][]string{}, mintedBy: map[string][]string{}, rotation: map[string][]string{}}
	for _, k := range keys {
		if k == nil || k.ID == "" {
			continue
		}
		if k.CreatedBy != "" && k.CreatedBy != k.ID {
			g.minted[k.CreatedBy] = append(g.minted[k.CreatedBy], k.ID)
			g.mintedBy[k.ID] = append(g.mintedBy[k.ID], k.CreatedBy)
		}
		// Either side of a rotation links the two: the successor names its
		// predecessor in the record that creates it (v2), the predecessor
		// names its successor once retired (v1 records only have this).
		for _, other := range []string{k.RotatedTo, k.Replaces} {
			if other != "" && other != k.ID {
				g.rotation[k.ID] = append(g.rotation[k.ID], other)
				g.rotation[other] = append(g.rotation[other], k.ID)
			}
		}
	}
	return g
}

// lineage is every id that shares id's lineage, id included: the keys it
// was minted from and the keys minted from it, each step followed through
// rotations. Siblings are not reached: the walk up never turns down.
func (g *keyGraph) lineage(id string) map[string]bool {
	out := g.walk(id, g.minted)
	for k := range g.walk(id, g.mintedBy) {
		out[k] = true
	}
	return out
}

// walk is every id reachable from id by step and rotation edges. Each id is
// queued once, so the work is linear in the records whatever cycles or
// chains they hold (a key that rotates its own creator makes a cycle).
func (g *keyGraph) walk(id string, step map[string][]string) map[string]bool {
	seen := map[string]bool{id: true}
	for queue := []string{id}; len(queue) > 0; {
		cur := queue[0]
		queue = queue[1:]
		for _, edges := range [2][]string{g.rotation[cur], step[cur]} {
			for _, next := range edges {
				if !seen[next] {
					seen[next] = true
					queue = append(queue, next)
				}
			}
		}
	}
	return seen
}

func configKeyID(id string) bool { return strings.HasPrefix(id, "config:") }

// checkDecider refuses (403) an approval or a rejection of c by a key of
// the lineage of the key that created it, read from this instance's view of
// every tenant's keys (a revoked or expired creator is still there). The
// campaign group compares key ids only: it has no view of the keys.
func (s *Server) checkDecider(op string, p *Principal, c *schemas.Campaign) *Error {
	if op != processors.OpApprove && op != processors.OpReject {
		return nil
	}
	// The creator chose the audience; whoever pinned the template version
	// (the creator, or a key that re-pinned it) chose the content. Neither
	// lineage decides.
	deciders := []struct{ id, role string }{{c.CreatedBy, "created"}}
	if c.TemplateSetBy != "" && c.TemplateSetBy != c.CreatedBy {
		deciders = append(deciders, struct{ id, role string }{c.TemplateSetBy, "chose the template version of"})
	}
	for _, d := range deciders {
		if d.id == "" || d.id == p.KeyID {
			return forbidden("%v", processors.ErrCreatorCannotApprove)
		}
	}
	if s.ManagedKeys == nil {
		// No managed key can act here; two configured keys are two roots.
		for _, d := range deciders {
			if !configKeyID(d.id) || !configKeyID(p.KeyID) {
				return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable",
					Message: "this instance does not read the managed keys: it cannot check the approver against the campaign's creator"}
			}
		}
		return nil
	}
	keys, err := s.allKeys()
	if err != nil {
		return err
	}
	graph := newKeyGraph(keys)
	for _, d := range deciders {
		if !configKeyID(d.id) && !slices.ContainsFunc(keys, func(k *schemas.APIKey) bool { return k.ID == d.id }) {
			// Fail closed: without the key's record its lineage is unknown.
			return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable",
				Message: fmt.Sprintf("key %s, which %s campaign %q, is not yet known to this instance; retry", d.id, d.role, c.ID)}
		}
		if graph.lineage(d.id)[p.KeyID] {
			return forbidden("this key (%s) and key %s, which %s campaign %q, are one lineage: one was minted from the other, "+
				"directly or through other keys, or is a rotation of it; a campaign is approved or rejected by a key of another lineage",
				p.KeyID, d.id, d.role, c.ID)
		}
	}
	return nil
}
