package processors_test

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

// campaignNow is the processing time of the campaign tests.
var campaignNow = time.UnixMilli(1_800_000_000_000).UTC()

// goodCampaign is a campaign as the API creates it; each case of the
// validation test breaks one field of it.
func goodCampaign() *schemas.Campaign {
	return &schemas.Campaign{ID: "spring-sale_1", Tenant: "acme", Name: "Spring sale", Template: "promo.spring",
		Data: `{"discount": 20}`, Priority: "normal", Category: "marketing", Channels: []string{"email"},
		AudienceKind: processors.AudienceTopic, AudienceID: "news", Rate: 200, LocalTime: "09:30",
		SendAt: campaignNow.Add(time.Hour).UnixMilli(), ExpiresAt: campaignNow.Add(48 * time.Hour).UnixMilli()}
}

func TestValidateCampaignAcceptsEveryAudience(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(c *schemas.Campaign)
	}{
		{"topic", func(c *schemas.Campaign) {}},
		{"list", func(c *schemas.Campaign) { c.AudienceKind, c.AudienceID = processors.AudienceList, "vip-2026" }},
		{"segment", func(c *schemas.Campaign) {
			c.AudienceKind, c.AudienceID, c.Segment = processors.AudienceSegment, "", `locale ^= "de" AND attributes.plan = "pro"`
		}},
		{"users", func(c *schemas.Campaign) {
			c.AudienceKind, c.AudienceID, c.Users = processors.AudienceUsers, "", []string{"ann", "bob@example.com", "team/carl"}
		}},
		{"defaults left to create", func(c *schemas.Campaign) {
			c.Rate, c.Priority, c.Data, c.LocalTime, c.SendAt, c.ExpiresAt = 0, "", "", "", 0, 0
		}},
		{"bounds", func(c *schemas.Campaign) {
			c.ID, c.Name, c.Rate = strings.Repeat("x", 64), strings.Repeat("n", 200), processors.MaxCampaignRate
			c.AudienceKind, c.AudienceID, c.Users = processors.AudienceUsers, "", make([]string, processors.MaxCampaignUsers)
			for i := range c.Users {
				c.Users[i] = fmt.Sprintf("u%d", i)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := goodCampaign()
			tc.edit(c)
			if err := processors.ValidateCampaign(c); err != nil {
				t.Fatalf("refused: %v", err)
			}
		})
	}
}

func TestValidateCampaignNamesTheBadField(t *testing.T) {
	tooMany := make([]string, processors.MaxCampaignUsers+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("u%d", i)
	}
	for _, tc := range []struct {
		name, field string
		edit        func(c *schemas.Campaign)
	}{
		{"no id", "id", func(c *schemas.Campaign) { c.ID = "" }},
		{"id with a colon", "id", func(c *schemas.Campaign) { c.ID = "spring:sale" }},
		{"id too long", "id", func(c *schemas.Campaign) { c.ID = strings.Repeat("x", 65) }},
		{"no template", "template", func(c *schemas.Campaign) { c.Template = "" }},
		{"template with a space", "template", func(c *schemas.Campaign) { c.Template = "promo spring" }},
		{"name too long", "name", func(c *schemas.Campaign) { c.Name = strings.Repeat("n", 201) }},
		{"negative rate", "rate", func(c *schemas.Campaign) { c.Rate = -1 }},
		{"rate above the max", "rate", func(c *schemas.Campaign) { c.Rate = processors.MaxCampaignRate + 1 }},
		{"unknown priority", "priority", func(c *schemas.Campaign) { c.Priority = "urgent" }},
		{"no audience", "audience", func(c *schemas.Campaign) { c.AudienceKind = "" }},
		{"unknown audience", "audience", func(c *schemas.Campaign) { c.AudienceKind = "everyone" }},
		{"topic without id", "audience.topic", func(c *schemas.Campaign) { c.AudienceID = "" }},
		{"topic id with a separator", "audience.topic", func(c *schemas.Campaign) { c.AudienceID = "news|x" }},
		{"list id too long", "audience.list", func(c *schemas.Campaign) {
			c.AudienceKind, c.AudienceID = processors.AudienceList, strings.Repeat("l", 65)
		}},
		{"empty segment", "audience.segment", func(c *schemas.Campaign) { c.AudienceKind, c.Segment = processors.AudienceSegment, "" }},
		{"bad segment", "audience.segment", func(c *schemas.Campaign) {
			c.AudienceKind, c.Segment = processors.AudienceSegment, `country = "de"`
		}},
		{"no users", "audience.users", func(c *schemas.Campaign) { c.AudienceKind, c.Users = processors.AudienceUsers, nil }},
		{"too many users", "audience.users", func(c *schemas.Campaign) { c.AudienceKind, c.Users = processors.AudienceUsers, tooMany }},
		{"invalid user", "audience.users[1]", func(c *schemas.Campaign) {
			c.AudienceKind, c.Users = processors.AudienceUsers, []string{"ann", "bad user"}
		}},
		{"user with the tenant separator", "audience.users[0]", func(c *schemas.Campaign) {
			c.AudienceKind, c.Users = processors.AudienceUsers, []string{"other|ann"}
		}},
		{"data not an object", "data", func(c *schemas.Campaign) { c.Data = `[1, 2]` }},
		{"data not JSON", "data", func(c *schemas.Campaign) { c.Data = `discount=20` }},
		{"local time out of range", "localTime", func(c *schemas.Campaign) { c.LocalTime = "25:00" }},
		{"local time not HH:MM", "localTime", func(c *schemas.Campaign) { c.LocalTime = "9am" }},
		// Every notification of such a campaign would expire before it is sent.
		{"expires before it is sent", "expiresAt", func(c *schemas.Campaign) { c.ExpiresAt = c.SendAt - 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := goodCampaign()
			tc.edit(c)
			err := processors.ValidateCampaign(c)
			var fe *processors.FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("got %v, want a *FieldError for %s", err, tc.field)
			}
			if fe.Field != tc.field || fe.Msg == "" || !strings.HasPrefix(err.Error(), tc.field+": ") {
				t.Fatalf("got field %q (%v), want %q", fe.Field, err, tc.field)
			}
		})
	}
}

