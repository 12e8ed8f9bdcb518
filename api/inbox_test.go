package api

import (
	"fmt"
	"testing"

	"github.com/notifyd/notifyd/schemas"
)

// The hub bounds streams per instance and per user, delivers a user's events
// to that user's streams only, and ends a stream that does not keep up
// instead of blocking the others.
func TestInboxHubBoundsAndFansOut(t *testing.T) {
	h := &InboxHub{MaxStreams: 25}
	var subs []*inboxSub
	for i := 0; i < MaxStreamsPerUser; i++ {
		s, err := h.Subscribe("a")
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	if _, err := h.Subscribe("a"); err == nil {
		t.Fatal("one user opened more than MaxStreamsPerUser streams")
	}
	b, err := h.Subscribe("b")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		if _, err := h.Subscribe(fmt.Sprintf("c%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.Subscribe("d"); err == nil || h.Streams() != 25 {
		t.Fatalf("instance limit: %v, %d streams", err, h.Streams())
	}
	h.Publish(&schemas.InboxEvent{UserID: "b", Seq: 1, Kind: "count"})
	if ev := <-b.events; ev.Seq != 1 {
		t.Fatalf("b got %+v", ev)
	}
	select {
	case ev := <-subs[0].events:
		t.Fatalf("a got b's event %+v", ev)
	default:
	}
	for i := 0; i < cap(b.events)+1; i++ { // b stops reading
		h.Publish(&schemas.InboxEvent{UserID: "b", Seq: int64(i + 2)})
	}
	select {
	case <-b.overflow:
	default:
		t.Fatal("a stream that does not keep up was not ended")
	}
	h.Unsubscribe(b)
	h.Unsubscribe(b)
	if h.Streams() != 24 {
		t.Fatalf("%d streams after unsubscribing", h.Streams())
	}
	if InboxToken([]byte("s"), "a") == InboxToken([]byte("s"), "b") || InboxToken([]byte("s"), "a") == InboxToken([]byte("t"), "a") {
		t.Fatal("tokens do not depend on the user and the secret")
	}
}
