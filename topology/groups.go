package topology

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/codec"

	"github.com/notifyd/notifyd/crypt"
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
	// ReleaseGrace is how long the scheduler keeps a released entry before
	// deleting it (DefaultReleaseGrace when zero): long enough that the release
	// was committed, so a replay can never find the entry gone.
	ReleaseGrace time.Duration
	// Watch, when set, tracks every record in work, for readiness.
	Watch *Watchdog
	// DeadLetter, when set, is told the stage of every dead letter produced.
	DeadLetter func(stage string)
	// InboxCapacity is how many messages a user's inbox keeps
	// (processors.DefaultInboxCapacity when zero).
	InboxCapacity int
	// Keys seals the personal fields of every notification and profile the
	// groups write, and opens those they read (crypt.Keyring); nil writes them
	// in clear (tests of other concerns).
	Keys processors.Sealer
	// Audience lists campaigns' recipients (nil: campaigns do not fan out).
	Audience AudienceSource
	// CampaignStep is about how often a running campaign takes a step
	// (10*DefaultCampaignStep when zero): its rate is spread over them.
	CampaignStep time.Duration
	// CatchUp is how late a schedule still fires a missed run (DefaultCatchUp when zero).
	CatchUp time.Duration

	// missAt remembers, per partition, when a wait for a table last timed out:
	// then the table has caught up and the record really is missing, so the
	// partition does not wait again for a second (bounding the stall).
	missMu sync.Mutex
	missAt map[int32]time.Time
}

// DefaultReleaseGrace is the scheduler's default ReleaseGrace.
const DefaultReleaseGrace = 30 * time.Second

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

func (p *Pipeline) releaseGrace() time.Duration {
	if p.ReleaseGrace > 0 {
		return p.ReleaseGrace
	}
	return DefaultReleaseGrace
}

// preEncoded lets a callback encode a value itself, to check its size before
// anything is produced, and emit the bytes; readers decode T.
type preEncoded[T any] struct{ schemas.Goka[T] }

func (c preEncoded[T]) Encode(v any) ([]byte, error) {
	if b, ok := v.([]byte); ok {
		return b, nil
	}
	return c.Goka.Encode(v)
}

var (
	rawCodec       = new(codec.Bytes)
	statusCodec    = schemas.Goka[schemas.StatusEvent]{C: schemas.StatusEventCodec}
	notifCodec     = preEncoded[schemas.Notification]{schemas.Goka[schemas.Notification]{C: schemas.NotificationCodec}}
	deadCodec      = preEncoded[schemas.DeadLetter]{schemas.Goka[schemas.DeadLetter]{C: schemas.DeadLetterCodec}}
	dedupCodec     = schemas.Goka[schemas.DedupEntry]{C: schemas.DedupEntryCodec}
	userStateCodec = schemas.Goka[schemas.UserState]{C: schemas.UserStateCodec}
	lifecycleCodec = schemas.Goka[schemas.Lifecycle]{C: schemas.LifecycleCodec}
	scheduledTable = scheduledCodec{}
	profileTable   = schemas.Lenient[schemas.Profile]{C: schemas.ProfileCodec}
	templateTable  = schemas.Lenient[schemas.Template]{C: schemas.TemplateCodec}
)

// originHeader carries, on an ingest record the dedup group moved to goka's
// partition, where the record was first produced.
const originHeader = "notifyd-origin"

// Fits tells whether a record of key and value may be produced (MaxRecordBytes).
func Fits(key string, value []byte) bool { return len(key)+len(value) <= MaxRecordBytes }

// tooLarge is the reason of a record that does not fit.
func tooLarge(what string, n int) error {
	return fmt.Errorf("%s of %d bytes exceeds the record limit of %d bytes", what, n, MaxRecordBytes)
}

// DedupGraph: notify.ingest (key eventId) → one Notification per recipient on
// notify.accepted (key userId). Its table remembers eventIds for DedupWindow;
// notify.dedup.expire deletes entries past it (see Sweeper).
func (p *Pipeline) DedupGraph() *goka.GroupGraph {
	var edges []goka.Edge
	for _, lane := range IngestLanes {
		edges = append(edges, goka.Input(lane, rawCodec, p.dedup), goka.Output(lane, rawCodec))
	}
	for _, lane := range AcceptedLanes {
		edges = append(edges, goka.Output(lane, notifCodec))
	}
	return goka.DefineGroup(DedupGroup, append(edges,
		goka.Input(DedupExpire, rawCodec, p.expire),
		// New users' data keys (see acceptWhenKeyed).
		goka.Output(goka.Stream(DataKeys), rawCodec),
		goka.Output(Events, statusCodec),
		goka.Output(DLQ, deadCodec),
		goka.Persist(dedupCodec),
	)...)
}

