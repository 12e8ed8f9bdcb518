package processors

import (
	"fmt"
	"sort"
	"strings"

	"github.com/notifyd/notifyd/schemas"
)

// Channels notifyd knows, and how each finds its address in a contact.
var channelAddress = map[string]func(c *Contact) string{
	"email":    func(c *Contact) string { return c.Email },
	"sms":      func(c *Contact) string { return c.Phone },
	"whatsapp": func(c *Contact) string { return first(c.Chat["whatsapp"]["phone"], c.Phone) },
	"inapp":    func(c *Contact) string { return c.UserID },
	"push":     func(c *Contact) string { return c.device("fcm", "apns") },
	"webpush":  func(c *Contact) string { return c.device("webpush") },
	"slack":    func(c *Contact) string { return first(c.Chat["slack"]["webhookUrl"], c.Chat["slack"]["channel"]) },
	"telegram": func(c *Contact) string { return c.Chat["telegram"]["chatId"] },
	"dingtalk": func(c *Contact) string { return c.Chat["dingtalk"]["robot"] },
	"wecom":    func(c *Contact) string { return c.Chat["wecom"]["robot"] },
	"feishu":   func(c *Contact) string { return c.Chat["feishu"]["robot"] },
	"webhook":  func(c *Contact) string { return "" }, // the endpoint comes from the template
}

// AllChannels lists every channel notifyd knows, sorted.
func AllChannels() []string {
	out := make([]string, 0, len(channelAddress))
	for ch := range channelAddress {
		out = append(out, ch)
	}
	sort.Strings(out)
	return out
}

// KnownChannel tells whether ch is a channel notifyd knows.
func KnownChannel(ch string) bool { _, ok := channelAddress[ch]; return ok }

// devicePlatforms are the device platforms of the channels that send to every
// device of a user.
var devicePlatforms = map[string][]string{"push": {"fcm", "apns"}, "webpush": {"webpush"}}

// Targets lists every device or subscription of the contact on a channel that
// sends to devices (push, webpush), nil for other channels. Duplicates (the
// same token registered twice) are sent to once.
func Targets(channel string, c *Contact) []schemas.Target {
	platforms, ok := devicePlatforms[channel]
	if !ok {
		return nil
	}
	var out []schemas.Target
	seen := map[string]bool{}
	for _, d := range c.Devices {
		for _, p := range platforms {
			if d.Platform != p {
				continue
			}
			t := schemas.Target{Platform: p, Token: d.Token, Endpoint: d.Endpoint, P256dh: d.P256dh, Auth: d.Auth}
			key := p + "\x00" + t.Token + "\x00" + t.Endpoint
			if (t.Token == "" && t.Endpoint == "") || seen[key] {
				continue
			}
			seen[key] = true
			out = append(out, t)
		}
	}
	return out
}

// Contact is what enrich knows of a recipient for one send.
type Contact struct {
	UserID   string
	Email    string
	Phone    string
	Locale   string
	Timezone string
	Devices  []schemas.Device
	Chat     map[string]map[string]string
}

func (c *Contact) device(platforms ...string) string {
	for _, d := range c.Devices {
		for _, p := range platforms {
			if d.Platform == p {
				if p == "webpush" {
					return d.Endpoint
				}
				return p + ":" + d.Token
			}
		}
	}
	return ""
}

func first(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// Enrich merges the profile with the inline fields of the recipient; inline
// fields win for this send.
func Enrich(n *schemas.Notification, p *schemas.Profile) *Contact {
	c := &Contact{UserID: n.UserID}
	if p != nil {
		c.Email, c.Phone, c.Locale, c.Timezone = p.Email, p.Phone, p.Locale, p.Timezone
		c.Devices, c.Chat = p.Devices, p.Chat
	}
	r := n.Recipient
	c.Email = first(strings.TrimSpace(r.Email), c.Email)
	c.Phone = first(strings.TrimSpace(r.Phone), c.Phone)
	c.Locale = first(r.Locale, c.Locale)
	return c
}

// Address finds the recipient's address on a channel, or says why there is none.
func Address(channel string, c *Contact, content schemas.ChannelContent) (string, error) {
	if channel == "webhook" {
		return first(content.Endpoint, "default"), nil
	}
	f, ok := channelAddress[channel]
	if !ok {
		return "", fmt.Errorf("unknown channel %q", channel)
	}
	addr := f(c)
	if addr == "" {
		return "", fmt.Errorf("user %s has no %s address", c.UserID, channel)
	}
	return addr, nil
}

// NeedsProfile tells whether a notification needs the user's profile for an
// address: some channel it goes to takes its address from the profile and the
// request did not give it inline.
func NeedsProfile(n *schemas.Notification, t *schemas.Template) bool {
	channels := n.Channels
	if len(channels) == 0 && t != nil {
		for ch := range t.Channels {
			channels = append(channels, ch)
		}
	}
	for _, ch := range channels {
		switch ch {
		case "webhook", "inapp":
		case "email":
			if n.Recipient.Email == "" {
				return true
			}
		case "sms", "whatsapp":
			if n.Recipient.Phone == "" {
				return true
			}
		default:
			return true
		}
	}
	return false
}
