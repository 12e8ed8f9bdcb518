package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// MaxSubscribersPerCall bounds the user ids of one subscribe call.
const MaxSubscribersPerCall = 1000

type subscribersBody struct {
	UserIDs []string `json:"userIds"`
}

func audienceID(r *http.Request) (string, *Error) {
	id := r.PathValue("id")
	if !processors.ValidCampaignID(id) {
		return "", invalid("id", "a topic or list id is 1-64 letters, digits, _ or -")
	}
	return id, nil
}

func validMember(field, u string) *Error {
	if !processors.ValidID(u) || strings.Contains(u, schemas.TenantSep) {
		return invalid(field, "not a valid user id: %q", processors.Clip(u, 64))
	}
	return nil
}

// POST /v1/topics/{id}/subscribers {"userIds": [...]} subscribes users to a
// topic; DELETE /v1/topics/{id}/subscribers/{userId} unsubscribes one.
func (s *Server) subscribe(w http.ResponseWriter, r *http.Request) {
	if s.Campaigns == nil {
		writeError(w, campaignsUnavailable())
		return
	}
	id, apiErr := audienceID(r)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	var b subscribersBody
	if err := decode(r, s.MaxBodyBytes, &b); err != nil {
		writeError(w, err)
		return
	}
	if len(b.UserIDs) == 0 || len(b.UserIDs) > MaxSubscribersPerCall {
		writeError(w, invalid("userIds", "userIds must list 1-%d users", MaxSubscribersPerCall))
		return
	}
	for i, u := range b.UserIDs {
		if err := validMember(fmt.Sprintf("userIds[%d]", i), u); err != nil {
			writeError(w, err)
			return
		}
	}
	tenant := tenantFrom(r.Context())
	recs := make([]*kgo.Record, 0, len(b.UserIDs))
	for _, u := range b.UserIDs {
		v, err := schemas.AudienceMemberCodec.Encode(&schemas.AudienceMember{Tenant: tenant, Kind: processors.AudienceTopic,
			AudienceID: id, UserID: u, At: s.now().UnixMilli()})
		if err != nil {
			writeError(w, err)
			return
		}
		recs = append(recs, &kgo.Record{Topic: string(topology.Audiences), Key: []byte(processors.AudienceKey(tenant, processors.AudienceTopic, id, u)), Value: v})
	}
	if err := s.Producer.ProduceSync(r.Context(), recs...).FirstErr(); err != nil {
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "could not write: " + err.Error()})
		return
	}
	s.awaitMember(r.Context(), string(recs[len(recs)-1].Key), true)
	writeJSON(w, http.StatusOK, map[string]any{"topic": id, "subscribed": len(recs)})
}

func (s *Server) unsubscribeTopic(w http.ResponseWriter, r *http.Request) {
	if s.Campaigns == nil {
		writeError(w, campaignsUnavailable())
		return
	}
	id, apiErr := audienceID(r)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	u := r.PathValue("userId")
	if err := validMember("userId", u); err != nil {
		writeError(w, err)
		return
	}
	key := processors.AudienceKey(tenantFrom(r.Context()), processors.AudienceTopic, id, u)
	if err := s.produceRecord(r.Context(), string(topology.Audiences), key, nil); err != nil {
		writeError(w, err)
		return
	}
	s.awaitMember(r.Context(), key, false)
	w.WriteHeader(http.StatusNoContent)
}

