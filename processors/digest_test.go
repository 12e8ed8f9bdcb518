package processors_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

// Bounds of digest.go that are not exported: the tests hold the code to them.
const (
	digestItemBytes = 256 << 10 // the data a digest lists, together
	digestEventIDs  = 1000      // the event ids a digest remembers
	keptReleased    = 3         // the released digests a user's state keeps
)

var digestNow = time.UnixMilli(1_800_000_000_000).UTC()

// event is a notification of the digest template "weekly" for ann.
func event(eventID, digestKey, data string) *schemas.Notification {
	return &schemas.Notification{ID: processors.TenantNotificationID("acme", eventID, "ann"), EventID: eventID,
		UserID: "ann", Tenant: "acme", Template: "weekly", DigestKey: digestKey, Data: data}
}

func openDigests(st *schemas.UserState) int {
	n := 0
	for _, d := range st.Digests {
		if d.DueAt != 0 {
			n++
		}
	}
	return n
}

func TestDigestOf(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tmpl   *schemas.Template
		window time.Duration
		max    int
		ok     bool
	}{
		{"no template", nil, 0, 0, false},
		{"no window", &schemas.Template{ID: "t", DigestMax: 10}, 0, 0, false},
		{"negative window", &schemas.Template{ID: "t", DigestWindowMs: -1}, 0, 0, false},
		{"default max", &schemas.Template{ID: "t", DigestWindowMs: 600_000}, 10 * time.Minute, processors.DefaultDigestMax, true},
		{"negative max", &schemas.Template{ID: "t", DigestWindowMs: 1000, DigestMax: -3}, time.Second, processors.DefaultDigestMax, true},
		{"own max", &schemas.Template{ID: "t", DigestWindowMs: 1000, DigestMax: 7}, time.Second, 7, true},
		{"max at the bound", &schemas.Template{ID: "t", DigestWindowMs: 1000, DigestMax: processors.MaxDigestMax}, time.Second, processors.MaxDigestMax, true},
		{"max above the bound", &schemas.Template{ID: "t", DigestWindowMs: 1000, DigestMax: 1 << 30}, time.Second, processors.MaxDigestMax, true},
		{"longest window", &schemas.Template{ID: "t", DigestWindowMs: processors.MaxDigestWindow.Milliseconds()}, processors.MaxDigestWindow, processors.DefaultDigestMax, true},
	} {
		window, max, ok := processors.DigestOf(tc.tmpl)
		if window != tc.window || max != tc.max || ok != tc.ok {
			t.Errorf("%s: %v, %d, %v; want %v, %d, %v", tc.name, window, max, ok, tc.window, tc.max, tc.ok)
		}
	}
}

func TestCollectDigestOpensThenAdds(t *testing.T) {
	st := &schemas.UserState{}
	window := 10 * time.Minute
	first := event("e1", "", `{"title":"one"}`)
	d, opened, err := processors.CollectDigest(st, first, window, 10, digestNow)
	if err != nil || !opened {
		t.Fatalf("first event: opened %v, %v", opened, err)
	}
	want := schemas.Digest{Key: "weekly/", Template: "weekly",
		NotificationID: processors.DigestNotificationID("acme", "weekly/", "e1", "ann"),
		FirstAt:        digestNow.UnixMilli(), DueAt: digestNow.Add(window).UnixMilli(), Count: 1,
		Items: []string{`{"title":"one"}`}, EventIDs: []string{"e1"}}
	if !reflect.DeepEqual(*d, want) || len(st.Digests) != 1 || !reflect.DeepEqual(st.Digests[0], want) {
		t.Fatalf("opened %+v\nwant   %+v", *d, want)
	}
	if d.NotificationID == first.ID || d.NotificationID == processors.DigestNotificationID("", "weekly/", "e1", "ann") {
		t.Fatalf("digest id %s is not its own, in its tenant", d.NotificationID)
	}

	// Later events of the key join it; the window stays the first's.
	later := digestNow.Add(9 * time.Minute)
	for i, data := range []string{`{"title":"two"}`, ""} {
		d, opened, err = processors.CollectDigest(st, event(fmt.Sprintf("e%d", i+2), "", data), window, 10, later)
		if err != nil || opened {
			t.Fatalf("event %d: opened %v, %v", i+2, opened, err)
		}
	}
	if len(st.Digests) != 1 || d != &st.Digests[0] {
		t.Fatalf("digests %+v", st.Digests)
	}
	if d.Count != 3 || d.FirstAt != want.FirstAt || d.DueAt != want.DueAt ||
		!slices.Equal(d.Items, []string{`{"title":"one"}`, `{"title":"two"}`, `{}`}) || !slices.Equal(d.EventIDs, []string{"e1", "e2", "e3"}) {
		t.Fatalf("after three events %+v", *d)
	}

	// A replayed event is not counted twice, nor is the digest's own notification.
	before := slices.Clone(st.Digests)
	for _, n := range []*schemas.Notification{event("e2", "", `{"title":"two"}`), event("e1", "", `{"title":"changed"}`),
		{ID: d.NotificationID, EventID: "digest:weekly/", UserID: "ann", Tenant: "acme", Template: "weekly"}} {
		got, opened, err := processors.CollectDigest(st, n, window, 10, later.Add(time.Second))
		if err != nil || opened || got != &st.Digests[0] {
			t.Fatalf("replay of %s: %+v, %v, %v", n.EventID, got, opened, err)
		}
	}
	if !reflect.DeepEqual(st.Digests, before) {
		t.Fatalf("a replay changed the digest: %+v", st.Digests)
	}
}