// dedup turns a request into its notifications, once per eventId. The table
// entry and the emitted notifications are separate writes that a crash can
// split, so the entry names the ingest record that created it: when goka
// replays that same record after a crash, its notifications are emitted again
// (every stage downstream is idempotent per notification), and only another
// record with the same eventId is a duplicate.
func (p *Pipeline) dedup(ctx goka.Context, msg any) {
	defer p.Watch.Begin(string(DedupGroup), ctx.Partition())()
	raw, _ := msg.([]byte)
	now := p.now()
	if raw == nil {
		p.reject(ctx, nil, "dedup", errors.New("null value: a SendRequest record is required"), nil, now)
		return
	}
	origin := originOf(ctx)
	// A client with its default partitioner (murmur2 in Java, librdkafka and
	// franz-go) puts an eventId on another partition than goka's: the record is
	// moved, unchanged, to the partition that holds its dedup state and receives
	// its expiry command, remembering where it came from.
	if p.Partitions > 1 && PartitionFor(ctx.Key(), p.Partitions) != ctx.Partition() {
		ctx.Emit(ctx.Topic(), ctx.Key(), raw, goka.WithCtxEmitHeaders(goka.Headers{originHeader: []byte(origin)}))
		return
	}
	req, err := schemas.SendRequestCodec.Decode(raw)
	if err == nil {
		err = processors.ValidateRequest(req)
	}
	if err == nil && schemas.TenantKey(req.Tenant, req.EventID) != ctx.Key() {
		err = fmt.Errorf("record key %q must be the eventId %q (tenant-qualified)", processors.Clip(ctx.Key(), 200),
			processors.Clip(schemas.TenantKey(req.Tenant, req.EventID), 200))
	}
	if err != nil {
		p.reject(ctx, raw, "dedup", err, requestNotifications(req), now)
		return
	}
	entry, _ := ctx.Value().(*schemas.DedupEntry)
	if processors.IsDuplicate(entry, now, p.DedupWindow) {
		if entry.Origin == origin {
			// The record that created the entry, replayed after a crash. The
			// entry is written again too: local state may hold it while the
			// table topic lost it (see status).
			if req.AcceptedAt == 0 {
				req.AcceptedAt = entry.FirstSeen
			}
			ctx.SetValue(entry)
			p.acceptWhenKeyed(ctx, raw, req, origin, now)
			return
		}
		reason := "duplicate of request " + req.EventID + " first seen at " +
			time.UnixMilli(entry.FirstSeen).UTC().Format(time.RFC3339Nano)
		for _, n := range processors.Fanout(req) {
			ev := processors.NotificationEvent(n, processors.StatusDuplicate, "", reason, now)
			ev.ID = processors.StatusEventID(n.ID, processors.StatusDuplicate, origin, 0)
			ctx.Emit(Events, n.ID, ev)
		}
		return
	}
	if req.AcceptedAt == 0 {
		req.AcceptedAt = now.UnixMilli()
	}
	ctx.SetValue(&schemas.DedupEntry{FirstSeen: now.UnixMilli(), Origin: origin})
	Fault("dedup.after-entry") // crash tests: the entry written, its notifications not
	p.acceptWhenKeyed(ctx, raw, req, origin, now)
}

// keysHeader counts the passes a request made through its ingest lane
// waiting for the keys of users it is the first to name.
const keysHeader = "notifyd-keys"

// maxKeyPasses bounds those passes; past it the request is accepted anyway,
// and sealing waits for the keys in the callback (crypt's wait).
const maxKeyPasses = 20

// keyPreparer is crypt.Keyring's Prepare.
type keyPreparer interface {
	Prepare(ctx context.Context, subject string) (bool, []crypt.Record, error)
}

