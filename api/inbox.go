package api

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// Inbox serves the in-app inbox's end-user endpoints. A browser or an app
// calls them directly with a per-user token that the customer's backend gets
// from GET /v1/inbox/{userId}/token (API key) and hands to its signed-in user.
type Inbox struct {
	// Feeds is the inbox group's table (a view, or the processor's own).
	Feeds Table
	// Sync, when set, makes a read of a user's feed see every change made
	// before it, through whichever instance (reads of lists and counts).
	Sync func(ctx context.Context, userID string) error
	// Hub fans the changes read from notify.inbox.events out to open streams.
	Hub *InboxHub
	// Secret signs the per-user tokens; every API instance needs the same one.
	Secret []byte
	// AllowedOrigins may call the end-user endpoints from a browser (CORS);
	// "*" allows any.
	AllowedOrigins []string
	// Heartbeat is the interval of keep-alive comments on a stream.
	Heartbeat time.Duration
	// Capacity is the group's feed capacity (for read-after-write checks).
	Capacity int
}

// InboxToken is the token of a user's inbox in the default tenant: an HMAC
// of the user id with the inbox secret, base64url encoded. It never expires;
// rotating the secret revokes every token.
func InboxToken(secret []byte, userID string) string {
	return TenantInboxToken(secret, "", userID)
}

// TenantInboxToken is the token of a user's inbox in a tenant:
// "<tenant>.<HMAC of the tenant-qualified user>", or InboxToken's form in the
// default tenant. The tenant travels in the token because the end-user
// endpoints have no API key to name it.
func TenantInboxToken(secret []byte, tenant, userID string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("notifyd-inbox-v1\x00" + schemas.TenantKey(tenant, userID)))
	mac := base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	if tenant = schemas.NormTenant(tenant); tenant != "" {
		return tenant + "." + mac
	}
	return mac
}

type inboxUserKey struct{}

// inboxUser is the inbox's tenant and the tenant-qualified key of the user
// whose token authenticated the request.
type inboxUser struct{ tenant, id, key string }

func inboxUserOf(r *http.Request) inboxUser {
	u, _ := r.Context().Value(inboxUserKey{}).(inboxUser)
	return u
}

func (s *Server) inboxRoutes(mux *http.ServeMux) {
	if s.Inbox == nil {
		return
	}
	s.route(mux, "GET /v1/inbox/{userId}/token", s.authenticate(ScopeInboxToken, pathIDs("GET /v1/inbox/{userId}/token", http.HandlerFunc(s.inboxToken))))
	user := func(pattern string, h http.HandlerFunc) {
		s.route(mux, pattern, s.inboxCORS(s.inboxAuth(pathIDs(pattern, h))))
	}
	user("GET /v1/inbox/{userId}/messages", s.inboxList)
	user("GET /v1/inbox/{userId}/count", s.inboxCount)
	user("POST /v1/inbox/{userId}/messages/{id}/{op}", s.inboxMark)
	user("POST /v1/inbox/{userId}/bulk", s.inboxBulk)
	user("POST /v1/inbox/{userId}/read-all", s.inboxAll(processors.InboxReadAll))
	user("POST /v1/inbox/{userId}/seen-all", s.inboxAll(processors.InboxSeenAll))
	user("GET /v1/inbox/{userId}/stream", s.inboxStream)
	s.route(mux, "OPTIONS /v1/inbox/{userId}/", s.inboxCORS(pathIDs("OPTIONS /v1/inbox/{userId}/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))))
}

func (s *Server) inboxToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("userId")
	if err := validID("userId", id); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"userId": id, "token": TenantInboxToken(s.Inbox.Secret, tenantFrom(r.Context()), id)})
}

