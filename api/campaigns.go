package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// ScopeApprove decides on campaigns waiting for approval (never the key that
// created one).
const ScopeApprove = "approve"

// RangeTable is a table that can be read by key range (a *goka.View).
type RangeTable interface {
	Table
	IteratorWithRange(start, limit string) (goka.Iterator, error)
}

// Campaigns are what the campaign endpoints read and write.
type Campaigns struct {
	// Table is a view of the campaign group table.
	Table RangeTable
	// Members is a view of notify.audiences (topic subscribers, list members).
	Members RangeTable
	// SyncMembers waits until Members has read everything written to
	// notify.audiences before the call (nil: it is not waited for).
	SyncMembers func(ctx context.Context) bool
	// Cancels is a view of notify.cancels.
	Cancels Table
	// Schedules is a view of the schedule group table.
	Schedules RangeTable
	// Progress counts the notifications of a campaign from the status table
	// (every notification whose id starts with prefix).
	Progress func(ctx context.Context, prefix string) (processors.Progress, error)
	// ApprovalAbove holds a request to more recipients than this for
	// approval, as a campaign (0: never).
	ApprovalAbove int
	// MaxListBytes bounds a CSV upload (0: 1 GiB); MaxListLines its lines.
	MaxListBytes int64
	MaxListLines int
}

type audienceJSON struct {
	Topic   string   `json:"topic,omitempty"`
	List    string   `json:"list,omitempty"`
	Segment string   `json:"segment,omitempty"`
	Users   []string `json:"users,omitempty"`
}

type campaignBody struct {
	ID               string          `json:"id"`
	Name             string          `json:"name"`
	Template         string          `json:"template"`
	Data             json.RawMessage `json:"data"`
	Priority         string          `json:"priority"`
	Category         string          `json:"category"`
	Channels         []string        `json:"channels"`
	Audience         audienceJSON    `json:"audience"`
	Rate             int32           `json:"rate"`
	SendAt           string          `json:"sendAt"`
	ExpiresAt        string          `json:"expiresAt"`
	LocalTime        string          `json:"localTime"`
	ApprovalDeadline string          `json:"approvalDeadline"`
}

type campaignJSON struct {
	ID        string          `json:"id"`
	Tenant    string          `json:"tenant"`
	Name      string          `json:"name,omitempty"`
	Template  string          `json:"template"`
	Priority  string          `json:"priority"`
	Category  string          `json:"category,omitempty"`
	Channels  []string        `json:"channels,omitempty"`
	Audience  audienceJSON    `json:"audience"`
	Rate      int32           `json:"rate"`
	SendAt    string          `json:"sendAt,omitempty"`
	ExpiresAt string          `json:"expiresAt,omitempty"`
	LocalTime string          `json:"localTime,omitempty"`
	Data      json.RawMessage `json:"data,omitempty"`
	State     string          `json:"state"`
	Reason    string          `json:"reason,omitempty"`
	CreatedBy string          `json:"createdBy"`
	// TemplateVersion and TemplateHash are the template version the
	// campaign sends: what an approval approves, and all fan-out renders.
	TemplateVersion  int64                `json:"templateVersion,omitempty"`
	TemplateHash     string               `json:"templateHash,omitempty"`
	CreatedAt        string               `json:"createdAt"`
	ApprovalDeadline string               `json:"approvalDeadline,omitempty"`
	Decisions        []decisionJSON       `json:"decisions"`
	StartedAt        string               `json:"startedAt,omitempty"`
	FinishedAt       string               `json:"finishedAt,omitempty"`
	Progress         *processors.Progress `json:"progress,omitempty"`
	Fanout           map[string]int64     `json:"fanout"`
	Links            map[string]string    `json:"links,omitempty"`
}

type decisionJSON struct {
	schemas.CampaignDecision
	At string `json:"at"`
}

func rfc(ms int64) string {
	if ms == 0 {
		return ""
	}
	return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano)
}

// openCampaign is c with its data opened (none when it cannot be: erased).
func (s *Server) openCampaign(ctx context.Context, c *schemas.Campaign) *schemas.Campaign {
	if len(c.SealedData) == 0 {
		return c
	}
	o := *c
	if err := processors.OpenCampaignData(ctx, s.sealer(), &o); err != nil {
		o.Data = ""
	}
	return &o
}

