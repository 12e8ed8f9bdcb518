package processors

import (
	"fmt"
	"sort"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// Outcome is what became of one notification on one channel.
type Outcome struct {
	Channel string
	Status  string // queued, or why not: suppressed, rejected, rate_limited, expired
	Reason  string
	Out     *schemas.Notification // routed and rendered, when queued
}

// Deliverer runs the deliver group's chain for one notification:
// enrich → validate → preferences → expiry → render → content dedup & cap → route.
type Deliverer struct {
	Limiter Limiter
	Enabled func(channel string) bool // a provider is configured for the channel
	Render  RenderLimits              // a render over budget rejects the channel
}

// Deliver decides every channel of n. It updates st (the user's state) in place.
func (d Deliverer) Deliver(n *schemas.Notification, p *schemas.Profile, t *schemas.Template, st *schemas.UserState, now time.Time) []Outcome {
	if t == nil {
		return []Outcome{{Status: StatusRejected, Reason: fmt.Sprintf("unknown template %q", n.Template)}}
	}
	category, priority := Category(n, t), Priority(n, t)
	if !validPriority(priority) {
		return []Outcome{{Status: StatusRejected, Reason: fmt.Sprintf("invalid priority %q", priority)}}
	}
	channels := n.Channels
	if len(channels) == 0 {
		for ch := range t.Channels {
			channels = append(channels, ch)
		}
		sort.Strings(channels)
	}
	contact := Enrich(n, p)
	data, err := ParseData(n.Data)
	if err != nil {
		return []Outcome{{Status: StatusRejected, Reason: err.Error()}}
	}
	day := UserDay(now, contact.Timezone)
	out := make([]Outcome, 0, len(channels))
	for _, ch := range channels {
		o := d.channel(n, t, contact, p, st, data, ch, category, priority, day, now)
		o.Channel = ch
		out = append(out, o)
	}
	return out
}

func (d Deliverer) channel(n *schemas.Notification, t *schemas.Template, c *Contact, p *schemas.Profile, st *schemas.UserState,
	data map[string]any, ch, category, priority, day string, now time.Time) Outcome {
	if d.Enabled != nil && !d.Enabled(ch) {
		return Outcome{Status: StatusRejected, Reason: fmt.Sprintf("no provider is configured for channel %s", ch)}
	}
	cc, locale, ok := SelectContent(t, ch, c.Locale)
	if !ok {
		return Outcome{Status: StatusRejected, Reason: fmt.Sprintf("template %s has no %s content", t.ID, ch)}
	}
	addr, err := Address(ch, c, cc)
	if err != nil {
		return Outcome{Status: StatusRejected, Reason: err.Error()}
	}
	if err := ValidateAddress(ch, addr); err != nil {
		return Outcome{Status: StatusRejected, Reason: err.Error()}
	}
	if why := Suppression(p, category, ch); why != "" {
		return Outcome{Status: StatusSuppressed, Reason: why}
	}
	if n.ExpiresAt > 0 && now.UnixMilli() >= n.ExpiresAt {
		return Outcome{Status: StatusExpired, Reason: "expired at " + time.UnixMilli(n.ExpiresAt).UTC().Format(time.RFC3339) + " before it could be routed"}
	}
	content, err := Render(t, ch, cc, data, d.Render)
	if err != nil {
		return Outcome{Status: StatusRejected, Reason: err.Error()}
	}
	if status, why := d.Limiter.Check(st, now, day, ch, ContentHash(ch, addr, content), n.ID); status != "" {
		return Outcome{Status: status, Reason: why}
	}
	routed := *n
	routed.Channel, routed.Address, routed.Content = ch, addr, content
	routed.Targets = Targets(ch, c)
	routed.Priority, routed.Category, routed.RoutedAt = priority, category, now.UnixMilli()
	routed.Locale = first(locale, c.Locale)
	if ch != "webhook" && !n.OTP {
		// Rendered: the data is in the content now. Only a webhook's payload
		// carries it, and a routed record stays small. A one-time code keeps
		// it: the sink scrubs its values from every reason and log line.
		routed.Data = ""
	}
	return Outcome{Status: StatusQueued, Out: &routed}
}
