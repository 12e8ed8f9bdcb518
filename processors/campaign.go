package processors

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// Campaign states.
const (
	CampaignPending   = "pending_approval"
	CampaignApproved  = "approved" // waiting for sendAt
	CampaignRunning   = "running"  // fanning out
	CampaignPaused    = "paused"
	CampaignCompleted = "completed" // every recipient targeted
	CampaignCanceled  = "canceled"
	CampaignRejected  = "rejected"
	CampaignExpired   = "expired" // not approved in time
)

// Campaign commands (CampaignCommand.Op); a command with no value is a tick.
const (
	OpCreate  = "create"
	OpApprove = "approve"
	OpReject  = "reject"
	OpCancel  = "cancel"
	OpPause   = "pause"
	OpResume  = "resume"
	// OpTemplate pins another template version; the campaign waits for a
	// new approval of it.
	OpTemplate = "template"
)

// Audience kinds of a campaign.
const (
	AudienceTopic   = "topic"
	AudienceList    = "list"
	AudienceSegment = "segment"
	AudienceUsers   = "users" // inline recipients of a request held for approval
)

// Campaign defaults and bounds.
const (
	DefaultCampaignRate     = 500
	MaxCampaignRate         = 100_000
	DefaultApprovalDeadline = 72 * time.Hour
	MaxCampaignUsers        = 10_000
)

var campaignIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidCampaignID tells whether id may name a campaign, a topic, a list or a
// schedule: they become parts of keys and notification ids.
func ValidCampaignID(id string) bool { return campaignIDPattern.MatchString(id) }

// CampaignKey is the campaign's key on notify.campaigns and in its table.
func CampaignKey(tenant, id string) string { return schemas.TenantKey(tenant, "campaign:"+id) }

// CampaignEventID is the event id of a campaign's notifications.
func CampaignEventID(id string) string { return "campaign:" + id }

// CampaignNotificationPrefix starts the id of every notification of a
// campaign, so its notifications sort together in the status table.
func CampaignNotificationPrefix(tenant, id string) string {
	return "c:" + schemas.TenantName(schemas.NormTenant(tenant)) + ":" + id + ":"
}

// CampaignNotificationID names the campaign's notification to a user. It is
// readable (the prefix, then the user id); a user id too long for an id, or
// with a "/" (the id is a path segment of the API), or starting with "=", is
// replaced by "=" and its hash.
func CampaignNotificationID(tenant, id, userID string) string {
	p := CampaignNotificationPrefix(tenant, id)
	if len(p)+len(userID) <= 200 && !strings.Contains(userID, "/") && !strings.HasPrefix(userID, "=") {
		return p + userID
	}
	// "=" may start no readable user id here, so a hash never names a user.
	h := sha256.Sum256([]byte(userID))
	return p + "=" + hex.EncodeToString(h[:16])
}

// AudiencePrefix starts the key of every member of a topic or list on
// notify.audiences; AudienceKey is one member's key.
func AudiencePrefix(tenant, kind, id string) string {
	return schemas.TenantMemberPrefix(tenant, kind+":"+id)
}

// AudienceKey is the key of userID's membership of a topic or list.
func AudienceKey(tenant, kind, id, userID string) string {
	return schemas.TenantMemberKey(tenant, kind+":"+id, userID)
}

// AudienceUser is the user id of a membership key.
func AudienceUser(key string) string { return schemas.MemberOfKey(key) }

// PrefixEnd is the first key after every key starting with prefix.
func PrefixEnd(prefix string) string { return prefix + "\xff" }