// inboxCORS lets the configured origins call the end-user endpoints.
func (s *Server) inboxCORS(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if origin := r.Header.Get("Origin"); origin != "" {
			if slices.Contains(s.Inbox.AllowedOrigins, "*") || slices.Contains(s.Inbox.AllowedOrigins, origin) {
				w.Header().Set("Access-Control-Allow-Origin", origin)
				w.Header().Set("Vary", "Origin")
				w.Header().Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID")
				w.Header().Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
				w.Header().Set("Access-Control-Max-Age", "600")
			}
		}
		next.ServeHTTP(w, r)
	})
}

// inboxAuth admits the holder of the user's token: Authorization: Bearer, or
// ?token= for EventSource, which cannot set headers.
func (s *Server) inboxAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("userId")
		if err := validID("userId", id); err != nil {
			writeError(w, err)
			return
		}
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			tok = r.URL.Query().Get("token")
		}
		tok = strings.TrimSpace(tok)
		tenant, _, _ := strings.Cut(tok, ".")
		if !strings.Contains(tok, ".") || !schemas.ValidTenant(tenant) {
			tenant = ""
		}
		want := TenantInboxToken(s.Inbox.Secret, tenant, id)
		if tok == "" || !hmac.Equal([]byte(tok), []byte(want)) {
			writeError(w, &Error{Status: http.StatusUnauthorized, Code: "unauthenticated",
				Message: "missing or wrong inbox token for user " + id + ": send Authorization: Bearer <token> (or ?token=)"})
			return
		}
		u := inboxUser{tenant: tenant, id: id, key: schemas.TenantKey(tenant, id)}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), inboxUserKey{}, u)))
	})
}

// syncedFeed reads a user's feed after catching up with every change made
// before the call.
func (s *Server) syncedFeed(ctx context.Context, userID string) (*schemas.InboxFeed, *Error) {
	if s.Inbox.Sync != nil {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := s.Inbox.Sync(sctx, userID)
		cancel()
		if err != nil && ctx.Err() == nil {
			return nil, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "inbox: " + err.Error()}
		}
	}
	return s.feed(userID)
}

// feed reads a user's feed; nil when the user has none yet.
func (s *Server) feed(userID string) (*schemas.InboxFeed, *Error) {
	v, err := s.Inbox.Feeds.Get(userID)
	if err != nil {
		return nil, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "inbox: " + err.Error()}
	}
	if d, ok := v.(schemas.Decoded[schemas.InboxFeed]); ok && d.Err == nil {
		return d.V, nil
	}
	if f, ok := v.(*schemas.InboxFeed); ok {
		return f, nil
	}
	return nil, nil
}

type inboxCounts struct {
	Unread int32 `json:"unread"`
	Unseen int32 `json:"unseen"`
	Seq    int64 `json:"seq"`
}

func counts(f *schemas.InboxFeed) inboxCounts {
	if f == nil {
		return inboxCounts{}
	}
	return inboxCounts{Unread: f.Unread, Unseen: f.Unseen, Seq: f.Seq}
}

// GET /v1/inbox/{userId}/messages?filter=unread|archived|all&limit=&before=<seq>
func (s *Server) inboxList(w http.ResponseWriter, r *http.Request) {
	f, apiErr := s.syncedFeed(r.Context(), inboxUserOf(r).key)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	q := r.URL.Query()
	limit := 50
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 500 {
			writeError(w, invalid("limit", "limit must be 1 to 500"))
			return
		}
		limit = n
	}
	var before int64
	if v := q.Get("before"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			writeError(w, invalid("before", "before must be a positive sequence number"))
			return
		}
		before = n
	}
	filter := q.Get("filter")
	keep := map[string]func(schemas.InboxItem) bool{
		"":         func(m schemas.InboxItem) bool { return !m.Archived },
		"unread":   func(m schemas.InboxItem) bool { return !m.Archived && !m.Read },
		"archived": func(m schemas.InboxItem) bool { return m.Archived },
		"all":      func(schemas.InboxItem) bool { return true },
	}[filter]
	if keep == nil {
		writeError(w, invalid("filter", "filter must be unread, archived or all, got %q", filter))
		return
	}
	out := struct {
		Messages []inboxMessageJSON `json:"messages"`
		inboxCounts
	}{Messages: []inboxMessageJSON{}, inboxCounts: counts(f)}
	if f != nil {
		for _, m := range f.Messages {
			if len(out.Messages) == limit {
				break
			}
			if (before == 0 || m.Seq < before) && keep(m) {
				out.Messages = append(out.Messages, toMessageJSON(s.openItem(r, m)))
			}
		}
	}
	writeJSON(w, http.StatusOK, out)
}

