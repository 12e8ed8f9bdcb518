package topology

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/codec"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

// Pipeline holds what the goka groups need besides the broker.
type Pipeline struct {
	DedupWindow time.Duration
	Deliverer   processors.Deliverer
	// TableWait bounds how long the deliver group waits for a template or profile
	// that a just-accepted notification names but its table has not caught up on.
	TableWait time.Duration
	// Partitions is the partition count of every topic; with it the dedup group
	// moves records a client partitioned differently (see dedup).
	Partitions int
	Now        func() time.Time

	// missAt remembers, per partition, when a wait for a table last timed out:
	// then the table has caught up and the record really is missing, so the
	// partition does not wait again for a second (bounding the stall).
	missMu sync.Mutex
	missAt map[int32]time.Time
}

// mayWait tells whether a partition may wait for a table now.
func (p *Pipeline) mayWait(partition int32) bool {
	p.missMu.Lock()
	defer p.missMu.Unlock()
	return time.Since(p.missAt[partition]) > time.Second
}

func (p *Pipeline) missed(partition int32) {
	p.missMu.Lock()
	defer p.missMu.Unlock()
	if p.missAt == nil {
		p.missAt = map[int32]time.Time{}
	}
	p.missAt[partition] = time.Now()
}

func (p *Pipeline) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

var (
	rawCodec       = new(codec.Bytes)
	statusCodec    = schemas.Goka[schemas.StatusEvent]{C: schemas.StatusEventCodec}
	notifCodec     = schemas.Goka[schemas.Notification]{C: schemas.NotificationCodec}
	deadCodec      = schemas.Goka[schemas.DeadLetter]{C: schemas.DeadLetterCodec}
	dedupCodec     = schemas.Goka[schemas.DedupEntry]{C: schemas.DedupEntryCodec}
	userStateCodec = schemas.Goka[schemas.UserState]{C: schemas.UserStateCodec}
	lifecycleCodec = schemas.Goka[schemas.Lifecycle]{C: schemas.LifecycleCodec}
	profileTable   = schemas.Lenient[schemas.Profile]{C: schemas.ProfileCodec}
	templateTable  = schemas.Lenient[schemas.Template]{C: schemas.TemplateCodec}
)

// DedupGraph: notify.ingest (key eventId) → one Notification per recipient on
// notify.accepted (key userId). Its table remembers eventIds for DedupWindow;
// notify.dedup.expire deletes entries past it (see Sweeper).
func (p *Pipeline) DedupGraph() *goka.GroupGraph {
	return goka.DefineGroup(DedupGroup,
		goka.Input(Ingest, rawCodec, p.dedup),
		goka.Input(DedupExpire, rawCodec, p.expire),
		goka.Output(Ingest, rawCodec),
		goka.Output(Accepted, notifCodec),
		goka.Output(Events, statusCodec),
		goka.Output(DLQ, deadCodec),
		goka.Persist(dedupCodec),
	)
}

func (p *Pipeline) dedup(ctx goka.Context, msg any) {
	raw, _ := msg.([]byte)
	// A client with its default partitioner (murmur2 in Java, librdkafka and
	// franz-go) puts an eventId on another partition than goka's: the record is
	// moved, unchanged, to the partition that holds its dedup state and receives
	// its expiry command.
	if p.Partitions > 1 && PartitionFor(ctx.Key(), p.Partitions) != ctx.Partition() {
		ctx.Emit(Ingest, ctx.Key(), raw)
		return
	}
	req, err := schemas.SendRequestCodec.Decode(raw)
	if err == nil {
		err = processors.ValidateRequest(req)
	}
	if err == nil && req.EventID != ctx.Key() {
		err = fmt.Errorf("record key %q must be the eventId %q", ctx.Key(), req.EventID)
	}
	now := p.now()
	if err != nil {
		p.reject(ctx, raw, "dedup", err, requestNotifications(req), now)
		return
	}
	if req.AcceptedAt == 0 {
		req.AcceptedAt = now.UnixMilli()
	}
	notifications := processors.Fanout(req)
	entry, _ := ctx.Value().(*schemas.DedupEntry)
	if processors.IsDuplicate(entry, now, p.DedupWindow) {
		reason := "duplicate of request " + req.EventID + " first seen at " +
			time.UnixMilli(entry.FirstSeen).UTC().Format(time.RFC3339Nano)
		for _, n := range notifications {
			ev := processors.NotificationEvent(n, processors.StatusDuplicate, "", reason, now)
			ev.ID = processors.StatusEventID(n.ID, processors.StatusDuplicate, strconv.FormatInt(now.UnixNano(), 10), 0)
			ctx.Emit(Events, n.ID, ev)
		}
		return
	}
	ctx.SetValue(&schemas.DedupEntry{FirstSeen: now.UnixMilli()})
	for _, n := range notifications {
		ctx.Emit(Accepted, n.UserID, n)
		ctx.Emit(Events, n.ID, processors.NotificationEvent(n, processors.StatusAccepted, "", "", now))
	}
}

