package topology

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

// AudienceSource lists a campaign's recipients in key order, so that a
// campaign fans out in steps from a cursor without holding its audience.
type AudienceSource interface {
	// Current tells whether the source has read everything written to the
	// campaign's audience before the call: the first step waits for it.
	Current(ctx context.Context, c *schemas.Campaign) bool
	// Scan calls fn for the members after the cursor after, up to and
	// including through when it is set, at most max of them and reading at
	// most scanMax keys. It returns the cursor of the last key read and
	// whether the audience is exhausted.
	Scan(c *schemas.Campaign, after, through string, max, scanMax int, fn func(userID string)) (last string, done bool, scanned int, err error)
}

var (
	campaignCodec    = schemas.Goka[schemas.Campaign]{C: schemas.CampaignCodec}
	scheduleCodec    = schemas.Goka[schemas.Schedule]{C: schemas.ScheduleCodec}
	cancellationView = schemas.Lenient[schemas.Cancellation]{C: schemas.CancellationCodec}
)

// CampaignTableCodec is the codec of the campaign group table, for views of it.
func CampaignTableCodec() goka.Codec { return campaignCodec }

// ScheduleTableCodec is the codec of the schedule group table, for views of it.
func ScheduleTableCodec() goka.Codec { return scheduleCodec }

// CancellationCodec reads notify.cancels leniently.
func CancellationCodec() goka.Codec { return cancellationView }

// DefaultCampaignStep is the campaign sweeper's default interval: a running
// campaign takes a step about every ten of them (see Sweeper).
const DefaultCampaignStep = 100 * time.Millisecond

// CampaignGraph: notify.campaigns (key processors.CampaignKey) → the campaign
// table; a running campaign's ticks fan it out to notify.accepted.
func (p *Pipeline) CampaignGraph() *goka.GroupGraph {
	return goka.DefineGroup(CampaignGroup,
		goka.Input(Campaigns, rawCodec, p.campaign),
		goka.Output(Accepted, notifCodec), goka.Output(AcceptedHigh, notifCodec), goka.Output(AcceptedLow, notifCodec),
		goka.Output(Events, statusCodec),
		goka.Output(DLQ, deadCodec),
		goka.Persist(campaignCodec),
	)
}

func (p *Pipeline) campaign(ctx goka.Context, msg any) {
	defer p.Watch.Begin(string(CampaignGroup), ctx.Partition())()
	raw, _ := msg.([]byte)
	now := p.now()
	cur, _ := ctx.Value().(*schemas.Campaign)
	if len(raw) == 0 {
		p.campaignStep(ctx, cur, now)
		return
	}
	cmd, err := schemas.CampaignCommandCodec.Decode(raw)
	if err == nil && processors.CampaignKey(cmd.Tenant, cmd.CampaignID) != ctx.Key() {
		err = fmt.Errorf("record key %q must be %q", processors.Clip(ctx.Key(), 200), processors.CampaignKey(cmd.Tenant, cmd.CampaignID))
	}
	if err == nil && cmd.Op == processors.OpCreate {
		if cmd.Campaign.ID != cmd.CampaignID || cmd.Campaign.Tenant != cmd.Tenant {
			err = errors.New("the campaign's id and tenant must be the command's")
		} else {
			err = processors.ValidateCampaign(&cmd.Campaign)
		}
	}
	if err != nil {
		p.deadLetterOnly(ctx, raw, "campaign", err)
		return
	}
	next, err := processors.CampaignTransition(cur, cmd, now)
	if err != nil {
		// Refused (a second decision, a late approval): the API reads the
		// table and tells its caller; nothing changes.
		return
	}
	ctx.SetValue(next)
}

