package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// priorityFigures: high-priority notifications sent through the API while a
// backlog of low-priority ones drained.
type priorityFigures struct {
	Backlog int `json:"backlog"`
	High    int `json:"high"`
	Errors  int `json:"errors"`
	// HighLatency is API accept → provider of the high-priority ones.
	HighLatency *latencyFigures `json:"high_latency_ms,omitempty"`
	// DrainedMS: the backlog's first produce → its last delivery.
	DrainedMS float64 `json:"drained_ms"`
	// LowDeliveredAtLastHigh: how much of the backlog had been delivered
	// when the last high-priority notification was (with one queue for
	// all, it would be all of it).
	LowDeliveredAtLastHigh int64 `json:"low_delivered_at_last_high"`
}

// priorityPhase queues backlog low-priority requests where the API puts them
// (notify.ingest.low), then sends highs high-priority requests through the
// API, spread over the time the backlog takes to drain, and measures how long
// each took from the API's accept to the provider.
func priorityPhase(ctx context.Context, cl *kgo.Client, client *http.Client, base string, bp *benchProvider, backlog, highs int) (*priorityFigures, error) {
	bp.reset()
	start := time.Now()
	var firstErr atomic.Value
	for i := 0; i < backlog; i++ {
		id := fmt.Sprintf("low-%d", i)
		user := fmt.Sprintf("user-%d", i%2000)
		req := &schemas.SendRequest{EventID: id, Template: "bench", Priority: "low", AcceptedAt: time.Now().UnixMilli(), Source: "bench",
			Recipients: []schemas.Recipient{{UserID: user, Email: user + "@example.com"}}, Data: `{"orderId":"` + id + `"}`}
		v, err := schemas.SendRequestCodec.Encode(req)
		if err != nil {
			return nil, err
		}
		cl.Produce(ctx, &kgo.Record{Topic: string(topology.IngestLane("low")), Key: []byte(id), Value: v}, func(_ *kgo.Record, err error) {
			if err != nil {
				firstErr.CompareAndSwap(nil, err)
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return nil, err
	}
	if err, _ := firstErr.Load().(error); err != nil {
		return nil, err
	}
	// A first estimate of the drain time spreads the high ones over most of it.
	time.Sleep(200 * time.Millisecond)
	perSec := max(float64(bp.count.Load())/time.Since(start).Seconds(), 1000)
	gap := time.Duration(float64(backlog)/perSec*float64(time.Second)) * 3 / 4 / time.Duration(max(highs, 1))
	var errs atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < highs; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			body := fmt.Sprintf(`{"template":"bench","priority":"high","data":{"orderId":"otp-%d"},"recipients":[{"userId":"user-%d","email":"user-%d@example.com"}]}`, i, i, i)
			if err := call(ctx, client, "POST", base+"/v1/notifications", body, http.StatusAccepted); err != nil {
				errs.Add(1)
			}
		}(i)
		time.Sleep(gap)
	}
	wg.Wait()
	want := int64(backlog + highs - int(errs.Load()))
	deadline := time.Now().Add(10 * time.Minute)
	for bp.count.Load() < want {
		if ctx.Err() != nil || time.Now().After(deadline) {
			return nil, fmt.Errorf("priority phase: %d of %d delivered", bp.count.Load(), want)
		}
		time.Sleep(2 * time.Millisecond)
	}
	drained := time.Unix(0, bp.last.Load()).Sub(start)
	bp.mu.Lock()
	high := slices.Clone(bp.high)
	lowAtLastHigh := bp.lowAtHigh
	bp.mu.Unlock()
	bp.reset()
	f := &priorityFigures{Backlog: backlog, High: len(high), Errors: int(errs.Load()), HighLatency: latencies(high),
		DrainedMS: msec(drained), LowDeliveredAtLastHigh: lowAtLastHigh}
	fmt.Printf("\npriority: %d low-priority requests queued on notify.ingest.low, drained in %v; %d high-priority sent through the API meanwhile (%d errors)\n",
		backlog, drained.Round(time.Millisecond), len(high), f.Errors)
	fmt.Printf("  high: API accept → provider p50 %s  p99 %s  max %s; %d of the backlog delivered when the last high one was\n",
		ms(percentile(high, .5)), ms(percentile(high, .99)), ms(percentile(high, 1)), lowAtLastHigh)
	return f, nil
}
