package processors

import (
	"fmt"
	"testing"

	"github.com/notifyd/notifyd/schemas"
)

func add(id string, at int64) *schemas.InboxCommand {
	return &schemas.InboxCommand{Op: InboxAdd, UserID: "u", At: at, Message: schemas.InboxItem{ID: id, Title: "t-" + id}}
}

// The feed keeps the newest messages first, capped; counts follow reads,
// archives and bulk marks; every change takes the next sequence number and a
// repeated command changes nothing.
func TestApplyInbox(t *testing.T) {
	var f *schemas.InboxFeed
	var ev *schemas.InboxEvent
	for i, id := range []string{"a", "b", "c", "d"} {
		f, ev = ApplyInbox(f, add(id, int64(i)), 3)
		if ev == nil || ev.Kind != InboxEventMessage || ev.Seq != int64(i+1) || ev.Items[0].ID != id {
			t.Fatalf("add %s: event %+v", id, ev)
		}
	}
	if len(f.Messages) != 3 || f.Messages[0].ID != "d" || f.Messages[2].ID != "b" || f.Unread != 3 || f.Unseen != 3 {
		t.Fatalf("capped feed: %+v", f)
	}
	if g, ev := ApplyInbox(f, add("c", 9), 3); ev != nil || g != f {
		t.Fatalf("a message added twice changed the feed: %+v", ev)
	}
	f, ev = ApplyInbox(f, &schemas.InboxCommand{Op: InboxRead, UserID: "u", MessageIDs: []string{"c", "zz"}}, 3)
	if ev == nil || ev.Kind != InboxEventUpdate || len(ev.Items) != 1 || !ev.Items[0].Read || !ev.Items[0].Seen || f.Unread != 2 || f.Unseen != 2 || ev.Seq != 5 {
		t.Fatalf("read: %+v %+v", ev, f)
	}
	if _, ev := ApplyInbox(f, &schemas.InboxCommand{Op: InboxRead, UserID: "u", MessageIDs: []string{"c"}}, 3); ev != nil {
		t.Fatalf("read twice: %+v", ev)
	}
	f, _ = ApplyInbox(f, &schemas.InboxCommand{Op: InboxArchive, UserID: "u", MessageIDs: []string{"d"}}, 3)
	if f.Unread != 1 || f.Unseen != 1 {
		t.Fatalf("archive: %+v", f)
	}
	f, ev = ApplyInbox(f, &schemas.InboxCommand{Op: InboxReadAll, UserID: "u"}, 3)
	if ev == nil || ev.Kind != InboxEventCount || f.Unread != 0 || f.Unseen != 0 || f.Messages[0].Read {
		t.Fatalf("read all (the archived one stays unread): %+v %+v", ev, f)
	}
	f, _ = ApplyInbox(f, &schemas.InboxCommand{Op: InboxUnarchive, UserID: "u", MessageIDs: []string{"d"}}, 3)
	if f.Unread != 1 {
		t.Fatalf("unarchived unread message not counted: %+v", f)
	}
	for _, bad := range []*schemas.InboxCommand{{Op: "drop", UserID: "u"}, {Op: InboxRead, UserID: "u"}, {Op: InboxAdd, UserID: "u"},
		{Op: InboxReadAll, UserID: "bad id"}} {
		if ValidateInboxCommand(bad) == nil {
			t.Errorf("invalid command accepted: %+v", bad)
		}
	}
}

// Any record on notify.inbox.commands either fails validation or applies
// without panicking, keeps the feed within its capacity and its counts right.
func FuzzInboxCommand(f *testing.F) {
	for _, c := range []*schemas.InboxCommand{add("a", 1), {Op: InboxRead, UserID: "u", MessageIDs: []string{"a"}},
		{Op: InboxReadAll, UserID: "u"}, {Op: "zap", UserID: "u"}} {
		b, _ := schemas.InboxCommandCodec.Encode(c)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := schemas.InboxCommandCodec.Decode(raw)
		if err != nil || ValidateInboxCommand(c) != nil {
			return
		}
		var feed *schemas.InboxFeed
		for _, cmd := range []*schemas.InboxCommand{add("x", 1), c, add("y", 2), c} {
			feed, _ = ApplyInbox(feed, cmd, 3)
		}
		if feed == nil || len(feed.Messages) > 3 {
			t.Fatalf("feed %+v", feed)
		}
		var unread int32
		for _, m := range feed.Messages {
			if !m.Read && !m.Archived {
				unread++
			}
		}
		if unread != feed.Unread {
			t.Fatalf("unread %d, counted %d", feed.Unread, unread)
		}
	})
}

// A recall removes the message and is remembered: the add arriving after it
// (a late delivery) does not bring the message back; recalling twice, or a
// message never seen, changes nothing the second time.
func TestInboxRecall(t *testing.T) {
	recall := &schemas.InboxCommand{Op: InboxRecall, UserID: "u", At: 2, MessageIDs: []string{"m1", "late"}}
	if err := ValidateInboxCommand(recall); err != nil {
		t.Fatal(err)
	}
	if err := ValidateInboxCommand(&schemas.InboxCommand{Op: InboxRecall, UserID: "u"}); err == nil {
		t.Fatal("a recall without ids is valid")
	}
	f, _ := ApplyInbox(nil, add("m1", 1), 0)
	f, _ = ApplyInbox(f, add("m2", 1), 0)
	f, ev := ApplyInbox(f, recall, 0)
	if ev == nil || ev.Kind != InboxEventRecall || len(ev.Items) != 1 || ev.Items[0].ID != "m1" || ev.Items[0].Title != "" {
		t.Fatalf("recall event %+v", ev)
	}
	if len(f.Messages) != 1 || f.Messages[0].ID != "m2" || f.Unread != 1 {
		t.Fatalf("feed after recall %+v", f)
	}
	if _, again := ApplyInbox(f, recall, 0); again != nil {
		t.Fatalf("a second recall changed something: %+v", again)
	}
	g, ev := ApplyInbox(f, add("late", 3), 0)
	if ev != nil || len(g.Messages) != 1 {
		t.Fatalf("a recalled message arrived after its recall: %+v", g)
	}
	many := &schemas.InboxCommand{Op: InboxRecall, UserID: "u"}
	for i := 0; i < MaxRecalled+10; i++ {
		many.MessageIDs = append(many.MessageIDs, fmt.Sprintf("x%d", i))
	}
	many.MessageIDs = many.MessageIDs[:MaxInboxIDs]
	for i := 0; i < 2; i++ {
		f, _ = ApplyInbox(f, many, 0)
		many.MessageIDs = append(many.MessageIDs[:0], fmt.Sprintf("y%d", i))
	}
	if len(f.Recalled) > MaxRecalled {
		t.Fatalf("%d recalled ids kept, at most %d", len(f.Recalled), MaxRecalled)
	}
}
