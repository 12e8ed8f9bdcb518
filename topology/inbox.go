package topology

import (
	"fmt"

	"github.com/lovoo/goka"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

// The in-app inbox: the inbox provider (channel inapp) and the end-user API
// write commands keyed by userId; the inbox group keeps each user's feed and
// announces every change on notify.inbox.events, which every API instance
// reads to push it to the user's open streams (SSE).
const (
	InboxCommands goka.Stream = "notify.inbox.commands" // InboxCommand, key userId
	InboxEvents   goka.Stream = "notify.inbox.events"   // InboxEvent, key userId
	InboxGroup    goka.Group  = "notify.inbox"
)

var (
	inboxFeedCodec  = schemas.Goka[schemas.InboxFeed]{C: schemas.InboxFeedCodec}
	inboxEventCodec = schemas.Goka[schemas.InboxEvent]{C: schemas.InboxEventCodec}
	inboxFeedTable  = schemas.Lenient[schemas.InboxFeed]{C: schemas.InboxFeedCodec}
)

// InboxFeedTableCodec reads the inbox group's table leniently (views).
func InboxFeedTableCodec() goka.Codec { return inboxFeedTable }

// inboxTopics are the inbox's topics for Topics.
func inboxTopics() []Topic {
	return []Topic{{Name: string(InboxCommands)}, {Name: string(InboxEvents)},
		{Name: string(goka.GroupTable(InboxGroup)), Compact: true}}
}

// InboxGraph: notify.inbox.commands (key userId) → the feed table, and an
// event per change on notify.inbox.events.
func (p *Pipeline) InboxGraph() *goka.GroupGraph {
	return goka.DefineGroup(InboxGroup,
		goka.Input(InboxCommands, rawCodec, p.inbox),
		goka.Output(InboxEvents, inboxEventCodec),
		goka.Output(DLQ, deadCodec),
		goka.Persist(inboxFeedCodec),
	)
}

func (p *Pipeline) inbox(ctx goka.Context, msg any) {
	defer p.Watch.Begin(string(InboxGroup), ctx.Partition())()
	raw, _ := msg.([]byte)
	c, err := decodeOrNull(raw, schemas.InboxCommandCodec.Decode)
	if err == nil {
		err = processors.ValidateInboxCommand(c)
	}
	if err == nil && schemas.TenantKey(c.Tenant, c.UserID) != ctx.Key() {
		err = fmt.Errorf("record key %q must be the userId %q (tenant-qualified)", processors.Clip(ctx.Key(), 200),
			schemas.TenantKey(c.Tenant, c.UserID))
	}
	if err != nil {
		p.deadLetterOnly(ctx, raw, "inbox", err)
		return
	}
	if c.At == 0 {
		c.At = p.now().UnixMilli()
	}
	feed, _ := ctx.Value().(*schemas.InboxFeed)
	next, ev := processors.ApplyInbox(feed, c, p.InboxCapacity)
	if ev == nil {
		if feed != nil {
			ctx.SetValue(feed) // a replay may find local state ahead of the table topic
		}
		if item, ok := feedItem(feed, c); ok {
			// A message added again: a redelivery, or a replay after a crash
			// between the feed's write and its event. Announced again with
			// its own sequence number — streams skip what they have sent.
			ctx.Emit(InboxEvents, ctx.Key(), &schemas.InboxEvent{UserID: c.UserID, Seq: item.Seq,
				Kind: processors.InboxEventMessage, Items: []schemas.InboxItem{item}, Unread: feed.Unread, Unseen: feed.Unseen, At: c.At})
		}
		return
	}
	b, err := schemas.InboxFeedCodec.Encode(next)
	if err == nil && !Fits(ctx.Key(), b) {
		// The capacity is in messages; a feed of huge ones is trimmed to fit.
		for len(next.Messages) > 1 && !Fits(ctx.Key(), b) {
			next.Messages = next.Messages[:len(next.Messages)*3/4]
			b, err = schemas.InboxFeedCodec.Encode(next)
		}
	}
	if err != nil {
		p.deadLetterOnly(ctx, raw, "inbox", err)
		return
	}
	ctx.SetValue(next)
	Fault("inbox.after-feed") // crash tests: the feed written, its announcement not
	ctx.Emit(InboxEvents, ctx.Key(), ev)
}

// feedItem is the message an add command names, when the feed has it.
func feedItem(feed *schemas.InboxFeed, c *schemas.InboxCommand) (schemas.InboxItem, bool) {
	if feed == nil || c.Op != processors.InboxAdd {
		return schemas.InboxItem{}, false
	}
	for _, m := range feed.Messages {
		if m.ID == c.Message.ID {
			return m, true
		}
	}
	return schemas.InboxItem{}, false
}
