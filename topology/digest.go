package topology

import (
	"context"
	"strings"
	"time"

	"github.com/lovoo/goka"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

// digest collects n into its user's digest when its template has a digest
// window, and turns a digest's release into the notification that lists its
// events. done: n is handled; next, when set, is the notification to go on
// with.
func (p *Pipeline) digest(ctx goka.Context, n *schemas.Notification, tmpl *schemas.Template, st *schemas.UserState,
	raw []byte, now time.Time) (next *schemas.Notification, done bool) {
	bg := context.Background()
	subject := processors.Subject(n)
	if n.DigestFlush {
		d := processors.ReleaseDigest(st, n.ID)
		if d == nil {
			return nil, true // nothing collected under it (the state was lost): nothing to send
		}
		ctx.SetValue(st)
		err := processors.OpenDigest(bg, p.Keys, subject, d)
		var data string
		if err == nil {
			data, err = processors.DigestData(d)
		}
		if err != nil {
			p.rejectNotification(ctx, n, raw, "deliver", "", err, now)
			return nil, true
		}
		out := *n
		out.Data, out.DigestFlush = data, false
		return &out, false
	}
	window, maxItems, ok := processors.DigestOf(tmpl)
	if !ok || n.OTP || strings.HasPrefix(n.EventID, "digest:") {
		return nil, false
	}
	key := processors.DigestKey(n)
	for i := range st.Digests {
		if st.Digests[i].Key == key && st.Digests[i].DueAt != 0 {
			if err := processors.OpenDigest(bg, p.Keys, subject, &st.Digests[i]); err != nil {
				p.rejectNotification(ctx, n, raw, "deliver", "", err, now)
				return nil, true
			}
		}
	}
	d, opened, err := processors.CollectDigest(st, n, window, maxItems, now)
	if err == nil {
		err = processors.SealDigest(bg, p.Keys, subject, d)
	}
	if err != nil {
		p.rejectNotification(ctx, n, raw, "deliver", "", err, now)
		return nil, true
	}
	ctx.SetValue(st)
	if d.DueAt != 0 && (opened || d.EventIDs[0] == n.EventID) {
		// The event that opened the window (or its replay) schedules the release.
		p.hold(ctx, processors.DigestRelease(d, n), d.DueAt,
			"digest window until "+time.UnixMilli(d.DueAt).UTC().Format(time.RFC3339), now)
	}
	ctx.Emit(Events, n.ID, processors.NotificationEvent(n, processors.StatusDigested, "", "collected into digest "+d.NotificationID, now))
	return nil, true
}