// acceptWhenKeyed accepts a request once every recipient has a written data
// key. A user nobody sealed for before needs one, and writing it from the
// callback would cost a broker round trip per new user, in series on the
// partition. Instead the request emits the new keys' records, goes back on
// its lane (with its origin, so the next pass is the same request, not a
// duplicate), and the partition goes on with other records. When it comes
// round again the keys are written (the view holds them) and it is accepted.
//
// No sealed record can outlive its key: Seal uses a prepared key only once the
// view shows its record. A crash between the passes loses nothing: goka
// commits the pass only after its emits (keys, the request again, the entry)
// were written, and a replay of the pass does it again.
func (p *Pipeline) acceptWhenKeyed(ctx goka.Context, raw []byte, req *schemas.SendRequest, origin string, now time.Time) {
	ns := processors.Fanout(req)
	subjects := make([]string, len(ns))
	for i, n := range ns {
		subjects[i] = processors.Subject(n)
	}
	if p.keysPending(ctx, raw, goka.Headers{originHeader: []byte(origin)}, subjects) {
		Fault("dedup.after-keys") // crash tests: keys and the request's next pass emitted, not committed
		return
	}
	p.accept(ctx, ns, origin, now)
}

// keysPending makes sure every subject has a written data key. When one has
// not, it emits the new keys' records, puts the record in work back on its
// topic (with headers, and the pass counted) and tells the caller to stop
// there: the record comes round again once the keys are written. It never
// waits; past maxKeyPasses it lets the caller go on (its Seal waits).
func (p *Pipeline) keysPending(ctx goka.Context, raw []byte, headers goka.Headers, subjects []string) bool {
	kp, ok := p.Keys.(keyPreparer)
	passes, _ := strconv.Atoi(string(ctx.Headers()[keysHeader]))
	if !ok || passes >= maxKeyPasses {
		return false
	}
	waiting := false
	for i, subject := range subjects {
		if slices.Contains(subjects[:i], subject) {
			continue
		}
		written, recs, err := kp.Prepare(context.Background(), subject)
		if err != nil {
			continue // the caller's Seal meets it too, and rejects with the reason
		}
		for _, r := range recs {
			ctx.Emit(goka.Stream(DataKeys), r.Key, r.Value)
		}
		waiting = waiting || !written
	}
	if !waiting {
		return false
	}
	h := goka.Headers{keysHeader: []byte(strconv.Itoa(passes + 1))}
	for k, v := range headers {
		h[k] = v
	}
	ctx.Emit(ctx.Topic(), ctx.Key(), raw, goka.WithCtxEmitHeaders(h))
	return true
}

// accept emits each notification and its accepted event; one that is too
// large to produce is rejected instead. The event's id names the ingest record
// (origin): a replay repeats it, a new request after the window does not.
func (p *Pipeline) accept(ctx goka.Context, ns []*schemas.Notification, origin string, now time.Time) {
	for _, n := range ns {
		sealed, err := processors.SealNotification(context.Background(), p.Keys, n)
		var b []byte
		if err == nil {
			b, err = schemas.NotificationCodec.Encode(sealed)
		}
		if err == nil && !Fits(n.UserID, b) {
			err = tooLarge("notification record", len(b))
		}
		if err != nil {
			p.rejectNotification(ctx, n, b, "dedup", "", err, now)
			continue
		}
		ctx.Emit(AcceptedLane(n.Priority), schemas.TenantKey(n.Tenant, n.UserID), b)
		ev := processors.NotificationEvent(n, processors.StatusAccepted, "", "", now)
		// The category is the template's (a request may only narrow it),
		// known once the deliver group has the template: not the request's.
		ev.Category = ""
		ev.ID = processors.StatusEventID(n.ID, processors.StatusAccepted, origin, 0)
		ctx.Emit(Events, n.ID, ev)
	}
}

// originOf names the record in work: where it was first produced.
func originOf(ctx goka.Context) string {
	if h := ctx.Headers()[originHeader]; len(h) > 0 && len(h) <= 64 {
		return string(h)
	}
	o := strconv.Itoa(int(ctx.Partition())) + "/" + strconv.FormatInt(ctx.Offset(), 10)
	// Offsets of different lanes coincide: a lane other than notify.ingest
	// names itself (the normal lane's origins are unchanged, so dedup
	// entries written before lanes still recognise their record's replay).
	if t := ctx.Topic(); t != Ingest {
		o = strings.TrimPrefix(string(t), string(Ingest)+".") + ":" + o
	}
	return o
}

func (p *Pipeline) expire(ctx goka.Context, _ any) {
	entry, _ := ctx.Value().(*schemas.DedupEntry)
	if entry != nil && processors.DedupExpired(entry, p.now(), p.DedupWindow) {
		ctx.Delete()
	}
}

