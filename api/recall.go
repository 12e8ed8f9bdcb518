package api

import (
	"fmt"
	"net/http"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// StatusRecalled: the sender took an in-app message back.
const StatusRecalled = "recalled"

// POST /v1/notifications/{id}/recall removes an in-app message from its
// user's inbox (and from their open streams, as a "recall" event). A
// message still on its way is removed when it arrives: the feed remembers
// the recall. Needs the send scope; another tenant's notification is 404.
func (s *Server) recall(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := validID("id", id); err != nil {
		writeError(w, err)
		return
	}
	lc := s.lifecycle(r.Context(), id)
	if lc == nil || lc.Tenant != tenantFrom(r.Context()) {
		writeError(w, notFound("notification", id))
		return
	}
	if _, ok := lc.Channels["inapp"]; !ok {
		writeError(w, &Error{Status: http.StatusConflict, Code: "conflict",
			Message: fmt.Sprintf("notification %q has no in-app message to recall (channels: %v)", id, lc.Channels)})
		return
	}
	cmd, err := schemas.InboxCommandCodec.Encode(&schemas.InboxCommand{Op: processors.InboxRecall, UserID: lc.UserID,
		Tenant: lc.Tenant, MessageIDs: []string{id}, At: s.now().UnixMilli()})
	if err != nil {
		writeError(w, err)
		return
	}
	ev := receiptEvent(lc, "inapp", "", StatusRecalled, "recalled by the sender", "", s.now())
	v, err := schemas.StatusEventCodec.Encode(ev)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.Producer.ProduceSync(r.Context(),
		&kgo.Record{Topic: string(topology.InboxCommands), Key: []byte(schemas.TenantKey(lc.Tenant, lc.UserID)), Value: cmd},
		&kgo.Record{Topic: string(topology.Events), Key: []byte(id), Value: v}).FirstErr(); err != nil {
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "could not recall: " + err.Error()})
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"id": id, "status": StatusRecalled})
}