// campaignIn is a campaign created by key-1 in state, with an approval
// deadline an hour ahead and one decision in its history.
func campaignIn(state string) *schemas.Campaign {
	c := goodCampaign()
	c.State, c.CreatedBy, c.CreatedByName = state, "key-1", "Ann"
	c.CreatedAt = campaignNow.Add(-time.Hour).UnixMilli()
	c.ApprovalDeadline = campaignNow.Add(time.Hour).UnixMilli()
	c.EventID = processors.CampaignEventID(c.ID)
	c.LastTickAt = campaignNow.Add(-time.Second).UnixMilli()
	c.Decisions = []schemas.CampaignDecision{{By: "key-0", Decision: "noted", At: 1}}
	switch state {
	case processors.CampaignApproved, processors.CampaignRunning, processors.CampaignPaused, processors.CampaignCompleted:
		// It got there by an approval of the version it sends.
		c.Decisions = append(c.Decisions, schemas.CampaignDecision{By: "key-3", Decision: "approved", At: 2})
	}
	return c
}

func cloneCampaign(c *schemas.Campaign) *schemas.Campaign {
	out := *c
	out.Decisions = slices.Clone(c.Decisions)
	out.Channels = slices.Clone(c.Channels)
	out.Users = slices.Clone(c.Users)
	return &out
}