// campaignStep moves a campaign on: expiry of an approval that did not
// come, the wait for its audience, then one fan-out step at its rate.
func (p *Pipeline) campaignStep(ctx goka.Context, c *schemas.Campaign, now time.Time) {
	origin := strconv.Itoa(int(ctx.Partition())) + "/" + strconv.FormatInt(ctx.Offset(), 10)
	if c == nil {
		return
	}
	n := *c
	replay := c.StepOrigin == origin && c.State != processors.CampaignCanceled
	if !replay && !processors.CampaignDue(c, now) {
		return
	}
	if n.State == processors.CampaignPending {
		n.State, n.FinishedAt, n.UpdatedAt = processors.CampaignExpired, now.UnixMilli(), now.UnixMilli()
		n.Reason = "not approved before " + time.UnixMilli(c.ApprovalDeadline).UTC().Format(time.RFC3339)
		ctx.SetValue(&n)
		return
	}
	if p.Audience == nil {
		return
	}
	if !replay && !processors.ApprovedVersion(&n) {
		// Fan-out renders only the version an approval approved; a campaign
		// without one (never, unless a record was forged) waits for one.
		n.State, n.UpdatedAt = processors.CampaignPending, now.UnixMilli()
		n.Reason = fmt.Sprintf("template version %d was not approved", n.TemplateVersion)
		ctx.SetValue(&n)
		return
	}
	after, through, budget := n.Cursor, "", 0
	if replay {
		// The same tick after a crash: local state may hold this step while
		// its notifications were lost. Emit the same range again (every
		// stage after is idempotent per notification).
		after, through, budget = c.StepFrom, c.Cursor, 1<<30
	} else {
		if n.State == processors.CampaignApproved {
			if !p.Audience.Current(context.Background(), &n) {
				return // the next tick tries again
			}
			n.State = processors.CampaignRunning
			if n.StartedAt == 0 { // not again after a pause
				n.StartedAt = now.UnixMilli()
			}
		}
		budget = processors.CampaignBudget(&n, now, p.campaignStepEvery())
		if budget == 0 {
			return
		}
	}
	emitted := 0
	last, done, scanned, err := p.Audience.Scan(&n, after, through, budget, max(4*budget, 20_000), func(user string) {
		nt := processors.CampaignNotification(&n, user, now)
		// Sealed like every record on notify.accepted. The data is the
		// campaign's, sealed under the campaign's key: its envelope goes on
		// as it is, no cryptography per recipient here (the deliver group
		// opens it and seals what it renders for the user). A campaign
		// created before its data was sealed is sealed for each user.
		out := nt
		if len(nt.SealedData) == 0 && nt.Data != "" {
			sealed, err := processors.SealNotification(context.Background(), p.Keys, nt)
			if err != nil {
				p.rejectNotification(ctx, nt, nil, "campaign", "", err, now)
				return
			}
			out = sealed
		}
		b, err := schemas.NotificationCodec.Encode(out)
		if err != nil {
			return
		}
		ctx.Emit(AcceptedLane(nt.Priority), schemas.TenantKey(n.Tenant, user), b)
		ev := processors.NotificationEvent(nt, processors.StatusAccepted, "", "", now)
		ev.Category = ""
		ctx.Emit(Events, nt.ID, ev)
		emitted++
	})
	if err != nil {
		p.deadLetterOnly(ctx, nil, "campaign", fmt.Errorf("campaign %s: audience: %w", n.ID, err))
		return
	}
	if replay {
		ctx.SetValue(c) // written again: local state may be ahead of the table topic
		return
	}
	n.StepOrigin, n.StepFrom = origin, n.Cursor
	if last != "" {
		n.Cursor = last
	}
	n.Targeted += int64(emitted)
	n.Scanned += int64(scanned)
	n.LastTickAt, n.UpdatedAt = now.UnixMilli(), now.UnixMilli()
	if done {
		n.State, n.FinishedAt = processors.CampaignCompleted, now.UnixMilli()
	}
	Fault("campaign.after-step") // crash tests: the step emitted, its state not written
	ctx.SetValue(&n)
	Fault("campaign.after-state") // crash tests: the state written, the tick not committed: a replay
}

func (p *Pipeline) campaignStepEvery() time.Duration {
	if p.CampaignStep > 0 {
		return p.CampaignStep
	}
	return 10 * DefaultCampaignStep
}

