package topology

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/tester"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// run starts a processor for graph on the goka tester.
func run(t *testing.T, tt *tester.Tester, graph *goka.GroupGraph) {
	t.Helper()
	p, err := goka.NewProcessor(nil, graph, append(GroupOptions(), goka.WithTester(tt))...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("processor: %v", err)
		}
	})
}

func encode[T any](t *testing.T, c *schemas.Codec[T], v *T) []byte {
	t.Helper()
	b, err := c.Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func events(t *testing.T, qt *tester.QueueTracker) []*schemas.StatusEvent {
	t.Helper()
	var out []*schemas.StatusEvent
	for {
		_, v, ok := qt.Next()
		if !ok {
			return out
		}
		out = append(out, v.(*schemas.StatusEvent))
	}
}

func TestDedupGroupFansOutOnceAndReportsDuplicates(t *testing.T) {
	tt := tester.New(t)
	clk := &clock{time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	p := &Pipeline{DedupWindow: time.Hour, Now: clk.now}
	run(t, tt, p.DedupGraph())
	accepted := tt.NewQueueTracker(string(Accepted))
	evs := tt.NewQueueTracker(string(Events))

	req := &schemas.SendRequest{EventID: "e1", Template: "t",
		Recipients: []schemas.Recipient{{UserID: "u1"}, {UserID: "u2"}, {UserID: "u1"}}}
	tt.Consume(string(Ingest), "e1", encode(t, schemas.SendRequestCodec, req))

	var users []string
	for {
		key, v, ok := accepted.Next()
		if !ok {
			break
		}
		n := v.(*schemas.Notification)
		if key != n.UserID || n.ID != processors.NotificationID("e1", n.UserID) || n.AcceptedAt != clk.t.UnixMilli() {
			t.Fatalf("accepted notification %q %+v", key, n)
		}
		users = append(users, key)
	}
	if strings.Join(users, ",") != "u1,u2" {
		t.Fatalf("fan-out users %v (a user twice in one request is one notification)", users)
	}
	if got := events(t, evs); len(got) != 2 || got[0].Status != processors.StatusAccepted {
		t.Fatalf("events %+v", got)
	}
	if v := tt.TableValue(goka.GroupTable(DedupGroup), "e1"); v == nil || v.(*schemas.DedupEntry).FirstSeen != clk.t.UnixMilli() {
		t.Fatalf("dedup entry %v", v)
	}

	clk.t = clk.t.Add(30 * time.Minute)
	tt.Consume(string(Ingest), "e1", encode(t, schemas.SendRequestCodec, req))
	if _, _, ok := accepted.Next(); ok {
		t.Fatal("a duplicate was fanned out again")
	}
	dups := events(t, evs)
	if len(dups) != 2 || dups[0].Status != processors.StatusDuplicate || !strings.Contains(dups[0].Reason, "first seen at 2026-11-22T10:00:00") {
		t.Fatalf("duplicate events %+v", dups)
	}
}

func TestDedupExpireDeletesOnlyOldEntries(t *testing.T) {
	tt := tester.New(t)
	clk := &clock{time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	p := &Pipeline{DedupWindow: 24 * time.Hour, Now: clk.now}
	run(t, tt, p.DedupGraph())
	table := goka.GroupTable(DedupGroup)
	tt.SetTableValue(table, "old", &schemas.DedupEntry{FirstSeen: clk.t.Add(-25 * time.Hour).UnixMilli()})
	tt.SetTableValue(table, "new", &schemas.DedupEntry{FirstSeen: clk.t.Add(-time.Hour).UnixMilli()})
	expire := encode(t, schemas.DedupEntryCodec, &schemas.DedupEntry{})
	tt.Consume(string(DedupExpire), "old", expire)
	tt.Consume(string(DedupExpire), "new", expire) // a stale command must not delete a fresh entry
	if v := tt.TableValue(table, "old"); v != nil {
		t.Fatalf("old entry still there: %v", v)
	}
	if v := tt.TableValue(table, "new"); v == nil {
		t.Fatal("entry within the window was deleted")
	}
}

func TestDedupRejectsBadRecordsWithoutStopping(t *testing.T) {
	tt := tester.New(t)
	p := &Pipeline{DedupWindow: time.Hour}
	run(t, tt, p.DedupGraph())
	dlq := tt.NewQueueTracker(string(DLQ))
	evs := tt.NewQueueTracker(string(Events))
	accepted := tt.NewQueueTracker(string(Accepted))

	tt.Consume(string(Ingest), "k", []byte("garbage"))
	mismatched := &schemas.SendRequest{EventID: "other", Template: "t", Recipients: []schemas.Recipient{{UserID: "u"}}}
	tt.Consume(string(Ingest), "k", encode(t, schemas.SendRequestCodec, mismatched))
	good := &schemas.SendRequest{EventID: "k", Template: "t", Recipients: []schemas.Recipient{{UserID: "u"}}}
	tt.Consume(string(Ingest), "k", encode(t, schemas.SendRequestCodec, good))

	var reasons []string
	for {
		_, v, ok := dlq.Next()
		if !ok {
			break
		}
		reasons = append(reasons, v.(*schemas.DeadLetter).Reason)
	}
	if len(reasons) != 2 || !strings.Contains(reasons[0], "not an Avro") || !strings.Contains(reasons[1], "must be the eventId") {
		t.Fatalf("dead letters %q", reasons)
	}
	evList := events(t, evs)
	if len(evList) != 3 || evList[0].Status != processors.StatusRejected || evList[1].Status != processors.StatusRejected ||
		evList[2].Status != processors.StatusAccepted {
		t.Fatalf("events %+v", evList)
	}
	if _, _, ok := accepted.Next(); !ok {
		t.Fatal("the good record after the bad ones was not processed")
	}
}

func TestDeliverGroupRoutesRendersAndLimits(t *testing.T) {
	tt := tester.New(t)
	clk := &clock{time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	p := &Pipeline{Now: clk.now, Deliverer: processors.Deliverer{
		Limiter: processors.Limiter{ContentWindow: time.Minute, PerDay: func(string) int { return 2 }}}}
	run(t, tt, p.DeliverGraph())
	tt.SetTableValue(Templates, "t", &schemas.Template{ID: "t", Priority: "high",
		Channels: map[string]schemas.ChannelContent{"email": {Subject: "Hi {{.name}}", Text: "x"}}})
	tt.SetTableValue(Profiles, "u", &schemas.Profile{UserID: "u", Email: "u@example.com"})
	out := tt.NewQueueTracker(string(Out("email", "high")))
	evs := tt.NewQueueTracker(string(Events))

	send := func(id, name string) {
		n := &schemas.Notification{ID: id, EventID: id, UserID: "u", Template: "t", Data: `{"name":"` + name + `"}`}
		tt.Consume(string(Accepted), "u", encode(t, schemas.NotificationCodec, n))
	}
	send("n1", "Ann")
	send("n2", "Ann") // same content within the window
	send("n3", "Bo")
	send("n4", "Cy") // third email of the day, cap is 2

	key, v, ok := out.Next()
	if !ok || key != "n1" || v.(*schemas.Notification).Content.Subject != "Hi Ann" || v.(*schemas.Notification).Address != "u@example.com" {
		t.Fatalf("routed %q %+v", key, v)
	}
	if key, _, _ := out.Next(); key != "n3" {
		t.Fatalf("second routed %q, want n3", key)
	}
	if _, _, ok := out.Next(); ok {
		t.Fatal("more than two routed")
	}
	var got []string
	for _, e := range events(t, evs) {
		got = append(got, e.NotificationID+":"+e.Status)
	}
	// Routed notifications have no event here: the sink's events carry
	// their routing (queuedAt), see TestStatusGroupRecordsTheQueuedStateASinkEventStates.
	if strings.Join(got, " ") != "n2:suppressed n4:rate_limited" {
		t.Fatalf("events %v", got)
	}
	st := tt.TableValue(goka.GroupTable(DeliverGroup), "u").(*schemas.UserState)
	if st.SentToday["email"] != 2 || st.Day != "2026-11-22" {
		t.Fatalf("user state %+v", st)
	}
}

// A sink's event states when the notification was routed (queuedAt): the
// history gets the queued entry at that time, before the event's own, once —
// whether the deliver group's own queued event (before status_event.v5) came
// first, or the same routing is stated again by a later event.
func TestStatusGroupRecordsTheQueuedStateASinkEventStates(t *testing.T) {
	tt := tester.New(t)
	run(t, tt, (&Pipeline{}).StatusGraph())
	ev := func(id, status string, at, queuedAt int64) []byte {
		return encode(t, schemas.StatusEventCodec, &schemas.StatusEvent{ID: id, NotificationID: "n", Status: status, At: at,
			Channel: "email", Provider: "p", QueuedAt: queuedAt})
	}
	statuses := func(key string) string {
		lc := tt.TableValue(goka.GroupTable(StatusGroup), key).(*schemas.Lifecycle)
		var out []string
		for _, h := range lc.History {
			out = append(out, fmt.Sprintf("%s@%d", h.Status, h.At))
		}
		return lc.Status + ": " + strings.Join(out, " ")
	}
	tt.Consume(string(Events), "n", ev("a", processors.StatusAccepted, 1, 0))
	tt.Consume(string(Events), "n", ev("r", processors.StatusRetrying, 5, 2))
	tt.Consume(string(Events), "n", ev("s", processors.StatusSent, 9, 2))
	tt.Consume(string(Events), "n", ev("s", processors.StatusSent, 9, 2)) // a replay
	if got, want := statuses("n"), "sent: accepted@1 queued@2 retrying@5 sent@9"; got != want {
		t.Fatalf("lifecycle %q, want %q", got, want)
	}
	// The deliver group's own queued event, from a build before v5, has the
	// id the implied one gets: the history holds the routing once.
	old := processors.NotificationEvent(&schemas.Notification{ID: "m"}, processors.StatusQueued, "email", "", time.UnixMilli(2))
	tt.Consume(string(Events), "m", encode(t, schemas.StatusEventCodec, old))
	tt.Consume(string(Events), "m", encode(t, schemas.StatusEventCodec, &schemas.StatusEvent{ID: "s2", NotificationID: "m",
		Status: processors.StatusSent, At: 9, Channel: "email", QueuedAt: 2}))
	if got, want := statuses("m"), "sent: queued@2 sent@9"; got != want {
		t.Fatalf("lifecycle %q, want %q", got, want)
	}
}

func TestStatusGroupKeepsLifecycle(t *testing.T) {
	tt := tester.New(t)
	p := &Pipeline{}
	run(t, tt, p.StatusGraph())
	ev := func(status string, at int64) []byte {
		return encode(t, schemas.StatusEventCodec, &schemas.StatusEvent{NotificationID: "n", Status: status, At: at, Channel: "email", Provider: "p"})
	}
	tt.Consume(string(Events), "n", ev(processors.StatusQueued, 2))
	tt.Consume(string(Events), "n", ev(processors.StatusSent, 3))
	tt.Consume(string(Events), "n", ev(processors.StatusAccepted, 1)) // late
	tt.Consume(string(Events), "n", []byte("not avro"))
	lc := tt.TableValue(goka.GroupTable(StatusGroup), "n").(*schemas.Lifecycle)
	if lc.Status != processors.StatusSent || len(lc.History) != 3 || lc.History[0].Status != processors.StatusAccepted {
		t.Fatalf("lifecycle %+v", lc)
	}
}

func TestSchedulerHoldsUntilDueThenReleases(t *testing.T) {
	tt := tester.New(t)
	clk := &clock{time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	p := &Pipeline{Now: clk.now}
	run(t, tt, p.SchedulerGraph())
	accepted := tt.NewQueueTracker(string(Accepted))
	due := clk.t.Add(time.Hour).UnixMilli()
	n := &schemas.Notification{ID: "n1", UserID: "u1", SendAt: due}
	key := processors.ScheduleKey(due, "n1")
	tt.Consume(string(Scheduled), key, encode(t, schemas.NotificationCodec, n))
	tt.Consume(string(SchedulerDue), key, []byte{}) // early command: ignored
	if _, _, ok := accepted.Next(); ok {
		t.Fatal("released before its time")
	}
	clk.t = clk.t.Add(time.Hour)
	tt.Consume(string(SchedulerDue), key, []byte{})
	tt.Consume(string(SchedulerDue), key, []byte{}) // repeated command: no second release
	k, v, ok := accepted.Next()
	if !ok || k != "u1" || v.(*schemas.Notification).ID != "n1" {
		t.Fatalf("released %q %v", k, v)
	}
	if _, _, ok := accepted.Next(); ok {
		t.Fatal("released twice")
	}
	table := goka.GroupTable(SchedulerGroup)
	if e, _ := tt.TableValue(table, key).(*schemas.ScheduledEntry); e == nil || e.ReleasedBy == "" {
		t.Fatalf("entry after release: %+v (kept, marked released, until the grace period ends)", e)
	}
	clk.t = clk.t.Add(DefaultReleaseGrace)
	tt.Consume(string(SchedulerDue), key, []byte{})
	if tt.TableValue(table, key) != nil {
		t.Fatal("released notification still held after the grace period")
	}
	if _, _, ok := accepted.Next(); ok {
		t.Fatal("the deleting command released it again")
	}
	// A record whose key does not match its due time is rejected, not held.
	dlq := tt.NewQueueTracker(string(DLQ))
	tt.Consume(string(Scheduled), "wrong-key", encode(t, schemas.NotificationCodec, n))
	if _, _, ok := dlq.Next(); !ok {
		t.Fatal("mis-keyed scheduled record not dead-lettered")
	}
}

func TestScheduleKeysSortByDueTime(t *testing.T) {
	a := processors.ScheduleKey(999, "z")
	b := processors.ScheduleKey(1000, "a")
	c := processors.ScheduleKey(time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli(), "a")
	if !(a < b && b < c) {
		t.Fatalf("keys out of time order: %s %s %s", a, b, c)
	}
}

// Waiting for a profile written just before a send must not stall a partition:
// a notification that needs no profile never waits, and once a wait has timed
// out the partition does not wait again for a second.
func TestDeliverGroupDoesNotStallOnMissingProfiles(t *testing.T) {
	consumeAll := func(p *Pipeline, ns []*schemas.Notification, limit time.Duration) {
		t.Helper()
		tt := tester.New(t)
		run(t, tt, p.DeliverGraph())
		tt.SetTableValue(Templates, "hook", &schemas.Template{ID: "hook", Channels: map[string]schemas.ChannelContent{"webhook": {Body: "{}"}}})
		tt.SetTableValue(Templates, "mail", &schemas.Template{ID: "mail", Channels: map[string]schemas.ChannelContent{"email": {Text: "x"}}})
		done := make(chan struct{})
		go func() {
			for _, n := range ns {
				tt.Consume(string(Accepted), n.UserID, encode(t, schemas.NotificationCodec, n))
			}
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(limit):
			t.Fatalf("%d notifications not processed within %v: the partition stalled waiting for profiles", len(ns), limit)
		}
	}
	limiter := processors.Limiter{PerDay: func(string) int { return 0 }}
	var hooks, mails []*schemas.Notification
	for i := 0; i < 10; i++ {
		u := fmt.Sprintf("u%d", i)
		hooks = append(hooks, &schemas.Notification{ID: "h" + u, UserID: u, Template: "hook", AcceptedAt: time.Now().UnixMilli()})
		mails = append(mails, &schemas.Notification{ID: "m" + u, UserID: u, Template: "mail", AcceptedAt: time.Now().UnixMilli()})
	}
	// A webhook needs no profile: with an hour's wait configured, no wait at all.
	consumeAll(&Pipeline{TableWait: time.Hour, Deliverer: processors.Deliverer{Limiter: limiter}}, hooks, 10*time.Second)
	// Email to users without a profile: one 2 s wait, not ten.
	consumeAll(&Pipeline{TableWait: 2 * time.Second, Deliverer: processors.Deliverer{Limiter: limiter}}, mails, 10*time.Second)
}

// After a crash goka replays a notification the deliver group already routed:
// it is routed again (the sink's ledger stops a second send), not suppressed as
// a duplicate of itself, and not counted twice against the daily cap.
func TestDeliverGroupReplayIsNotItsOwnDuplicate(t *testing.T) {
	tt := tester.New(t)
	p := &Pipeline{Deliverer: processors.Deliverer{Limiter: processors.Limiter{ContentWindow: time.Hour, PerDay: func(string) int { return 5 }}}}
	run(t, tt, p.DeliverGraph())
	tt.SetTableValue(Templates, "t", &schemas.Template{ID: "t", Channels: map[string]schemas.ChannelContent{"email": {Text: "x"}}})
	evs := tt.NewQueueTracker(string(Events))
	out := tt.NewQueueTracker(string(Out("email", "normal")))
	n := &schemas.Notification{ID: "n1", UserID: "u", Template: "t", Recipient: schemas.Recipient{Email: "u@example.com"}}
	tt.Consume(string(Accepted), "u", encode(t, schemas.NotificationCodec, n))
	tt.Consume(string(Accepted), "u", encode(t, schemas.NotificationCodec, n))
	for _, e := range events(t, evs) {
		t.Fatalf("replay became %s: %s", e.Status, e.Reason)
	}
	for i := range 2 {
		if key, _, ok := out.Next(); !ok || key != "n1" {
			t.Fatalf("routing %d: %q, %v", i+1, key, ok)
		}
	}
	if st := tt.TableValue(goka.GroupTable(DeliverGroup), "u").(*schemas.UserState); st.SentToday["email"] != 1 {
		t.Fatalf("counted %d times", st.SentToday["email"])
	}
}

// A crash can split the dedup entry from the notifications emitted with it.
// goka then replays the same ingest record: its notifications are emitted
// again, never called duplicates of themselves; another record with the same
// eventId is a duplicate, with an event id of its own that a replay repeats.
func TestDedupReplayOfTheSameRecordReEmits(t *testing.T) {
	tt := tester.New(t)
	clk := &clock{time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	p := &Pipeline{DedupWindow: time.Hour, Now: clk.now}
	run(t, tt, p.DedupGraph())
	accepted := tt.NewQueueTracker(string(Accepted))
	evs := tt.NewQueueTracker(string(Events))
	ingest := tt.NewQueueTracker(string(Ingest))
	table := goka.GroupTable(DedupGroup)
	req := &schemas.SendRequest{EventID: "e1", Template: "t", Recipients: []schemas.Recipient{{UserID: "u1"}, {UserID: "u2"}}}

	// The crash left the entry, written by the record at the next offset, and
	// none of its notifications.
	origin := fmt.Sprintf("0/%d", ingest.NextOffset())
	first := clk.t.Add(-time.Second).UnixMilli()
	tt.SetTableValue(table, "e1", &schemas.DedupEntry{FirstSeen: first, Origin: origin})
	tt.Consume(string(Ingest), "e1", encode(t, schemas.SendRequestCodec, req))
	var got []string
	for {
		k, v, ok := accepted.Next()
		if !ok {
			break
		}
		if v.(*schemas.Notification).AcceptedAt != first {
			t.Fatalf("replayed notification accepted at %d, want the first time %d", v.(*schemas.Notification).AcceptedAt, first)
		}
		got = append(got, k)
	}
	if strings.Join(got, ",") != "u1,u2" {
		t.Fatalf("replay emitted %v, want u1,u2", got)
	}
	for _, e := range events(t, evs) {
		if e.Status != processors.StatusAccepted {
			t.Fatalf("replay produced %s: %s", e.Status, e.Reason)
		}
	}

	// Another record with the same eventId: a duplicate, and its event id is
	// fixed by the record, so replaying it adds no second history line.
	for _, _, ok := ingest.Next(); ok; _, _, ok = ingest.Next() {
	}
	dupOffset := ingest.NextOffset()
	tt.Consume(string(Ingest), "e1", encode(t, schemas.SendRequestCodec, req))
	if _, _, ok := accepted.Next(); ok {
		t.Fatal("a duplicate request was fanned out")
	}
	dups := events(t, evs)
	wantID := processors.StatusEventID(processors.NotificationID("e1", "u1"), processors.StatusDuplicate, fmt.Sprintf("0/%d", dupOffset), 0)
	if len(dups) != 2 || dups[0].Status != processors.StatusDuplicate || dups[0].ID != wantID {
		t.Fatalf("duplicate events %+v, want id %s", dups, wantID)
	}

	// A record moved from another partition keeps its origin in a header: a
	// replay of the move is the same record, not a duplicate.
	moved := &schemas.SendRequest{EventID: "e2", Template: "t", Recipients: []schemas.Recipient{{UserID: "u3"}}}
	h := tester.WithHeaders(goka.Headers{originHeader: []byte("7/42")})
	tt.Consume(string(Ingest), "e2", encode(t, schemas.SendRequestCodec, moved), h)
	tt.Consume(string(Ingest), "e2", encode(t, schemas.SendRequestCodec, moved), h)
	n := 0
	for _, _, ok := accepted.Next(); ok; _, _, ok = accepted.Next() {
		n++
	}
	if n != 2 {
		t.Fatalf("moved record and its replay emitted %d notifications, want 2", n)
	}
	if e := tt.TableValue(table, "e2").(*schemas.DedupEntry); e.Origin != "7/42" {
		t.Fatalf("entry origin %q, want the header's", e.Origin)
	}
}

// Status history is idempotent by event id: a stage replayed after a crash
// re-emits the same ids, and the history shows each change once.
func TestStatusGroupIgnoresReplayedEvents(t *testing.T) {
	tt := tester.New(t)
	run(t, tt, (&Pipeline{}).StatusGraph())
	ev := &schemas.StatusEvent{ID: "ev-sent", NotificationID: "n", Status: processors.StatusSent, At: 3, Channel: "email"}
	tt.Consume(string(Events), "n", encode(t, schemas.StatusEventCodec, ev))
	tt.Consume(string(Events), "n", encode(t, schemas.StatusEventCodec, ev))
	other := *ev
	other.ID, other.Status = "ev-delivered", processors.StatusDelivered
	tt.Consume(string(Events), "n", encode(t, schemas.StatusEventCodec, &other))
	lc := tt.TableValue(goka.GroupTable(StatusGroup), "n").(*schemas.Lifecycle)
	if len(lc.History) != 2 || lc.History[0].EventID != "ev-sent" || lc.Status != processors.StatusDelivered {
		t.Fatalf("history %+v", lc.History)
	}
}

// The scheduler marks a release instead of deleting: when goka replays the
// releasing command after a crash, the notification is emitted again instead
// of being found gone.
func TestSchedulerReplayedReleaseEmitsAgain(t *testing.T) {
	tt := tester.New(t)
	clk := &clock{time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	run(t, tt, (&Pipeline{Now: clk.now}).SchedulerGraph())
	accepted := tt.NewQueueTracker(string(Accepted))
	due := tt.NewQueueTracker(string(SchedulerDue))
	n := &schemas.Notification{ID: "n1", UserID: "u1", SendAt: clk.t.UnixMilli()}
	key := processors.ScheduleKey(n.SendAt, "n1")
	raw := encode(t, schemas.NotificationCodec, n)
	// The crash left the release recorded, by the command at the next offset,
	// and the notification not emitted.
	tt.SetTableValue(goka.GroupTable(SchedulerGroup), key, &schemas.ScheduledEntry{Notification: raw,
		ReleasedBy: fmt.Sprintf("0/%d", due.NextOffset()), ReleasedAt: clk.t.UnixMilli()})
	tt.Consume(string(SchedulerDue), key, []byte{})
	if k, v, ok := accepted.Next(); !ok || k != "u1" || v.(*schemas.Notification).ID != "n1" {
		t.Fatalf("replayed release emitted %q %v", k, v)
	}
	// A hold written by a version before ScheduledEntry (a bare Notification)
	// is released too.
	old := processors.ScheduleKey(n.SendAt, "n0")
	n0 := *n
	n0.ID = "n0"
	tt.SetTableValue(goka.GroupTable(SchedulerGroup), old, &schemas.ScheduledEntry{Notification: encode(t, schemas.NotificationCodec, &n0)})
	tt.Consume(string(SchedulerDue), old, []byte{})
	if _, v, ok := accepted.Next(); !ok || v.(*schemas.Notification).ID != "n0" {
		t.Fatalf("old-format hold released %v", v)
	}
	if e, err := decodeScheduled(encode(t, schemas.NotificationCodec, &n0)); err != nil || string(e.Notification) != string(encode(t, schemas.NotificationCodec, &n0)) {
		t.Fatalf("a bare Notification in the table reads as %+v, %v", e, err)
	}
}

// A null value on any stream a group reads is dead-lettered with its reason;
// the group goes on.
func TestNullRecordsAreDeadLettered(t *testing.T) {
	clk := &clock{time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	p := &Pipeline{DedupWindow: time.Hour, Now: clk.now, Deliverer: processors.Deliverer{
		Limiter: processors.Limiter{PerDay: func(string) int { return 0 }}}}
	for _, c := range []struct {
		graph *goka.GroupGraph
		topic goka.Stream
	}{
		{p.DedupGraph(), Ingest}, {p.DeliverGraph(), Accepted}, {p.DeliverGraph(), Feedback},
		{p.SchedulerGraph(), Scheduled}, {p.StatusGraph(), Events}, {p.InboxGraph(), InboxCommands},
	} {
		tt := tester.New(t)
		run(t, tt, c.graph)
		dlq := tt.NewQueueTracker(string(DLQ))
		tt.Consume(string(c.topic), "k", nil)
		_, v, ok := dlq.Next()
		if !ok {
			t.Fatalf("%s: a null record was dropped silently", c.topic)
		}
		if dl := v.(*schemas.DeadLetter); dl.Topic != string(c.topic) || !strings.Contains(dl.Reason, "null value") {
			t.Fatalf("%s: dead letter %+v", c.topic, dl)
		}
	}
}

// A notification whose record would be larger than a record may be is
// rejected with the reason and dead-lettered (what fits of it); the partition
// goes on with the next one. Producing it would fail the processor, and it
// would fail again on every restart.
func TestOversizedRecordsAreRejectedNotProduced(t *testing.T) {
	clk := &clock{time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	p := &Pipeline{DedupWindow: time.Hour, Now: clk.now, Deliverer: processors.Deliverer{
		Limiter: processors.Limiter{PerDay: func(string) int { return 0 }}}}
	check := func(t *testing.T, tt *tester.Tester, dlq, evs, out *tester.QueueTracker, big, small, channel string) {
		t.Helper()
		k, _, ok := out.Next()
		if !ok || k != small {
			t.Fatalf("emitted %q, want only %s", k, small)
		}
		if _, _, ok := out.Next(); ok {
			t.Fatal("the oversized notification was produced")
		}
		_, v, ok := dlq.Next()
		if !ok {
			t.Fatal("no dead letter for the oversized notification")
		}
		dl := v.(*schemas.DeadLetter)
		if !dl.Truncated || dl.NotificationID != big || !strings.Contains(dl.Reason, "exceeds the record limit") {
			t.Fatalf("dead letter %+v", dl)
		}
		if key, value := EncodeDeadLetter(dl); !Fits(key, value) {
			t.Fatal("the dead letter itself does not fit")
		}
		var rejected *schemas.StatusEvent
		for _, e := range events(t, evs) {
			if e.Status == processors.StatusRejected {
				rejected = e
			}
		}
		if rejected == nil || rejected.NotificationID != big || rejected.Channel != channel {
			t.Fatalf("rejected event %+v", rejected)
		}
	}
	t.Run("dedup", func(t *testing.T) {
		tt := tester.New(t)
		run(t, tt, p.DedupGraph())
		accepted := tt.NewQueueTracker(string(Accepted))
		dlq := tt.NewQueueTracker(string(DLQ))
		evs := tt.NewQueueTracker(string(Events))
		send := func(eventID, v string) {
			req := &schemas.SendRequest{EventID: eventID, Template: "t", Data: `{"v":"` + v + `"}`, Recipients: []schemas.Recipient{{UserID: "u"}}}
			tt.Consume(string(Ingest), eventID, encode(t, schemas.SendRequestCodec, req))
		}
		send("big", strings.Repeat("x", MaxRecordBytes)) // a Kafka client can produce what the API refuses
		send("small", "ok")
		check(t, tt, dlq, evs, accepted, processors.NotificationID("big", "u"), "u", "")
	})
	t.Run("deliver", func(t *testing.T) {
		tt := tester.New(t)
		run(t, tt, p.DeliverGraph())
		tt.SetTableValue(Templates, "t", &schemas.Template{ID: "t", Channels: map[string]schemas.ChannelContent{
			"email": {Subject: "{{.v}}", Text: "{{.v}}"}}})
		out := tt.NewQueueTracker(string(Out("email", "normal")))
		dlq := tt.NewQueueTracker(string(DLQ))
		evs := tt.NewQueueTracker(string(Events))
		send := func(id, v string) {
			n := &schemas.Notification{ID: id, EventID: id, UserID: "u", Template: "t", Data: `{"v":"` + v + `"}`,
				Recipient: schemas.Recipient{Email: "u@example.com"}}
			tt.Consume(string(Accepted), "u", encode(t, schemas.NotificationCodec, n))
		}
		send("big", strings.Repeat("x", MaxRecordBytes/2)) // fits; rendered twice it does not
		send("small", "ok")                                // same partition, after it
		check(t, tt, dlq, evs, out, "big", "small", "email")
	})
}

// The inbox group: a command applies to the user's feed and announces the
// change; a repeated add changes nothing and is announced again (a crash may
// have lost the first announcement); an unreadable or invalid command,
// or one keyed by another user, is dead-lettered and the next one applies.
// An invalid recipient's feedback removes the target from the profile.
func TestInboxGroupAppliesCommandsAndDeadLettersBadOnes(t *testing.T) {
	clk := &clock{time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	p := &Pipeline{Now: clk.now, InboxCapacity: 10}
	tt := tester.New(t)
	run(t, tt, p.InboxGraph())
	dlq, evs := tt.NewQueueTracker(string(DLQ)), tt.NewQueueTracker(string(InboxEvents))
	enc := func(c *schemas.InboxCommand) []byte { b, _ := schemas.InboxCommandCodec.Encode(c); return b }
	add := &schemas.InboxCommand{Op: processors.InboxAdd, UserID: "u1", Message: schemas.InboxItem{ID: "n1", Title: "hi"}}
	tt.Consume(string(InboxCommands), "u1", enc(add))
	tt.Consume(string(InboxCommands), "u1", enc(add))
	for _, bad := range []struct {
		key   string
		value []byte
		why   string
	}{
		{"u1", []byte("garbage"), "single-object"},
		{"u1", enc(&schemas.InboxCommand{Op: "drop-table", UserID: "u1"}), "unknown inbox operation"},
		{"u2", enc(add), "must be the userId"},
	} {
		tt.Consume(string(InboxCommands), bad.key, bad.value)
		_, v, ok := dlq.Next()
		if !ok || !strings.Contains(v.(*schemas.DeadLetter).Reason, bad.why) {
			t.Fatalf("bad command %q: dead letter %+v", bad.why, v)
		}
	}
	tt.Consume(string(InboxCommands), "u1", enc(&schemas.InboxCommand{Op: processors.InboxRead, UserID: "u1", MessageIDs: []string{"n1"}}))
	var kinds []string
	var seqs []int64
	for {
		_, v, ok := evs.Next()
		if !ok {
			break
		}
		kinds = append(kinds, v.(*schemas.InboxEvent).Kind)
		seqs = append(seqs, v.(*schemas.InboxEvent).Seq)
	}
	if strings.Join(kinds, ",") != "message,message,update" || seqs[0] != 1 || seqs[1] != 1 || seqs[2] != 2 {
		t.Fatalf("inbox events %v %v, want message,message,update with sequence 1,1,2 (the repeated add is announced "+
			"again with its own sequence, changing nothing)", kinds, seqs)
	}
	feed, _ := tt.TableValue(goka.GroupTable(InboxGroup), "u1").(*schemas.InboxFeed)
	if feed == nil || len(feed.Messages) != 1 || !feed.Messages[0].Read || feed.Unread != 0 || feed.Seq != 2 {
		t.Fatalf("feed %+v", feed)
	}
}

// A sink's invalid-recipient feedback makes the deliver group write the
// profile without the dead device (the others stay); a STOP opts the user out
// of the channel; a moved chat id is rewritten; feedback for a user with no
// stored profile writes nothing.
func TestDeliverGroupRemovesInvalidTargetsFromTheProfile(t *testing.T) {
	tt := tester.New(t)
	clk := &clock{time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	p := &Pipeline{Now: clk.now, Deliverer: processors.Deliverer{Limiter: processors.Limiter{PerDay: func(string) int { return 0 }}}}
	run(t, tt, p.DeliverGraph())
	tt.SetTableValue(Profiles, "u", &schemas.Profile{UserID: "u", Phone: "+14155550100", Devices: []schemas.Device{
		{Platform: "fcm", Token: "gone"}, {Platform: "apns", Token: "ok"}, {Platform: "webpush", Endpoint: "https://push.example/s1"}},
		Chat: map[string]map[string]string{"telegram": {"chatId": "42"}}})
	profiles := tt.NewQueueTracker(string(Profiles))
	fb := func(user string, f *schemas.DeliveryFeedback) {
		tt.Consume(string(Feedback), user, encode(t, schemas.FeedbackCodec, f))
	}
	fb("u", &schemas.DeliveryFeedback{NotificationID: "n1", Channel: "push", Status: processors.StatusSent,
		Invalid: []schemas.InvalidTarget{{Platform: "fcm", Token: "gone"}}})
	_, v, ok := profiles.Next()
	if !ok {
		t.Fatal("no profile written")
	}
	prof := v.(schemas.Decoded[schemas.Profile]).V
	if len(prof.Devices) != 2 || prof.Devices[0].Token != "ok" || prof.Devices[1].Endpoint == "" || prof.UpdatedAt == 0 {
		t.Fatalf("devices after removal %+v", prof.Devices)
	}
	tt.SetTableValue(Profiles, "u", prof)
	fb("u", &schemas.DeliveryFeedback{NotificationID: "n2", Channel: "telegram", Status: processors.StatusFailed,
		Invalid: []schemas.InvalidTarget{{Platform: "telegram", Token: "42"}}})
	_, v, _ = profiles.Next()
	if prof = v.(schemas.Decoded[schemas.Profile]).V; len(prof.Chat) != 0 {
		t.Fatalf("chat after removal %+v", prof.Chat)
	}
	tt.SetTableValue(Profiles, "u", prof)
	fb("u", &schemas.DeliveryFeedback{NotificationID: "n3", Channel: "sms", Status: processors.StatusUnsubscribed, Unsubscribe: true})
	_, v, _ = profiles.Next()
	if prof = v.(schemas.Decoded[schemas.Profile]).V; prof.Preferences.Categories["*"]["sms"] || prof.Phone == "" ||
		processors.Suppression(prof, "marketing", "sms") == "" || processors.Suppression(prof, "transactional", "sms") != "" {
		t.Fatalf("after STOP %+v", prof)
	}
	tt.SetTableValue(Profiles, "u", prof)
	prof.Chat = map[string]map[string]string{"telegram": {"chatId": "-100"}}
	tt.SetTableValue(Profiles, "u", prof)
	fb("u", &schemas.DeliveryFeedback{NotificationID: "n5", Channel: "telegram", Status: processors.StatusSent,
		Moved: []schemas.MovedTarget{{Platform: "telegram", From: "-100", To: "-1001234"}}})
	_, v, _ = profiles.Next()
	if prof = v.(schemas.Decoded[schemas.Profile]).V; prof.Chat["telegram"]["chatId"] != "-1001234" {
		t.Fatalf("moved chat %+v", prof.Chat)
	}
	fb("nobody", &schemas.DeliveryFeedback{NotificationID: "n4", Channel: "push", Status: processors.StatusFailed,
		Invalid: []schemas.InvalidTarget{{Platform: "fcm", Token: "x"}}})
	if _, v, ok := profiles.Next(); ok {
		t.Fatalf("a profile was made up for a user without one: %+v", v)
	}
}