func TestCampaignTransitionTable(t *testing.T) {
	states := []string{processors.CampaignPending, processors.CampaignApproved, processors.CampaignRunning,
		processors.CampaignPaused, processors.CampaignCompleted, processors.CampaignCanceled,
		processors.CampaignRejected, processors.CampaignExpired}
	type outcome struct{ state, decision string }
	// allowed[op][from] is the outcome of op in state from; any other pair is refused.
	allowed := map[string]map[string]outcome{
		processors.OpApprove: {processors.CampaignPending: {processors.CampaignApproved, "approved"}},
		processors.OpReject:  {processors.CampaignPending: {processors.CampaignRejected, "rejected"}},
		processors.OpCancel: {
			processors.CampaignPending:  {processors.CampaignCanceled, "canceled"},
			processors.CampaignApproved: {processors.CampaignCanceled, "canceled"},
			processors.CampaignRunning:  {processors.CampaignCanceled, "canceled"},
			processors.CampaignPaused:   {processors.CampaignCanceled, "canceled"},
			// Every recipient was targeted, but notifications held for their
			// send time or local time can still be stopped.
			processors.CampaignCompleted: {processors.CampaignCanceled, "canceled"},
		},
		processors.OpPause: {
			processors.CampaignApproved: {processors.CampaignPaused, "paused"},
			processors.CampaignRunning:  {processors.CampaignPaused, "paused"},
		},
		processors.OpResume: {processors.CampaignPaused: {processors.CampaignApproved, "resumed"}},
	}
	for _, op := range []string{processors.OpApprove, processors.OpReject, processors.OpCancel, processors.OpPause, processors.OpResume} {
		for _, from := range states {
			t.Run(op+" "+from, func(t *testing.T) {
				c := campaignIn(from)
				before := cloneCampaign(c)
				cmd := &schemas.CampaignCommand{Op: op, Tenant: c.Tenant, CampaignID: c.ID, By: "key-2", ByName: "Bea",
					Comment: "looks good", At: 42}
				got, err := processors.CampaignTransition(c, cmd, campaignNow)
				if !reflect.DeepEqual(c, before) {
					t.Fatalf("the transition changed its input:\n%+v\nwas %+v", c, before)
				}
				want, ok := allowed[op][from]
				if !ok {
					if err == nil || got != nil {
						t.Fatalf("allowed: %+v, %v", got, err)
					}
					if errors.Is(err, processors.ErrCreatorCannotApprove) {
						t.Fatalf("refused for the wrong reason: %v", err)
					}
					return
				}
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if got.State != want.state {
					t.Fatalf("state %s, want %s", got.State, want.state)
				}
				at := campaignNow.UnixMilli()
				wantDecisions := append(slices.Clone(before.Decisions), schemas.CampaignDecision{
					By: "key-2", ByName: "Bea", Decision: want.decision, Comment: "looks good", At: at})
				if !reflect.DeepEqual(got.Decisions, wantDecisions) {
					t.Fatalf("decisions %+v\nwant      %+v", got.Decisions, wantDecisions)
				}
				if got.UpdatedAt != at {
					t.Fatalf("updatedAt %d, want %d", got.UpdatedAt, at)
				}
				wantFinished := before.FinishedAt
				if want.state == processors.CampaignRejected || want.state == processors.CampaignCanceled {
					wantFinished = at
				}
				if got.FinishedAt != wantFinished {
					t.Fatalf("finishedAt %d, want %d", got.FinishedAt, wantFinished)
				}
				wantTick := before.LastTickAt
				if op == processors.OpResume {
					wantTick = 0 // the first step after a pause takes one step's worth, not the pause's
				}
				if got.LastTickAt != wantTick {
					t.Fatalf("lastTickAt %d, want %d", got.LastTickAt, wantTick)
				}
				// Nothing but the state and its audit moves.
				rest := cloneCampaign(got)
				rest.State, rest.Decisions, rest.UpdatedAt, rest.FinishedAt, rest.LastTickAt =
					before.State, before.Decisions, before.UpdatedAt, before.FinishedAt, before.LastTickAt
				if !reflect.DeepEqual(rest, before) {
					t.Fatalf("other fields changed:\n%+v\nwas %+v", got, before)
				}
			})
		}
	}
}

func TestCampaignCreate(t *testing.T) {
	c := goodCampaign()
	c.Rate, c.Priority = 0, ""
	c.CreatedBy, c.CreatedAt = "key-1", campaignNow.Add(-time.Minute).UnixMilli()
	cmd := &schemas.CampaignCommand{Op: processors.OpCreate, Tenant: c.Tenant, CampaignID: c.ID, By: "key-1", Campaign: *c}
	got, err := processors.CampaignTransition(nil, cmd, campaignNow)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != processors.CampaignPending || got.Rate != processors.DefaultCampaignRate || got.Priority != "low" ||
		got.EventID != "campaign:"+c.ID || got.UpdatedAt != campaignNow.UnixMilli() ||
		got.ApprovalDeadline != c.CreatedAt+processors.DefaultApprovalDeadline.Milliseconds() {
		t.Fatalf("created %+v", got)
	}
	if len(got.Decisions) != 0 {
		t.Fatalf("a create is no decision: %+v", got.Decisions)
	}

	// What the creator set is kept.
	set := *cmd
	set.Campaign.Rate, set.Campaign.Priority, set.Campaign.ApprovalDeadline = 70, "high", campaignNow.Add(5*time.Hour).UnixMilli()
	kept, err := processors.CampaignTransition(nil, &set, campaignNow)
	if err != nil || kept.Rate != 70 || kept.Priority != "high" || kept.ApprovalDeadline != set.Campaign.ApprovalDeadline {
		t.Fatalf("created %+v, %v", kept, err)
	}

	// The same create replayed, after the campaign moved on, changes nothing.
	approved, err := processors.CampaignTransition(got, &schemas.CampaignCommand{Op: processors.OpApprove, By: "key-2"}, campaignNow)
	if err != nil {
		t.Fatal(err)
	}
	before := cloneCampaign(approved)
	again, err := processors.CampaignTransition(approved, cmd, campaignNow.Add(time.Hour))
	if err != nil || !reflect.DeepEqual(again, before) {
		t.Fatalf("replayed create: %+v, %v", again, err)
	}

	// Another create of the same id is refused, whoever makes it.
	for _, other := range []struct{ by string }{{"key-1"}, {"key-3"}} {
		second := *cmd
		second.Campaign.CreatedBy = other.by
		second.Campaign.CreatedAt = c.CreatedAt + 1
		if n, err := processors.CampaignTransition(approved, &second, campaignNow); err == nil || n != nil {
			t.Fatalf("a second create by %s: %+v, %v", other.by, n, err)
		}
	}
	sameTime := *cmd
	sameTime.Campaign.CreatedBy = "key-3"
	if n, err := processors.CampaignTransition(approved, &sameTime, campaignNow); err == nil || n != nil {
		t.Fatalf("a create by another key at the same time: %+v, %v", n, err)
	}
	if !reflect.DeepEqual(approved, before) {
		t.Fatal("a refused create changed the campaign")
	}

	for _, op := range []string{processors.OpApprove, processors.OpCancel, processors.OpPause} {
		if n, err := processors.CampaignTransition(nil, &schemas.CampaignCommand{Op: op, By: "key-2"}, campaignNow); err == nil || n != nil {
			t.Fatalf("%s of no campaign: %+v, %v", op, n, err)
		}
	}
	for _, op := range []string{"", "delete", "APPROVE"} {
		if n, err := processors.CampaignTransition(got, &schemas.CampaignCommand{Op: op, By: "key-2"}, campaignNow); err == nil || n != nil {
			t.Fatalf("op %q: %+v, %v", op, n, err)
		}
	}
}

