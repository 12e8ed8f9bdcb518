package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// ---- templates and their versions
//
// Every PUT that changes a template's content saves it as a new version,
// numbered 1, 2, … per template, on notify.template.versions (kept for
// good, also after the template is deleted), and makes it current on
// notify.templates. A send, a campaign or a request held for approval
// records the version it was accepted with (its number and content hash);
// delivery renders exactly that version, or rejects the notification.

type templateJSON struct {
	ID       string                                       `json:"id,omitempty"`
	Category string                                       `json:"category,omitempty"`
	Priority string                                       `json:"priority,omitempty"`
	Channels map[string]schemas.ChannelContent            `json:"channels"`
	Locales  map[string]map[string]schemas.ChannelContent `json:"locales,omitempty"`
	// Digest collects a user's events of this template within a window
	// into one notification (data "digest": count, items, more).
	Digest    *digestJSON `json:"digest,omitempty"`
	UpdatedAt string      `json:"updatedAt,omitempty"`
	// The version's record: what it is and who saved it, when. On a PUT
	// they are read back and ignored, but for Version: a PUT of an old
	// version's body (GET …/versions/{n}) restores it, as a new version
	// that says so.
	Version      int64  `json:"version,omitempty"`
	Hash         string `json:"hash,omitempty"`
	SavedBy      string `json:"savedBy,omitempty"`
	SavedByName  string `json:"savedByName,omitempty"`
	SavedAt      string `json:"savedAt,omitempty"`
	RestoredFrom int64  `json:"restoredFrom,omitempty"`
}

type digestJSON struct {
	Window string `json:"window"`
	Max    int32  `json:"max,omitempty"`
}

func fromTemplate(t *schemas.Template) templateJSON {
	out := templateJSON{ID: t.ID, Category: t.Category, Priority: t.Priority, Channels: t.Channels, Locales: t.Locales,
		Version: t.Version, Hash: processors.VersionHash(t), SavedBy: t.SavedBy, SavedByName: t.SavedByName, RestoredFrom: t.RestoredFrom}
	if t.DigestWindowMs > 0 {
		out.Digest = &digestJSON{Window: (time.Duration(t.DigestWindowMs) * time.Millisecond).String(), Max: t.DigestMax}
	}
	if t.UpdatedAt > 0 {
		out.UpdatedAt = millis(t.UpdatedAt)
		out.SavedAt = out.UpdatedAt
	}
	return out
}

// versionJSON is one line of a template's history.
type versionJSON struct {
	Version      int64  `json:"version"`
	Hash         string `json:"hash"`
	Category     string `json:"category,omitempty"`
	SavedBy      string `json:"savedBy,omitempty"`
	SavedByName  string `json:"savedByName,omitempty"`
	SavedAt      string `json:"savedAt,omitempty"`
	RestoredFrom int64  `json:"restoredFrom,omitempty"`
	Current      bool   `json:"current,omitempty"`
}

// templateLocks serialise the saves of one template on this instance, so
// two of its requests never take the same version number. (Two instances
// can still race within the views' lag: the later write of the number wins
// the key, the loser answers 409, and a notification pinned to a content the
// number no longer holds is rejected, never sent with other content.)
type templateLocks struct {
	mu sync.Mutex
	by map[string]*sync.Mutex
}

func (l *templateLocks) lock(key string) func() {
	l.mu.Lock()
	if l.by == nil {
		l.by = map[string]*sync.Mutex{}
	}
	m, ok := l.by[key]
	if !ok {
		m = &sync.Mutex{}
		l.by[key] = m
	}
	l.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// templateVersion reads version n of a template; nil when it is not stored.
func (s *Server) templateVersion(tenant, id string, n int64) *schemas.Template {
	if s.TemplateVersions == nil || n <= 0 {
		return nil
	}
	v, err := s.TemplateVersions.Get(schemas.TemplateVersionKey(tenant, id, n))
	if err != nil {
		return nil
	}
	if d, ok := v.(schemas.Decoded[schemas.Template]); ok && d.Err == nil {
		return d.V
	}
	return nil
}

// eachVersion calls fn with every stored version of a template, oldest first.
func (s *Server) eachVersion(ctx context.Context, tenant, id string, fn func(*schemas.Template)) *Error {
	if s.TemplateVersions == nil {
		return nil
	}
	prefix := schemas.TemplateVersionPrefix(tenant, id)
	it, err := s.TemplateVersions.IteratorWithRange(prefix, processors.PrefixEnd(prefix))
	if err != nil {
		return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "template versions: " + err.Error()}
	}
	defer it.Release()
	for it.Next() && ctx.Err() == nil {
		v, err := it.Value()
		if d, ok := v.(schemas.Decoded[schemas.Template]); ok && err == nil && d.Err == nil && d.V != nil {
			fn(d.V)
		}
	}
	return nil
}