type inboxMessageJSON struct {
	schemas.InboxItem
	CreatedAt string `json:"createdAt"`
}

func toMessageJSON(m schemas.InboxItem) inboxMessageJSON {
	return inboxMessageJSON{InboxItem: m, CreatedAt: time.UnixMilli(m.CreatedAt).UTC().Format(time.RFC3339Nano)}
}

func (s *Server) inboxCount(w http.ResponseWriter, r *http.Request) {
	f, apiErr := s.syncedFeed(r.Context(), inboxUserOf(r).key)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	writeJSON(w, http.StatusOK, counts(f))
}

var markOps = map[string]string{"read": processors.InboxRead, "unread": processors.InboxUnread, "seen": processors.InboxSeen,
	"archive": processors.InboxArchive, "unarchive": processors.InboxUnarchive}

// POST /v1/inbox/{userId}/messages/{id}/{read|unread|seen|archive|unarchive}
func (s *Server) inboxMark(w http.ResponseWriter, r *http.Request) {
	op, ok := markOps[r.PathValue("op")]
	if !ok {
		writeError(w, &Error{Status: http.StatusNotFound, Code: "not_found",
			Message: fmt.Sprintf("unknown inbox operation %q: read, unread, seen, archive or unarchive", r.PathValue("op"))})
		return
	}
	if err := validID("id", r.PathValue("id")); err != nil {
		writeError(w, err)
		return
	}
	s.inboxCommand(w, r, &schemas.InboxCommand{Op: op, UserID: inboxUserOf(r).id, Tenant: inboxUserOf(r).tenant, MessageIDs: []string{r.PathValue("id")}})
}

// POST /v1/inbox/{userId}/bulk {"op":"read","ids":[…]}
func (s *Server) inboxBulk(w http.ResponseWriter, r *http.Request) {
	var b struct {
		Op  string   `json:"op"`
		IDs []string `json:"ids"`
	}
	r.Body = http.MaxBytesReader(w, r.Body, 256<<10)
	d := json.NewDecoder(r.Body)
	d.DisallowUnknownFields()
	if err := d.Decode(&b); err != nil {
		writeError(w, invalid("", "body must be {\"op\": …, \"ids\": […]}: %v", err))
		return
	}
	op, ok := markOps[b.Op]
	if !ok {
		writeError(w, invalid("op", "op must be read, unread, seen, archive or unarchive, got %q", b.Op))
		return
	}
	if len(b.IDs) == 0 || len(b.IDs) > processors.MaxInboxIDs {
		writeError(w, invalid("ids", "1 to %d ids are required", processors.MaxInboxIDs))
		return
	}
	for i, id := range b.IDs {
		if err := validID(fmt.Sprintf("ids[%d]", i), id); err != nil {
			writeError(w, err)
			return
		}
	}
	s.inboxCommand(w, r, &schemas.InboxCommand{Op: op, UserID: inboxUserOf(r).id, Tenant: inboxUserOf(r).tenant, MessageIDs: b.IDs})
}

func (s *Server) inboxAll(op string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.inboxCommand(w, r, &schemas.InboxCommand{Op: op, UserID: inboxUserOf(r).id, Tenant: inboxUserOf(r).tenant})
	}
}