// campaignJSON is the answer about c, its data opened.
func (s *Server) campaignJSON(ctx context.Context, c *schemas.Campaign) campaignJSON {
	return toCampaignJSON(s.openCampaign(ctx, c))
}

func toCampaignJSON(c *schemas.Campaign) campaignJSON {
	out := campaignJSON{ID: c.ID, Tenant: schemas.TenantName(c.Tenant), Name: c.Name, Template: c.Template, Priority: c.Priority,
		Category: c.Category, Channels: c.Channels, Rate: c.Rate, SendAt: rfc(c.SendAt), LocalTime: c.LocalTime, State: c.State,
		Reason: c.Reason, CreatedBy: c.CreatedByName, CreatedAt: rfc(c.CreatedAt), ApprovalDeadline: rfc(c.ApprovalDeadline),
		StartedAt: rfc(c.StartedAt), FinishedAt: rfc(c.FinishedAt), Decisions: []decisionJSON{},
		Fanout: map[string]int64{"targeted": c.Targeted, "scanned": c.Scanned}, ExpiresAt: rfc(c.ExpiresAt),
		TemplateVersion: c.TemplateVersion, TemplateHash: c.TemplateHash}
	if c.Data != "" && json.Valid([]byte(c.Data)) {
		out.Data = json.RawMessage(c.Data)
	}
	switch c.AudienceKind {
	case processors.AudienceTopic:
		out.Audience.Topic = c.AudienceID
	case processors.AudienceList:
		out.Audience.List = c.AudienceID
	case processors.AudienceSegment:
		out.Audience.Segment = c.Segment
	case processors.AudienceUsers:
		out.Audience.Users = c.Users
	}
	if c.State == processors.CampaignPending {
		out.Links = map[string]string{"approve": "/v1/campaigns/" + c.ID + "/approve", "reject": "/v1/campaigns/" + c.ID + "/reject"}
		if c.TemplateVersion > 0 {
			// What the approver approves: read it, preview it.
			out.Links["templateVersion"] = fmt.Sprintf("/v1/templates/%s/versions/%d", c.Template, c.TemplateVersion)
		}
	}
	for _, d := range c.Decisions {
		out.Decisions = append(out.Decisions, decisionJSON{CampaignDecision: d, At: rfc(d.At)})
	}
	return out
}

func campaignsUnavailable() *Error {
	return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "campaigns are not served by this instance"}
}

func (s *Server) campaign(tenant, id string) *schemas.Campaign {
	if s.Campaigns == nil || s.Campaigns.Table == nil {
		return nil
	}
	v, err := s.Campaigns.Table.Get(processors.CampaignKey(tenant, id))
	if err != nil {
		return nil
	}
	c, _ := v.(*schemas.Campaign)
	return c
}

// POST /v1/campaigns creates a campaign; it waits in pending_approval until
// a key with the approve scope, other than this one, approves it.
func (s *Server) createCampaign(w http.ResponseWriter, r *http.Request) {
	if s.Campaigns == nil {
		writeError(w, campaignsUnavailable())
		return
	}
	var b campaignBody
	if err := decode(r, s.MaxBodyBytes, &b); err != nil {
		writeError(w, err)
		return
	}
	c, apiErr := s.toCampaign(r.Context(), &b)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	s.submitCampaign(w, r, c)
}