// GET /v1/topics/{id}/subscribers?after=&limit= and GET
// /v1/lists/{id}/members page through an audience in user id order.
func (s *Server) listMembers(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.Campaigns == nil || s.Campaigns.Members == nil {
			writeError(w, campaignsUnavailable())
			return
		}
		id, apiErr := audienceID(r)
		if apiErr != nil {
			writeError(w, apiErr)
			return
		}
		limit := 100
		if l := r.URL.Query().Get("limit"); l != "" {
			n, err := strconv.Atoi(l)
			if err != nil || n < 1 || n > 1000 {
				writeError(w, invalid("limit", "limit must be 1-1000"))
				return
			}
			limit = n
		}
		prefix := processors.AudiencePrefix(tenantFrom(r.Context()), kind, id)
		start := prefix
		if after := r.URL.Query().Get("after"); after != "" {
			start = prefix + after + "\x00"
		}
		it, err := s.Campaigns.Members.IteratorWithRange(start, processors.PrefixEnd(prefix))
		if err != nil {
			writeError(w, err)
			return
		}
		defer it.Release()
		users := []string{}
		for len(users) < limit && it.Next() {
			users = append(users, processors.AudienceUser(it.Key()))
		}
		out := map[string]any{"users": users}
		if len(users) == limit {
			out["next"] = users[len(users)-1]
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// POST /v1/lists/{id}/members (text/csv) adds a CSV's users to a list,
// streaming: each valid line is written as it is read, each bad one is
// reported by line number, and nothing is held whole.
func (s *Server) uploadList(w http.ResponseWriter, r *http.Request) {
	if s.Campaigns == nil {
		writeError(w, campaignsUnavailable())
		return
	}
	id, apiErr := audienceID(r)
	if apiErr != nil {
		writeError(w, apiErr)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "text/csv") && !strings.HasPrefix(ct, "text/plain") {
		writeError(w, &Error{Status: http.StatusUnsupportedMediaType, Code: "unsupported_media_type", Message: "send the list as text/csv"})
		return
	}
	maxBytes, maxLines := int64(1<<30), 10_000_000
	if s.Campaigns != nil && s.Campaigns.MaxListBytes > 0 {
		maxBytes = s.Campaigns.MaxListBytes
	}
	if s.Campaigns != nil && s.Campaigns.MaxListLines > 0 {
		maxLines = s.Campaigns.MaxListLines
	}
	body := http.MaxBytesReader(w, r.Body, maxBytes)
	tenant := tenantFrom(r.Context())
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	// Produced asynchronously in order, awaited at the end: a failed write
	// fails the upload (the lines before it are in; a retry is idempotent).
	var prodErr error
	errs := make(chan error, 1)
	at := s.now().UnixMilli()
	last := ""
	rep, err := processors.ReadMembers(body, maxLines, func(_ int, user string) error {
		last = user
		v, err := schemas.AudienceMemberCodec.Encode(&schemas.AudienceMember{Tenant: tenant, Kind: processors.AudienceList,
			AudienceID: id, UserID: user, At: at})
		if err != nil {
			return err
		}
		s.Producer.Produce(ctx, &kgo.Record{Topic: string(topology.Audiences),
			Key: []byte(processors.AudienceKey(tenant, processors.AudienceList, id, user)), Value: v}, func(_ *kgo.Record, err error) {
			if err != nil {
				select {
				case errs <- err:
				default:
				}
			}
		})
		select {
		case prodErr = <-errs:
			return prodErr
		default:
			return nil
		}
	})
	if ferr := s.Producer.Flush(r.Context()); ferr != nil && prodErr == nil {
		prodErr = ferr
	}
	select {
	case e := <-errs:
		if prodErr == nil {
			prodErr = e
		}
	default:
	}
	noteResource(r.Context(), "list", id)
	if last != "" && prodErr == nil {
		s.awaitMember(r.Context(), processors.AudienceKey(tenant, processors.AudienceList, id, last), true)
	}
	if prodErr != nil {
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "could not write the list: " + prodErr.Error()})
		return
	}
	if err != nil {
		var mbe *http.MaxBytesError
		status := http.StatusBadRequest
		if errors.As(err, &mbe) {
			status = http.StatusRequestEntityTooLarge
		}
		writeJSON(w, status, map[string]any{"error": map[string]any{"code": "invalid_list", "message": err.Error()}, "report": rep})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"list": id, "report": rep, "at": time.UnixMilli(at).UTC().Format(time.RFC3339)})
}

// awaitMember waits (up to WriteWait) until this instance's view of
// notify.audiences shows key present (or gone): the last write of a call is
// readable when it answers.
func (s *Server) awaitMember(ctx context.Context, key string, present bool) {
	if s.Campaigns == nil || s.Campaigns.Members == nil {
		return
	}
	if s.Campaigns.SyncMembers != nil {
		// Every partition: a listing right after reads all of the writes.
		sctx, cancel := context.WithTimeout(ctx, max(s.WriteWait, time.Second))
		defer cancel()
		s.Campaigns.SyncMembers(sctx)
		return
	}
	deadline := time.Now().Add(s.WriteWait)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		v, err := s.Campaigns.Members.Get(key)
		d, ok := v.(schemas.Decoded[schemas.AudienceMember])
		if err == nil && (ok && d.V != nil) == present {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}
