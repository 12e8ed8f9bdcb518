package sinks

import (
	"context"
	"log/slog"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

// logProvider writes notifications to the log instead of sending them: for
// development and for channels whose real provider is not configured yet.
type logProvider struct {
	name string
	log  *slog.Logger
}

func init() {
	Register("log", Type{New: func(s Spec) (Provider, error) { return newLogProvider(s.Provider, s.Deps) }})
}

func newLogProvider(c config.Provider, d Deps) (Provider, error) {
	l := d.Log
	if l == nil {
		l = slog.Default()
	}
	return &logProvider{name: c.Name, log: l}, nil
}

func (p *logProvider) Name() string { return p.name }

func (p *logProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	if n.OTP { // a one-time code is never logged
		p.log.Info("notification", "provider", p.name, "id", n.ID, "channel", n.Channel, "otp", true)
		return "log-" + n.ID, nil
	}
	// The address is masked: logs carry no contact data.
	p.log.Info("notification", "provider", p.name, "id", n.ID, "channel", n.Channel, "to", processors.Mask(n.Address),
		"subject", n.Content.Subject, "text", n.Content.Text, "title", n.Content.Title, "body", n.Content.Body)
	return "log-" + n.ID, nil
}