// inboxCommand writes a command for the inbox group and waits (up to
// WriteWait) until this instance's feed shows it, so a read right after sees
// it; it answers the counts then.
func (s *Server) inboxCommand(w http.ResponseWriter, r *http.Request, c *schemas.InboxCommand) {
	c.At = s.now().UnixMilli()
	key := schemas.TenantKey(c.Tenant, c.UserID)
	b, err := schemas.InboxCommandCodec.Encode(c)
	if err != nil {
		writeError(w, invalid("", "%v", err))
		return
	}
	applied := func() bool {
		f, apiErr := s.feed(key)
		if apiErr != nil {
			return false
		}
		_, ev := processors.ApplyInbox(f, c, s.Inbox.Capacity)
		return ev == nil
	}
	if err := s.write(r.Context(), string(topology.InboxCommands), key, b, applied); err != nil {
		writeError(w, err)
		return
	}
	f, _ := s.feed(key)
	writeJSON(w, http.StatusAccepted, counts(f))
}

// GET /v1/inbox/{userId}/stream — Server-Sent Events: "message" (a new
// message), "update" (messages changed state), "count" (counts); each event's
// id is the feed's sequence number. On reconnect with Last-Event-ID (or
// ?lastEventId=), every message newer than it is sent first, then the counts.
func (s *Server) inboxStream(w http.ResponseWriter, r *http.Request) {
	userID := inboxUserOf(r).key
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, &Error{Status: http.StatusInternalServerError, Code: "internal", Message: "streaming unsupported"})
		return
	}
	last := int64(-1)
	if v := r.Header.Get("Last-Event-ID"); v != "" || r.URL.Query().Get("lastEventId") != "" {
		if v == "" {
			v = r.URL.Query().Get("lastEventId")
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			writeError(w, invalid("Last-Event-ID", "Last-Event-ID must be a sequence number from this stream, got %q", processors.Clip(v, 64)))
			return
		}
		last = n
	}
	sub, err := s.Inbox.Hub.Subscribe(userID)
	if err != nil {
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: err.Error()})
		return
	}
	defer s.Inbox.Hub.Unsubscribe(sub)
	f, apiErr := s.syncedFeed(r.Context(), userID)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	sent := int64(0)
	if last >= 0 && f != nil {
		// Missed messages, oldest first.
		for i := len(f.Messages) - 1; i >= 0; i-- {
			if m := f.Messages[i]; m.Seq > last {
				writeEvent(w, m.Seq, processors.InboxEventMessage, messageEvent(s.openItem(r, m), f.Unread, f.Unseen))
			}
		}
	}
	c := counts(f)
	writeEvent(w, c.Seq, processors.InboxEventCount, c)
	sent = c.Seq
	fl.Flush()
	beat := s.Inbox.Heartbeat
	if beat <= 0 {
		beat = 15 * time.Second
	}
	ticker := time.NewTicker(beat)
	defer ticker.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-sub.overflow:
			return // too slow a reader: it reconnects with Last-Event-ID and misses nothing
		case <-ticker.C:
			fmt.Fprint(w, ": keep-alive\n\n")
			fl.Flush()
		case ev := <-sub.events:
			if ev.Seq <= sent {
				continue // already in what was read from the feed
			}
			sent = ev.Seq
			switch ev.Kind {
			case processors.InboxEventMessage:
				if len(ev.Items) > 0 {
					writeEvent(w, ev.Seq, ev.Kind, messageEvent(s.openItem(r, ev.Items[0]), ev.Unread, ev.Unseen))
				}
			case processors.InboxEventRecall:
				ids := make([]string, 0, len(ev.Items))
				for _, m := range ev.Items {
					ids = append(ids, m.ID)
				}
				writeEvent(w, ev.Seq, ev.Kind, map[string]any{"ids": ids, "unread": ev.Unread, "unseen": ev.Unseen})
			case processors.InboxEventUpdate:
				ms := make([]inboxMessageJSON, 0, len(ev.Items))
				for _, m := range ev.Items {
					ms = append(ms, toMessageJSON(s.openItem(r, m)))
				}
				writeEvent(w, ev.Seq, ev.Kind, map[string]any{"messages": ms, "unread": ev.Unread, "unseen": ev.Unseen})
			default:
				writeEvent(w, ev.Seq, processors.InboxEventCount, inboxCounts{Unread: ev.Unread, Unseen: ev.Unseen, Seq: ev.Seq})
			}
			fl.Flush()
		}
	}
}

