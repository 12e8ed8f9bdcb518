package api

import (
	"errors"
	"fmt"
	"html/template"
	"io"
	"net/http"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
	"github.com/notifyd/notifyd/tracking"
)

// pixel is a transparent 1×1 GIF.
var pixel = []byte("GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")

// trackingRoutes serve what recipients' mail clients and browsers reach:
// the open pixel, click redirects and one-click unsubscribe. No API key: the
// link's token is encrypted and authenticated (tracking.Signer), which is
// the authentication, and a link that does not verify (altered, truncated,
// of another kind or secret, a legacy link past tracking.legacyUntil)
// answers 404 and records nothing.
func (s *Server) trackingRoutes(mux *http.ServeMux) {
	if s.Tracker == nil {
		return
	}
	route := func(pattern string, h http.HandlerFunc) {
		s.route(mux, pattern, pathIDs(pattern, h))
	}
	route("GET /t/o/{token}", s.trackOpen)
	route("GET /t/c/{token}", s.trackClick)
	route("GET /t/u/{token}", s.unsubscribePage)
	route("POST /t/u/{token}", s.unsubscribe)
}

// trackedLink verifies the request's link of kind; on failure it answers.
func (s *Server) trackedLink(w http.ResponseWriter, r *http.Request, kind string) (tracking.Link, bool) {
	l, err := s.Tracker.Parse(kind, r.PathValue("token"))
	if err != nil {
		writeError(w, &Error{Status: http.StatusNotFound, Code: "not_found", Message: "unknown or altered link"})
		return l, false
	}
	return l, true
}

// trackEvent records a tracking event about the link's notification. Its id
// is the same for every repeat (a mail client loading the pixel twice), so
// analytics count it once.
func (s *Server) trackEvent(r *http.Request, l tracking.Link, status, reason string) error {
	ev := &schemas.StatusEvent{ID: processors.StatusEventID(l.NotificationID, status, l.Channel, 0),
		NotificationID: l.NotificationID, UserID: l.UserID, Template: l.Template, Category: l.Category,
		Channel: l.Channel, Tenant: l.Tenant, Campaign: l.Campaign, Status: status, Reason: reason, At: s.now().UnixMilli()}
	v, err := schemas.StatusEventCodec.Encode(ev)
	if err != nil {
		return err
	}
	return s.Producer.ProduceSync(r.Context(), &kgo.Record{Topic: string(topology.Events), Key: []byte(ev.NotificationID), Value: v}).FirstErr()
}

// GET /t/o/{token}: the open pixel.
func (s *Server) trackOpen(w http.ResponseWriter, r *http.Request) {
	l, ok := s.trackedLink(w, r, tracking.Open)
	if !ok {
		return
	}
	if err := s.trackEvent(r, l, processors.StatusOpened, ""); err != nil {
		s.logTrackingError(err)
	}
	w.Header().Set("Content-Type", "image/gif")
	w.Header().Set("Cache-Control", "no-store, max-age=0")
	_, _ = w.Write(pixel)
}

// GET /t/c/{token}: a tracked link; the destination is inside the
// authenticated token, so the redirect can only go where the email said.
func (s *Server) trackClick(w http.ResponseWriter, r *http.Request) {
	l, ok := s.trackedLink(w, r, tracking.Click)
	if !ok {
		return
	}
	if err := s.trackEvent(r, l, processors.StatusClicked, ""); err != nil {
		s.logTrackingError(err) // the recipient still gets where they clicked
	}
	w.Header().Set("Cache-Control", "no-store, max-age=0")
	http.Redirect(w, r, l.URL, http.StatusFound)
}

var unsubscribePage = template.Must(template.New("unsubscribe").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>Unsubscribe</title></head>
<body>{{if .Done}}<p>You will no longer receive {{.Category}} email.</p>{{else}}
<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">
<p>Stop receiving {{.Category}} email?</p><button type="submit">Unsubscribe</button></form>{{end}}</body></html>
`))

// GET /t/u/{token}: a page asking to confirm. A GET changes nothing (RFC
// 8058: link scanners and prefetchers follow links).
func (s *Server) unsubscribePage(w http.ResponseWriter, r *http.Request) {
	l, ok := s.trackedLink(w, r, tracking.Unsubscribe)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_ = unsubscribePage.Execute(w, map[string]any{"Category": l.Category})
}

// POST /t/u/{token}: one-click unsubscribe (a mail client's
// "List-Unsubscribe=One-Click" POST, or the page's form). The user is opted
// out of the message's category on its channel, and the notification gets
// an unsubscribed event.
func (s *Server) unsubscribe(w http.ResponseWriter, r *http.Request) {
	l, ok := s.trackedLink(w, r, tracking.Unsubscribe)
	if !ok {
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 4<<10))
	if err := s.optOut(r, l); err != nil {
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "could not unsubscribe, try again: " + err.Error()})
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = unsubscribePage.Execute(w, map[string]any{"Category": l.Category, "Done": true})
}

// optOut records the unsubscribe and asks the deliver group to opt the user
// out (it owns the profile's writes on its partition).
func (s *Server) optOut(r *http.Request, l tracking.Link) error {
	if l.Category == "" || l.Category == processors.CategoryTransactional {
		return errors.New("this message has no category to unsubscribe from")
	}
	ev := &schemas.StatusEvent{ID: processors.StatusEventID(l.NotificationID, processors.StatusUnsubscribed, l.Channel, 0),
		NotificationID: l.NotificationID, UserID: l.UserID, Template: l.Template, Category: l.Category, Channel: l.Channel,
		Tenant: l.Tenant, Campaign: l.Campaign, Status: processors.StatusUnsubscribed, Reason: "one-click unsubscribe from " + l.Category, At: s.now().UnixMilli()}
	v, err := schemas.StatusEventCodec.Encode(ev)
	if err != nil {
		return err
	}
	fb, err := schemas.FeedbackCodec.Encode(&schemas.DeliveryFeedback{NotificationID: l.NotificationID, Channel: l.Channel,
		Status: processors.StatusUnsubscribed, At: ev.At, Unsubscribe: true, UnsubscribeCategory: l.Category})
	if err != nil {
		return err
	}
	return s.Producer.ProduceSync(r.Context(),
		&kgo.Record{Topic: string(topology.Feedback), Key: []byte(schemas.TenantKey(l.Tenant, l.UserID)), Value: fb},
		&kgo.Record{Topic: string(topology.Events), Key: []byte(ev.NotificationID), Value: v}).FirstErr()
}

func (s *Server) logTrackingError(err error) {
	if s.Log != nil {
		s.Log.Warn("tracking event not recorded", "err", fmt.Sprint(err))
	}
}
