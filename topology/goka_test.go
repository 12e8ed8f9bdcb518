package topology

import (
	"testing"

	"github.com/lovoo/goka"

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

// The groups that read priority lanes fetch little per partition (a low
// lane's backlog must not hold the fetch of a high record); the status group,
// which reads none, fetches 1 MiB, or it falls behind a bulk's events.
func TestGroupsFetchByWhetherTheyReadLanes(t *testing.T) {
	for _, g := range []goka.Group{DedupGroup, DeliverGroup, "flow"} {
		if got := groupFetchBytes(g); got > 16<<10 {
			t.Errorf("%s fetches %d bytes per partition, want at most 16 KiB", g, got)
		}
	}
	if got := groupFetchBytes(StatusGroup); got < 1<<20 {
		t.Errorf("the status group fetches %d bytes per partition, want 1 MiB", got)
	}
}
