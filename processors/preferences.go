package processors

import (
	"fmt"

	"github.com/notifyd/notifyd/schemas"
)

// CategoryTransactional is exempt from opt-outs: a password reset or an order
// receipt is sent even to a user who unsubscribed from everything else.
const CategoryTransactional = "transactional"

// Suppression tells why a user's preferences forbid a send, or "" when they allow it.
func Suppression(p *schemas.Profile, category, channel string) string {
	if p == nil || category == CategoryTransactional {
		return ""
	}
	prefs := p.Preferences
	if prefs.UnsubscribedAll {
		return fmt.Sprintf("user unsubscribed from all %s notifications", category)
	}
	if allowed, ok := prefs.Categories["*"][channel]; ok && !allowed {
		return fmt.Sprintf("user opted out of every category on %s", channel)
	}
	if byChannel, ok := prefs.Categories[category]; ok {
		if allowed, ok := byChannel[channel]; ok && !allowed {
			return fmt.Sprintf("user opted out of %s %s", category, channel)
		}
		if allowed, ok := byChannel["all"]; ok && !allowed {
			return fmt.Sprintf("user opted out of %s on every channel", category)
		}
	}
	return ""
}