// DeliverGraph: notify.accepted (key userId) joined with notify.profiles, looking
// up notify.templates → notify.out.<channel>.<priority> (key notificationId).
// notify.deliver.feedback tells it what no provider accepted.
func (p *Pipeline) DeliverGraph() *goka.GroupGraph {
	edges := []goka.Edge{
		goka.Input(Feedback, rawCodec, p.feedback),
		goka.Join(Profiles, profileTable),
		goka.Lookup(Templates, templateTable),
		goka.Lookup(TemplateVersions, templateTable),
		goka.Lookup(Cancels, cancellationView),
		goka.Output(Events, statusCodec),
		goka.Output(DLQ, deadCodec),
		goka.Output(Scheduled, notifCodec),
		// Providers' invalid-recipient answers remove the target from the
		// profile (see feedback): the group writes the joined table's topic.
		goka.Output(goka.Stream(Profiles), profileTable),
		goka.Persist(userStateCodec),
	}
	for _, lane := range AcceptedLanes {
		edges = append(edges, goka.Input(lane, rawCodec, p.deliver))
	}
	for _, ch := range processors.AllChannels() {
		for _, pr := range processors.Priorities {
			edges = append(edges, goka.Output(Out(ch, pr), notifCodec))
		}
	}
	return goka.DefineGroup(DeliverGroup, edges...)
}

func (p *Pipeline) deliver(ctx goka.Context, msg any) {
	defer p.Watch.Begin(string(DeliverGroup), ctx.Partition())()
	raw, _ := msg.([]byte)
	now := p.now()
	if raw == nil {
		p.reject(ctx, nil, "deliver", errors.New("null value: a Notification record is required"), nil, now)
		return
	}
	n, err := schemas.NotificationCodec.Decode(raw)
	if err == nil {
		err = processors.ValidateNotification(n)
	}
	if err == nil {
		err = processors.OpenNotification(context.Background(), p.Keys, n)
	}
	if err == nil && schemas.TenantKey(n.Tenant, n.UserID) != ctx.Key() {
		err = fmt.Errorf("record key %q must be the userId %q (tenant-qualified)", processors.Clip(ctx.Key(), 200),
			schemas.TenantKey(n.Tenant, n.UserID))
	}
	if err != nil {
		var ns []*schemas.Notification
		if n != nil && processors.ValidID(n.ID) {
			ns = append(ns, n)
		}
		p.reject(ctx, raw, "deliver", err, ns, now)
		return
	}
	if why := p.canceled(ctx, n); why != "" {
		ev := processors.NotificationEvent(n, processors.StatusCanceled, "", why, now)
		ev.ID = processors.StatusEventID(n.ID, processors.StatusCanceled, "deliver", 0)
		ctx.Emit(Events, n.ID, ev)
		return
	}
	fresh := now.Sub(time.UnixMilli(n.AcceptedAt)) < 10*p.TableWait && p.mayWait(ctx.Partition())
	if n.SendAt > now.UnixMilli() {
		if !processors.Pinned(n) {
			// A producer that does not pin: the version current at
			// acceptance is the one sent later.
			processors.PinTemplate(n, p.template(ctx, schemas.TenantKey(n.Tenant, n.Template), fresh))
		}
		p.hold(ctx, n, n.SendAt, "scheduled for "+time.UnixMilli(n.SendAt).UTC().Format(time.RFC3339), now)
		return
	}
	current := p.template(ctx, schemas.TenantKey(n.Tenant, n.Template), fresh)
	// The version n was accepted with is what it renders; its category
	// never widens after acceptance (and a request's only narrows it).
	tmpl, err := processors.PinnedTemplate(n, current, func(v int64) *schemas.Template {
		return p.templateVersion(ctx, schemas.TemplateVersionKey(n.Tenant, n.Template, v), fresh)
	})
	if err != nil {
		p.rejectNotification(ctx, n, raw, "deliver", "", err, now)
		return
	}
	n.Category = processors.DeliveryCategory(n, tmpl, current)
	st, _ := ctx.Value().(*schemas.UserState)
	if st == nil {
		st = &schemas.UserState{}
	}
	switch next, done := p.digest(ctx, n, tmpl, st, raw, now); {
	case done:
		return
	case next != nil:
		n = next
	}
	profile := p.profile(ctx, n, fresh && (processors.NeedsProfile(n, tmpl) || n.LocalTime != ""))
	if n.LocalTime != "" {
		// "09:00 in the recipient's day": held until then, and released
		// without localTime so the chain runs then as for any other.
		due, loc, err := processors.LocalDue(profile, n.LocalTime, now)
		if err != nil {
			p.rejectNotification(ctx, n, raw, "deliver", "", err, now)
			return
		}
		held := *n
		held.LocalTime = ""
		if due.After(now) {
			held.SendAt = due.UnixMilli()
			p.hold(ctx, &held, held.SendAt, fmt.Sprintf("local time %s (%s) at %s", n.LocalTime, loc, due.Format(time.RFC3339)), now)
			return
		}
		n = &held
	}
	if until, why, quiet := processors.QuietUntil(profile, processors.Category(n, tmpl), processors.Priority(n, tmpl), now); quiet {
		held := *n
		held.SendAt = until.UnixMilli()
		p.hold(ctx, &held, held.SendAt, why, now)
		return
	}
	queued := false
	for _, o := range p.Deliverer.Deliver(n, profile, tmpl, st, now) {
		if o.Status == processors.StatusQueued {
			out, err := processors.SealNotification(context.Background(), p.Keys, o.Out)
			var b []byte
			if err == nil {
				b, err = schemas.NotificationCodec.Encode(out)
			}
			if err == nil && !Fits(o.Out.ID, b) {
				err = tooLarge("routed "+o.Channel+" notification", len(b))
			}
			if err != nil {
				// Its content hash stays recorded: harmless, the same content would
				// be just as large again.
				p.rejectNotification(ctx, n, b, "deliver", o.Channel, err, now)
				queued = true
				continue
			}
			queued = true
			// No queued event: the sink's first event for it carries RoutedAt
			// (queuedAt), and the status group and analytics record the queued
			// state from that (processors.ImpliedQueued).
			ctx.Emit(Out(o.Channel, o.Out.Priority), o.Out.ID, b)
			continue
		}
		ctx.Emit(Events, n.ID, processors.NotificationEvent(n, o.Status, o.Channel, o.Reason, now))
	}
	if queued {
		ctx.SetValue(st)
	}
}

