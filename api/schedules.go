package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

type scheduleBody struct {
	Cron     string          `json:"cron"`
	TimeZone string          `json:"timeZone"`
	Request  json.RawMessage `json:"request"`
}

type scheduleJSON struct {
	ID          string          `json:"id"`
	Cron        string          `json:"cron"`
	TimeZone    string          `json:"timeZone"`
	State       string          `json:"state"`
	NextAt      string          `json:"nextAt,omitempty"`
	LastFiredAt string          `json:"lastFiredAt,omitempty"`
	Fired       int64           `json:"fired"`
	Request     json.RawMessage `json:"request,omitempty"`
}

func (s *Server) schedule(tenant, id string) *schemas.Schedule {
	if s.Campaigns == nil || s.Campaigns.Schedules == nil {
		return nil
	}
	v, err := s.Campaigns.Schedules.Get(topology.ScheduleKey(tenant, id))
	if err != nil {
		return nil
	}
	sc, _ := v.(*schemas.Schedule)
	return sc
}

func toScheduleJSON(sc *schemas.Schedule) scheduleJSON {
	out := scheduleJSON{ID: sc.ID, Cron: sc.Cron, TimeZone: sc.TimeZone, State: sc.State, Fired: sc.Fired,
		NextAt: rfc(sc.NextAt), LastFiredAt: rfc(sc.LastFiredAt)}
	if req, err := schemas.SendRequestCodec.Decode(sc.Request); err == nil {
		b, _ := json.Marshal(map[string]any{"template": req.Template, "recipients": len(req.Recipients)})
		out.Request = b
	}
	return out
}

// PUT /v1/schedules/{id} creates or replaces a recurring schedule: at each
// time of its cron expression, in its time zone, request (a body of POST
// /v1/notifications, checked the same way) is sent, with the event id
// schedule:<id>:<time>.
func (s *Server) putSchedule(w http.ResponseWriter, r *http.Request) {
	if s.Campaigns == nil || s.Campaigns.Schedules == nil {
		writeError(w, campaignsUnavailable())
		return
	}
	id, apiErr := audienceID(r)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	var b scheduleBody
	if err := decode(r, s.MaxBodyBytes, &b); err != nil {
		writeError(w, err)
		return
	}
	if _, err := processors.CronLocation(b.TimeZone); err != nil {
		writeError(w, invalid("timeZone", "%v", err))
		return
	}
	cr, err := processors.ParseCron(b.Cron, b.TimeZone)
	if err != nil {
		writeError(w, invalid("cron", "%v", err))
		return
	}
	var sb sendBody
	if len(b.Request) == 0 {
		writeError(w, invalid("request", "request is required: the body of POST /v1/notifications to send"))
		return
	}
	d := json.NewDecoder(bytes.NewReader(b.Request))
	d.DisallowUnknownFields()
	if err := d.Decode(&sb); err != nil {
		e := jsonError(err, s.MaxBodyBytes)
		e.Field = strings.TrimSuffix("request."+e.Field, ".")
		writeError(w, e)
		return
	}
	if sb.SendAt != "" || sb.EventID != "" || sb.OTP {
		writeError(w, invalid("request", "a scheduled request has no sendAt, eventId or otp: the schedule gives them"))
		return
	}
	req, apiErr := s.toRequest(r.Context(), &sb, "", "request", map[string]bool{})
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	// A schedule lives until deleted, in clear on notify.schedules: it
	// sends to profiles (whose contacts are sealed and erasable), never to
	// inline contacts, and a bulk send belongs to a campaign, which is approved.
	for i, rc := range req.Recipients {
		if rc.Email != "" || rc.Phone != "" || rc.Upsert {
			writeError(w, invalid(fmt.Sprintf("request.recipients[%d]", i),
				"a schedule sends to profiles: inline contacts are not allowed"))
			return
		}
	}
	if above := s.Campaigns.ApprovalAbove; above > 0 && len(req.Recipients) > above {
		writeError(w, invalid("request.recipients", "a schedule may send to at most %d recipients (campaigns.approvalAbove); "+
			"larger sends need a campaign and its approval", above))
		return
	}
	// Each run sends the template as it is when the run fires (its version
	// is pinned then), under the category this key was authorized for now,
	// which a later change of the template never widens (req.Category).
	req.TemplateVersion, req.TemplateHash = 0, ""
	rb, err := schemas.SendRequestCodec.Encode(req)
	if err != nil {
		writeError(w, err)
		return
	}
	p := PrincipalFrom(r.Context())
	now := s.now()
	sc := schemas.Schedule{ID: id, Tenant: tenantFrom(r.Context()), Cron: b.Cron, TimeZone: b.TimeZone, Request: rb,
		CreatedBy: p.KeyID, CreatedAt: now.UnixMilli()}
	s.scheduleCommand(w, r, &schemas.ScheduleCommand{Op: "put", By: p.KeyID, At: now.UnixMilli(), Schedule: sc}, func(cur *schemas.Schedule) bool {
		return cur != nil && cur.UpdatedAt >= now.UnixMilli() && cur.NextAt == cr.Next(now).UnixMilli()
	})
}

func (s *Server) scheduleCommand(w http.ResponseWriter, r *http.Request, cmd *schemas.ScheduleCommand, done func(*schemas.Schedule) bool) {
	b, err := schemas.ScheduleCommandCodec.Encode(cmd)
	if err != nil {
		writeError(w, err)
		return
	}
	key := topology.ScheduleKey(cmd.Schedule.Tenant, cmd.Schedule.ID)
	if !topology.Fits(key, b) {
		writeError(w, &Error{Status: http.StatusRequestEntityTooLarge, Code: "payload_too_large", Message: "the schedule does not fit in a record"})
		return
	}
	noteResource(r.Context(), "schedule", cmd.Schedule.ID)
	if err := s.write(r.Context(), string(topology.Schedules), key, b, func() bool {
		return done(s.schedule(cmd.Schedule.Tenant, cmd.Schedule.ID))
	}); err != nil {
		writeError(w, err)
		return
	}
	sc := s.schedule(cmd.Schedule.Tenant, cmd.Schedule.ID)
	if cmd.Op == "delete" {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if sc == nil {
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "the schedule is written but not yet readable"})
		return
	}
	writeJSON(w, http.StatusOK, toScheduleJSON(sc))
}

// GET /v1/schedules/{id}.
func (s *Server) getSchedule(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	sc := s.schedule(tenantFrom(r.Context()), id)
	if sc == nil {
		writeError(w, notFound("schedule", id))
		return
	}
	writeJSON(w, http.StatusOK, toScheduleJSON(sc))
}

// scheduleOp answers POST /v1/schedules/{id}/pause, /resume and DELETE.
func (s *Server) scheduleOp(op string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tenant, id := tenantFrom(r.Context()), r.PathValue("id")
		cur := s.schedule(tenant, id)
		if cur == nil {
			writeError(w, notFound("schedule", id))
			return
		}
		p := PrincipalFrom(r.Context())
		now := s.now().UnixMilli()
		cmd := &schemas.ScheduleCommand{Op: op, By: p.KeyID, At: now, Schedule: schemas.Schedule{ID: id, Tenant: tenant}}
		s.scheduleCommand(w, r, cmd, func(sc *schemas.Schedule) bool {
			switch op {
			case "delete":
				return sc == nil
			case "pause":
				return sc != nil && sc.State == topology.SchedulePaused
			}
			return sc != nil && sc.State == topology.ScheduleActive && sc.UpdatedAt >= now
		})
	}
}