// submitCampaign writes a campaign's create command and answers with the
// campaign as the table shows it.
func (s *Server) submitCampaign(w http.ResponseWriter, r *http.Request, c *schemas.Campaign) {
	tenant := c.Tenant
	p := PrincipalFrom(r.Context())
	ctx := r.Context()
	if cur := s.campaign(tenant, c.ID); cur != nil {
		if cur.CreatedBy == p.KeyID && sameCampaign(s.openCampaign(ctx, cur), c) {
			// The creator's retry (a request held for approval sent again
			// with its event id, or a create whose answer was lost): the
			// same answer.
			writeJSON(w, http.StatusAccepted, s.campaignJSON(ctx, cur))
			return
		}
		writeError(w, &Error{Status: http.StatusConflict, Code: "conflict", Field: "id", Message: fmt.Sprintf("campaign %q exists (%s)", c.ID, cur.State)})
		return
	}
	c.CreatedBy, c.CreatedByName, c.CreatedAt, c.TemplateSetBy = p.KeyID, p.Name, s.now().UnixMilli(), p.KeyID
	if err := processors.ValidateCampaign(c); err != nil {
		writeError(w, campaignFieldError(err))
		return
	}
	// The data (a request held for approval carries its request's) is
	// sealed under the campaign's own key, like every data on a topic.
	sealed := *c
	if err := processors.SealCampaignData(ctx, s.sealer(), &sealed); err != nil {
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: err.Error()})
		return
	}
	cmd := &schemas.CampaignCommand{Op: processors.OpCreate, Tenant: tenant, CampaignID: c.ID, By: p.KeyID, ByName: p.Name,
		At: c.CreatedAt, Campaign: sealed}
	noteResource(r.Context(), "campaign", c.ID)
	got, apiErr := s.campaignCommand(r.Context(), cmd, func(cur *schemas.Campaign) bool { return cur != nil })
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	if got == nil {
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable",
			Message: fmt.Sprintf("campaign %q is written but not yet readable; GET /v1/campaigns/%s to confirm", c.ID, c.ID)})
		return
	}
	if (got.CreatedAt != c.CreatedAt || got.CreatedBy != c.CreatedBy) && !(got.CreatedBy == c.CreatedBy && sameCampaign(s.openCampaign(ctx, got), c)) {
		writeError(w, &Error{Status: http.StatusConflict, Code: "conflict", Field: "id", Message: fmt.Sprintf("campaign %q exists", c.ID)})
		return
	}
	writeJSON(w, http.StatusAccepted, s.campaignJSON(ctx, got))
}

// sameCampaign tells whether created (as stored) is what c asks for again.
func sameCampaign(created, c *schemas.Campaign) bool {
	return created.Template == c.Template && created.Name == c.Name && created.Data == c.Data &&
		created.Category == c.Category && slices.Equal(created.Channels, c.Channels) &&
		created.AudienceKind == c.AudienceKind && created.AudienceID == c.AudienceID &&
		created.Segment == c.Segment && slices.Equal(created.Users, c.Users) &&
		(c.Rate == 0 || created.Rate == c.Rate) && (c.Priority == "" || created.Priority == c.Priority) &&
		created.SendAt == c.SendAt && created.ExpiresAt == c.ExpiresAt && created.LocalTime == c.LocalTime &&
		(c.ApprovalDeadline == 0 || created.ApprovalDeadline == c.ApprovalDeadline)
}

func campaignFieldError(err error) *Error {
	var fe *processors.FieldError
	if errors.As(err, &fe) {
		return invalid(fe.Field, "%s", fe.Error())
	}
	return invalid("", "%v", err)
}

func (s *Server) toCampaign(ctx context.Context, b *campaignBody) (*schemas.Campaign, *Error) {
	tenant := tenantFrom(ctx)
	if b.ID == "" {
		b.ID = "cmp-" + randomHex(8)
	}
	if !processors.ValidCampaignID(b.ID) {
		return nil, invalid("id", "id must be 1-64 letters, digits, _ or -")
	}
	if err := validID("template", b.Template); err != nil {
		return nil, err
	}
	tmpl := s.knownTemplate(ctx, schemas.TenantKey(tenant, b.Template), map[string]bool{})
	if tmpl == nil {
		return nil, &Error{Status: http.StatusBadRequest, Code: "unknown_template", Field: "template", Message: fmt.Sprintf("unknown template %q", b.Template)}
	}
	if err := processors.ValidateCategory(b.Category); err != nil {
		return nil, invalid("category", "%v", err)
	}
	category, apiErr := checkCategory(ctx, &sendBody{Category: b.Category}, tmpl, "category")
	if apiErr != nil {
		return nil, apiErr
	}
	// The campaign sends the template version it was created with (what its
	// approver approves), under the category it was authorized for.
	c := &schemas.Campaign{ID: b.ID, Tenant: tenant, Name: b.Name, Template: b.Template, Priority: b.Priority,
		Category: category, Channels: b.Channels, Rate: b.Rate, LocalTime: b.LocalTime,
		TemplateVersion: tmpl.Version, TemplateHash: processors.VersionHash(tmpl)}
	if len(b.Data) > 0 && string(b.Data) != "null" {
		c.Data = string(b.Data)
	}
	n := 0
	for _, set := range []bool{b.Audience.Topic != "", b.Audience.List != "", b.Audience.Segment != "", len(b.Audience.Users) > 0} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, invalid("audience", "audience must name exactly one of topic, list, segment, users")
	}
	switch {
	case b.Audience.Topic != "":
		c.AudienceKind, c.AudienceID = processors.AudienceTopic, b.Audience.Topic
	case b.Audience.List != "":
		c.AudienceKind, c.AudienceID = processors.AudienceList, b.Audience.List
	case b.Audience.Segment != "":
		c.AudienceKind, c.Segment = processors.AudienceSegment, b.Audience.Segment
	default:
		c.AudienceKind, c.Users = processors.AudienceUsers, b.Audience.Users
	}
	for _, f := range []struct {
		name, v string
		dst     *int64
	}{{"sendAt", b.SendAt, &c.SendAt}, {"expiresAt", b.ExpiresAt, &c.ExpiresAt}, {"approvalDeadline", b.ApprovalDeadline, &c.ApprovalDeadline}} {
		if f.v == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339, f.v)
		if err != nil {
			return nil, invalid(f.name, "%s must be an RFC 3339 time: %v", f.name, err)
		}
		if !t.After(s.now()) && f.name != "sendAt" {
			return nil, invalid(f.name, "%s %s is already past", f.name, f.v)
		}
		*f.dst = t.UnixMilli()
	}
	if c.SendAt > s.now().Add(processors.MaxScheduleAhead).UnixMilli() {
		return nil, invalid("sendAt", "sendAt may be at most %v ahead", processors.MaxScheduleAhead)
	}
	if c.ApprovalDeadline != 0 && c.ApprovalDeadline > s.now().Add(30*24*time.Hour).UnixMilli() {
		return nil, invalid("approvalDeadline", "approvalDeadline may be at most 30 days ahead")
	}
	if err := processors.ValidateCampaign(c); err != nil {
		return nil, campaignFieldError(err)
	}
	return c, nil
}