func TestCollectDigestKeepsKeysApart(t *testing.T) {
	st := &schemas.UserState{}
	a, _, _ := processors.CollectDigest(st, event("e1", "order-1", `{"a":1}`), time.Minute, 10, digestNow)
	aID := a.NotificationID
	b, opened, err := processors.CollectDigest(st, event("e2", "order-2", `{"b":1}`), time.Hour, 10, digestNow.Add(time.Second))
	if err != nil || !opened || b.Key != "weekly/order-2" || b.NotificationID == aID || b.DueAt != digestNow.Add(time.Second+time.Hour).UnixMilli() {
		t.Fatalf("second key: %+v, %v, %v", b, opened, err)
	}
	other := event("e3", "order-1", `{"c":1}`)
	other.Template = "daily"
	c, opened, err := processors.CollectDigest(st, other, time.Minute, 10, digestNow)
	if err != nil || !opened || c.Key != "daily/order-1" || c.Template != "daily" {
		t.Fatalf("other template: %+v, %v, %v", c, opened, err)
	}
	again, opened, err := processors.CollectDigest(st, event("e4", "order-1", `{"d":1}`), time.Minute, 10, digestNow)
	if err != nil || opened || again.NotificationID != aID || again.Count != 2 {
		t.Fatalf("back to the first key: %+v, %v, %v", again, opened, err)
	}
	if len(st.Digests) != 3 {
		t.Fatalf("digests %+v", st.Digests)
	}
}

func TestCollectDigestBoundsOpenDigests(t *testing.T) {
	st := &schemas.UserState{}
	for i := range processors.MaxOpenDigests {
		if _, opened, err := processors.CollectDigest(st, event(fmt.Sprintf("e%d", i), fmt.Sprintf("k%d", i), ""), time.Minute, 10, digestNow); err != nil || !opened {
			t.Fatalf("digest %d: %v, %v", i, opened, err)
		}
	}
	before := slices.Clone(st.Digests)
	d, opened, err := processors.CollectDigest(st, event("over", "one-too-many", ""), time.Minute, 10, digestNow)
	if err == nil || d != nil || opened {
		t.Fatalf("digest %d opened: %+v, %v", processors.MaxOpenDigests+1, d, err)
	}
	if !reflect.DeepEqual(st.Digests, before) {
		t.Fatal("a refused event changed the state")
	}
	// An open key still collects.
	if d, _, err := processors.CollectDigest(st, event("more", "k7", ""), time.Minute, 10, digestNow); err != nil || d.Count != 2 {
		t.Fatalf("open key at the bound: %+v, %v", d, err)
	}
	// A released digest is no longer open: its place is free.
	if processors.ReleaseDigest(st, st.Digests[0].NotificationID) == nil {
		t.Fatal("no digest released")
	}
	if _, opened, err := processors.CollectDigest(st, event("next", "one-too-many", ""), time.Minute, 10, digestNow); err != nil || !opened {
		t.Fatalf("after a release: %v, %v", opened, err)
	}
	if openDigests(st) != processors.MaxOpenDigests {
		t.Fatalf("%d open digests", openDigests(st))
	}
}

