package processors

import (
	"slices"

	"github.com/notifyd/notifyd/schemas"
)

// RemoveInvalid takes out of a profile the targets a provider declared
// invalid — device tokens, web push subscriptions, chat ids, robots, numbers,
// addresses — and, for an unsubscribe (SMS STOP), opts the user out of the
// channel for every category but transactional. It tells whether the profile
// changed; p is modified in place.
func RemoveInvalid(p *schemas.Profile, channel string, invalid []schemas.InvalidTarget, unsubscribe bool) bool {
	changed := false
	for _, t := range invalid {
		switch t.Platform {
		case "fcm", "apns", "webpush":
			n := len(p.Devices)
			p.Devices = slices.DeleteFunc(p.Devices, func(d schemas.Device) bool {
				return d.Platform == t.Platform && ((t.Token != "" && d.Token == t.Token) || (t.Endpoint != "" && d.Endpoint == t.Endpoint))
			})
			changed = changed || len(p.Devices) != n
		case "email":
			if !unsubscribe && t.Token != "" && p.Email == t.Token {
				p.Email, changed = "", true
			}
		case "sms":
			if !unsubscribe && t.Token != "" && p.Phone == t.Token {
				p.Phone, changed = "", true
			}
		default: // chat channels: the entry whose value is the dead address
			entry := p.Chat[t.Platform]
			for k, v := range entry {
				if t.Token != "" && v == t.Token {
					delete(entry, k)
					changed = true
				}
			}
			if changed && len(entry) == 0 {
				delete(p.Chat, t.Platform)
			}
		}
	}
	if unsubscribe {
		if p.Preferences.Categories == nil {
			p.Preferences.Categories = map[string]map[string]bool{}
		}
		// "*" is every category (transactional stays exempt, see Suppression).
		if p.Preferences.Categories["*"] == nil {
			p.Preferences.Categories["*"] = map[string]bool{}
		}
		if allowed, ok := p.Preferences.Categories["*"][channel]; !ok || allowed {
			p.Preferences.Categories["*"][channel] = false
			changed = true
		}
	}
	return changed
}

// OptOut turns category off on channel in the profile's preferences (a
// one-click unsubscribe from a message of that category). It tells whether
// the profile changed. Transactional cannot be opted out of.
func OptOut(p *schemas.Profile, category, channel string) bool {
	if category == "" || category == CategoryTransactional {
		return false
	}
	if p.Preferences.Categories == nil {
		p.Preferences.Categories = map[string]map[string]bool{}
	}
	if p.Preferences.Categories[category] == nil {
		p.Preferences.Categories[category] = map[string]bool{}
	}
	if allowed, ok := p.Preferences.Categories[category][channel]; ok && !allowed {
		return false
	}
	p.Preferences.Categories[category][channel] = false
	return true
}

// MoveTargets rewrites addresses a provider says moved (a chat id that
// changed): every chat entry of the platform holding From holds To instead.
// It tells whether the profile changed; p is modified in place.
func MoveTargets(p *schemas.Profile, moved []schemas.MovedTarget) bool {
	changed := false
	for _, m := range moved {
		if m.From == "" || m.To == "" {
			continue
		}
		for k, v := range p.Chat[m.Platform] {
			if v == m.From {
				p.Chat[m.Platform][k] = m.To
				changed = true
			}
		}
	}
	return changed
}