// campaignCommand produces cmd and waits (up to WriteWait) until the
// campaign table shows done; it returns the campaign as last read.
func (s *Server) campaignCommand(ctx context.Context, cmd *schemas.CampaignCommand, done func(*schemas.Campaign) bool) (*schemas.Campaign, *Error) {
	b, err := schemas.CampaignCommandCodec.Encode(cmd)
	if err != nil {
		return nil, invalid("", "%v", err)
	}
	key := processors.CampaignKey(cmd.Tenant, cmd.CampaignID)
	if !topology.Fits(key, b) {
		return nil, &Error{Status: http.StatusRequestEntityTooLarge, Code: "payload_too_large", Message: "the campaign does not fit in a record"}
	}
	var got *schemas.Campaign
	if err := s.write(ctx, string(topology.Campaigns), key, b, func() bool {
		got = s.campaign(cmd.Tenant, cmd.CampaignID)
		return done(got)
	}); err != nil {
		return nil, err.(*Error)
	}
	return s.campaign(cmd.Tenant, cmd.CampaignID), nil
}

// GET /v1/campaigns/{id}: the campaign, its decisions and its progress
// (counted from the status table: each notification where it stands now).
func (s *Server) getCampaign(w http.ResponseWriter, r *http.Request) {
	if s.Campaigns == nil {
		writeError(w, campaignsUnavailable())
		return
	}
	id := r.PathValue("id")
	c := s.campaign(tenantFrom(r.Context()), id)
	if c == nil {
		writeError(w, notFound("campaign", id))
		return
	}
	out := s.campaignJSON(r.Context(), c)
	if s.Campaigns.Progress != nil && c.StartedAt > 0 {
		p, err := s.Campaigns.Progress(r.Context(), processors.CampaignNotificationPrefix(c.Tenant, c.ID))
		if err != nil {
			writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: err.Error()})
			return
		}
		out.Progress = &p
	}
	writeJSON(w, http.StatusOK, out)
}

// GET /v1/campaigns lists the tenant's campaigns, newest first.
func (s *Server) listCampaigns(w http.ResponseWriter, r *http.Request) {
	if s.Campaigns == nil {
		writeError(w, campaignsUnavailable())
		return
	}
	prefix := processors.CampaignKey(tenantFrom(r.Context()), "")
	it, err := s.Campaigns.Table.IteratorWithRange(prefix, processors.PrefixEnd(prefix))
	if err != nil {
		writeError(w, err)
		return
	}
	defer it.Release()
	// The newest 1,000, holding at most 2,000 at a time.
	const keep = 1000
	var all []*schemas.Campaign
	newest := func() {
		sort.Slice(all, func(i, j int) bool {
			if all[i].CreatedAt != all[j].CreatedAt {
				return all[i].CreatedAt > all[j].CreatedAt
			}
			return all[i].ID < all[j].ID
		})
		all = all[:min(len(all), keep)]
	}
	for it.Next() && r.Context().Err() == nil {
		v, err := it.Value()
		if c, ok := v.(*schemas.Campaign); ok && err == nil {
			if all = append(all, c); len(all) >= 2*keep {
				newest()
			}
		}
	}
	newest()
	out := make([]campaignJSON, 0, len(all))
	for _, c := range all {
		out = append(out, s.campaignJSON(r.Context(), c))
	}
	writeJSON(w, http.StatusOK, map[string]any{"campaigns": out})
}