// ValidateCampaign checks a campaign as created through the API.
func ValidateCampaign(c *schemas.Campaign) error {
	switch {
	case !ValidCampaignID(c.ID):
		return fieldErr("id", "must be 1-64 letters, digits, _ or -")
	case !ValidID(c.Template):
		return fieldErr("template", "is required: a template id")
	case len(c.Name) > 200:
		return fieldErr("name", "must be at most 200 bytes")
	case c.Rate < 0 || c.Rate > MaxCampaignRate:
		return fieldErr("rate", fmt.Sprintf("must be between 1 and %d notifications per second (0 or absent: %d)", MaxCampaignRate, DefaultCampaignRate))
	}
	if c.Priority != "" && !validPriority(c.Priority) {
		return fieldErr("priority", "must be high, normal or low")
	}
	switch c.AudienceKind {
	case AudienceTopic, AudienceList:
		if !ValidCampaignID(c.AudienceID) {
			return fieldErr("audience."+c.AudienceKind, "must be 1-64 letters, digits, _ or -")
		}
	case AudienceSegment:
		if _, err := ParseSegment(c.Segment); err != nil {
			return fieldErr("audience.segment", err.Error())
		}
	case AudienceUsers:
		if len(c.Users) == 0 || len(c.Users) > MaxCampaignUsers {
			return fieldErr("audience.users", fmt.Sprintf("must list 1-%d users", MaxCampaignUsers))
		}
		for i, u := range c.Users {
			if !ValidID(u) || strings.Contains(u, schemas.TenantSep) {
				return fieldErr(fmt.Sprintf("audience.users[%d]", i), "is not a valid user id")
			}
		}
	default:
		return fieldErr("audience", "must name one of topic, list, segment")
	}
	if c.Data != "" {
		if _, err := ParseData(c.Data); err != nil {
			return fieldErr("data", err.Error())
		}
	}
	if c.LocalTime != "" {
		if !ValidHHMM(c.LocalTime) {
			return fieldErr("localTime", "must be HH:MM (00:00 to 23:59)")
		}
	}
	if c.ExpiresAt != 0 && c.SendAt != 0 && c.ExpiresAt <= c.SendAt {
		return fieldErr("expiresAt", "must be after sendAt")
	}
	for i, ch := range c.Channels {
		if !KnownChannel(ch) {
			return fieldErr(fmt.Sprintf("channels[%d]", i), fmt.Sprintf("unknown channel %q", Clip(ch, 32)))
		}
	}
	return nil
}

// FieldError names the field of a bad campaign or schedule.
type FieldError struct{ Field, Msg string }

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

func fieldErr(field, msg string) error { return &FieldError{Field: field, Msg: msg} }

// ErrCreatorCannotApprove refuses an approval by the key that created the campaign.
var ErrCreatorCannotApprove = errors.New("the key that created a campaign cannot approve it")

