package api

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lovoo/goka"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/topology"
	"github.com/notifyd/notifyd/tracking"
)

// Table is a readable goka table (a *goka.View).
type Table interface {
	Get(key string) (any, error)
}

// IterableTable is a table that can also be listed.
type IterableTable interface {
	Table
	Iterator() (goka.Iterator, error)
}

// Server serves the API.
type Server struct {
	Producer *kgo.Client
	// IngestProducer, when set, writes the send requests that fit
	// topology.FitsIngestBatch to the ingest lanes in small batches
	// (topology.NewIngestProducer), so a high-priority request is not
	// fetched behind a large batch of low ones; larger ones go by Producer.
	IngestProducer *kgo.Client
	// Priority is the process's topology.PriorityGate, told of every
	// high-priority request (nil: none).
	Priority  *topology.PriorityGate
	Templates IterableTable
	// TemplateVersions is a view of notify.template.versions: every saved
	// version of every template (nil: template PUTs answer 503).
	TemplateVersions RangeTable
	Profiles         Table
	Status           Table
	// Keys are the configured API keys.
	Keys *Keys
	// ManagedKeys is a view of KeysTopic: the keys made by POST /v1/keys;
	// nil = none (the /v1/keys endpoints answer 503).
	ManagedKeys IterableTable
	// NoAudit turns off the audit events of writes (on when Producer is set).
	NoAudit bool
	// Log takes what cannot be answered (an audit event that failed); nil = slog.Default().
	Log *slog.Logger
	// Ready reports whether the broker is reachable and tables are recovered.
	Ready        func(ctx context.Context) error
	MaxBodyBytes int64
	MaxBatch     int
	// WriteWait bounds how long a PUT or DELETE waits for its own write to be
	// readable, so a GET right after it sees it.
	WriteWait time.Duration
	Gatherer  prometheus.Gatherer
	Now       func() time.Time
	// Reports is the ClickHouse behind /v1/analytics/*.
	Reports Analytics
	// Render bounds a preview's render as the deliver group bounds a send's,
	// and a template PUT is refused if it exceeds them whatever the data.
	Render processors.RenderLimits
	// Inbox serves the in-app inbox's end-user endpoints; nil = none.
	Inbox *Inbox
	// Crypt seals profiles and opens profiles and inbox messages (crypt.Keyring);
	// Erase crypto-shreds a user's data when their profile is deleted.
	Crypt Keyring
	// Tracker verifies the email tracking and unsubscribe links served at
	// /t/ (nil: tracking is off).
	Tracker *tracking.Signer
	// ReceiptProviders take their provider's callbacks at
	// POST /v1/receipts/{provider}, by provider name.
	ReceiptProviders map[string]ReceiptSource
	// Campaigns serves campaigns, audiences, schedules and cancellations;
	// nil: those endpoints answer 503.
	Campaigns *Campaigns

	requests *prometheus.HistogramVec
	limiters keyLimiters
	// routes are the patterns Handler registered (Routes).
	routes        []string
	templateLocks templateLocks
}

