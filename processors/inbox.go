package processors

import (
	"fmt"
	"slices"

	"github.com/notifyd/notifyd/schemas"
)

// Inbox operations (InboxCommand.Op).
const (
	InboxAdd       = "add"
	InboxRead      = "read"
	InboxUnread    = "unread"
	InboxSeen      = "seen"
	InboxArchive   = "archive"
	InboxUnarchive = "unarchive"
	InboxReadAll   = "read_all"
	InboxSeenAll   = "seen_all"
	// InboxRecall removes messages their sender recalled (API key only,
	// never an end-user operation).
	InboxRecall = "recall"
)

// Inbox event kinds (InboxEvent.Kind).
const (
	InboxEventMessage = "message" // a new message
	InboxEventUpdate  = "update"  // messages changed state
	InboxEventCount   = "count"   // counts changed in bulk
	InboxEventRecall  = "recall"  // messages were recalled (removed)
)

// MaxRecalled bounds the recalled ids a feed remembers.
const MaxRecalled = 1000

// DefaultInboxCapacity is how many messages a user's inbox keeps (newest).
const DefaultInboxCapacity = 200

// MaxInboxIDs bounds the message ids of one command.
const MaxInboxIDs = 1000

// ValidateInboxCommand checks a command read from notify.inbox, which any
// Kafka client can write.
func ValidateInboxCommand(c *schemas.InboxCommand) error {
	if !ValidID(c.UserID) {
		return fmt.Errorf("userId: must be 1-200 characters of letters, digits and ._:@/+=-")
	}
	switch c.Op {
	case InboxAdd:
		if !ValidID(c.Message.ID) {
			return fmt.Errorf("message.id: must be 1-200 characters of letters, digits and ._:@/+=-")
		}
	case InboxRead, InboxUnread, InboxSeen, InboxArchive, InboxUnarchive, InboxRecall:
		if len(c.MessageIDs) == 0 || len(c.MessageIDs) > MaxInboxIDs {
			return fmt.Errorf("messageIds: 1 to %d ids are required for %s", MaxInboxIDs, c.Op)
		}
	case InboxReadAll, InboxSeenAll:
	default:
		return fmt.Errorf("op: unknown inbox operation %q", Clip(c.Op, 64))
	}
	return nil
}

// ApplyInbox applies a valid command to a user's feed (nil: empty) and
// returns the new feed and what changed, or a nil event when nothing did (a
// message added twice, one marked read again): commands are idempotent, so a
// redelivered one changes nothing.
func ApplyInbox(feed *schemas.InboxFeed, c *schemas.InboxCommand, capacity int) (*schemas.InboxFeed, *schemas.InboxEvent) {
	if capacity <= 0 {
		capacity = DefaultInboxCapacity
	}
	f := &schemas.InboxFeed{}
	if feed != nil {
		*f = *feed
		f.Messages = slices.Clone(feed.Messages)
	}
	ev := &schemas.InboxEvent{UserID: c.UserID, At: c.At}
	switch c.Op {
	case InboxAdd:
		if slices.ContainsFunc(f.Messages, func(m schemas.InboxItem) bool { return m.ID == c.Message.ID }) ||
			slices.Contains(f.Recalled, c.Message.ID) {
			return feed, nil
		}
		f.Seq++
		item := c.Message
		item.Seq, item.Seen, item.Read, item.Archived = f.Seq, false, false, false
		if item.CreatedAt == 0 {
			item.CreatedAt = c.At
		}
		f.Messages = append([]schemas.InboxItem{item}, f.Messages...)
		if len(f.Messages) > capacity {
			f.Messages = f.Messages[:capacity]
		}
		ev.Kind, ev.Items = InboxEventMessage, []schemas.InboxItem{item}
	case InboxRecall:
		f.Recalled = slices.Clone(f.Recalled)
		var gone []schemas.InboxItem
		for _, id := range c.MessageIDs {
			if !slices.Contains(f.Recalled, id) {
				f.Recalled = append(f.Recalled, id)
			}
		}
		if n := len(f.Recalled) - MaxRecalled; n > 0 {
			f.Recalled = f.Recalled[n:]
		}
		f.Messages = slices.DeleteFunc(f.Messages, func(m schemas.InboxItem) bool {
			if slices.Contains(c.MessageIDs, m.ID) {
				gone = append(gone, schemas.InboxItem{ID: m.ID, Seq: m.Seq})
				return true
			}
			return false
		})
		if feed != nil && len(gone) == 0 && len(f.Recalled) == len(feed.Recalled) {
			return feed, nil // recalled before, or never here and remembered already
		}
		f.Seq++
		ev.Kind, ev.Items = InboxEventRecall, gone
	case InboxReadAll, InboxSeenAll:
		changed := false
		for i := range f.Messages {
			m := &f.Messages[i]
			if m.Archived {
				continue
			}
			if c.Op == InboxReadAll && !m.Read {
				m.Read, changed = true, true
			}
			if !m.Seen {
				m.Seen, changed = true, true
			}
		}
		if !changed {
			return feed, nil
		}
		f.Seq++
		ev.Kind = InboxEventCount
	default:
		var items []schemas.InboxItem
		for i := range f.Messages {
			m := &f.Messages[i]
			if !slices.Contains(c.MessageIDs, m.ID) {
				continue
			}
			before := [3]bool{m.Seen, m.Read, m.Archived}
			switch c.Op {
			case InboxRead:
				m.Read, m.Seen = true, true
			case InboxUnread:
				m.Read = false
			case InboxSeen:
				m.Seen = true
			case InboxArchive:
				m.Archived, m.Seen = true, true
			case InboxUnarchive:
				m.Archived = false
			}
			if before != [3]bool{m.Seen, m.Read, m.Archived} {
				items = append(items, *m)
			}
		}
		if len(items) == 0 {
			return feed, nil
		}
		f.Seq++
		ev.Kind, ev.Items = InboxEventUpdate, items
	}
	f.Unread, f.Unseen = 0, 0
	for _, m := range f.Messages {
		if m.Archived {
			continue
		}
		if !m.Read {
			f.Unread++
		}
		if !m.Seen {
			f.Unseen++
		}
	}
	ev.Seq, ev.Unread, ev.Unseen = f.Seq, f.Unread, f.Unseen
	return f, ev
}