type decisionBody struct {
	Comment string `json:"comment"`
	// TemplateVersion and TemplateHash name the template version the
	// approver read (optional): an approval of another one than the
	// campaign sends is 409.
	TemplateVersion int64  `json:"templateVersion"`
	TemplateHash    string `json:"templateHash"`
}

// decide answers POST /v1/campaigns/{id}/{approve,reject,cancel,pause,resume}.
func (s *Server) decide(op string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.Campaigns == nil {
			writeError(w, campaignsUnavailable())
			return
		}
		var b decisionBody
		raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
		if err != nil {
			writeError(w, jsonError(err, 64<<10))
			return
		}
		if len(bytes.TrimSpace(raw)) > 0 { // the body is optional: {"comment": "…"}
			d := json.NewDecoder(bytes.NewReader(raw))
			d.DisallowUnknownFields()
			if err := d.Decode(&b); err != nil {
				writeError(w, jsonError(err, 64<<10))
				return
			}
			if d.More() {
				writeError(w, invalid("", "the body must be one JSON object"))
				return
			}
		}
		ctx := r.Context()
		tenant, id := tenantFrom(ctx), r.PathValue("id")
		c, apiErr := s.commandTarget(ctx, id, b.Comment)
		if apiErr != nil {
			writeError(w, apiErr)
			return
		}
		p := PrincipalFrom(ctx)
		cmd := &schemas.CampaignCommand{Op: op, Tenant: tenant, CampaignID: id, By: p.KeyID, ByName: p.Name, Comment: b.Comment, At: s.now().UnixMilli(),
			TemplateVersion: b.TemplateVersion, TemplateHash: b.TemplateHash}
		if op != processors.OpApprove && op != processors.OpReject && (b.TemplateVersion != 0 || b.TemplateHash != "") {
			writeError(w, invalid("templateVersion", "only an approval or a rejection names a template version"))
			return
		}
		// The group decides; asking it first here answers the caller with
		// the reason instead of a silent no-op.
		if _, err := processors.CampaignTransition(c, cmd, s.now()); err != nil {
			status := http.StatusConflict
			if errors.Is(err, processors.ErrCreatorCannotApprove) {
				status = http.StatusForbidden
			}
			writeError(w, &Error{Status: status, Code: map[int]string{403: "forbidden", 409: "conflict"}[status], Message: err.Error()})
			return
		}
		if apiErr := s.checkDecider(op, p, c); apiErr != nil { // the creator's whole lineage (lineage.go)
			writeError(w, apiErr)
			return
		}
		if op == processors.OpReject && strings.TrimSpace(b.Comment) == "" {
			writeError(w, invalid("comment", "a rejection says why: comment is required"))
			return
		}
		if op == processors.OpCancel {
			// Every stage before a provider reads notify.cancels: written
			// first, and readable here before the answer.
			if apiErr := s.writeCancel(ctx, processors.CampaignCancelKey(tenant, id),
				&schemas.Cancellation{Tenant: tenant, CampaignID: id, By: p.KeyID, At: cmd.At}); apiErr != nil {
				writeError(w, apiErr)
				return
			}
		}
		got, apiErr := s.decisionCommand(ctx, cmd, c)
		if apiErr != nil {
			writeError(w, apiErr)
			return
		}
		writeJSON(w, http.StatusOK, s.campaignJSON(ctx, got))
	}
}

// commandTarget checks a command's comment and finds the campaign it is
// about, in the caller's tenant.
func (s *Server) commandTarget(ctx context.Context, id, comment string) (*schemas.Campaign, *Error) {
	if len(comment) > 1000 {
		return nil, invalid("comment", "comment must be at most 1000 bytes")
	}
	c := s.campaign(tenantFrom(ctx), id)
	if c == nil {
		return nil, notFound("campaign", id)
	}
	return c, nil
}