// feedback: a routed notification that no provider accepted (failed, expired)
// no longer counts as content sent, so a resend of the same content goes out.
func (p *Pipeline) feedback(ctx goka.Context, msg any) {
	defer p.Watch.Begin(string(DeliverGroup), ctx.Partition())()
	raw, _ := msg.([]byte)
	fb, err := decodeOrNull(raw, schemas.FeedbackCodec.Decode)
	if err == nil {
		err = processors.OpenFeedback(context.Background(), p.Keys, ctx.Key(), fb)
		if errors.Is(err, crypt.ErrErased) {
			return // the user was erased: there is no profile left to correct
		}
	}
	if err != nil {
		p.deadLetterOnly(ctx, raw, "deliver.feedback", err)
		return
	}
	if len(fb.Invalid) > 0 || fb.Unsubscribe || len(fb.Moved) > 0 {
		p.removeInvalid(ctx, fb)
	}
	if fb.Status == processors.StatusSent {
		return // delivered to some targets: the content was sent
	}
	st, _ := ctx.Value().(*schemas.UserState)
	if st != nil {
		// Written even when nothing changed: a replay may find local state
		// ahead of the table topic (see status).
		processors.Forget(st, fb.NotificationID, fb.Channel)
		ctx.SetValue(st)
	}
}