// openItem reads a message's sealed content with its user's key. A message
// whose key was erased keeps its id and state and shows no content.
func (s *Server) openItem(r *http.Request, m schemas.InboxItem) schemas.InboxItem {
	if err := processors.OpenInboxItem(r.Context(), s.sealer(), inboxUserOf(r).key, &m); err != nil {
		m.Sealed = nil
	}
	return m
}

func messageEvent(m schemas.InboxItem, unread, unseen int32) map[string]any {
	return map[string]any{"message": toMessageJSON(m), "unread": unread, "unseen": unseen}
}

func writeEvent(w http.ResponseWriter, id int64, kind string, v any) {
	b, _ := json.Marshal(v)
	fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", id, kind, b)
}

// MaxStreamsPerUser bounds one user's open streams on an instance (tabs,
// devices), so one token cannot take every stream of the instance.
const MaxStreamsPerUser = 20

// InboxHub fans inbox events out to the streams open on this instance.
type InboxHub struct {
	// MaxStreams bounds the open streams (0 = 10,000).
	MaxStreams int

	mu    sync.Mutex
	subs  map[string]map[*inboxSub]struct{}
	count int
}

type inboxSub struct {
	user     string
	events   chan *schemas.InboxEvent
	overflow chan struct{}
	once     sync.Once
}

// Subscribe opens a stream's subscription to a user's events.
func (h *InboxHub) Subscribe(userID string) (*inboxSub, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	limit := h.MaxStreams
	if limit <= 0 {
		limit = 10000
	}
	if h.count >= limit {
		return nil, fmt.Errorf("inbox: this instance has %d streams open, its limit; retry on another", h.count)
	}
	if len(h.subs[userID]) >= MaxStreamsPerUser {
		return nil, fmt.Errorf("inbox: user %s has %d streams open here, the most one user may", userID, MaxStreamsPerUser)
	}
	if h.subs == nil {
		h.subs = map[string]map[*inboxSub]struct{}{}
	}
	sub := &inboxSub{user: userID, events: make(chan *schemas.InboxEvent, 64), overflow: make(chan struct{})}
	if h.subs[userID] == nil {
		h.subs[userID] = map[*inboxSub]struct{}{}
	}
	h.subs[userID][sub] = struct{}{}
	h.count++
	return sub, nil
}

// Unsubscribe closes a subscription.
func (h *InboxHub) Unsubscribe(sub *inboxSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[sub.user][sub]; !ok {
		return
	}
	delete(h.subs[sub.user], sub)
	if len(h.subs[sub.user]) == 0 {
		delete(h.subs, sub.user)
	}
	h.count--
}

// Streams is the number of open streams.
func (h *InboxHub) Streams() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count
}

// Publish hands an event of a default-tenant user to the user's streams.
func (h *InboxHub) Publish(ev *schemas.InboxEvent) { h.PublishTo(ev.UserID, ev) }

// PublishTo hands an event to the streams of the user with the
// tenant-qualified key without blocking: a stream that cannot keep up is
// ended (its client reconnects and catches up).
func (h *InboxHub) PublishTo(key string, ev *schemas.InboxEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.subs[key] {
		select {
		case sub.events <- ev:
		default:
			sub.once.Do(func() { close(sub.overflow) })
		}
	}
}

// PublishRecord decodes a record of notify.inbox.events and publishes it.
func (h *InboxHub) PublishRecord(r *kgo.Record) {
	ev, err := schemas.InboxEventCodec.Decode(r.Value)
	if err != nil {
		return
	}
	if _, id := schemas.SplitTenantKey(string(r.Key)); id != ev.UserID {
		return
	}
	h.PublishTo(string(r.Key), ev)
}