func (s *Server) putTemplate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := validID("id", id); err != nil {
		writeError(w, err)
		return
	}
	var b templateJSON
	if err := decode(r, s.MaxBodyBytes, &b); err != nil {
		writeError(w, err)
		return
	}
	if b.ID != "" && b.ID != id {
		writeError(w, invalid("id", "id %q in the body differs from %q in the path", b.ID, id))
		return
	}
	ctx := r.Context()
	p := PrincipalFrom(ctx)
	t := &schemas.Template{ID: id, Category: b.Category, Priority: b.Priority, Channels: b.Channels, Locales: b.Locales,
		Tenant: tenantFrom(ctx)}
	if err := processors.ValidateCategory(b.Category); err != nil {
		writeError(w, invalid("category", "%v", err))
		return
	}
	switch b.Priority {
	case "", "high", "normal", "low":
	default:
		writeError(w, invalid("priority", "priority must be high, normal or low, got %q", processors.Clip(b.Priority, 32)))
		return
	}
	if b.Digest != nil {
		d, err := time.ParseDuration(b.Digest.Window)
		if err != nil || d < time.Second || d > processors.MaxDigestWindow {
			writeError(w, invalid("digest.window", "digest.window must be a duration from 1s to %v, like 10m", processors.MaxDigestWindow))
			return
		}
		if b.Digest.Max < 0 || b.Digest.Max > processors.MaxDigestMax {
			writeError(w, invalid("digest.max", "digest.max must be 0 (the default, %d) to %d", processors.DefaultDigestMax, processors.MaxDigestMax))
			return
		}
		t.DigestWindowMs, t.DigestMax = d.Milliseconds(), b.Digest.Max
	}
	if err := processors.ValidateTemplateLimits(t, s.Render); err != nil {
		field, msg, _ := strings.Cut(err.Error(), ": ")
		writeError(w, invalid(field, "%s", msg))
		return
	}
	t.Hash = processors.TemplateHash(t)
	key := schemas.TenantKey(t.Tenant, id)
	defer s.templateLocks.lock(key)()
	s.sync(ctx, s.Templates, key)
	cur := s.lookupTemplate(key)
	if cur != nil && cur.Version > 0 && cur.Hash == t.Hash {
		// The same content again (a retry): no new version.
		writeJSON(w, http.StatusOK, fromTemplate(cur))
		return
	}
	if s.TemplateVersions == nil {
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "template versions are not served by this instance"})
		return
	}
	next := int64(1)
	switch {
	case cur != nil && cur.Version == 0 && processors.TemplateHash(cur) == t.Hash:
		// Saved before versions, and saved again as it is: version 1.
	case cur != nil && cur.Version == 0:
		// Saved before versions: its content is kept as version 1 first,
		// so what was pinned by its hash still renders.
		s.sync(ctx, s.TemplateVersions, schemas.TemplateVersionKey(t.Tenant, id, 1))
		if s.templateVersion(t.Tenant, id, 1) == nil {
			legacy := *cur
			legacy.Version, legacy.Hash = 1, processors.TemplateHash(cur)
			if apiErr := s.saveVersion(ctx, &legacy); apiErr != nil {
				writeError(w, apiErr)
				return
			}
		}
		next = 2
	case cur != nil:
		next = cur.Version + 1
	default:
		// Created, or created again after a DELETE: numbering goes on.
		s.syncAll(ctx, s.TemplateVersions)
		if apiErr := s.eachVersion(ctx, t.Tenant, id, func(v *schemas.Template) { next = max(next, v.Version+1) }); apiErr != nil {
			writeError(w, apiErr)
			return
		}
	}
	// A number taken by a save whose current record was never written (a
	// crash between the two writes) is not reused.
	for {
		s.sync(ctx, s.TemplateVersions, schemas.TemplateVersionKey(t.Tenant, id, next))
		if s.templateVersion(t.Tenant, id, next) == nil {
			break
		}
		next++
	}
	t.Version, t.SavedBy, t.SavedByName, t.UpdatedAt = next, p.KeyID, p.Name, s.now().UnixMilli()
	if b.Version > 0 {
		if old := s.templateVersion(t.Tenant, id, b.Version); old != nil && processors.VersionHash(old) == t.Hash {
			t.RestoredFrom = b.Version
		}
	}
	if apiErr := s.saveVersion(ctx, t); apiErr != nil {
		writeError(w, apiErr)
		return
	}
	v, err := schemas.TemplateCodec.Encode(t)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.write(ctx, string(topology.Templates), key, v, func() bool {
		cur := s.lookupTemplate(key)
		return cur != nil && cur.UpdatedAt == t.UpdatedAt && cur.Hash == t.Hash
	}); err != nil {
		writeError(w, err)
		return
	}
	noteResource(ctx, "templateVersion", strconv.FormatInt(t.Version, 10))
	writeJSON(w, http.StatusOK, fromTemplate(t))
}