// CampaignSweeper ticks every campaign that has work: a running one about
// every 10*every, at its rate.
func CampaignSweeper(tables *Tables, producer *kgo.Client, every time.Duration, now func() time.Time, log *slog.Logger) *Sweeper {
	return &Sweeper{Name: "campaign", Tables: tables, Group: CampaignGroup, Producer: producer, Topic: Campaigns,
		Every: every, Now: now, Log: log,
		Due: func(_ string, v []byte, now time.Time) bool {
			c, err := schemas.CampaignCodec.Decode(v)
			return err == nil && processors.CampaignDue(c, now)
		}}
}

// canceled tells why n may not go out ("" when it may): it, or its campaign,
// was cancelled.
func (p *Pipeline) canceled(ctx goka.Context, n *schemas.Notification) string {
	for _, key := range processors.CancelKeys(n) {
		if d, ok := ctx.Lookup(Cancels, key).(schemas.Decoded[schemas.Cancellation]); ok && d.V != nil {
			return CancelReason(d.V)
		}
	}
	return ""
}

// CancelReason is the reason of a canceled status event.
func CancelReason(c *schemas.Cancellation) string {
	what := "the notification"
	if c.CampaignID != "" {
		what = "campaign " + c.CampaignID
	}
	return what + " was cancelled at " + time.UnixMilli(c.At).UTC().Format(time.RFC3339)
}

// ScheduleGraph: notify.schedules (key ScheduleKey) → the schedule table;
// a due schedule's tick fires its request on notify.ingest.
func (p *Pipeline) ScheduleGraph() *goka.GroupGraph {
	return goka.DefineGroup(ScheduleGroup,
		goka.Input(Schedules, rawCodec, p.recurring),
		goka.Output(Ingest, rawCodec), goka.Output(IngestHigh, rawCodec), goka.Output(IngestLow, rawCodec),
		goka.Output(DLQ, deadCodec),
		goka.Persist(scheduleCodec),
	)
}

// ScheduleKey is the key of a recurring schedule.
func ScheduleKey(tenant, id string) string { return schemas.TenantKey(tenant, "schedule:"+id) }

// Schedule states.
const (
	ScheduleActive = "active"
	SchedulePaused = "paused"
)

// DefaultCatchUp is how late a schedule may still fire a run it missed
// (while every process was down): later, the run is skipped.
const DefaultCatchUp = time.Hour

func (p *Pipeline) recurring(ctx goka.Context, msg any) {
	defer p.Watch.Begin(string(ScheduleGroup), ctx.Partition())()
	raw, _ := msg.([]byte)
	now := p.now()
	cur, _ := ctx.Value().(*schemas.Schedule)
	if len(raw) == 0 {
		p.fire(ctx, cur, now)
		return
	}
	cmd, err := schemas.ScheduleCommandCodec.Decode(raw)
	if err == nil && ScheduleKey(cmd.Schedule.Tenant, cmd.Schedule.ID) != ctx.Key() {
		err = fmt.Errorf("record key %q must be %q", processors.Clip(ctx.Key(), 200), ScheduleKey(cmd.Schedule.Tenant, cmd.Schedule.ID))
	}
	var cr *processors.Cron
	if err == nil && (cmd.Op == "put" || cmd.Op == "resume") {
		s := cmd.Schedule
		if cmd.Op == "resume" && cur != nil {
			s = *cur
		}
		cr, err = processors.ParseCron(s.Cron, s.TimeZone)
	}
	if err != nil {
		p.deadLetterOnly(ctx, raw, "schedule", err)
		return
	}
	switch cmd.Op {
	case "put":
		s := cmd.Schedule
		s.State, s.UpdatedAt = ScheduleActive, now.UnixMilli()
		if cur != nil {
			s.CreatedAt, s.CreatedBy, s.Fired, s.LastFiredAt = cur.CreatedAt, cur.CreatedBy, cur.Fired, cur.LastFiredAt
		}
		s.NextAt = cr.Next(now).UnixMilli()
		ctx.SetValue(&s)
	case "pause", "resume":
		if cur == nil {
			return
		}
		s := *cur
		s.UpdatedAt = now.UnixMilli()
		if cmd.Op == "pause" {
			s.State = SchedulePaused
		} else {
			s.State, s.NextAt = ScheduleActive, cr.Next(now).UnixMilli()
		}
		ctx.SetValue(&s)
	case "delete":
		if cur != nil {
			ctx.Delete()
		}
	default:
		p.deadLetterOnly(ctx, raw, "schedule", fmt.Errorf("unknown schedule command %q", processors.Clip(cmd.Op, 32)))
	}
}

