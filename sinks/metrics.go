package sinks

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the sinks' Prometheus series; a nil *Metrics records nothing.
type Metrics struct {
	outcomes    *prometheus.CounterVec
	skips       *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	retries     *prometheus.CounterVec
	exhausted   *prometheus.CounterVec
	requeued    *prometheus.CounterVec
	released    *prometheus.CounterVec
	breaker     *prometheus.GaugeVec
	transitions *prometheus.CounterVec
	inFlight    *prometheus.GaugeVec
	deadLetters *prometheus.CounterVec
	produceErrs *prometheus.CounterVec
}

// NewMetrics registers the sink series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "notifyd_sink_notifications_total",
			Help: "Notifications a sink finished, by channel, provider and status."}, []string{"channel", "provider", "status"}),
		skips: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "notifyd_sink_ledger_skips_total",
			Help: "Redelivered notifications the ledger kept from being sent twice."}, []string{"channel"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "notifyd_accept_to_sent_seconds",
			Help: "Time from accept to the provider accepting the notification.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)},
			[]string{"channel"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "notifyd_sink_retries_total",
			Help: "Notifications put on a delayed retry topic after their providers failed, by channel and tier."}, []string{"channel", "tier"}),
		exhausted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "notifyd_sink_exhausted_total",
			Help: "Notifications that failed for good after their retry horizon (alert on it), by channel."}, []string{"channel"}),
		requeued: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "notifyd_retry_requeued_total",
			Help: "Notifications the retry group put back on their channel's queue when due, by channel."}, []string{"channel"}),
		released: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "notifyd_retry_released_total",
			Help: "Notifications the retry group put back on their channel's queue before they were due, because a provider (or the channel's chain, channel:<name>) that parked them recovered; by channel and provider."},
			[]string{"channel", "provider"}),
		breaker: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "notifyd_breaker_state",
			Help: "Circuit breaker state per channel and provider (channel:<name> is the channel's own): 0 closed, 1 half-open, 2 open."},
			[]string{"channel", "provider"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "notifyd_breaker_transitions_total",
			Help: "Circuit breaker state changes, by channel, provider and new state."}, []string{"channel", "provider", "to"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "notifyd_sink_in_flight",
			Help: "Notifications a sink has taken and not finished, by channel and priority."}, []string{"channel", "priority"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "notifyd_sink_dead_letters_total",
			Help: "Records a sink sent to notify.dlq, by channel."}, []string{"channel"}),
		produceErrs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "notifyd_sink_produce_errors_total",
			Help: "Failed produces of status events, ledger entries, retries or dead letters (retried; the offset waits)."}, []string{"channel"}),
	}
	reg.MustRegister(m.outcomes, m.skips, m.latency, m.retries, m.exhausted, m.requeued, m.released, m.breaker, m.transitions,
		m.inFlight, m.deadLetters, m.produceErrs)
	return m
}

func (m *Metrics) outcome(channel, provider, status string) {
	if m != nil {
		m.outcomes.WithLabelValues(channel, provider, status).Inc()
	}
}

func (m *Metrics) sent(channel, provider string, sinceAccept time.Duration) {
	if m != nil {
		m.outcomes.WithLabelValues(channel, provider, "sent").Inc()
		m.latency.WithLabelValues(channel).Observe(sinceAccept.Seconds())
	}
}

func (m *Metrics) skipped(channel string) {
	if m != nil {
		m.skips.WithLabelValues(channel).Inc()
	}
}

func (m *Metrics) retried(channel, tier string) {
	if m != nil {
		m.retries.WithLabelValues(channel, tier).Inc()
	}
}

func (m *Metrics) exhaust(channel string) {
	if m != nil {
		m.exhausted.WithLabelValues(channel).Inc()
	}
}

func (m *Metrics) requeue(channel string) {
	if m != nil {
		m.requeued.WithLabelValues(channel).Inc()
	}
}

func (m *Metrics) breakerState(channel, provider string, state int) {
	if m != nil {
		m.breaker.WithLabelValues(channel, provider).Set(float64(state))
	}
}

func (m *Metrics) breakerTransition(channel, provider, to string) {
	if m != nil {
		m.transitions.WithLabelValues(channel, provider, to).Inc()
	}
}

func (m *Metrics) inFlightAdd(channel, priority string, d int) {
	if m != nil {
		m.inFlight.WithLabelValues(channel, priority).Add(float64(d))
	}
}

func (m *Metrics) deadLetter(channel string) {
	if m != nil {
		m.deadLetters.WithLabelValues(channel).Inc()
	}
}

func (m *Metrics) produceError(channel string) {
	if m != nil {
		m.produceErrs.WithLabelValues(channel).Inc()
	}
}

func (m *Metrics) release(channel, provider string) {
	if m != nil {
		m.released.WithLabelValues(channel, provider).Inc()
	}
}