// CampaignTransition applies a command to a campaign (nil: none yet) and
// returns the campaign as it is after it; an error leaves it unchanged. A
// create of an existing campaign is refused, unless it is the same create
// replayed (same creation time).
func CampaignTransition(c *schemas.Campaign, cmd *schemas.CampaignCommand, now time.Time) (*schemas.Campaign, error) {
	at := now.UnixMilli()
	if cmd.Op == OpCreate {
		if c != nil {
			if c.CreatedAt == cmd.Campaign.CreatedAt && c.CreatedBy == cmd.Campaign.CreatedBy {
				return c, nil
			}
			return nil, fmt.Errorf("campaign %s exists", c.ID)
		}
		n := cmd.Campaign
		n.State = CampaignPending
		if n.ApprovalDeadline == 0 {
			n.ApprovalDeadline = n.CreatedAt + DefaultApprovalDeadline.Milliseconds()
		}
		if n.Rate == 0 {
			n.Rate = DefaultCampaignRate
		}
		if n.Priority == "" {
			n.Priority = "low"
		}
		n.EventID = CampaignEventID(n.ID)
		n.UpdatedAt = at
		return &n, nil
	}
	if c == nil {
		return nil, errors.New("no such campaign")
	}
	n := *c
	n.Decisions = append([]schemas.CampaignDecision(nil), c.Decisions...)
	n.UpdatedAt = at
	// Every decision names the template version it was about: an approval
	// approves exactly that one.
	decide := func(state, decision string) {
		n.State = state
		n.Decisions = append(n.Decisions, schemas.CampaignDecision{By: cmd.By, ByName: cmd.ByName, Decision: decision,
			Comment: Clip(cmd.Comment, 1000), At: at, TemplateVersion: n.TemplateVersion, TemplateHash: n.TemplateHash})
	}
	switch cmd.Op {
	case OpApprove, OpReject:
		if c.State != CampaignPending {
			return nil, fmt.Errorf("campaign is %s, not %s", c.State, CampaignPending)
		}
		// The API refuses the creator's whole lineage (keys minted from it or
		// it from them, rotations); the group, with no view of the keys,
		// refuses the creating key itself. Names are labels, not principals.
		if cmd.By == "" || cmd.By == c.CreatedBy {
			return nil, ErrCreatorCannotApprove
		}
		if at >= c.ApprovalDeadline {
			return nil, fmt.Errorf("the approval deadline %s has passed", time.UnixMilli(c.ApprovalDeadline).UTC().Format(time.RFC3339))
		}
		if cmd.By == c.TemplateSetBy {
			return nil, ErrCreatorCannotApprove
		}
		if (cmd.TemplateVersion != 0 && cmd.TemplateVersion != c.TemplateVersion) || (cmd.TemplateHash != "" && cmd.TemplateHash != c.TemplateHash) {
			return nil, fmt.Errorf("%w: the campaign sends template %s version %d (%s), not version %d (%s)", ErrOtherTemplateVersion,
				c.Template, c.TemplateVersion, c.TemplateHash, cmd.TemplateVersion, Clip(cmd.TemplateHash, 80))
		}
		if cmd.Op == OpApprove {
			decide(CampaignApproved, "approved")
		} else {
			decide(CampaignRejected, "rejected")
			n.FinishedAt = at
		}
	case OpCancel:
		if CampaignFinal(c.State) && c.State != CampaignCompleted {
			return nil, fmt.Errorf("campaign is %s", c.State)
		}
		decide(CampaignCanceled, "canceled")
		n.FinishedAt = at
	case OpPause:
		if c.State != CampaignRunning && c.State != CampaignApproved {
			return nil, fmt.Errorf("campaign is %s: only a running or approved campaign pauses", c.State)
		}
		decide(CampaignPaused, "paused")
	case OpResume:
		if c.State != CampaignPaused {
			return nil, fmt.Errorf("campaign is %s, not paused", c.State)
		}
		if !ApprovedVersion(c) {
			return nil, fmt.Errorf("campaign's template version %d was not approved: it waits for approval", c.TemplateVersion)
		}
		decide(CampaignApproved, "resumed")
		n.LastTickAt = 0
	case OpTemplate:
		switch c.State {
		case CampaignPending, CampaignApproved, CampaignPaused:
		default:
			return nil, fmt.Errorf("campaign is %s: its template version can change only while it is pending approval, approved and not started, or paused", c.State)
		}
		if c.State == CampaignApproved && c.StartedAt > 0 {
			return nil, fmt.Errorf("campaign is sending: pause it first")
		}
		if cmd.TemplateVersion <= 0 || cmd.TemplateHash == "" {
			return nil, errors.New("a template version and its hash are required")
		}
		n.TemplateVersion, n.TemplateHash, n.TemplateSetBy = cmd.TemplateVersion, cmd.TemplateHash, cmd.By
		if cmd.Campaign.Category != "" {
			n.Category = cmd.Campaign.Category // the API narrowed it to the version's
		}
		decide(CampaignPending, "template")
		// A new approval is needed, with as much time as a new campaign.
		n.ApprovalDeadline = max(c.ApprovalDeadline, at+DefaultApprovalDeadline.Milliseconds())
	default:
		return nil, fmt.Errorf("unknown campaign command %q", Clip(cmd.Op, 32))
	}
	return &n, nil
}

// ErrOtherTemplateVersion refuses a decision about another template version
// than the one the campaign sends (the approver read an older one).
var ErrOtherTemplateVersion = errors.New("the decision is about another template version")

// ApprovedVersion tells whether the campaign's last approval approved the
// template version it now sends: fan-out renders nothing else.
func ApprovedVersion(c *schemas.Campaign) bool {
	for i := len(c.Decisions) - 1; i >= 0; i-- {
		switch d := c.Decisions[i]; d.Decision {
		case "approved":
			return d.TemplateVersion == c.TemplateVersion && d.TemplateHash == c.TemplateHash
		case "template":
			return false
		}
	}
	return false
}