// decisionCommand writes a command that adds a decision to c and returns
// the campaign once this instance reads that decision.
func (s *Server) decisionCommand(ctx context.Context, cmd *schemas.CampaignCommand, c *schemas.Campaign) (*schemas.Campaign, *Error) {
	n := len(c.Decisions)
	got, apiErr := s.campaignCommand(ctx, cmd, func(cur *schemas.Campaign) bool { return cur != nil && len(cur.Decisions) > n })
	switch {
	case apiErr != nil:
		return nil, apiErr
	case got == nil || len(got.Decisions) <= n:
		return nil, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable",
			Message: fmt.Sprintf("the %s is written but not yet readable; GET /v1/campaigns/%s to confirm", cmd.Op, cmd.CampaignID)}
	case got.Decisions[len(got.Decisions)-1].By != cmd.By:
		return nil, &Error{Status: http.StatusConflict, Code: "conflict", Message: "the campaign changed meanwhile; read it again"}
	}
	return got, nil
}

type templatePinBody struct {
	Version int64  `json:"version"`
	Comment string `json:"comment"`
}

// POST /v1/campaigns/{id}/template {"version": n}: the campaign sends
// version n of its template instead, once a new approval approves it (it is
// pending approval again). Allowed while it is pending, approved and not
// started, or paused.
func (s *Server) pinCampaignTemplate(w http.ResponseWriter, r *http.Request) {
	if s.Campaigns == nil {
		writeError(w, campaignsUnavailable())
		return
	}
	var b templatePinBody
	if err := decode(r, 64<<10, &b); err != nil {
		writeError(w, err)
		return
	}
	if b.Version < 1 {
		writeError(w, invalid("version", "version is required: a version number of the campaign's template"))
		return
	}
	ctx := r.Context()
	tenant, id := tenantFrom(ctx), r.PathValue("id")
	c, apiErr := s.commandTarget(ctx, id, b.Comment)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	s.sync(ctx, s.TemplateVersions, schemas.TemplateVersionKey(tenant, c.Template, b.Version))
	t := s.templateVersion(tenant, c.Template, b.Version)
	if t == nil {
		writeError(w, &Error{Status: http.StatusNotFound, Code: "not_found", Field: "version",
			Message: fmt.Sprintf("template %q has no version %d", c.Template, b.Version)})
		return
	}
	// Authorized as a creation would be: a transactional campaign whose new
	// version is not becomes that version's category; any other keeps its
	// own, which the version must allow, and transactional needs its scope.
	category := c.Category
	if tc := processors.Category(&schemas.Notification{}, t); category == processors.CategoryTransactional && tc != category {
		category = tc
	}
	category, apiErr = checkCategory(ctx, &sendBody{Category: category}, t, "version")
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	p := PrincipalFrom(ctx)
	cmd := &schemas.CampaignCommand{Op: processors.OpTemplate, Tenant: tenant, CampaignID: id, By: p.KeyID, ByName: p.Name,
		Comment: b.Comment, At: s.now().UnixMilli(), TemplateVersion: t.Version, TemplateHash: processors.VersionHash(t),
		Campaign: schemas.Campaign{Category: category}}
	if _, err := processors.CampaignTransition(c, cmd, s.now()); err != nil {
		writeError(w, &Error{Status: http.StatusConflict, Code: "conflict", Message: err.Error()})
		return
	}
	noteResource(ctx, "campaign", id)
	got, apiErr := s.decisionCommand(ctx, cmd, c)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	writeJSON(w, http.StatusOK, s.campaignJSON(ctx, got))
}

// writeCancel writes a cancellation and waits until this instance's view of
// notify.cancels has it.
func (s *Server) writeCancel(ctx context.Context, key string, c *schemas.Cancellation) *Error {
	b, err := schemas.CancellationCodec.Encode(c)
	if err != nil {
		return invalid("", "%v", err)
	}
	if err := s.write(ctx, string(topology.Cancels), key, b, func() bool { return s.canceledKey(key) }); err != nil {
		return err.(*Error)
	}
	if !s.canceledKey(key) {
		return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "the cancellation is written but not yet readable; retry to confirm"}
	}
	return nil
}

func (s *Server) canceledKey(key string) bool {
	if s.Campaigns == nil || s.Campaigns.Cancels == nil {
		return false
	}
	v, err := s.Campaigns.Cancels.Get(key)
	d, ok := v.(schemas.Decoded[schemas.Cancellation])
	return err == nil && ok && d.V != nil
}