// saveVersion writes t as its version and waits until it reads back; a
// version another save took meanwhile is 409.
func (s *Server) saveVersion(ctx context.Context, t *schemas.Template) *Error {
	v, err := schemas.TemplateCodec.Encode(t)
	if err != nil {
		return &Error{Status: http.StatusInternalServerError, Code: "internal", Message: err.Error()}
	}
	var got *schemas.Template
	if err := s.write(ctx, string(topology.TemplateVersions), schemas.TemplateVersionKey(t.Tenant, t.ID, t.Version), v, func() bool {
		got = s.templateVersion(t.Tenant, t.ID, t.Version)
		return got != nil && got.UpdatedAt == t.UpdatedAt && got.Hash == t.Hash
	}); err != nil {
		return err.(*Error)
	}
	if got == nil || got.Hash != t.Hash || got.UpdatedAt != t.UpdatedAt {
		return &Error{Status: http.StatusConflict, Code: "conflict",
			Message: fmt.Sprintf("template %s version %d was saved by another request at the same time; read the template and save again", t.ID, t.Version)}
	}
	return nil
}

func (s *Server) getTemplate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	key := schemas.TenantKey(tenantFrom(r.Context()), id)
	s.sync(r.Context(), s.Templates, key)
	t := s.lookupTemplate(key)
	if t == nil {
		writeError(w, notFound("template", id))
		return
	}
	writeJSON(w, http.StatusOK, fromTemplate(t))
}

// maxVersionsListed bounds one page of GET /v1/templates/{id}/versions.
const maxVersionsListed = 1000

// GET /v1/templates/{id}/versions[?before=n][&limit=k]: the versions,
// newest first (100 by default).
func (s *Server) listTemplateVersions(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	tenant, id := tenantFrom(ctx), r.PathValue("id")
	limit, before := 100, int64(0)
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxVersionsListed {
			writeError(w, invalid("limit", "limit must be 1 to %d", maxVersionsListed))
			return
		}
		limit = n
	}
	if v := r.URL.Query().Get("before"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			writeError(w, invalid("before", "before must be a version number"))
			return
		}
		before = n
	}
	key := schemas.TenantKey(tenant, id)
	s.sync(ctx, s.Templates, key)
	if s.TemplateVersions != nil {
		s.syncAll(ctx, s.TemplateVersions)
	}
	cur := s.lookupTemplate(key)
	var page []versionJSON // the newest `limit` before `before`, oldest first
	if apiErr := s.eachVersion(ctx, tenant, id, func(v *schemas.Template) {
		if before > 0 && v.Version >= before {
			return
		}
		page = append(page, versionJSON{Version: v.Version, Hash: processors.VersionHash(v), Category: v.Category,
			SavedBy: v.SavedBy, SavedByName: v.SavedByName, SavedAt: millis(v.UpdatedAt), RestoredFrom: v.RestoredFrom,
			Current: cur != nil && cur.Version == v.Version})
		if len(page) > limit {
			page = page[1:]
		}
	}); apiErr != nil {
		writeError(w, apiErr)
		return
	}
	if cur == nil && len(page) == 0 && before == 0 {
		writeError(w, notFound("template", id))
		return
	}
	sort.Slice(page, func(i, j int) bool { return page[i].Version > page[j].Version })
	out := map[string]any{"template": id, "versions": page}
	if cur != nil {
		out["current"] = cur.Version
	}
	if len(page) == limit && page[len(page)-1].Version > 1 {
		out["next"] = fmt.Sprintf("/v1/templates/%s/versions?before=%d&limit=%d", id, page[len(page)-1].Version, limit)
	}
	writeJSON(w, http.StatusOK, out)
}

// parseVersion reads the {n} of …/versions/{n}.
func parseVersion(v string) (int64, *Error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 {
		return 0, invalid("n", "a version is a number from 1, got %q", processors.Clip(v, 32))
	}
	return n, nil
}

