package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// AuditTopic receives an AuditEvent for every authenticated request that is
// not a read (key: the tenant's name, "default" for the default tenant).
const AuditTopic = string(topology.Audit)

// audits tells whether r is audited: a write, with somewhere to produce to.
func (s *Server) audits(r *http.Request) bool {
	return !s.NoAudit && s.Producer != nil && r.Method != http.MethodGet && r.Method != http.MethodHead
}

// auditNotes are resource ids a handler adds to its request's audit event
// (the id of a key it created), next to the path values.
type auditNotes struct {
	mu  sync.Mutex
	ids map[string]string
}

type auditNotesKey struct{}

func withAuditNotes(ctx context.Context) context.Context {
	return context.WithValue(ctx, auditNotesKey{}, &auditNotes{ids: map[string]string{}})
}

// noteResource names a resource the request created or changed in its audit
// event; a no-op for requests that are not audited.
func noteResource(ctx context.Context, name, id string) {
	if n, ok := ctx.Value(auditNotesKey{}).(*auditNotes); ok {
		n.mu.Lock()
		n.ids[name] = id
		n.mu.Unlock()
	}
}

// audit produces r's event asynchronously; a failure is logged, not answered
// (the request has already been served).
func (s *Server) audit(r *http.Request, p *Principal, status int) {
	ev := &schemas.AuditEvent{ID: randomHex(16), At: s.now().UnixMilli(), Tenant: p.Tenant, KeyID: p.KeyID,
		KeyName: p.Name, Action: r.Method + " " + routeOf(r), Resources: resourcesOf(r), Status: int32(status),
		RemoteAddr: r.RemoteAddr}
	b, err := schemas.AuditEventCodec.Encode(ev)
	if err != nil {
		s.logger().Error("audit event not written", "action", ev.Action, "err", err)
		return
	}
	rec := &kgo.Record{Topic: AuditTopic, Key: []byte(schemas.TenantName(p.Tenant)), Value: b}
	s.Producer.Produce(context.WithoutCancel(r.Context()), rec, func(_ *kgo.Record, err error) {
		if err != nil {
			s.logger().Error("audit event not written", "action", ev.Action, "keyId", ev.KeyID, "status", status, "err", err)
		}
	})
}

// routeOf is r's route pattern without its method ("/v1/profiles/{userId}").
func routeOf(r *http.Request) string {
	if _, path, ok := strings.Cut(r.Pattern, " "); ok {
		return path
	}
	if r.Pattern != "" {
		return r.Pattern
	}
	return r.URL.Path
}

// resourcesOf are r's path values by wildcard name, plus the handler's notes.
func resourcesOf(r *http.Request) map[string]string {
	out := map[string]string{}
	for _, seg := range strings.Split(routeOf(r), "/") {
		if name, ok := strings.CutPrefix(seg, "{"); ok {
			name = strings.TrimSuffix(strings.TrimSuffix(name, "}"), "...")
			if v := r.PathValue(name); v != "" {
				out[name] = v
			}
		}
	}
	if n, ok := r.Context().Value(auditNotesKey{}).(*auditNotes); ok {
		n.mu.Lock()
		for k, v := range n.ids {
			out[k] = v
		}
		n.mu.Unlock()
	}
	return out
}

func (s *Server) logger() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.Default()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand, Go ≥ 1.24)
	return hex.EncodeToString(b)
}
