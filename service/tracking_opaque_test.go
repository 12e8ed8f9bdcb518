package service_test

import (
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/sinks/smtptest"
	"github.com/notifyd/notifyd/tracking"
	"github.com/notifyd/notifyd/tracking/trackingtest"
)

const (
	opaqueSecret = "opaque-tracking-test-secret-0123456789"
	trackingBase = "http://t.example.test"
	springSale   = "https://shop.example.org/spring/sale?utm_campaign=newsletter&ref=a%2Fb"
)

// trackedHarness is a service with tracking on under trackingBase with a
// known secret (to mint links the old way), and a marketing template whose
// email links to springSale.
func trackedHarness(t *testing.T, legacyUntil string) *harness {
	h := newHarness(t)
	h.cfg.Tracking.BaseURL = trackingBase
	h.cfg.Tracking.Secret = opaqueSecret
	h.cfg.Tracking.LegacyUntil = legacyUntil
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/spring-sale", map[string]any{"category": "marketing", "channels": map[string]any{
		"email": map[string]any{"subject": "Spring sale", "text": "Sale at " + springSale,
			"html": `<html><body><p><a href="` + strings.ReplaceAll(springSale, "&", "&amp;") + `">Spring sale</a></p></body></html>`}}})
	return h
}

// trackedMail sends the spring sale to user (whose email address is its id)
// and returns the notification id and the tracking URLs of the email the
// SMTP server received, by kind: "o" (pixel), "c" (click), "u"
// (List-Unsubscribe).
func trackedMail(t *testing.T, h *harness, user string) (string, map[string]string) {
	t.Helper()
	id := h.send(map[string]any{"template": "spring-sale", "recipients": []any{map[string]any{"userId": user, "email": user}}})[user]
	h.waitStatus(id, processors.StatusSent)
	var msg *smtptest.Message
	for deadline := time.Now().Add(10 * time.Second); msg == nil && time.Now().Before(deadline); {
		msgs := h.smtp.Messages()
		for _, m := range msgs {
			if slices.Contains(m.To, user) {
				msg = &m
			}
		}
		if msg == nil {
			h.smtp.WaitFor(len(msgs)+1, time.Until(deadline))
		}
	}
	if msg == nil {
		t.Fatalf("no email to %s", user)
	}
	hdr, html := mailParts(t, *msg)
	if strings.Contains(html, "shop.example.org") {
		t.Fatalf("the destination is in the email as it is: %s", html)
	}
	urls := map[string]string{"u": strings.Trim(hdr.Get("List-Unsubscribe"), "<>")}
	for _, u := range trackingURL.FindAllString(html, -1) {
		urls[u[len(trackingBase+"/t/"):][:1]] = u
	}
	for _, kind := range []string{"o", "c", "u"} {
		if !strings.HasPrefix(urls[kind], trackingBase+"/t/"+kind+"/") {
			t.Fatalf("email to %s: no %s link in %q (List-Unsubscribe %q)", user, kind, html, hdr.Get("List-Unsubscribe"))
		}
	}
	return id, urls
}

// altered is tracking URL u with the token's character at i (from the end
// when negative) changed.
func altered(u string, i int) string {
	start := len(trackingBase + "/t/x/")
	if i < 0 {
		i += len(u) - start
	}
	c := byte('A')
	if u[start+i] == c {
		c = 'B'
	}
	return u[:start+i] + string(c) + u[start+i+1:]
}

