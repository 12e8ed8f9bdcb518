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
	p, err := goka.NewProcessor(nil, graph, goka.WithTester(tt))
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
	if strings.Join(got, " ") != "n1:queued n2:suppressed n3:queued n4:rate_limited" {
		t.Fatalf("events %v", got)
	}
	st := tt.TableValue(goka.GroupTable(DeliverGroup), "u").(*schemas.UserState)
	if st.SentToday["email"] != 2 || st.Day != "2026-11-22" {
		t.Fatalf("user state %+v", st)
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
	if tt.TableValue(goka.GroupTable(SchedulerGroup), key) != nil {
		t.Fatal("released notification still held")
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
	n := &schemas.Notification{ID: "n1", UserID: "u", Template: "t", Recipient: schemas.Recipient{Email: "u@example.com"}}
	tt.Consume(string(Accepted), "u", encode(t, schemas.NotificationCodec, n))
	tt.Consume(string(Accepted), "u", encode(t, schemas.NotificationCodec, n))
	for _, e := range events(t, evs) {
		if e.Status != processors.StatusQueued {
			t.Fatalf("replay became %s: %s", e.Status, e.Reason)
		}
	}
	if st := tt.TableValue(goka.GroupTable(DeliverGroup), "u").(*schemas.UserState); st.SentToday["email"] != 1 {
		t.Fatalf("counted %d times", st.SentToday["email"])
	}
}
