package sinks

import (
	"fmt"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/tracking"
)

// trackedEmail is an email's HTML with its links going through click
// redirects and an open pixel, and the one-click unsubscribe URL for its
// List-Unsubscribe headers; their tokens are encrypted, so the email does
// not show the user id or the destinations in its URLs. Transactional email
// and one-time codes are not tracked (their links — a password reset — must
// not pass through a redirect, and there is nothing to unsubscribe from):
// html is returned as it is and unsubscribe is "".
func trackedEmail(t *tracking.Signer, n *schemas.Notification) (html, unsubscribe string, err error) {
	html = n.Content.HTML
	if t == nil || n.OTP || n.Category == processors.CategoryTransactional {
		return html, "", nil
	}
	link := func(kind string) tracking.Link {
		return tracking.Link{Kind: kind, NotificationID: n.ID, Tenant: n.Tenant, UserID: n.UserID,
			Template: n.Template, Category: n.Category, Channel: n.Channel, Campaign: n.Campaign}
	}
	if html != "" {
		// ClickFunc leaves the signer's own links (an unsubscribe link in
		// the template) and links too long to carry as they are.
		if html, err = tracking.RewriteHTML(html, t.ClickFunc(link(tracking.Click)), t.URL(link(tracking.Open))); err != nil {
			return "", "", Permanent(fmt.Errorf("tracking: %w", err))
		}
	}
	return html, t.URL(link(tracking.Unsubscribe)), nil
}