func (p *Pipeline) expire(ctx goka.Context, _ any) {
	entry, _ := ctx.Value().(*schemas.DedupEntry)
	if entry != nil && processors.DedupExpired(entry, p.now(), p.DedupWindow) {
		ctx.Delete()
	}
}

// DeliverGraph: notify.accepted (key userId) joined with notify.profiles, looking
// up notify.templates → notify.out.<channel>.<priority> (key notificationId).
func (p *Pipeline) DeliverGraph() *goka.GroupGraph {
	edges := []goka.Edge{
		goka.Input(Accepted, rawCodec, p.deliver),
		goka.Join(Profiles, profileTable),
		goka.Lookup(Templates, templateTable),
		goka.Output(Events, statusCodec),
		goka.Output(DLQ, deadCodec),
		goka.Output(Scheduled, notifCodec),
		goka.Persist(userStateCodec),
	}
	for _, ch := range processors.AllChannels() {
		for _, pr := range processors.Priorities {
			edges = append(edges, goka.Output(Out(ch, pr), notifCodec))
		}
	}
	return goka.DefineGroup(DeliverGroup, edges...)
}

func (p *Pipeline) deliver(ctx goka.Context, msg any) {
	raw, _ := msg.([]byte)
	now := p.now()
	n, err := schemas.NotificationCodec.Decode(raw)
	if err == nil && n.UserID != ctx.Key() {
		err = fmt.Errorf("record key %q must be the userId %q", ctx.Key(), n.UserID)
	}
	if err == nil && n.ID == "" {
		err = errors.New("id: required")
	}
	if err != nil {
		var ns []*schemas.Notification
		if n != nil && n.ID != "" {
			ns = append(ns, n)
		}
		p.reject(ctx, raw, "deliver", err, ns, now)
		return
	}
	if n.SendAt > now.UnixMilli() {
		p.hold(ctx, n, n.SendAt, "scheduled for "+time.UnixMilli(n.SendAt).UTC().Format(time.RFC3339), now)
		return
	}
	fresh := now.Sub(time.UnixMilli(n.AcceptedAt)) < 10*p.TableWait && p.mayWait(ctx.Partition())
	tmpl := p.template(ctx, n.Template, fresh)
	profile := p.profile(ctx, n, fresh && processors.NeedsProfile(n, tmpl))
	if until, why, quiet := processors.QuietUntil(profile, processors.Category(n, tmpl), processors.Priority(n, tmpl), now); quiet {
		held := *n
		held.SendAt = until.UnixMilli()
		p.hold(ctx, &held, held.SendAt, why, now)
		return
	}
	st, _ := ctx.Value().(*schemas.UserState)
	if st == nil {
		st = &schemas.UserState{}
	}
	queued := false
	for _, o := range p.Deliverer.Deliver(n, profile, tmpl, st, now) {
		if o.Status == processors.StatusQueued {
			queued = true
			ctx.Emit(Out(o.Channel, o.Out.Priority), o.Out.ID, o.Out)
			ev := processors.NotificationEvent(o.Out, processors.StatusQueued, o.Channel, "", now)
			ctx.Emit(Events, n.ID, ev)
			continue
		}
		ctx.Emit(Events, n.ID, processors.NotificationEvent(n, o.Status, o.Channel, o.Reason, now))
	}
	if queued {
		ctx.SetValue(st)
	}
}

// hold parks a notification with the scheduler group until due; the chain runs
// then, so preferences and limits apply as they are at send time.
func (p *Pipeline) hold(ctx goka.Context, n *schemas.Notification, due int64, reason string, now time.Time) {
	ctx.Emit(Scheduled, processors.ScheduleKey(due, n.ID), n)
	ctx.Emit(Events, n.ID, processors.NotificationEvent(n, processors.StatusScheduled, "", reason, now))
}