func TestCollectDigestBoundsItemsButCountsEveryEvent(t *testing.T) {
	st := &schemas.UserState{}
	var d *schemas.Digest
	for i := range 8 {
		var err error
		d, _, err = processors.CollectDigest(st, event(fmt.Sprintf("e%d", i), "", fmt.Sprintf(`{"i":%d}`, i)), time.Minute, 3, digestNow)
		if err != nil {
			t.Fatal(err)
		}
	}
	if d.Count != 8 || !slices.Equal(d.Items, []string{`{"i":0}`, `{"i":1}`, `{"i":2}`}) || len(d.EventIDs) != 8 {
		t.Fatalf("digest %+v", *d)
	}

	// Bounded by bytes: 100 KiB items, the third does not fit.
	st = &schemas.UserState{}
	big := func(c byte) string { return `{"x":"` + strings.Repeat(string(c), 100<<10) + `"}` }
	for i, c := range []byte("abcd") {
		var err error
		d, _, err = processors.CollectDigest(st, event(fmt.Sprintf("b%d", i), "", big(c)), time.Minute, 50, digestNow)
		if err != nil {
			t.Fatal(err)
		}
	}
	if d.Count != 4 || len(d.Items) != 2 || d.Items[0] != big('a') || d.Items[1] != big('b') {
		t.Fatalf("count %d, %d items", d.Count, len(d.Items))
	}
	for range 50 {
		d, _, _ = processors.CollectDigest(st, event(fmt.Sprintf("s%d", d.Count), "", big('z')[:1000]+`"}`), time.Minute, 50, digestNow)
	}
	size := 0
	for _, it := range d.Items {
		size += len(it)
	}
	if size > digestItemBytes || d.Count != 54 {
		t.Fatalf("%d items of %d bytes, count %d", len(d.Items), size, d.Count)
	}

	// An event too large to list alone still opens its digest, and counts.
	st = &schemas.UserState{}
	huge := `{"x":"` + strings.Repeat("h", digestItemBytes) + `"}`
	d, opened, err := processors.CollectDigest(st, event("h", "", huge), time.Minute, 50, digestNow)
	if err != nil || !opened || d.Count != 1 || len(d.Items) != 0 {
		t.Fatalf("huge event: %d items, count %d, %v, %v", len(d.Items), d.Count, opened, err)
	}
}

func TestCollectDigestBoundsEventIDs(t *testing.T) {
	st := &schemas.UserState{}
	var d *schemas.Digest
	for i := range digestEventIDs + 5 {
		d, _, _ = processors.CollectDigest(st, event(fmt.Sprintf("e%d", i), "", ""), time.Minute, 10, digestNow)
	}
	if d.Count != digestEventIDs+5 || len(d.EventIDs) != digestEventIDs || d.EventIDs[0] != "e0" {
		t.Fatalf("count %d, %d event ids", d.Count, len(d.EventIDs))
	}
	// The remembered events are still not counted twice.
	if d, _, _ = processors.CollectDigest(st, event("e17", "", ""), time.Minute, 10, digestNow); d.Count != digestEventIDs+5 {
		t.Fatalf("replay counted: %d", d.Count)
	}
}