// fire sends a due schedule's request, with an event id naming the run, so
// that a replay (or a second tick) is a duplicate for the dedup group.
func (p *Pipeline) fire(ctx goka.Context, s *schemas.Schedule, now time.Time) {
	if s == nil || s.State != ScheduleActive {
		return
	}
	origin := strconv.Itoa(int(ctx.Partition())) + "/" + strconv.FormatInt(ctx.Offset(), 10)
	if s.FireOrigin == origin {
		// The tick that fired, replayed after a crash: fire the same run again.
		p.emitRun(ctx, s, time.UnixMilli(s.LastFiredAt))
		ctx.SetValue(s)
		return
	}
	if s.NextAt > now.UnixMilli() {
		return
	}
	cr, err := processors.ParseCron(s.Cron, s.TimeZone)
	if err != nil {
		return
	}
	fireAt, next, ok := cr.Due(time.UnixMilli(s.NextAt), now, p.catchUp())
	n := *s
	n.NextAt, n.UpdatedAt = next.UnixMilli(), now.UnixMilli()
	if ok {
		if err := p.emitRun(ctx, s, fireAt); err != nil {
			p.deadLetterOnly(ctx, s.Request, "schedule", err)
		} else {
			n.LastFiredAt, n.Fired, n.FireOrigin = fireAt.UnixMilli(), s.Fired+1, origin
		}
	}
	ctx.SetValue(&n)
}

// RunEventID is the event id of a schedule's run at fireAt.
func RunEventID(scheduleID string, fireAt time.Time) string {
	return "schedule:" + scheduleID + ":" + fireAt.UTC().Format("20060102T1504Z")
}

func (p *Pipeline) emitRun(ctx goka.Context, s *schemas.Schedule, fireAt time.Time) error {
	req, err := schemas.SendRequestCodec.Decode(s.Request)
	if err != nil {
		return fmt.Errorf("schedule %s: request: %w", s.ID, err)
	}
	req.EventID, req.Tenant, req.ScheduleID, req.Source = RunEventID(s.ID, fireAt), s.Tenant, s.ID, "schedule"
	req.AcceptedAt = 0
	req.TemplateVersion, req.TemplateHash = 0, "" // a run pins the version current when it fires
	b, err := schemas.SendRequestCodec.Encode(req)
	if err != nil {
		return err
	}
	ctx.Emit(IngestLane(req.Priority), schemas.TenantKey(s.Tenant, req.EventID), b)
	return nil
}

func (p *Pipeline) catchUp() time.Duration {
	if p.CatchUp > 0 {
		return p.CatchUp
	}
	return DefaultCatchUp
}

// ScheduleSweeper ticks every active schedule whose next run is due.
func ScheduleSweeper(tables *Tables, producer *kgo.Client, every time.Duration, now func() time.Time, log *slog.Logger) *Sweeper {
	return &Sweeper{Name: "schedule", Tables: tables, Group: ScheduleGroup, Producer: producer, Topic: Schedules,
		Every: every, Now: now, Log: log,
		Due: func(_ string, v []byte, now time.Time) bool {
			s, err := schemas.ScheduleCodec.Decode(v)
			return err == nil && s.State == ScheduleActive && s.NextAt <= now.UnixMilli()
		}}
}