// template looks the template up; for a fresh notification it waits a little
// for the table to catch up with a template written just before the send.
func (p *Pipeline) template(ctx goka.Context, id string, fresh bool) *schemas.Template {
	deadline := time.Now().Add(p.TableWait)
	for {
		if d, ok := ctx.Lookup(Templates, id).(schemas.Decoded[schemas.Template]); ok {
			if d.Err == nil {
				return d.V
			}
			return nil // undecodable template record: the notification is rejected as unknown template
		}
		if !fresh {
			return nil
		}
		if time.Now().After(deadline) {
			p.missed(ctx.Partition())
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// profile joins the user's profile; when wait is set (a fresh notification that
// needs an address from the profile) it waits a little for a profile written
// just before the send.
func (p *Pipeline) profile(ctx goka.Context, n *schemas.Notification, wait bool) *schemas.Profile {
	deadline := time.Now().Add(p.TableWait)
	for {
		if d, ok := ctx.Join(Profiles).(schemas.Decoded[schemas.Profile]); ok && d.Err == nil {
			return d.V
		}
		if !wait {
			return nil
		}
		if time.Now().After(deadline) {
			p.missed(ctx.Partition())
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// SchedulerGraph: notify.scheduled (key <dueMillis>/<notificationId>) holds
// notifications until notify.scheduler.due says their time has come (see
// SchedulerSweeper); then they go back to notify.accepted.
func (p *Pipeline) SchedulerGraph() *goka.GroupGraph {
	return goka.DefineGroup(SchedulerGroup,
		goka.Input(Scheduled, rawCodec, p.schedule),
		goka.Input(SchedulerDue, rawCodec, p.release),
		goka.Output(Accepted, notifCodec),
		goka.Output(Events, statusCodec),
		goka.Output(DLQ, deadCodec),
		goka.Persist(notifCodec),
	)
}

func (p *Pipeline) schedule(ctx goka.Context, msg any) {
	raw, _ := msg.([]byte)
	n, err := schemas.NotificationCodec.Decode(raw)
	if err == nil && ctx.Key() != processors.ScheduleKey(n.SendAt, n.ID) {
		err = fmt.Errorf("record key %q must be %q", ctx.Key(), processors.ScheduleKey(n.SendAt, n.ID))
	}
	if err != nil {
		p.reject(ctx, raw, "scheduler", err, nil, p.now())
		return
	}
	ctx.SetValue(n)
}

func (p *Pipeline) release(ctx goka.Context, _ any) {
	n, _ := ctx.Value().(*schemas.Notification)
	if n == nil || n.SendAt > p.now().UnixMilli() {
		return // already released, or a command ahead of its time
	}
	ctx.Emit(Accepted, n.UserID, n)
	ctx.Delete()
}

// StatusGraph: notify.events (key notificationId) → the lifecycle table read by
// GET /v1/notifications/{id}.
func (p *Pipeline) StatusGraph() *goka.GroupGraph {
	return goka.DefineGroup(StatusGroup,
		goka.Input(Events, rawCodec, p.status),
		goka.Output(DLQ, deadCodec),
		goka.Persist(lifecycleCodec),
	)
}

func (p *Pipeline) status(ctx goka.Context, msg any) {
	raw, _ := msg.([]byte)
	ev, err := schemas.StatusEventCodec.Decode(raw)
	if err == nil && ev.NotificationID != ctx.Key() {
		err = fmt.Errorf("record key %q must be the notificationId %q", ctx.Key(), ev.NotificationID)
	}
	if err != nil {
		// No rejected event here: it would land on this same topic.
		ctx.Emit(DLQ, ctx.Key(), deadLetter(ctx, raw, "status", err, p.now()))
		return
	}
	lc, _ := ctx.Value().(*schemas.Lifecycle)
	ctx.SetValue(processors.ApplyStatus(lc, ev))
}

// reject sends a bad record to the DLQ and emits a rejected event for every
// notification it can name (or one for the record itself).
func (p *Pipeline) reject(ctx goka.Context, raw []byte, stage string, err error, ns []*schemas.Notification, now time.Time) {
	ctx.Emit(DLQ, ctx.Key(), deadLetter(ctx, raw, stage, err, now))
	if len(ns) == 0 {
		ns = []*schemas.Notification{{ID: processors.RecordID(string(ctx.Topic()), ctx.Partition(), ctx.Offset()), EventID: ctx.Key()}}
	}
	for _, n := range ns {
		ctx.Emit(Events, n.ID, processors.NotificationEvent(n, processors.StatusRejected, "", stage+": "+err.Error(), now))
	}
}

func deadLetter(ctx goka.Context, raw []byte, stage string, err error, now time.Time) *schemas.DeadLetter {
	return &schemas.DeadLetter{
		Topic: string(ctx.Topic()), Partition: ctx.Partition(), Offset: ctx.Offset(),
		Key: []byte(ctx.Key()), Value: raw, Reason: err.Error(), Stage: stage, At: now.UnixMilli(),
	}
}

// requestNotifications names the notifications of a request that failed
// validation but decoded, so each gets its rejected event.
func requestNotifications(req *schemas.SendRequest) []*schemas.Notification {
	if req == nil || req.EventID == "" {
		return nil
	}
	var out []*schemas.Notification
	for _, r := range req.Recipients {
		if r.UserID != "" {
			out = append(out, &schemas.Notification{ID: processors.NotificationID(req.EventID, r.UserID),
				EventID: req.EventID, UserID: r.UserID, Template: req.Template})
		}
	}
	return out
}