func TestCampaignCreatorCannotDecide(t *testing.T) {
	for _, op := range []string{processors.OpApprove, processors.OpReject} {
		for _, by := range []string{"key-1", ""} { // the creator, or no key at all
			c := campaignIn(processors.CampaignPending)
			got, err := processors.CampaignTransition(c, &schemas.CampaignCommand{Op: op, By: by}, campaignNow)
			if !errors.Is(err, processors.ErrCreatorCannotApprove) || got != nil {
				t.Errorf("%s by %q: %+v, %v", op, by, got, err)
			}
		}
	}
	// The group compares key ids only: a name is a label. The creator's
	// rotations and the rest of its lineage are refused by the API, which
	// reads the keys (api TestApprovalRefusedToTheCreatorsLineage).
	c := campaignIn(processors.CampaignPending)
	c.CreatedByName = "marketing"
	if got, err := processors.CampaignTransition(c, &schemas.CampaignCommand{Op: processors.OpApprove, By: "key-1", ByName: "renamed"},
		campaignNow); !errors.Is(err, processors.ErrCreatorCannotApprove) || got != nil {
		t.Errorf("approve by the creating key under another name: %+v, %v", got, err)
	}
	for _, name := range []string{"ops", "marketing"} {
		if got, err := processors.CampaignTransition(c, &schemas.CampaignCommand{Op: processors.OpApprove, By: "key-9", ByName: name},
			campaignNow); err != nil || got.State != processors.CampaignApproved {
			t.Errorf("approve by another key named %q: %+v, %v", name, got, err)
		}
	}
	// Anyone may cancel, the creator too.
	got, err := processors.CampaignTransition(campaignIn(processors.CampaignPending),
		&schemas.CampaignCommand{Op: processors.OpCancel, By: "key-1"}, campaignNow)
	if err != nil || got.State != processors.CampaignCanceled {
		t.Fatalf("creator cancels: %+v, %v", got, err)
	}
}

func TestCampaignApprovalDeadline(t *testing.T) {
	c := campaignIn(processors.CampaignPending)
	deadline := time.UnixMilli(c.ApprovalDeadline)
	justBefore := deadline.Add(-time.Millisecond)

	if processors.CampaignDue(c, justBefore) {
		t.Fatal("a pending campaign is due before its deadline")
	}
	got, err := processors.CampaignTransition(c, &schemas.CampaignCommand{Op: processors.OpApprove, By: "key-2"}, justBefore)
	if err != nil || got.State != processors.CampaignApproved {
		t.Fatalf("approval just in time: %+v, %v", got, err)
	}

	for _, at := range []time.Time{deadline, deadline.Add(time.Hour)} {
		for _, op := range []string{processors.OpApprove, processors.OpReject} {
			before := cloneCampaign(c)
			got, err := processors.CampaignTransition(c, &schemas.CampaignCommand{Op: op, By: "key-2"}, at)
			if err == nil || got != nil || errors.Is(err, processors.ErrCreatorCannotApprove) {
				t.Fatalf("%s at %v, deadline %v: %+v, %v", op, at, deadline, got, err)
			}
			if !reflect.DeepEqual(c, before) {
				t.Fatal("a late decision changed the campaign")
			}
		}
		// The campaign's next step expires it.
		if !processors.CampaignDue(c, at) {
			t.Fatalf("a pending campaign past its deadline is not due at %v", at)
		}
	}
}

