package sinks

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the sinks' Prometheus series; a nil *Metrics records nothing.
type Metrics struct {
	outcomes *prometheus.CounterVec
	skips    *prometheus.CounterVec
	latency  *prometheus.HistogramVec
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
	}
	reg.MustRegister(m.outcomes, m.skips, m.latency)
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
