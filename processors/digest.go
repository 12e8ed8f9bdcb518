package processors

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// Digest bounds.
const (
	// DefaultDigestMax is how many events a digest lists when its template does not say.
	DefaultDigestMax = 50
	// MaxDigestMax bounds a template's digestMax.
	MaxDigestMax = 500
	// MaxDigestWindow bounds a template's digest window.
	MaxDigestWindow = 7 * 24 * time.Hour
	// maxDigestEventIDs bounds the event ids a digest remembers for replays;
	// the count covers every event.
	maxDigestEventIDs = 1000
	// maxDigestItemBytes bounds the data of the events a digest lists, together.
	maxDigestItemBytes = 256 << 10
	// MaxOpenDigests bounds a user's open digest windows.
	MaxOpenDigests = 100
)

// DigestOf tells whether notifications of template t are collected into
// digests, and the window and item limit.
func DigestOf(t *schemas.Template) (window time.Duration, max int, ok bool) {
	if t == nil || t.DigestWindowMs <= 0 {
		return 0, 0, false
	}
	max = int(t.DigestMax)
	if max <= 0 {
		max = DefaultDigestMax
	}
	return time.Duration(t.DigestWindowMs) * time.Millisecond, min(max, MaxDigestMax), true
}

// DigestKey names the digest a notification belongs to within its user: its
// template and the request's digest key.
func DigestKey(n *schemas.Notification) string { return n.Template + "/" + n.DigestKey }

// DigestNotificationID names the digest notification of a user's window
// opened by the event eventID.
func DigestNotificationID(tenant, key, firstEventID, userID string) string {
	return TenantNotificationID(tenant, "digest:"+key+":"+firstEventID, userID)
}

// CollectDigest adds n to its open digest in st, opening one if there is
// none (opened: the caller schedules its release at the digest's DueAt). A
// replayed event (same event id) is not counted twice, nor collected again
// once its digest was released (the released digest is returned, DueAt 0).
func CollectDigest(st *schemas.UserState, n *schemas.Notification, window time.Duration, maxItems int, now time.Time) (d *schemas.Digest, opened bool, err error) {
	key := DigestKey(n)
	for i := range st.Digests {
		if r := &st.Digests[i]; r.DueAt == 0 && r.Key == key && slices.Contains(r.EventIDs, n.EventID) {
			return r, false, nil // sent with a digest already released: a replay
		}
	}
	open := 0
	for i := range st.Digests {
		if st.Digests[i].DueAt == 0 {
			continue // released
		}
		open++
		if st.Digests[i].Key != key {
			continue
		}
		d = &st.Digests[i]
		if slices.Contains(d.EventIDs, n.EventID) || d.NotificationID == n.ID {
			return d, false, nil
		}
		d.Count++
		if len(d.EventIDs) < maxDigestEventIDs {
			d.EventIDs = append(d.EventIDs, n.EventID)
		}
		if len(d.Items) < maxItems && itemBytes(d.Items)+len(n.Data) <= maxDigestItemBytes {
			d.Items = append(d.Items, dataOrEmpty(n.Data))
		}
		return d, false, nil
	}
	if open >= MaxOpenDigests {
		return nil, false, fmt.Errorf("the user has %d open digests", MaxOpenDigests)
	}
	st.Digests = append(st.Digests, schemas.Digest{
		Key: key, Template: n.Template, NotificationID: DigestNotificationID(n.Tenant, key, n.EventID, n.UserID),
		FirstAt: now.UnixMilli(), DueAt: now.Add(window).UnixMilli(), Count: 1,
		Items: []string{dataOrEmpty(n.Data)}, EventIDs: []string{n.EventID},
	})
	if len(n.Data) > maxDigestItemBytes {
		st.Digests[len(st.Digests)-1].Items = nil
	}
	return &st.Digests[len(st.Digests)-1], true, nil
}

func itemBytes(items []string) int {
	n := 0
	for _, it := range items {
		n += len(it)
	}
	return n
}

func dataOrEmpty(d string) string {
	if d == "" {
		return "{}"
	}
	return d
}

// keptReleased is how many released digests a user's state keeps, so that
// a release replayed after a crash sends the same digest again.
const keptReleased = 3

// ReleaseDigest marks the user's digest of notification id (the digest's
// own) released and returns a copy of it; a digest released before is
// returned again (a replay). nil: no such digest.
func ReleaseDigest(st *schemas.UserState, id string) *schemas.Digest {
	for i := range st.Digests {
		if st.Digests[i].NotificationID != id {
			continue
		}
		d := st.Digests[i]
		if d.DueAt != 0 {
			rel := d
			rel.DueAt = 0
			// The released digest moves to the end; the oldest released go.
			st.Digests = append(slices.Delete(st.Digests, i, i+1), rel)
			released := 0
			for j := len(st.Digests) - 1; j >= 0; j-- {
				if st.Digests[j].DueAt == 0 {
					if released++; released > keptReleased {
						st.Digests = slices.Delete(st.Digests, j, j+1)
					}
				}
			}
		}
		return &d
	}
	return nil
}

// DigestData is the data a digest notification renders with: the last
// listed event's data, plus "digest": {"count", "items" (each event's data, oldest
// first), "more" (events counted but not listed)}.
func DigestData(d *schemas.Digest) (string, error) {
	base := map[string]any{}
	items := make([]any, 0, len(d.Items))
	for _, it := range d.Items {
		m, err := ParseData(it)
		if err != nil {
			return "", err
		}
		items = append(items, m)
		base = m
	}
	out := map[string]any{}
	for k, v := range base {
		out[k] = v
	}
	out["digest"] = map[string]any{"count": d.Count, "items": items, "more": int(d.Count) - len(items)}
	b, err := json.Marshal(out)
	return string(b), err
}

// DigestRelease is the notification that, scheduled until the digest's
// DueAt, releases it: the deliver group sends the digest when it comes back.
func DigestRelease(d *schemas.Digest, first *schemas.Notification) *schemas.Notification {
	return &schemas.Notification{
		ID: d.NotificationID, EventID: "digest:" + d.Key, UserID: first.UserID, Tenant: first.Tenant,
		Template: first.Template, Priority: first.Priority, Category: first.Category, Channels: first.Channels,
		SendAt: d.DueAt, AcceptedAt: d.FirstAt, DigestKey: first.DigestKey, DigestFlush: true, Campaign: first.Campaign,
		// The first event's inline contacts and locale address the digest
		// (a profile's, looked up at send time, take precedence as for any
		// notification); the hold seals them like any scheduled record.
		Recipient: first.Recipient, Locale: first.Locale,
		// The digest renders the version its first event was accepted with.
		TemplateVersion: first.TemplateVersion, TemplateHash: first.TemplateHash,
	}
}
