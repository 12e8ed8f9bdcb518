package service_test

import (
	"fmt"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/notifyd/notifyd/api"
)

// BenchmarkInboxStreams measures how soon a message reaches a browser-like
// SSE client with 1,000 clients connected to one all-in-one instance: each
// op sends one request to 100 of the users and waits until each of their
// streams has the message; the latency is from the request to the event.
//
//	go test -run '^$' -bench InboxStreams -benchtime 20x ./service/
func BenchmarkInboxStreams(b *testing.B) {
	const clients, perOp = 1000, 100
	h := newHarness(b)
	withInbox(&h.cfg)
	h.cfg.Inbox.Heartbeat = 15 * time.Second
	h.cfg.Limits.DefaultPerDay = 0
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/inbox-welcome", inboxTemplate())
	streams := make([]*sseClient, clients)
	for i := range streams {
		user := fmt.Sprintf("sse-%d", i)
		streams[i] = openStream(b, h.base, user, api.InboxToken([]byte(h.cfg.Inbox.Secret), user), "")
		if ev := streams[i].next(b); ev.Event != "count" {
			b.Fatalf("first event %+v", ev)
		}
	}
	var mu sync.Mutex
	var lat []time.Duration
	b.ResetTimer()
	for op := 0; op < b.N; op++ {
		var recipients []any
		first := (op * perOp) % clients
		for i := first; i < first+perOp; i++ {
			recipients = append(recipients, map[string]any{"userId": fmt.Sprintf("sse-%d", i)})
		}
		start := time.Now()
		h.mustCall(http.StatusAccepted, "POST", "/v1/notifications", map[string]any{"template": "inbox-welcome",
			"data": map[string]any{"name": "Ann", "orderId": op}, "recipients": recipients})
		var wg sync.WaitGroup
		for i := first; i < first+perOp; i++ {
			wg.Add(1)
			go func(s *sseClient) {
				defer wg.Done()
				for {
					ev := s.next(b)
					if ev.Event == "message" {
						d := time.Since(start)
						mu.Lock()
						lat = append(lat, d)
						mu.Unlock()
						return
					}
				}
			}(streams[i])
		}
		wg.Wait()
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(clients), "clients")
}
