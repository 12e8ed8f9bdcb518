// Package sinks delivers routed notifications: one consumer group per channel,
// a failover chain of providers, retries, a delivery ledger, and the dead-letter
// topic. One file per provider; each registers itself in providerTypes.
package sinks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
)

// Provider hands a notification to one external service.
type Provider interface {
	Name() string
	// Send returns the provider's message id once the provider accepted the message.
	Send(ctx context.Context, n *schemas.Notification) (messageID string, err error)
}

// PermanentError is a failure that retrying the same provider cannot fix.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent marks err as not worth retrying on the same provider.
func Permanent(err error) error { return &PermanentError{Err: err} }

// IsPermanent tells whether err is marked permanent.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// Deps are what providers may need from the process.
type Deps struct {
	Log *slog.Logger
}

// providerTypes is the registry: one line per provider type.
var providerTypes = map[string]func(config.Provider, Deps) (Provider, error){
	"log":     newLogProvider,
	"smtp":    newSMTPProvider,
	"webhook": newWebhookProvider,
}

// BuildProviders builds a channel's failover chain from configuration.
func BuildProviders(channel string, cfgs []config.Provider, deps Deps) ([]Provider, error) {
	var out []Provider
	for _, c := range cfgs {
		build, ok := providerTypes[c.Type]
		if !ok {
			return nil, fmt.Errorf("channel %s: unknown provider type %q", channel, c.Type)
		}
		p, err := build(c, deps)
		if err != nil {
			return nil, fmt.Errorf("channel %s provider %s: %w", channel, c.Name, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// Closer is a provider holding resources (connections) to release on shutdown.
type Closer interface{ Close() error }
