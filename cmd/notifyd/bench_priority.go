package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
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
	// BatchBytes bounds the record batches the backlog was produced in.
	BatchBytes int `json:"batch_bytes"`
	High       int `json:"high"`
	Errors     int `json:"errors"`
	// HighLatency is API accept → provider of the high-priority ones.
	HighLatency *latencyFigures `json:"high_latency_ms,omitempty"`
	// DrainedMS: the backlog's first produce → its last delivery.
	DrainedMS float64 `json:"drained_ms"`
	// LowDeliveredAtLastHigh: how much of the backlog had been delivered
	// when the last high-priority notification was (with one queue for
	// all, it would be all of it).
	LowDeliveredAtLastHigh int64 `json:"low_delivered_at_last_high"`
	// Stages split the high ones' latency by their status history.
	Stages map[string]*latencyFigures `json:"stages_ms,omitempty"`
	// Holds and HeldMS: how often and how long the process's priority gate
	// held the lower lanes during the phase (notifyd_priority_holds_total,
	// notifyd_priority_held_seconds_total): what the backlog paid.
	Holds  int64   `json:"holds"`
	HeldMS float64 `json:"held_ms"`
}

// priorityPhase queues backlog low-priority requests where the API puts them
// (notify.ingest.low), in record batches of batchBytes, then sends highs high-priority requests through the
// API, spread over the time the backlog takes to drain, and measures how long
// each took from the API's accept to the provider.
func priorityPhase(ctx context.Context, brokers []string, batchBytes int, client *http.Client, base string, bp *benchProvider, backlog, highs int) (*priorityFigures, error) {
	cl, err := topology.NewProducer(brokers, kgo.ProducerBatchMaxBytes(int32(batchBytes)))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	holds0, held0, err := gateFigures(ctx, client, base)
	if err != nil {
		return nil, err
	}
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
	sent := make([]sentHigh, highs)
	for i := 0; i < highs; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			body := fmt.Sprintf(`{"template":"bench","priority":"high","data":{"orderId":"otp-%d"},"recipients":[{"userId":"user-%d","email":"user-%d@example.com"}]}`, i, i, i)
			sent[i].at = time.Now()
			var out struct {
				Notifications []struct {
					ID string `json:"id"`
				} `json:"notifications"`
			}
			if err := callJSON(ctx, client, "POST", base+"/v1/notifications", body, http.StatusAccepted, &out); err != nil || len(out.Notifications) != 1 {
				errs.Add(1)
				return
			}
			sent[i].id, sent[i].took = out.Notifications[0].ID, time.Since(sent[i].at)
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
	f := &priorityFigures{Backlog: backlog, BatchBytes: batchBytes, High: len(high), Errors: int(errs.Load()), HighLatency: latencies(high),
		DrainedMS: msec(drained), LowDeliveredAtLastHigh: lowAtLastHigh}
	fmt.Printf("\npriority: %d low-priority requests queued on notify.ingest.low in batches of ≤ %d bytes, drained in %v; %d high-priority sent through the API meanwhile (%d errors)\n",
		backlog, batchBytes, drained.Round(time.Millisecond), len(high), f.Errors)
	fmt.Printf("  high: API accept → provider p50 %s  p99 %s  max %s; %d of the backlog delivered when the last high one was\n",
		ms(percentile(high, .5)), ms(percentile(high, .99)), ms(percentile(high, 1)), lowAtLastHigh)
	f.Stages = highStages(ctx, client, base, sent)
	holds1, held1, err := gateFigures(ctx, client, base)
	if err != nil {
		return nil, err
	}
	f.Holds, f.HeldMS = int64(holds1-holds0), (held1-held0)*1000
	fmt.Printf("  the lower lanes held %d times, %.1f s in all (priority.hold, docs/TOPICS.md)\n", f.Holds, f.HeldMS/1000)
	return f, nil
}

// gateFigures reads the priority gate's counters from the process's /metrics
// (0 when the gate is off).
func gateFigures(ctx context.Context, client *http.Client, base string) (holds, heldSeconds float64, err error) {
	req, err := http.NewRequestWithContext(ctx, "GET", base+"/metrics", nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		switch name {
		case "notifyd_priority_holds_total":
			holds, err = strconv.ParseFloat(value, 64)
		case "notifyd_priority_held_seconds_total":
			heldSeconds, err = strconv.ParseFloat(value, 64)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("GET /metrics: %s: %w", name, err)
		}
	}
	return holds, heldSeconds, sc.Err()
}

type sentHigh struct {
	id   string
	at   time.Time
	took time.Duration // the API's answer
}

// highStages reads the status history of each high-priority notification:
// how long it took from the request to the dedup group (accepted), from
// there to the deliver group (queued) and to the provider (sent).
func highStages(ctx context.Context, client *http.Client, base string, sent []sentHigh) map[string]*latencyFigures {
	var request, dedup, deliver, sink []time.Duration
	for _, s := range sent {
		if s.id == "" {
			continue
		}
		request = append(request, s.took)
		var st struct {
			History []struct {
				Status string `json:"status"`
				At     string `json:"at"`
			} `json:"history"`
		}
		if err := callJSON(ctx, client, "GET", base+"/v1/notifications/"+s.id, "", http.StatusOK, &st); err != nil {
			continue
		}
		at := map[string]time.Time{}
		for _, h := range st.History {
			if t, err := time.Parse(time.RFC3339Nano, h.At); err == nil {
				at[h.Status] = t
			}
		}
		a, q, d := at["accepted"], at["queued"], at["sent"]
		if a.IsZero() || q.IsZero() || d.IsZero() {
			continue
		}
		dedup, deliver, sink = append(dedup, a.Sub(s.at)), append(deliver, q.Sub(a)), append(sink, d.Sub(q))
	}
	if len(dedup) == 0 {
		return nil
	}
	fmt.Printf("  high, by stage (p50 / p99): API answer %s / %s · request → dedup %s / %s · dedup → deliver %s / %s · deliver → sent %s / %s\n",
		ms(percentile(request, .5)), ms(percentile(request, .99)), ms(percentile(dedup, .5)), ms(percentile(dedup, .99)), ms(percentile(deliver, .5)), ms(percentile(deliver, .99)),
		ms(percentile(sink, .5)), ms(percentile(sink, .99)))
	return map[string]*latencyFigures{"api_answer": latencies(request), "request_to_dedup": latencies(dedup), "dedup_to_deliver": latencies(deliver), "deliver_to_sent": latencies(sink)}
}

// callJSON is call that decodes the answer into out.
func callJSON(ctx context.Context, client *http.Client, method, url, body string, want int, out any) error {
	return callAsInto(ctx, client, "bench-key-0001", method, url, body, want, out)
}