// A campaign through its life keeps who decided what, and when.
func TestCampaignDecisionsAreItsAudit(t *testing.T) {
	c := goodCampaign()
	c.CreatedBy, c.CreatedAt = "key-1", campaignNow.UnixMilli()
	cur, err := processors.CampaignTransition(nil, &schemas.CampaignCommand{Op: processors.OpCreate, By: "key-1", Campaign: *c}, campaignNow)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("é", 800) // 1600 bytes
	steps := []struct {
		op, by, name, comment string
	}{
		{processors.OpApprove, "key-2", "Bea", "ok for spring"},
		{processors.OpPause, "key-3", "", "hold on"},
		{processors.OpResume, "key-2", "Bea", ""},
		{processors.OpCancel, "key-1", "Ann", long},
	}
	for i, s := range steps {
		at := campaignNow.Add(time.Duration(i+1) * time.Minute)
		cur, err = processors.CampaignTransition(cur, &schemas.CampaignCommand{Op: s.op, By: s.by, ByName: s.name, Comment: s.comment}, at)
		if err != nil {
			t.Fatalf("%s: %v", s.op, err)
		}
	}
	want := []struct{ by, name, decision string }{
		{"key-2", "Bea", "approved"}, {"key-3", "", "paused"}, {"key-2", "Bea", "resumed"}, {"key-1", "Ann", "canceled"},
	}
	if len(cur.Decisions) != len(want) {
		t.Fatalf("decisions %+v", cur.Decisions)
	}
	for i, w := range want {
		d := cur.Decisions[i]
		if d.By != w.by || d.ByName != w.name || d.Decision != w.decision || d.At != campaignNow.Add(time.Duration(i+1)*time.Minute).UnixMilli() {
			t.Errorf("decision %d: %+v, want %+v", i, d, w)
		}
	}
	if cur.Decisions[0].Comment != "ok for spring" || cur.Decisions[2].Comment != "" {
		t.Errorf("comments %q, %q", cur.Decisions[0].Comment, cur.Decisions[2].Comment)
	}
	// A long comment is kept only in part, cut on a character.
	if got := cur.Decisions[3].Comment; len(got) > 1000+len("…") || !strings.HasPrefix(long, strings.TrimSuffix(got, "…")) ||
		!strings.HasSuffix(got, "…") || len(got) < 900 {
		t.Errorf("long comment kept as %d bytes: %q", len(got), got)
	}
	if cur.State != processors.CampaignCanceled || cur.FinishedAt != campaignNow.Add(4*time.Minute).UnixMilli() {
		t.Fatalf("final %+v", cur)
	}
}

// Two transitions from the same campaign do not share its decisions.
func TestCampaignTransitionsDoNotShareDecisions(t *testing.T) {
	c := campaignIn(processors.CampaignPending)
	c.Decisions = slices.Grow(c.Decisions, 8) // room to append in place
	a, err := processors.CampaignTransition(c, &schemas.CampaignCommand{Op: processors.OpApprove, By: "key-2"}, campaignNow)
	if err != nil {
		t.Fatal(err)
	}
	r, err := processors.CampaignTransition(c, &schemas.CampaignCommand{Op: processors.OpReject, By: "key-3"}, campaignNow)
	if err != nil {
		t.Fatal(err)
	}
	if a.Decisions[1].Decision != "approved" || r.Decisions[1].Decision != "rejected" || len(c.Decisions) != 1 {
		t.Fatalf("approved %+v rejected %+v original %+v", a.Decisions, r.Decisions, c.Decisions)
	}
}

func TestCampaignDue(t *testing.T) {
	now := campaignNow
	for _, tc := range []struct {
		state  string
		sendAt time.Time
		want   bool
	}{
		{processors.CampaignApproved, now.Add(time.Second), false}, // waiting for its send time
		{processors.CampaignApproved, now, true},
		{processors.CampaignApproved, now.Add(-time.Hour), true},
		{processors.CampaignRunning, now.Add(-time.Hour), true},
		{processors.CampaignPending, now.Add(-time.Hour), false}, // until its approval deadline
		{processors.CampaignPaused, now.Add(-time.Hour), false},
		{processors.CampaignCompleted, now.Add(-time.Hour), false},
		{processors.CampaignCanceled, now.Add(-time.Hour), false},
		{processors.CampaignRejected, now.Add(-time.Hour), false},
		{processors.CampaignExpired, now.Add(-time.Hour), false},
	} {
		c := campaignIn(tc.state)
		c.SendAt = tc.sendAt.UnixMilli()
		if got := processors.CampaignDue(c, now); got != tc.want {
			t.Errorf("%s, sendAt %v: due %v, want %v", tc.state, tc.sendAt.Sub(now), got, tc.want)
		}
	}
	// Past the deadline every state but pending stays as it is.
	for _, s := range []string{processors.CampaignPaused, processors.CampaignCompleted, processors.CampaignCanceled,
		processors.CampaignRejected, processors.CampaignExpired} {
		c := campaignIn(s)
		if processors.CampaignDue(c, time.UnixMilli(c.ApprovalDeadline).Add(time.Hour)) {
			t.Errorf("%s is due past the approval deadline", s)
		}
	}
}