// removeInvalid writes the user's profile without the targets a provider
// declared invalid (or opted out of the channel after a STOP), so they are not
// tried again. The profile topic is keyed by userId like the feedback, so the
// profile read here is this partition's, current up to the writes before it;
// a profile written through the API at the same moment may win over it, and
// the next send to the dead target removes it again.
func (p *Pipeline) removeInvalid(ctx goka.Context, fb *schemas.DeliveryFeedback) {
	d, ok := ctx.Join(Profiles).(schemas.Decoded[schemas.Profile])
	if ok && d.Err != nil {
		return // an unreadable profile is not overwritten
	}
	if !ok || d.V == nil {
		if !fb.Unsubscribe {
			return // no profile (inline contacts only): nothing stored to remove
		}
		// An opt-out of a user known only by inline contacts is kept: in a
		// profile of their own, holding only the preference.
		tenant, user := schemas.SplitTenantKey(ctx.Key())
		d.V = &schemas.Profile{UserID: user, Tenant: tenant}
	}
	opened, err := processors.OpenProfile(context.Background(), p.Keys, d.V)
	if err != nil {
		return // erased or unreadable: nothing to correct
	}
	prof := *opened
	prof.Devices = append([]schemas.Device(nil), opened.Devices...)
	prof.Chat = map[string]map[string]string{}
	for app, m := range opened.Chat {
		prof.Chat[app] = maps.Clone(m)
	}
	prof.Preferences.Categories = map[string]map[string]bool{}
	for cat, m := range opened.Preferences.Categories {
		prof.Preferences.Categories[cat] = maps.Clone(m)
	}
	changed := processors.MoveTargets(&prof, fb.Moved)
	everything := fb.Unsubscribe && fb.UnsubscribeCategory == ""
	changed = processors.RemoveInvalid(&prof, fb.Channel, fb.Invalid, everything) || changed
	if fb.Unsubscribe && fb.UnsubscribeCategory != "" {
		changed = processors.OptOut(&prof, fb.UnsubscribeCategory, fb.Channel) || changed
	}
	if !changed {
		return
	}
	prof.UpdatedAt = p.now().UnixMilli()
	sealed, err := processors.SealProfile(context.Background(), p.Keys, &prof)
	if err != nil {
		p.deadLetterOnly(ctx, nil, "deliver.feedback", err)
		return
	}
	ctx.Emit(goka.Stream(Profiles), ctx.Key(), sealed)
}

