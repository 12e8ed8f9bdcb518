package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// errBenchOutage is what the bench provider answers while it is down: a
// transient failure, as a provider that does not answer.
var errBenchOutage = errors.New("bench provider: outage (connection refused)")

// outageFigures: n notifications sent at a steady rate while the provider was
// down for a while; how long after its return the parked ones arrived.
type outageFigures struct {
	N        int     `json:"n"`
	Rate     int     `json:"rate"`
	OutageMS float64 `json:"outage_ms"`
	// Delivered counts distinct notifications the provider accepted: before
	// the outage, at its end, and 30 s and 60 s after.
	DeliveredBefore   int64 `json:"delivered_before"`
	DeliveredAtReturn int64 `json:"delivered_at_return"`
	DeliveredAfter30s int64 `json:"delivered_after_30s"`
	DeliveredAfter60s int64 `json:"delivered_after_60s"`
	// AllDeliveredMS: the provider's return → the last of the n accepted;
	// -1 when they were not all accepted within the wait.
	AllDeliveredMS float64 `json:"all_delivered_ms"`
	// Calls the provider refused during the outage.
	Refused int64 `json:"refused"`
}

// outagePhase sends n requests at rate/s on notify.ingest; when a fifth of
// them are sent the provider goes down for outage and then comes back. With
// the service's default retry tiers (10 s, 1 min, 10 min, 1 h) and breaker,
// what a provider's recovery does for what waits for it shows here: without
// release on recovery the last ones wait for the 10-minute tier.
func outagePhase(ctx context.Context, producer *kgo.Client, bp *benchProvider, n, rate int, outage, wait time.Duration) (*outageFigures, error) {
	bp.track() // runBench checked n, rate and outage
	defer bp.untrack()
	fig := &outageFigures{N: n, Rate: rate, OutageMS: msec(outage), AllDeliveredMS: -1}
	first := n / 5
	if err := ingest(ctx, producer, "outage-a", first, rate, 0); err != nil {
		return nil, err
	}
	fig.DeliveredBefore = bp.distinct()
	bp.down.Store(true)
	rest := make(chan error, 1)
	go func() { rest <- ingest(ctx, producer, "outage-b", n-first, rate, 0) }()
	select {
	case <-time.After(outage):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	bp.down.Store(false)
	back := time.Now()
	fig.DeliveredAtReturn = bp.distinct()
	fig.Refused = bp.refused.Load()
	if err := <-rest; err != nil {
		return nil, err
	}
	// The counts 30 s and 60 s after the return; once every notification
	// arrived, every later count is all of them.
	marks := []struct {
		after time.Duration
		count *int64
	}{{30 * time.Second, &fig.DeliveredAfter30s}, {60 * time.Second, &fig.DeliveredAfter60s}}
	for {
		got, since := bp.distinct(), time.Since(back)
		for len(marks) > 0 && since >= marks[0].after {
			*marks[0].count, marks = got, marks[1:]
		}
		if got >= int64(n) {
			fig.AllDeliveredMS = msec(since)
			for _, m := range marks {
				*m.count = got
			}
			break
		}
		if since > wait || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Printf("outage: %d notifications at %d/s, the provider down for %v after the first %d (%d calls refused)\n", n, rate, outage, first, fig.Refused)
	fmt.Printf("  delivered: %d before the outage, %d at the provider's return, %d 30 s after, %d 60 s after\n",
		fig.DeliveredBefore, fig.DeliveredAtReturn, fig.DeliveredAfter30s, fig.DeliveredAfter60s)
	if fig.AllDeliveredMS < 0 {
		fmt.Printf("  NOT all delivered %v after the provider's return: %d of %d\n", wait, bp.distinct(), n)
	} else {
		fmt.Printf("  all %d delivered %s after the provider's return\n", n, ms(time.Duration(fig.AllDeliveredMS*float64(time.Millisecond))))
	}
	return fig, nil
}

// track makes the provider count the distinct notifications it accepts.
func (b *benchProvider) track() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seen = map[string]struct{}{}
	b.refused.Store(0)
}

func (b *benchProvider) untrack() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seen = nil
}

func (b *benchProvider) distinct() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return int64(len(b.seen))
}