// NewMetrics registers the API's series.
func (s *Server) NewMetrics(reg prometheus.Registerer) {
	s.requests = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "notifyd_http_request_seconds",
		Help: "API requests by route and status code.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)},
		[]string{"route", "code"})
	reg.MustRegister(s.requests)
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Handler routes every endpoint.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	s.routes = nil
	// Each route names the scope a key needs for it; the ids in its path are
	// checked once the key is known (so the refusal is audited).
	authed := func(scope, pattern string, h http.HandlerFunc) {
		s.route(mux, pattern, s.authenticate(scope, pathIDs(pattern, h)))
	}
	authed(ScopeSend, "POST /v1/notifications", s.send)
	authed(ScopeSend, "POST /v1/notifications/batch", s.sendBatch)
	authed(ScopeNotificationsRead, "GET /v1/notifications/{id}", s.getStatus)
	authed(ScopeSend, "POST /v1/notifications/{id}/recall", s.recall)
	authed(ScopeSend, "POST /v1/notifications/{id}/cancel", s.cancelNotification)
	authed(ScopeSend, "POST /v1/campaigns", s.createCampaign)
	authed(ScopeNotificationsRead, "GET /v1/campaigns", s.listCampaigns)
	authed(ScopeNotificationsRead, "GET /v1/campaigns/{id}", s.getCampaign)
	authed(ScopeApprove, "POST /v1/campaigns/{id}/approve", s.decide(processors.OpApprove))
	authed(ScopeApprove, "POST /v1/campaigns/{id}/reject", s.decide(processors.OpReject))
	authed(ScopeSend, "POST /v1/campaigns/{id}/cancel", s.decide(processors.OpCancel))
	authed(ScopeSend, "POST /v1/campaigns/{id}/pause", s.decide(processors.OpPause))
	authed(ScopeSend, "POST /v1/campaigns/{id}/resume", s.decide(processors.OpResume))
	authed(ScopeSend, "POST /v1/campaigns/{id}/template", s.pinCampaignTemplate)
	authed(ScopeProfilesWrite, "POST /v1/topics/{id}/subscribers", s.subscribe)
	authed(ScopeProfilesWrite, "DELETE /v1/topics/{id}/subscribers/{userId}", s.unsubscribeTopic)
	authed(ScopeProfilesRead, "GET /v1/topics/{id}/subscribers", s.listMembers(processors.AudienceTopic))
	authed(ScopeProfilesWrite, "POST /v1/lists/{id}/members", s.uploadList)
	authed(ScopeProfilesRead, "GET /v1/lists/{id}/members", s.listMembers(processors.AudienceList))
	authed(ScopeSend, "PUT /v1/schedules/{id}", s.putSchedule)
	authed(ScopeNotificationsRead, "GET /v1/schedules/{id}", s.getSchedule)
	authed(ScopeSend, "POST /v1/schedules/{id}/pause", s.scheduleOp("pause"))
	authed(ScopeSend, "POST /v1/schedules/{id}/resume", s.scheduleOp("resume"))
	authed(ScopeSend, "DELETE /v1/schedules/{id}", s.scheduleOp("delete"))
	authed(ScopeProfilesWrite, "PUT /v1/profiles/{userId}", s.putProfile)
	authed(ScopeProfilesRead, "GET /v1/profiles/{userId}", s.getProfile)
	authed(ScopeProfilesWrite, "DELETE /v1/profiles/{userId}", s.deleteProfile)
	authed(ScopeTemplatesWrite, "PUT /v1/templates/{id}", s.putTemplate)
	authed(ScopeTemplatesRead, "GET /v1/templates/{id}", s.getTemplate)
	authed(ScopeTemplatesRead, "GET /v1/templates", s.listTemplates)
	authed(ScopeTemplatesWrite, "DELETE /v1/templates/{id}", s.deleteTemplate)
	authed(ScopeTemplatesRead, "POST /v1/templates/{id}/preview", s.previewTemplate)
	authed(ScopeTemplatesRead, "GET /v1/templates/{id}/versions", s.listTemplateVersions)
	authed(ScopeTemplatesRead, "GET /v1/templates/{id}/versions/{n}", s.getTemplateVersion)
	authed(ScopeReceiptsWrite, "POST /v1/receipts", s.receipts)
	// Authenticated by the provider's signature, not an API key.
	s.route(mux, "POST /v1/receipts/{provider}", pathIDs("POST /v1/receipts/{provider}", http.HandlerFunc(s.providerReceipts)))
	s.route(mux, "GET /v1/receipts/{provider}", pathIDs("GET /v1/receipts/{provider}", http.HandlerFunc(s.providerHandshake)))
	authed(ScopeAnalyticsRead, "GET /v1/analytics/summary", s.analyticsSummary)
	authed(ScopeAnalyticsRead, "GET /v1/analytics/latency", s.analyticsLatency)
	authed(ScopeAnalyticsRead, "GET /v1/analytics/reconciliation", s.analyticsReconciliation)
	authed(ScopeAdmin, "POST /v1/keys", s.createKey)
	authed(ScopeAdmin, "GET /v1/keys", s.listKeys)
	authed(ScopeAdmin, "GET /v1/keys/{id}", s.getKey)
	authed(ScopeAdmin, "DELETE /v1/keys/{id}", s.revokeKey)
	authed(ScopeAdmin, "POST /v1/keys/{id}/rotate", s.rotateKey)
	s.inboxRoutes(mux)
	s.trackingRoutes(mux)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	if s.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.Gatherer, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &Error{Status: http.StatusNotFound, Code: "not_found", Message: "no such endpoint: " + r.Method + " " + r.URL.Path})
	})
	return mux
}

// route registers pattern, measured, and remembers it (Routes).
func (s *Server) route(mux *http.ServeMux, pattern string, h http.Handler) {
	s.routes = append(s.routes, pattern)
	mux.Handle(pattern, s.instrument(pattern, h))
}

// Routes are the patterns ("GET /v1/profiles/{userId}") of every endpoint
// that takes a request's input, as the last Handler call registered them:
// the tests walk them all.
func (s *Server) Routes() []string { return slices.Clone(s.routes) }

// pathIDs admits a request to h only if every id its path names is one:
// 1-200 characters of letters, digits and ._:@/+=- — so no id holds the
// tenant separator '|' (nor "%7C", which arrives decoded), '%', a control
// character or a space. A request naming another is 400 with the wildcard
// as its field, before any table is read. Tokens ({token}) are not ids:
// their own verification refuses what was not minted here.
func pathIDs(pattern string, h http.Handler) http.Handler {
	var names []string
	for rest := pattern; ; {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			break
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			break
		}
		if name := strings.TrimSuffix(rest[i+1:i+j], "..."); name != "token" {
			names = append(names, name)
		}
		rest = rest[i+j+1:]
	}
	if len(names) == 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, name := range names {
			if v := r.PathValue(name); !processors.ValidID(v) {
				writeError(w, invalid(name, "%s %q: an id is 1-200 characters of letters, digits and ._:@/+=- (no '|', '%%', space or control character)",
					name, processors.Clip(v, 64)))
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.Ready(ctx); err != nil {
			writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: err.Error()})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

// Flush lets streams (inbox SSE) flush through the recorder.
func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (s *Server) instrument(route string, h http.Handler) http.Handler {
	if s.requests == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		s.requests.WithLabelValues(route, strconv.Itoa(rec.code)).Observe(time.Since(start).Seconds())
	})
}