// POST /v1/notifications/{id}/cancel stops a notification that no provider
// has taken yet (scheduled, held for quiet hours or local time, queued).
func (s *Server) cancelNotification(w http.ResponseWriter, r *http.Request) {
	if s.Campaigns == nil {
		writeError(w, campaignsUnavailable())
		return
	}
	id := r.PathValue("id")
	if err := validID("id", id); err != nil {
		writeError(w, err)
		return
	}
	ctx := r.Context()
	lc := s.lifecycle(ctx, id)
	if lc == nil || lc.Tenant != tenantFrom(ctx) {
		writeError(w, notFound("notification", id))
		return
	}
	if lc.Status == processors.StatusDigested {
		writeError(w, &Error{Status: http.StatusConflict, Code: "conflict",
			Message: fmt.Sprintf("notification %q was collected into a digest; cancel the digest's notification (its id is in the status history)", id)})
		return
	}
	for ch, st := range lc.Channels {
		if processors.ProgressBucket(st) == "sent" {
			writeError(w, &Error{Status: http.StatusConflict, Code: "conflict",
				Message: fmt.Sprintf("notification %q was already handed to a provider on %s (%s)", id, ch, st)})
			return
		}
	}
	p := PrincipalFrom(ctx)
	if apiErr := s.writeCancel(ctx, processors.CancelKey(id), &schemas.Cancellation{Tenant: lc.Tenant, NotificationID: id,
		By: p.KeyID, At: s.now().UnixMilli()}); apiErr != nil {
		writeError(w, apiErr)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"id": id, "status": processors.StatusCanceled})
}

// holdForApproval turns a request to more recipients than ApprovalAbove into
// a campaign of those users, pending approval. Inline contacts cannot be
// held (they would sit unsealed in the campaign table): such a request is refused.
func (s *Server) holdForApproval(w http.ResponseWriter, r *http.Request, req *schemas.SendRequest) bool {
	if s.Campaigns == nil || s.Campaigns.ApprovalAbove <= 0 || len(req.Recipients) <= s.Campaigns.ApprovalAbove {
		return false
	}
	if req.OTP || req.DigestKey != "" {
		field := map[bool]string{true: "otp", false: "digestKey"}[req.OTP]
		writeError(w, invalid(field, "a request to more than %d recipients waits for approval: %s is not allowed on it",
			s.Campaigns.ApprovalAbove, field))
		return true
	}
	priority := req.Priority
	if priority == "" {
		priority = "normal" // a held request keeps a request's default, not a campaign's (low)
	}
	c := &schemas.Campaign{Tenant: req.Tenant, Name: "request " + processors.Clip(req.EventID, 180), Template: req.Template, Data: req.Data,
		Priority: priority, Category: req.Category, Channels: req.Channels, SendAt: req.SendAt, ExpiresAt: req.ExpiresAt,
		LocalTime: req.LocalTime, AudienceKind: processors.AudienceUsers,
		TemplateVersion: req.TemplateVersion, TemplateHash: req.TemplateHash}
	h := sha256.Sum256([]byte(req.EventID))
	c.ID = "req-" + hex.EncodeToString(h[:12])
	seen := map[string]bool{} // a user listed twice gets one message
	for i, rc := range req.Recipients {
		if rc.Email != "" || rc.Phone != "" || rc.Upsert {
			writeError(w, invalid(fmt.Sprintf("recipients[%d]", i),
				"a request to more than %d recipients waits for approval and sends to profiles: inline contacts are not allowed", s.Campaigns.ApprovalAbove))
			return true
		}
		if !seen[rc.UserID] {
			seen[rc.UserID] = true
			c.Users = append(c.Users, rc.UserID)
		}
	}
	if len(c.Users) > processors.MaxCampaignUsers {
		writeError(w, invalid("recipients", "at most %d recipients per request held for approval; use a list and a campaign", processors.MaxCampaignUsers))
		return true
	}
	s.submitCampaign(w, r, c)
	return true
}

// produceRecord writes one record and waits for it.
func (s *Server) produceRecord(ctx context.Context, topic, key string, value []byte) *Error {
	if err := s.Producer.ProduceSync(ctx, &kgo.Record{Topic: topic, Key: []byte(key), Value: value}).FirstErr(); err != nil {
		return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "could not write: " + err.Error()}
	}
	return nil
}
