package topology

import (
	"testing"

	"github.com/rcrowley/go-metrics"
)

// sarama's registry hands out metrics that record nothing: notifyd never
// reads them, and recording them was 2 % of the pipeline's CPU.
func TestSaramaKeepsNoMetrics(t *testing.T) {
	c := Kafka{}.saramaConfig()
	h := metrics.GetOrRegisterHistogram("request-latency-in-ms", c.MetricRegistry, metrics.NewExpDecaySample(1028, 0.015))
	h.Update(42)
	if _, ok := h.(metrics.NilHistogram); !ok || h.Count() != 0 {
		t.Fatalf("sarama's histograms are %T holding %d values, want go-metrics' NilHistogram", h, h.Count())
	}
	m := metrics.GetOrRegisterMeter("incoming-byte-rate", c.MetricRegistry)
	m.Mark(1000)
	if m.Count() != 0 {
		t.Fatalf("sarama's meters count %d bytes, want nothing recorded", m.Count())
	}
}
