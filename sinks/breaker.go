package sinks

import (
	"context"
	"errors"
	"log/slog"

	"github.com/sony/gobreaker/v2"

	"github.com/notifyd/notifyd/config"
)

// BreakerState is a breaker's state as the metric reports it.
const (
	breakerClosed   = 0
	breakerHalfOpen = 1
	breakerOpen     = 2
)

// newBreaker builds the circuit breaker of one provider (or of a whole
// channel's failover chain, name "channel:<channel>"). It opens after
// cfg.Failures failures in a row, refuses calls for cfg.OpenFor, then lets
// cfg.Probes calls through; they close it or open it again. Failures that say
// nothing about the provider's health do not count as failures: a permanent
// error is the request's fault (the provider answered). A cancelled call is
// ours and a refused target (SSRF guard) was never attempted: they count
// neither way, so a burst of them neither opens the breaker nor closes it
// during an outage.
func newBreaker(channel, name string, cfg config.Breaker, m *Metrics, log *slog.Logger) *gobreaker.CircuitBreaker[string] {
	return newBreakerClosing(channel, name, cfg, m, log, nil)
}

// providerBreaker is the breaker of one of the sink's providers: when it
// closes again, every retrier releases what that provider's failures parked.
func (s *Sink) providerBreaker(name string) *gobreaker.CircuitBreaker[string] {
	return newBreakerClosing(s.Channel, name, s.Opts.Breaker, s.Metrics, s.Log, s.recovered)
}

// newBreakerClosing is newBreaker that also calls closed(name) (when set) each
// time the breaker closes again, under the breaker's lock.
func newBreakerClosing(channel, name string, cfg config.Breaker, m *Metrics, log *slog.Logger, closed func(string)) *gobreaker.CircuitBreaker[string] {
	failures := uint32(cfg.Failures)
	m.breakerState(channel, name, breakerClosed)
	return gobreaker.NewCircuitBreaker[string](gobreaker.Settings{
		Name:        name,
		MaxRequests: uint32(cfg.Probes),
		Timeout:     cfg.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= failures },
		IsSuccessful: func(err error) bool {
			return err == nil || IsPermanent(err)
		},
		IsExcluded: func(err error) bool {
			return errors.Is(err, context.Canceled) || IsRefusedTarget(err)
		},
		OnStateChange: func(_ string, from, to gobreaker.State) {
			log.Warn("circuit breaker", "provider", name, "from", from.String(), "to", to.String())
			state := breakerClosed
			switch to {
			case gobreaker.StateHalfOpen:
				state = breakerHalfOpen
			case gobreaker.StateOpen:
				state = breakerOpen
			}
			m.breakerState(channel, name, state)
			m.breakerTransition(channel, name, to.String())
			if to == gobreaker.StateClosed && closed != nil {
				closed(name)
			}
		},
	})
}

// breakerRefused tells whether a call was refused by an open (or saturated
// half-open) breaker rather than attempted.
func breakerRefused(err error) bool {
	return errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests)
}