// hold parks a notification with the scheduler group until due; the chain runs
// then, so preferences and limits apply as they are at send time.
func (p *Pipeline) hold(ctx goka.Context, n *schemas.Notification, due int64, reason string, now time.Time) {
	key := processors.ScheduleKey(due, n.ID)
	sealed, err := processors.SealNotification(context.Background(), p.Keys, n)
	var b []byte
	if err == nil {
		b, err = schemas.NotificationCodec.Encode(sealed)
	}
	if err == nil && !Fits(key, b) {
		err = tooLarge("scheduled notification", len(b))
	}
	if err != nil {
		p.rejectNotification(ctx, n, b, "deliver", "", err, now)
		return
	}
	ctx.Emit(Scheduled, key, b)
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

// templateVersion looks up a stored template version; like template, a
// fresh notification waits a little for a version written just before it.
func (p *Pipeline) templateVersion(ctx goka.Context, key string, fresh bool) *schemas.Template {
	deadline := time.Now().Add(p.TableWait)
	for {
		if d, ok := ctx.Lookup(TemplateVersions, key).(schemas.Decoded[schemas.Template]); ok {
			if d.Err == nil {
				return d.V
			}
			return nil
		}
		if !fresh || time.Now().After(deadline) {
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
			prof, err := processors.OpenProfile(context.Background(), p.Keys, d.V)
			if err != nil {
				// Erased (or unreadable): the profile is as good as gone.
				return nil
			}
			return prof
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
		goka.Output(Accepted, notifCodec), goka.Output(AcceptedHigh, notifCodec), goka.Output(AcceptedLow, notifCodec),
		goka.Output(Events, statusCodec),
		goka.Output(DLQ, deadCodec),
		goka.Persist(scheduledTable),
	)
}

func (p *Pipeline) schedule(ctx goka.Context, msg any) {
	defer p.Watch.Begin(string(SchedulerGroup), ctx.Partition())()
	raw, _ := msg.([]byte)
	n, err := decodeOrNull(raw, schemas.NotificationCodec.Decode)
	if err == nil && ctx.Key() != processors.ScheduleKey(n.SendAt, n.ID) {
		err = fmt.Errorf("record key %q must be %q", processors.Clip(ctx.Key(), 200), processors.ScheduleKey(n.SendAt, n.ID))
	}
	if err != nil {
		p.reject(ctx, raw, "scheduler", err, nil, p.now())
		return
	}
	if cur, _ := ctx.Value().(*schemas.ScheduledEntry); cur != nil && cur.ReleasedBy != "" {
		return // a replay of a hold that was released meanwhile
	}
	ctx.SetValue(&schemas.ScheduledEntry{Notification: raw})
}

// release hands a due notification back to the deliver group. The release is
// recorded in the entry instead of deleting it: a replay of the same command
// after a crash emits it again (the deliver group and the sinks are idempotent
// per notification), and the entry is deleted only a grace period later, by
// another command, when the release has long been committed.
func (p *Pipeline) release(ctx goka.Context, _ any) {
	defer p.Watch.Begin(string(SchedulerGroup), ctx.Partition())()
	e, _ := ctx.Value().(*schemas.ScheduledEntry)
	if e == nil {
		return
	}
	now := p.now()
	origin := strconv.Itoa(int(ctx.Partition())) + "/" + strconv.FormatInt(ctx.Offset(), 10)
	switch {
	case e.ReleasedBy == origin:
		ctx.SetValue(e) // written again: local state may be ahead of the table topic (see status)
		p.releaseEntry(ctx, e, now)
	case e.ReleasedBy != "":
		if now.Sub(time.UnixMilli(e.ReleasedAt)) >= p.releaseGrace() {
			ctx.Delete()
		}
	default:
		n, err := schemas.NotificationCodec.Decode(e.Notification)
		if err != nil {
			p.reject(ctx, e.Notification, "scheduler", err, nil, now)
			ctx.Delete()
			return
		}
		if n.SendAt > now.UnixMilli() {
			return // a command ahead of its time
		}
		ctx.SetValue(&schemas.ScheduledEntry{Notification: e.Notification, ReleasedBy: origin, ReleasedAt: now.UnixMilli()})
		Fault("scheduler.after-release") // crash tests: the release recorded, the notification not emitted
		p.releaseEntry(ctx, e, now)
	}
}

func (p *Pipeline) releaseEntry(ctx goka.Context, e *schemas.ScheduledEntry, now time.Time) {
	n, err := schemas.NotificationCodec.Decode(e.Notification)
	if err != nil {
		p.reject(ctx, e.Notification, "scheduler", err, nil, now)
		return
	}
	ctx.Emit(AcceptedLane(n.Priority), schemas.TenantKey(n.Tenant, n.UserID), e.Notification)
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
	defer p.Watch.Begin(string(StatusGroup), ctx.Partition())()
	raw, _ := msg.([]byte)
	ev, err := decodeOrNull(raw, schemas.StatusEventCodec.Decode)
	if err == nil && ev.NotificationID != ctx.Key() {
		err = fmt.Errorf("record key %q must be the notificationId %q", processors.Clip(ctx.Key(), 200), processors.Clip(ev.NotificationID, 200))
	}
	if err != nil {
		// No rejected event here: it would land on this same topic.
		p.deadLetterOnly(ctx, raw, "status", err)
		return
	}
	lc, _ := ctx.Value().(*schemas.Lifecycle)
	if q := processors.ImpliedQueued(lc, ev); q != nil {
		// The routing a sink's event states: the deliver group emits no
		// queued event of its own (one record less per notification).
		lc = processors.ApplyStatus(lc, q)
	}
	if processors.SeenStatus(lc, ev) {
		// A replayed event: the history has it already. Written again all the
		// same: goka applies a write to local state before the table topic has
		// it, so after a crash local state can hold a write the topic lost —
		// and views (other API instances) read the topic.
		ctx.SetValue(lc)
		return
	}
	ctx.SetValue(processors.ApplyStatus(lc, ev))
}

// decodeOrNull decodes a record, calling a null value (a tombstone on a stream)
// an error of its own.
func decodeOrNull[T any](raw []byte, decode func([]byte) (*T, error)) (*T, error) {
	if raw == nil {
		return nil, errors.New("null value")
	}
	return decode(raw)
}

// reject sends a bad record to the DLQ and emits a rejected event for every
// notification it can name (or one for the record itself).
func (p *Pipeline) reject(ctx goka.Context, raw []byte, stage string, err error, ns []*schemas.Notification, now time.Time) {
	p.deadLetterOnly(ctx, raw, stage, err)
	if len(ns) == 0 {
		ns = []*schemas.Notification{{ID: processors.RecordID(string(ctx.Topic()), ctx.Partition(), ctx.Offset()),
			EventID: processors.Clip(ctx.Key(), 200)}}
	}
	for _, n := range ns {
		ctx.Emit(Events, n.ID, processors.NotificationEvent(n, processors.StatusRejected, "", stage+": "+err.Error(), now))
	}
}

// rejectNotification rejects one notification the stage cannot pass on (its
// record would be too large): the DLQ gets what fits of it, the notification a
// rejected event on channel ("" = all).
func (p *Pipeline) rejectNotification(ctx goka.Context, n *schemas.Notification, encoded []byte, stage, channel string, err error, now time.Time) {
	dl := deadLetter(ctx, encoded, stage, err, now)
	dl.NotificationID = n.ID
	p.emitDeadLetter(ctx, dl)
	ctx.Emit(Events, n.ID, processors.NotificationEvent(n, processors.StatusRejected, channel, stage+": "+err.Error(), now))
}

func (p *Pipeline) deadLetterOnly(ctx goka.Context, raw []byte, stage string, err error) {
	p.emitDeadLetter(ctx, deadLetter(ctx, raw, stage, err, p.now()))
}

func (p *Pipeline) emitDeadLetter(ctx goka.Context, dl *schemas.DeadLetter) {
	key, value := EncodeDeadLetter(dl)
	ctx.Emit(DLQ, key, value)
	if p.DeadLetter != nil {
		p.DeadLetter(dl.Stage)
	}
}

func deadLetter(ctx goka.Context, raw []byte, stage string, err error, now time.Time) *schemas.DeadLetter {
	return &schemas.DeadLetter{
		Topic: string(ctx.Topic()), Partition: ctx.Partition(), Offset: ctx.Offset(),
		Key: []byte(ctx.Key()), Value: raw, Reason: err.Error(), Stage: stage, At: now.UnixMilli(),
	}
}

// deadLetterKeep is how much of an oversized record's value a dead letter keeps.
const deadLetterKeep = 64 << 10

// EncodeDeadLetter encodes a dead letter and its record key so that they always
// fit (MaxRecordBytes): an oversized original keeps only its first bytes and is
// marked Truncated (it cannot be replayed, but it can be read).
func EncodeDeadLetter(dl *schemas.DeadLetter) (key string, value []byte) {
	key = processors.Clip(string(dl.Key), 1024)
	// A reason quotes what was wrong, and that may be a caller's input (an
	// invalid email address, a phone number): redacted like every reason.
	dl.Reason = processors.Redact(dl.Reason, nil, 4096)
	// A one-time code's data and content never reach the dead-letter topic.
	dl.Value = processors.RedactRecord(dl.Value)
	b, err := schemas.DeadLetterCodec.Encode(dl)
	if err == nil && Fits(key, b) {
		return key, b
	}
	c := *dl
	c.Truncated = true
	if len(c.Key) > 1024 {
		c.Key = c.Key[:1024]
	}
	if len(c.Value) > deadLetterKeep {
		c.Value = c.Value[:deadLetterKeep]
	}
	b, _ = schemas.DeadLetterCodec.Encode(&c)
	return key, b
}

// requestNotifications names the notifications of a request that failed
// validation but decoded, so each gets its rejected event.
func requestNotifications(req *schemas.SendRequest) []*schemas.Notification {
	if req == nil || !processors.ValidID(req.EventID) {
		return nil
	}
	var out []*schemas.Notification
	for _, r := range req.Recipients {
		if processors.ValidID(r.UserID) {
			out = append(out, &schemas.Notification{ID: processors.TenantNotificationID(req.Tenant, req.EventID, r.UserID),
				EventID: req.EventID, UserID: r.UserID, Tenant: req.Tenant, Template: processors.Clip(req.Template, 200)})
		}
	}
	return out
}

// scheduledCodec is the scheduler table's codec. Tables written before
// ScheduledEntry existed hold bare Notification records; they read as an
// entry not yet released.
type scheduledCodec struct{}

func (scheduledCodec) Encode(v any) ([]byte, error) {
	e, ok := v.(*schemas.ScheduledEntry)
	if !ok {
		return nil, fmt.Errorf("encode scheduled entry: got %T", v)
	}
	return schemas.ScheduledCodec.Encode(e)
}

func (scheduledCodec) Decode(b []byte) (any, error) { return decodeScheduled(b) }

func decodeScheduled(b []byte) (*schemas.ScheduledEntry, error) {
	if name, err := schemas.RecordName(b); err == nil && name == "notifyd.Notification" {
		return &schemas.ScheduledEntry{Notification: b}, nil
	}
	return schemas.ScheduledCodec.Decode(b)
}

// LifecycleTableCodec is the codec of the status group table, for views of it.
func LifecycleTableCodec() goka.Codec { return lifecycleCodec }

// ProfileTableCodec and TemplateTableCodec read the compacted input tables leniently.
func ProfileTableCodec() goka.Codec  { return profileTable }
func TemplateTableCodec() goka.Codec { return templateTable }