func TestCampaignBudget(t *testing.T) {
	now := campaignNow
	at := func(d time.Duration) int64 { return now.Add(d).UnixMilli() }
	for _, tc := range []struct {
		name     string
		rate     int32
		lastTick int64
		step     time.Duration
		want     int
	}{
		{"first step: one step's worth", 500, 0, time.Second, 500},
		{"first step of a short step", 500, 0, 100 * time.Millisecond, 50},
		{"rate times the time since the last step", 500, at(-200 * time.Millisecond), time.Second, 100},
		{"less than one recipient's worth", 1, at(-999 * time.Millisecond), time.Second, 0},
		{"no time since the last step", 500, at(0), time.Second, 0},
		{"a clock gone back", 500, at(5 * time.Second), time.Second, 0},
		{"a long pause: two seconds' worth", 500, at(-time.Hour), time.Second, 1000},
		{"no rate: the default", 0, 0, time.Second, processors.DefaultCampaignRate},
		{"a negative rate: the default", -7, at(-time.Second), time.Second, processors.DefaultCampaignRate},
		{"the max rate", processors.MaxCampaignRate, at(-time.Minute), time.Second, 2 * processors.MaxCampaignRate},
		// The rate is spread over the steps (config Campaigns.Step): a step
		// longer than two seconds still gets its rate's worth.
		{"first step of a long step", 100, 0, 5 * time.Second, 500},
		{"a long step", 100, at(-5 * time.Second), 5 * time.Second, 500},
	} {
		c := campaignIn(processors.CampaignRunning)
		c.Rate, c.LastTickAt = tc.rate, tc.lastTick
		if got := processors.CampaignBudget(c, now, tc.step); got != tc.want {
			t.Errorf("%s: budget %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestCampaignBudgetIsBounded(t *testing.T) {
	for _, rate := range []int32{-1, 0, 1, 7, 500, processors.MaxCampaignRate} {
		r := int(rate)
		if r <= 0 {
			r = processors.DefaultCampaignRate
		}
		for _, since := range []time.Duration{-time.Hour, -time.Millisecond, 0, time.Millisecond, 1500 * time.Millisecond,
			2 * time.Second, 3 * time.Second, 1000 * time.Hour} {
			c := &schemas.Campaign{Rate: rate, LastTickAt: campaignNow.Add(-since).UnixMilli()}
			got := processors.CampaignBudget(c, campaignNow, time.Second)
			if got < 0 || got > 2*r {
				t.Errorf("rate %d, %v since the last step: budget %d, want 0..%d", rate, since, got, 2*r)
			}
			if since >= 2*time.Second && got != 2*r {
				t.Errorf("rate %d, %v since the last step: budget %d, want the cap %d", rate, since, got, 2*r)
			}
		}
	}
}

func TestCampaignNotification(t *testing.T) {
	c := goodCampaign()
	c.Priority, c.CreatedBy, c.CreatedAt = "", "key-1", campaignNow.UnixMilli()
	created, err := processors.CampaignTransition(nil, &schemas.CampaignCommand{Op: processors.OpCreate, Campaign: *c}, campaignNow)
	if err != nil {
		t.Fatal(err)
	}
	at := campaignNow.Add(time.Hour)
	n := processors.CampaignNotification(created, "ann", at)
	want := &schemas.Notification{ID: "c:acme:spring-sale_1:ann", EventID: "campaign:spring-sale_1", UserID: "ann", Tenant: "acme",
		Template: c.Template, Priority: "low", Category: c.Category, Channels: c.Channels, Data: c.Data,
		SendAt: c.SendAt, ExpiresAt: c.ExpiresAt, LocalTime: c.LocalTime, AcceptedAt: at.UnixMilli(), Campaign: c.ID}
	if !reflect.DeepEqual(n, want) {
		t.Fatalf("notification %+v\nwant         %+v", n, want)
	}
	if again := processors.CampaignNotification(created, "ann", at.Add(time.Minute)); again.ID != n.ID {
		t.Fatalf("a later step names ann's notification %s, then %s", n.ID, again.ID)
	}
	created.Priority = "high"
	if n := processors.CampaignNotification(created, "ann", at); n.Priority != "high" {
		t.Fatalf("priority %q", n.Priority)
	}
	if n := processors.CampaignNotification(created, "team/bob", at); n.UserID != "team/bob" || strings.Contains(n.ID, "team/bob") {
		t.Fatalf("notification of team/bob %+v", n)
	}
}

func TestCampaignNotificationID(t *testing.T) {
	prefix := processors.CampaignNotificationPrefix("acme", "spring")
	if prefix != "c:acme:spring:" {
		t.Fatalf("prefix %q", prefix)
	}
	if got := processors.CampaignNotificationID("acme", "spring", "ann"); got != "c:acme:spring:ann" {
		t.Fatalf("id %q", got)
	}
	// The default tenant has one name, whichever way it is written.
	if a, b := processors.CampaignNotificationID("", "spring", "ann"), processors.CampaignNotificationID("default", "spring", "ann"); a != b || a != "c:default:spring:ann" {
		t.Fatalf("default tenant ids %q, %q", a, b)
	}

	fits := strings.Repeat("u", 200-len(prefix))
	long := fits + "u"
	if got := processors.CampaignNotificationID("acme", "spring", fits); got != prefix+fits {
		t.Fatalf("a user id that fits is kept: %q", got)
	}
	for _, u := range []string{"team/ann", "/", long, strings.Repeat("x", 1000) + "/y"} {
		got := processors.CampaignNotificationID("acme", "spring", u)
		if !strings.HasPrefix(got, prefix) || strings.Contains(got, u) || strings.Contains(got[len(prefix):], "/") {
			t.Errorf("user %.20q...: id %q", u, got)
		}
		if got != processors.CampaignNotificationID("acme", "spring", u) {
			t.Errorf("user %.20q...: the id is not stable", u)
		}
		// The API looks a notification up, cancels, recalls and takes
		// receipts by its id: every id must be one it accepts.
		if !processors.ValidID(got) {
			t.Errorf("user %.20q...: id %q is not a valid notification id", u, got)
		}
		// No valid user id names another user's hashed id.
		if hashed := got[len(prefix):]; processors.ValidID(hashed) {
			if other := processors.CampaignNotificationID("acme", "spring", hashed); other == got {
				t.Errorf("user %q takes the id of user %.20q...", hashed, u)
			}
		}
	}

	// Distinct tenants, campaigns and users never share an id.
	seen := map[string]string{}
	for _, tenant := range []string{"", "acme", "acme2"} {
		for _, id := range []string{"spring", "spring-2", "s"} {
			for _, u := range []string{"ann", "bob", "team/ann", "team/bob", long, long + "v", "pring:ann", "2:ann"} {
				got := processors.CampaignNotificationID(tenant, id, u)
				who := tenant + " " + id + " " + u
				if prev, dup := seen[got]; dup {
					t.Errorf("%q and %q share the id %q", prev, who, got)
				}
				seen[got] = who
				if len(got) > 200 {
					t.Errorf("%s: id of %d bytes", who, len(got))
				}
				// Progress reads a campaign's notifications as one range of the status table.
				p := processors.CampaignNotificationPrefix(tenant, id)
				if !strings.HasPrefix(got, p) || got >= processors.PrefixEnd(p) {
					t.Errorf("%s: id %q outside its campaign's range %q", who, got, p)
				}
				for _, other := range []string{"spring", "spring-2", "s"} {
					if op := processors.CampaignNotificationPrefix(tenant, other); other != id && strings.HasPrefix(got, op) {
						t.Errorf("%s: id %q is in campaign %s's range", who, got, other)
					}
				}
			}
		}
	}
}

func TestAudienceKeys(t *testing.T) {
	for _, tc := range []struct{ tenant, kind, id, user, key string }{
		{"", processors.AudienceTopic, "news", "ann", "topic:news|ann"},
		{"default", processors.AudienceTopic, "news", "ann", "topic:news|ann"},
		{"acme", processors.AudienceList, "vip", "bob@example.com", "acme|list:vip|bob@example.com"},
		{"acme", processors.AudienceTopic, "news", "team/a:b=c", "acme|topic:news|team/a:b=c"},
	} {
		key := processors.AudienceKey(tc.tenant, tc.kind, tc.id, tc.user)
		if key != tc.key {
			t.Errorf("key %q, want %q", key, tc.key)
		}
		if !strings.HasPrefix(key, processors.AudiencePrefix(tc.tenant, tc.kind, tc.id)) {
			t.Errorf("key %q without its prefix", key)
		}
		if u := processors.AudienceUser(key); u != tc.user {
			t.Errorf("user of %q: %q, want %q", key, u, tc.user)
		}
	}
	if u := processors.AudienceUser("ann"); u != "ann" {
		t.Errorf("user of a bare key: %q", u)
	}
}

// An audience is read as the range [prefix, PrefixEnd(prefix)): it holds
// every member and nothing of another audience, kind or tenant.
func TestAudienceRange(t *testing.T) {
	users := []string{"", "0", "A", "ann", "zz", "~~~", "a.b", "team/x", "=", strings.Repeat("z", 200)}
	var keys []string
	for _, tenant := range []string{"", "acme", "acm", "acme-2"} {
		for _, kind := range []string{processors.AudienceTopic, processors.AudienceList} {
			for _, id := range []string{"news", "new", "news2", "news-x", "news_x", "newt"} {
				for _, u := range users {
					keys = append(keys, processors.AudienceKey(tenant, kind, id, u))
				}
			}
		}
	}
	sort.Strings(keys)
	for _, tenant := range []string{"", "acme"} {
		for _, kind := range []string{processors.AudienceTopic, processors.AudienceList} {
			for _, id := range []string{"news", "new"} {
				prefix := processors.AudiencePrefix(tenant, kind, id)
				end := processors.PrefixEnd(prefix)
				if end <= prefix {
					t.Fatalf("end %q before prefix %q", end, prefix)
				}
				var members []string
				for _, k := range keys {
					in := k >= prefix && k < end
					if in != strings.HasPrefix(k, prefix) {
						t.Errorf("range of %q: key %q in range %v", prefix, k, in)
					}
					if in {
						members = append(members, processors.AudienceUser(k))
					}
				}
				want := slices.Clone(users)
				sort.Strings(want)
				if !slices.Equal(members, want) {
					t.Errorf("range of %q holds %q, want %q", prefix, members, want)
				}
			}
		}
	}
	// The end sorts after every member key and before the next audience.
	prefix := processors.AudiencePrefix("acme", processors.AudienceTopic, "news")
	end := processors.PrefixEnd(prefix)
	if !(prefix+strings.Repeat("~", 300) < end) || !(end < processors.AudiencePrefix("acme", processors.AudienceTopic, "newt")) ||
		!(end < "acme|topic:news}") {
		t.Fatalf("end %q misplaced", end)
	}
}

func TestProgressBucket(t *testing.T) {
	for status, want := range map[string]string{
		processors.StatusAccepted:     "queued",
		processors.StatusScheduled:    "queued",
		processors.StatusQueued:       "queued",
		processors.StatusRetrying:     "queued",
		"":                            "queued",
		"something-new":               "queued",
		processors.StatusSent:         "sent",
		processors.StatusDelivered:    "sent",
		processors.StatusOpened:       "sent",
		processors.StatusClicked:      "sent",
		processors.StatusUnsubscribed: "sent",
		processors.StatusSuppressed:   "suppressed",
		processors.StatusDuplicate:    "suppressed",
		processors.StatusRateLimited:  "suppressed",
		processors.StatusCanceled:     "suppressed",
		processors.StatusDigested:     "suppressed",
		processors.StatusFailed:       "failed",
		processors.StatusRejected:     "failed",
		processors.StatusExpired:      "failed",
	} {
		if got := processors.ProgressBucket(status); got != want {
			t.Errorf("%q counts as %s, want %s", status, got, want)
		}
	}
}

func TestProgressCount(t *testing.T) {
	var p processors.Progress
	for _, s := range []string{
		processors.StatusAccepted, processors.StatusRetrying, processors.StatusScheduled,
		processors.StatusSent, processors.StatusDelivered, processors.StatusClicked, processors.StatusUnsubscribed,
		processors.StatusSuppressed, processors.StatusCanceled, processors.StatusDigested,
		processors.StatusFailed, processors.StatusExpired,
	} {
		p.Count(&schemas.Lifecycle{ID: "n", Status: s})
	}
	want := processors.Progress{Targeted: 12, Queued: 3, Sent: 4, Suppressed: 3, Failed: 2}
	if p != want {
		t.Fatalf("progress %+v, want %+v", p, want)
	}
	if p.Targeted != p.Queued+p.Sent+p.Suppressed+p.Failed {
		t.Fatalf("buckets do not add up: %+v", p)
	}
}

func TestCancelKeys(t *testing.T) {
	plain := &schemas.Notification{ID: "0190c5f4-aaaa", Tenant: "acme", UserID: "ann"}
	if got := processors.CancelKeys(plain); !slices.Equal(got, []string{"n:0190c5f4-aaaa"}) {
		t.Fatalf("plain notification: %q", got)
	}
	for _, tc := range []struct {
		tenant string
		want   []string
	}{
		{"acme", []string{"n:c:acme:spring:ann", "c:acme|campaign:spring"}},
		{"", []string{"n:c:default:spring:ann", "c:campaign:spring"}},
	} {
		c := goodCampaign()
		c.ID, c.Tenant, c.EventID = "spring", tc.tenant, processors.CampaignEventID("spring")
		n := processors.CampaignNotification(c, "ann", campaignNow)
		got := processors.CancelKeys(n)
		if !slices.Equal(got, tc.want) {
			t.Errorf("campaign notification in %q: %q, want %q", tc.tenant, got, tc.want)
		}
		// The API cancels a campaign under the key its notifications look up.
		if got[1] != processors.CampaignCancelKey(tc.tenant, "spring") {
			t.Errorf("campaign cancel key %q, want %q", got[1], processors.CampaignCancelKey(tc.tenant, "spring"))
		}
	}
	if processors.CampaignCancelKey("acme", "spring") == processors.CampaignCancelKey("acme2", "spring") ||
		processors.CampaignCancelKey("acme", "spring") == processors.CampaignCancelKey("acme", "spring2") {
		t.Fatal("campaign cancel keys collide")
	}
}