// visit requests a tracking URL from the service as a mail client or a
// browser would, without following redirects.
func (h *harness) visit(method, u string) *http.Response {
	h.t.Helper()
	req, _ := http.NewRequest(method, h.base+strings.TrimPrefix(u, trackingBase), strings.NewReader("List-Unsubscribe=One-Click"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// mustVisit visits u and checks the status code.
func (h *harness) mustVisit(want int, method, u string) *http.Response {
	h.t.Helper()
	resp := h.visit(method, u)
	if resp.StatusCode != want {
		h.t.Fatalf("%s %s: %d, want %d", method, u, resp.StatusCode, want)
	}
	return resp
}

// openedOnly opens the pixel at u and waits for the opened event of id;
// then none of the statuses not may be in its history: events of one
// notification are one partition, in order, so anything an earlier request
// recorded is visible by then.
func (h *harness) openedOnly(id, pixel string, not ...string) {
	h.t.Helper()
	if resp := h.mustVisit(http.StatusOK, "GET", pixel); resp.Header.Get("Content-Type") != "image/gif" {
		h.t.Fatalf("pixel: %s", resp.Header.Get("Content-Type"))
	}
	h.waitHistory(id, "email", processors.StatusOpened)
	for _, st := range historyStatuses(h.mustCall(http.StatusOK, "GET", "/v1/notifications/"+id, nil)) {
		if slices.Contains(not, st) {
			h.t.Fatalf("notification %s: %s recorded", id, st)
		}
	}
}

func (h *harness) waitOptedOut(user string) {
	h.t.Helper()
	h.waitProfile(user, func(p map[string]any) bool {
		prefs, _ := p["preferences"].(map[string]any)
		cats, _ := prefs["categories"].(map[string]any)
		m, _ := cats["marketing"].(map[string]any)
		return m["email"] == false
	})
}

// A tracked marketing email to a user whose id is an email address: its
// pixel, click and one-click unsubscribe URLs give away neither the user
// id, nor the notification id, nor the destination, in any decoding; the
// click still redirects to the destination and is recorded, the
// unsubscribe still opts the user out. Links minted the old way (signed,
// readable), as in emails sent before the upgrade, keep working until the
// legacy deadline, which a fresh data directory records 180 days ahead.
func TestTrackingLinksAreOpaqueAndLegacyLinksStillWork(t *testing.T) {
	h := trackedHarness(t, "")
	const ada, grace = "ada.lovelace@analytical.example", "grace.hopper@navy.example"
	adaID, links := trackedMail(t, h, ada)

	uuid, _ := hex.DecodeString(strings.ReplaceAll(adaID, "-", ""))
	secrets := [][]byte{[]byte(ada), []byte("ada.lovelace"), []byte("lovelace"), []byte("analytical.example"),
		[]byte(adaID), []byte(strings.ReplaceAll(adaID, "-", "")), uuid,
		[]byte(springSale), []byte("shop.example.org"), []byte("utm_campaign"), []byte("spring-sale")}
	for kind, u := range links {
		if where := trackingtest.Reveal(u, secrets...); where != "" {
			t.Fatalf("%s link %s reveals %s", kind, u, where)
		}
	}

	// Altered, re-keyed or moved links answer 404 and record nothing.
	rekeyed, err := tracking.NewSigner(trackingBase, []byte("another-secret-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	forged := rekeyed.URL(tracking.Link{Kind: tracking.Click, NotificationID: adaID, UserID: ada, Template: "spring-sale",
		Category: "marketing", Channel: "email", URL: "https://evil.example/"})
	for _, bad := range []struct{ method, url string }{
		{"GET", altered(links["c"], 5)},
		{"GET", altered(links["c"], -1)},
		{"GET", links["c"] + "A"},
		{"GET", strings.Replace(links["c"], "/t/c/", "/t/o/", 1)},
		{"GET", forged},
		{"POST", links["u"][:len(links["u"])-1]},
		{"POST", strings.Replace(links["c"], "/t/c/", "/t/u/", 1)},
	} {
		h.mustVisit(http.StatusNotFound, bad.method, bad.url)
	}
	h.openedOnly(adaID, links["o"], processors.StatusClicked, processors.StatusUnsubscribed)

	// The click goes where the email said and is recorded; the one-click
	// unsubscribe opts the user out.
	if loc := h.mustVisit(http.StatusFound, "GET", links["c"]).Header.Get("Location"); loc != springSale {
		t.Fatalf("click redirects to %q, want %q", loc, springSale)
	}
	h.waitHistory(adaID, "email", processors.StatusClicked)
	h.mustVisit(http.StatusOK, "POST", links["u"])
	h.waitHistory(adaID, "email", processors.StatusUnsubscribed)
	h.waitOptedOut(ada)

	// Links in the old format for a notification of this service, as the
	// old code signed them with this secret.
	graceID, _ := trackedMail(t, h, grace)
	old := func(kind, dest string) string {
		return trackingtest.LegacyURL(trackingBase, []byte(opaqueSecret), tracking.Link{Kind: kind, NotificationID: graceID,
			UserID: grace, Template: "spring-sale", Category: "marketing", Channel: "email", URL: dest})
	}
	oldClick := old(tracking.Click, springSale)
	if trackingtest.Reveal(oldClick, []byte(grace)) == "" {
		t.Fatal("the old format is not what this test thinks: it does not show the user id")
	}
	oldUnsubscribe := old(tracking.Unsubscribe, "")
	for _, bad := range []struct{ method, url string }{
		{"GET", altered(oldClick, 5)},
		{"GET", altered(oldClick, -1)},
		{"GET", strings.Replace(oldClick, "/t/c/", "/t/o/", 1)},
		{"GET", trackingtest.LegacyURL(trackingBase, []byte("another-secret-0123456789"), tracking.Link{Kind: tracking.Click,
			NotificationID: graceID, UserID: grace, Channel: "email", URL: "https://evil.example/"})},
		{"POST", oldUnsubscribe[:len(oldUnsubscribe)-1]},
	} {
		h.mustVisit(http.StatusNotFound, bad.method, bad.url)
	}
	h.openedOnly(graceID, old(tracking.Open, ""), processors.StatusClicked, processors.StatusUnsubscribed)
	if loc := h.mustVisit(http.StatusFound, "GET", oldClick).Header.Get("Location"); loc != springSale {
		t.Fatalf("old click redirects to %q, want %q", loc, springSale)
	}
	h.waitHistory(graceID, "email", processors.StatusClicked)
	h.mustVisit(http.StatusOK, "POST", oldUnsubscribe)
	h.waitHistory(graceID, "email", processors.StatusUnsubscribed)
	h.waitOptedOut(grace)

	// With tracking.legacyUntil unset, the deadline is recorded in the data
	// directory, 180 days from the first start.
	b, err := os.ReadFile(filepath.Join(h.cfg.DataDir, "tracking.legacy-until"))
	if err != nil {
		t.Fatal(err)
	}
	deadline, err := time.Parse(time.RFC3339, strings.TrimSpace(string(b)))
	if err != nil || deadline.Before(time.Now().Add(179*24*time.Hour)) || deadline.After(time.Now().Add(181*24*time.Hour)) {
		t.Fatalf("recorded legacy deadline %q (%v), want about 180 days from now", b, err)
	}
}

// Past tracking.legacyUntil, old-format links answer 404 and record
// nothing; the email's own links work.
func TestLegacyTrackingLinksStopAtTheDeadline(t *testing.T) {
	h := trackedHarness(t, time.Now().UTC().AddDate(0, 0, -1).Format(time.DateOnly))
	const user = "katherine.johnson@nasa.example"
	id, links := trackedMail(t, h, user)
	old := func(kind, dest string) string {
		return trackingtest.LegacyURL(trackingBase, []byte(opaqueSecret), tracking.Link{Kind: kind, NotificationID: id,
			UserID: user, Template: "spring-sale", Category: "marketing", Channel: "email", URL: dest})
	}
	h.mustVisit(http.StatusNotFound, "GET", old(tracking.Click, springSale))
	h.mustVisit(http.StatusNotFound, "GET", old(tracking.Open, ""))
	h.mustVisit(http.StatusNotFound, "POST", old(tracking.Unsubscribe, ""))
	h.openedOnly(id, links["o"], processors.StatusClicked, processors.StatusUnsubscribed)
	if loc := h.mustVisit(http.StatusFound, "GET", links["c"]).Header.Get("Location"); loc != springSale {
		t.Fatalf("click redirects to %q", loc)
	}
	h.waitHistory(id, "email", processors.StatusClicked)
	if _, err := os.Stat(filepath.Join(h.cfg.DataDir, "tracking.legacy-until")); !os.IsNotExist(err) {
		t.Fatalf("a configured deadline was recorded in the data directory too: %v", err)
	}
}