// CampaignFinal tells whether a campaign in state s does nothing more.
func CampaignFinal(s string) bool {
	switch s {
	case CampaignCompleted, CampaignCanceled, CampaignRejected, CampaignExpired:
		return true
	}
	return false
}

// CampaignDue tells whether a campaign has work at now: fan-out to do, or an
// approval deadline passed.
func CampaignDue(c *schemas.Campaign, now time.Time) bool {
	switch c.State {
	case CampaignApproved, CampaignRunning:
		return c.SendAt <= now.UnixMilli()
	case CampaignPending:
		return now.UnixMilli() >= c.ApprovalDeadline
	}
	return false
}

// CampaignBudget is how many recipients a campaign may target at now: its
// rate times the time since its last step, at least one step's worth on
// the first, never more than two steps' (or two seconds') worth.
func CampaignBudget(c *schemas.Campaign, now time.Time, step time.Duration) int {
	rate := int64(c.Rate)
	if rate <= 0 {
		rate = DefaultCampaignRate
	}
	elapsed := step
	if c.LastTickAt > 0 {
		elapsed = now.Sub(time.UnixMilli(c.LastTickAt))
	}
	elapsed = min(max(elapsed, 0), max(2*time.Second, 2*step))
	n := rate * elapsed.Milliseconds() / 1000
	return int(max(n, 0))
}

// CampaignNotification is the campaign's notification to one user: the
// deliver group enriches, filters (preferences, quiet hours, caps) and
// routes it like any other.
func CampaignNotification(c *schemas.Campaign, userID string, now time.Time) *schemas.Notification {
	return &schemas.Notification{
		ID: CampaignNotificationID(c.Tenant, c.ID, userID), EventID: c.EventID, UserID: userID, Tenant: c.Tenant,
		Template: c.Template, Priority: c.Priority, Category: c.Category, Channels: c.Channels, Data: c.Data,
		SendAt: c.SendAt, ExpiresAt: c.ExpiresAt, LocalTime: c.LocalTime, AcceptedAt: now.UnixMilli(), Campaign: c.ID,
		TemplateVersion: c.TemplateVersion, TemplateHash: c.TemplateHash, SealedData: c.SealedData,
	}
}

// Progress counts a campaign's notifications by where each stands.
type Progress struct {
	Targeted   int64 `json:"targeted"`
	Queued     int64 `json:"queued"`
	Sent       int64 `json:"sent"`
	Suppressed int64 `json:"suppressed"`
	Failed     int64 `json:"failed"`
}

// Count adds one notification's lifecycle to the progress.
func (p *Progress) Count(lc *schemas.Lifecycle) {
	p.Targeted++
	switch ProgressBucket(lc.Status) {
	case "sent":
		p.Sent++
	case "suppressed":
		p.Suppressed++
	case "failed":
		p.Failed++
	default:
		p.Queued++
	}
}

// ProgressBucket is where a notification of state status counts: queued (on
// its way), sent (a provider took it; delivered, opened, clicked and
// unsubscribed after it too), suppressed (by preferences, limits, a cancel or
// a digest) or failed.
func ProgressBucket(status string) string {
	switch status {
	case StatusSent, StatusDelivered, StatusOpened, StatusClicked, StatusUnsubscribed:
		return "sent"
	case StatusSuppressed, StatusDuplicate, StatusRateLimited, StatusCanceled, StatusDigested:
		return "suppressed"
	case StatusFailed, StatusRejected, StatusExpired:
		return "failed"
	}
	return "queued"
}

// CancelKey is the key on notify.cancels of a cancelled notification;
// CampaignCancelKey that of a cancelled campaign.
func CancelKey(notificationID string) string { return "n:" + notificationID }

// CampaignCancelKey is the key on notify.cancels of a cancelled campaign.
func CampaignCancelKey(tenant, id string) string { return "c:" + CampaignKey(tenant, id) }

// CancelKeys are the keys that cancel n: its own, and its campaign's.
func CancelKeys(n *schemas.Notification) []string {
	keys := []string{CancelKey(n.ID)}
	if n.Campaign != "" {
		keys = append(keys, CampaignCancelKey(n.Tenant, n.Campaign))
	}
	return keys
}