func TestReleaseDigest(t *testing.T) {
	st := &schemas.UserState{}
	d, _, _ := processors.CollectDigest(st, event("e1", "", `{"a":1}`), time.Minute, 10, digestNow)
	processors.CollectDigest(st, event("e2", "", `{"a":2}`), time.Minute, 10, digestNow)
	other, _, _ := processors.CollectDigest(st, event("o1", "other", `{"o":1}`), time.Minute, 10, digestNow)
	id, otherID := d.NotificationID, other.NotificationID

	rel := processors.ReleaseDigest(st, id)
	if rel == nil || rel.NotificationID != id || rel.Count != 2 || !slices.Equal(rel.Items, []string{`{"a":1}`, `{"a":2}`}) ||
		!slices.Equal(rel.EventIDs, []string{"e1", "e2"}) {
		t.Fatalf("released %+v", rel)
	}
	if openDigests(st) != 1 || len(st.Digests) != 2 {
		t.Fatalf("state after the release %+v", st.Digests)
	}
	for _, s := range st.Digests {
		if (s.NotificationID == id) != (s.DueAt == 0) {
			t.Fatalf("digest %s due %d", s.NotificationID, s.DueAt)
		}
	}

	// A replayed release sends the same digest again.
	again := processors.ReleaseDigest(st, id)
	if again == nil || again.NotificationID != id || again.Count != rel.Count || !slices.Equal(again.Items, rel.Items) ||
		!slices.Equal(again.EventIDs, rel.EventIDs) {
		t.Fatalf("replayed release %+v, want %+v", again, rel)
	}
	// The returned digest is a copy: changing it leaves the state alone.
	again.Count = 99
	if r := processors.ReleaseDigest(st, id); r.Count != 2 {
		t.Fatalf("the release handed out the state's digest: count %d", r.Count)
	}

	if processors.ReleaseDigest(st, "no-such-digest") != nil || processors.ReleaseDigest(&schemas.UserState{}, id) != nil {
		t.Fatal("an unknown digest released")
	}

	// The next event of the key opens a new digest, with its own id.
	next, opened, err := processors.CollectDigest(st, event("e3", "", `{"a":3}`), time.Minute, 10, digestNow.Add(2*time.Minute))
	if err != nil || !opened || next.NotificationID == id || next.Count != 1 {
		t.Fatalf("after the release: %+v, %v, %v", next, opened, err)
	}
	if r := processors.ReleaseDigest(st, otherID); r == nil || r.Key != "weekly/other" {
		t.Fatalf("other key released %+v", r)
	}
}

func TestReleaseDigestKeepsTheLastReleased(t *testing.T) {
	st := &schemas.UserState{}
	var ids []string
	for i := range 6 {
		d, _, err := processors.CollectDigest(st, event(fmt.Sprintf("e%d", i), fmt.Sprintf("k%d", i), ""), time.Minute, 10, digestNow)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.NotificationID)
	}
	for _, id := range ids[:5] {
		if processors.ReleaseDigest(st, id) == nil {
			t.Fatalf("%s not released", id)
		}
	}
	released := 0
	for _, d := range st.Digests {
		if d.DueAt == 0 {
			released++
		}
	}
	if released != keptReleased || openDigests(st) != 1 || len(st.Digests) != keptReleased+1 {
		t.Fatalf("%d released, %d open: %+v", released, openDigests(st), st.Digests)
	}
	for i, id := range ids[:5] {
		got := processors.ReleaseDigest(st, id)
		if kept := i >= 5-keptReleased; (got != nil) != kept {
			t.Errorf("release %d replayed: %+v, want kept %v", i, got, kept)
		}
	}
	// The open digest was left alone.
	if d := processors.ReleaseDigest(st, ids[5]); d == nil || d.DueAt == 0 || d.Count != 1 {
		t.Fatalf("open digest %+v", d)
	}
}

// An event replayed after its digest was released (the deliver group
// restarted from an offset before both) is not collected again: it was
// sent with the released digest, and a second digest named like the first
// would never be released.
func TestCollectDigestReplayAfterRelease(t *testing.T) {
	st := &schemas.UserState{}
	d, _, _ := processors.CollectDigest(st, event("e1", "", `{"a":1}`), time.Minute, 10, digestNow)
	id := d.NotificationID
	processors.CollectDigest(st, event("e2", "", `{"a":2}`), time.Minute, 10, digestNow)
	if processors.ReleaseDigest(st, id) == nil {
		t.Fatal("not released")
	}

	_, opened, err := processors.CollectDigest(st, event("e1", "", `{"a":1}`), time.Minute, 10, digestNow.Add(time.Second))
	if err != nil || opened {
		t.Errorf("the replay of e1 opened a digest: %v, %v", opened, err)
	}
	processors.CollectDigest(st, event("e2", "", `{"a":2}`), time.Minute, 10, digestNow.Add(time.Second))
	if n := openDigests(st); n != 0 {
		t.Errorf("replays left %d open digests: %+v", n, st.Digests)
	}
	// Its release replayed too, no digest is left open under the key.
	processors.ReleaseDigest(st, id)
	for _, s := range st.Digests {
		if s.DueAt != 0 {
			t.Fatalf("digest %s of %v stays open after its release", s.NotificationID, s.EventIDs)
		}
	}
	// A new event opens a new digest, which its release releases.
	n, opened, err := processors.CollectDigest(st, event("e3", "", `{"a":3}`), time.Minute, 10, digestNow.Add(time.Minute))
	if err != nil || !opened || n.NotificationID == id {
		t.Fatalf("new event: %+v, %v, %v", n, opened, err)
	}
	newID := n.NotificationID
	if r := processors.ReleaseDigest(st, newID); r == nil || !slices.Equal(r.EventIDs, []string{"e3"}) {
		t.Fatalf("new digest released %+v", r)
	}
}