// GET /v1/templates/{id}/versions/{n}: one version, as a template body (a
// PUT of it restores it).
func (s *Server) getTemplateVersion(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	tenant, id := tenantFrom(ctx), r.PathValue("id")
	n, apiErr := parseVersion(r.PathValue("n"))
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	if s.TemplateVersions != nil {
		s.sync(ctx, s.TemplateVersions, schemas.TemplateVersionKey(tenant, id, n))
	}
	t := s.templateVersion(tenant, id, n)
	if t == nil {
		writeError(w, &Error{Status: http.StatusNotFound, Code: "not_found", Message: fmt.Sprintf("template %q has no version %d", id, n)})
		return
	}
	writeJSON(w, http.StatusOK, fromTemplate(t))
}

func (s *Server) listTemplates(w http.ResponseWriter, r *http.Request) {
	it, err := s.Templates.Iterator()
	if err != nil {
		writeError(w, err)
		return
	}
	defer it.Release()
	out := []templateJSON{}
	tenant := tenantFrom(r.Context())
	for it.Next() {
		if !schemas.InTenant(it.Key(), tenant) {
			continue
		}
		v, err := it.Value()
		if err != nil {
			continue
		}
		if d, ok := v.(schemas.Decoded[schemas.Template]); ok && d.Err == nil && d.V != nil {
			out = append(out, fromTemplate(d.V))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	writeJSON(w, http.StatusOK, map[string]any{"templates": out})
}

// deleteTemplate removes the current template (what is pending on it is
// rejected at delivery: a kill switch); its versions stay, so numbering goes
// on if it is created again and its history stays readable.
func (s *Server) deleteTemplate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	key := schemas.TenantKey(tenantFrom(r.Context()), id)
	if s.lookupTemplate(key) == nil {
		writeError(w, notFound("template", id))
		return
	}
	if err := s.write(r.Context(), string(topology.Templates), key, nil, func() bool { return s.lookupTemplate(key) == nil }); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

type previewBody struct {
	Data    json.RawMessage `json:"data"`
	Locale  string          `json:"locale"`
	Channel string          `json:"channel"`
	// Version previews a stored version (0: the current one): what an
	// approver reads before approving a campaign of it.
	Version int64 `json:"version"`
}

// renderError is the answer to a preview that did not render. A render over
// budget is 422 render_budget naming "data": the template passed its checks
// at PUT, so it is this data (a long value, a long list) that takes it over.
func renderError(ctx context.Context, err error) *Error {
	var be *processors.BudgetError
	switch {
	case errors.As(err, &be):
		return &Error{Status: http.StatusUnprocessableEntity, Code: "render_budget", Field: "data",
			Message: fmt.Sprintf("%v (the %s budget of a render; a send with this data is rejected alike)", err, be.Budget)}
	case ctx.Err() != nil:
		// Nobody reads this; the status is for the request metrics.
		return &Error{Status: statusClientClosedRequest, Code: "canceled", Message: "the request was cancelled before the preview rendered"}
	}
	return invalid("data", "%v", err)
}

// statusClientClosedRequest is nginx's status for a request its client
// abandoned.
const statusClientClosedRequest = 499

func (s *Server) previewTemplate(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	tenant := tenantFrom(r.Context())
	t := s.lookupTemplate(schemas.TenantKey(tenant, id))
	if t == nil {
		writeError(w, notFound("template", id))
		return
	}
	var b previewBody
	if err := decode(r, s.MaxBodyBytes, &b); err != nil {
		writeError(w, err)
		return
	}
	if b.Version < 0 {
		writeError(w, invalid("version", "version must be a version number (0 or absent: the current one)"))
		return
	}
	if b.Version > 0 && b.Version != t.Version {
		if t = s.templateVersion(tenant, id, b.Version); t == nil {
			writeError(w, &Error{Status: http.StatusNotFound, Code: "not_found", Field: "version", Message: fmt.Sprintf("template %q has no version %d", id, b.Version)})
			return
		}
	}
	if b.Channel == "" {
		writeError(w, invalid("channel", "channel is required"))
		return
	}
	cc, locale, ok := processors.SelectContent(t, b.Channel, b.Locale)
	if !ok {
		writeError(w, invalid("channel", "template %s has no %s content", id, b.Channel))
		return
	}
	// Parsed exactly as the pipeline parses a request's data, so the preview
	// renders what a send would.
	data, err := processors.ParseData(string(b.Data))
	if err != nil {
		writeError(w, invalid("data", "data must be a JSON object"))
		return
	}
	// The request's context stops the render when the client goes away.
	content, err := processors.RenderContext(r.Context(), t, b.Channel, cc, data, s.Render)
	if err != nil {
		writeError(w, renderError(r.Context(), err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"channel": b.Channel, "locale": locale, "content": content,
		"version": t.Version, "hash": processors.VersionHash(t)})
}