func TestDigestData(t *testing.T) {
	d := &schemas.Digest{Count: 5, Items: []string{`{"title":"one","n":1,"only":"first"}`, `{"title":"two","n":2.5}`}}
	s, err := processors.DigestData(d)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(s), &got); err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	want := map[string]any{"title": "two", "n": 2.5, "digest": map[string]any{
		"count": 5.0, "more": 3.0,
		"items": []any{map[string]any{"title": "one", "n": 1.0, "only": "first"}, map[string]any{"title": "two", "n": 2.5}}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("data %s\nwant %v", s, want)
	}
	// Numbers keep their form: an id is not turned into a float.
	if s, _ := processors.DigestData(&schemas.Digest{Count: 1, Items: []string{`{"id":12345678901234567890}`}}); !strings.Contains(s, `"id":12345678901234567890`) {
		t.Fatalf("big number: %s", s)
	}

	// Nothing listed (a huge event, or items not opened): count and more only.
	s, err = processors.DigestData(&schemas.Digest{Count: 2})
	if err != nil || s != `{"digest":{"count":2,"items":[],"more":2}}` {
		t.Fatalf("empty digest: %s, %v", s, err)
	}
	if _, err := processors.DigestData(&schemas.Digest{Count: 1, Items: []string{`[1]`}}); err == nil {
		t.Fatal("an item that is no object was accepted")
	}
}

// What CollectDigest stores renders back in DigestData, oldest first.
func TestDigestDataOfCollectedEvents(t *testing.T) {
	st := &schemas.UserState{}
	var d *schemas.Digest
	for i := range 4 {
		d, _, _ = processors.CollectDigest(st, event(fmt.Sprintf("e%d", i), "", fmt.Sprintf(`{"i":%d}`, i)), time.Minute, 2, digestNow)
	}
	s, err := processors.DigestData(d)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Digest json.RawMessage `json:"digest"`
	}
	if err := json.Unmarshal([]byte(s), &got); err != nil || string(got.Digest) != `{"count":4,"items":[{"i":0},{"i":1}],"more":2}` {
		t.Fatalf("data %s, %v", s, err)
	}
}

func TestDigestRelease(t *testing.T) {
	first := event("e1", "order-7", `{"a":1}`)
	first.Priority, first.Category, first.Channels, first.Campaign = "low", "orders", []string{"email", "push"}, "spring"
	first.Locale = "de"
	first.Recipient = schemas.Recipient{UserID: "ann", Email: "ann@example.com", Locale: "de-AT"}
	first.SendAt, first.ExpiresAt, first.LocalTime, first.OTP = 1, 2, "09:00", false
	st := &schemas.UserState{}
	d, _, _ := processors.CollectDigest(st, first, time.Hour, 10, digestNow)

	n := processors.DigestRelease(d, first)
	want := &schemas.Notification{ID: d.NotificationID, EventID: "digest:weekly/order-7", UserID: "ann", Tenant: "acme",
		Template: "weekly", Priority: "low", Category: "orders", Channels: []string{"email", "push"},
		SendAt: digestNow.Add(time.Hour).UnixMilli(), AcceptedAt: digestNow.UnixMilli(), DigestKey: "order-7", DigestFlush: true,
		Campaign: "spring", Recipient: first.Recipient, Locale: "de"}
	if !reflect.DeepEqual(n, want) {
		t.Fatalf("release %+v\nwant    %+v", n, want)
	}
	if n.Data != "" {
		t.Fatal("the release carries the first event's data")
	}
	// The release comes back to its digest.
	if r := processors.ReleaseDigest(st, n.ID); r == nil || r.Count != 1 {
		t.Fatalf("release of %s: %+v", n.ID, r)
	}
}

// Fake sealers stand in where no keyring is needed.
type failingSealer struct{}

func (failingSealer) Seal(context.Context, string, string, []byte) ([]byte, error) {
	return nil, errors.New("keyring down")
}
func (failingSealer) Open(context.Context, string, []byte) ([]byte, string, error) {
	return nil, "", errors.New("keyring down")
}

func TestSealDigest(t *testing.T) {
	kr := keyring(t)
	ctx := context.Background()
	items := []string{`{"code":"secret-1"}`, `{"code":"secret-2"}`}
	d := &schemas.Digest{Key: "weekly/", NotificationID: "dn", Count: 2, Items: slices.Clone(items), EventIDs: []string{"e1", "e2"}}
	if err := processors.SealDigest(ctx, kr, "acme|ann", d); err != nil {
		t.Fatal(err)
	}
	if d.Items != nil || len(d.Sealed) == 0 || d.Count != 2 || !slices.Equal(d.EventIDs, []string{"e1", "e2"}) {
		t.Fatalf("sealed %+v", d)
	}
	// What the deliver group's table holds says nothing of the items.
	st := &schemas.UserState{Digests: []schemas.Digest{*d}}
	b, err := schemas.UserStateCodec.Encode(st)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "secret-") {
		t.Fatal("the sealed state holds the items in clear")
	}
	back, err := schemas.UserStateCodec.Decode(b)
	if err != nil {
		t.Fatal(err)
	}

	moved := back.Digests[0]
	if err := processors.OpenDigest(ctx, kr, "acme|bob", &moved); !errors.Is(err, processors.ErrSubjectMismatch) || len(moved.Items) != 0 {
		t.Fatalf("ann's digest opened for bob: %v, %+v", err, moved.Items)
	}
	if err := processors.OpenDigest(ctx, kr, "ann", &moved); !errors.Is(err, processors.ErrSubjectMismatch) {
		t.Fatalf("acme's ann's digest opened for the default tenant's ann: %v", err)
	}
	// A digest's envelope is no notification's.
	n := &schemas.Notification{ID: "n", UserID: "ann", Tenant: "acme", Sealed: back.Digests[0].Sealed}
	if err := processors.OpenNotification(ctx, kr, n); err == nil {
		t.Fatal("a digest's envelope opened as a notification")
	}

	got := back.Digests[0]
	if err := processors.OpenDigest(ctx, kr, "acme|ann", &got); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Items, items) || got.Sealed != nil {
		t.Fatalf("opened %+v", got)
	}
	// Opened, it renders.
	if s, err := processors.DigestData(&got); err != nil || !strings.Contains(s, "secret-2") {
		t.Fatalf("data %s, %v", s, err)
	}
}

func TestSealDigestWithoutKeyringOrItems(t *testing.T) {
	ctx := context.Background()
	d := &schemas.Digest{Count: 1, Items: []string{`{"a":1}`}}
	if err := processors.SealDigest(ctx, nil, "acme|ann", d); err != nil || !slices.Equal(d.Items, []string{`{"a":1}`}) || d.Sealed != nil {
		t.Fatalf("no keyring: %+v, %v", d, err)
	}
	// Nothing to seal, nothing to open: the keyring is not asked.
	empty := &schemas.Digest{Count: 1}
	if err := processors.SealDigest(ctx, failingSealer{}, "acme|ann", empty); err != nil || empty.Sealed != nil {
		t.Fatalf("no items: %+v, %v", empty, err)
	}
	if err := processors.OpenDigest(ctx, failingSealer{}, "acme|ann", d); err != nil || len(d.Items) != 1 {
		t.Fatalf("not sealed: %+v, %v", d, err)
	}
	// A keyring that fails leaves the items where they were.
	if err := processors.SealDigest(ctx, failingSealer{}, "acme|ann", d); err == nil || len(d.Items) != 1 || d.Sealed != nil {
		t.Fatalf("failed seal: %+v, %v", d, err)
	}
	sealed := &schemas.Digest{Sealed: []byte("envelope")}
	if err := processors.OpenDigest(ctx, failingSealer{}, "acme|ann", sealed); err == nil || sealed.Sealed == nil {
		t.Fatalf("failed open: %+v, %v", sealed, err)
	}
	if err := processors.OpenDigest(ctx, nil, "acme|ann", sealed); err == nil {
		t.Fatal("a sealed digest opened without a keyring")
	}
}
