package sinks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sony/gobreaker/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/webhooktest"
	"github.com/notifyd/notifyd/topology"
)

// countingServer is a loopback endpoint that must never be reached: it
// counts every request, whatever it carries.
func countingServer(t *testing.T) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

// allowOnly is the production guard (every internal address refused) with one
// exception: the loopback receiver at allowed, standing in for a legitimate
// public endpoint.
func allowOnly(t *testing.T, rawURL string) func(netip.AddrPort) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	allowed := netip.MustParseAddrPort(u.Host)
	return func(ap netip.AddrPort) string {
		if ap == allowed {
			return ""
		}
		return internalTarget(ap)
	}
}

// eventsUntil follows notify.events until every id has an event with a status
// in final, and returns every event seen per notification (bounded by env's
// context).
func eventsUntil(t *testing.T, e *sinkEnv, ids []string, final ...string) map[string][]*schemas.StatusEvent {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(string(topology.Events)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	out := map[string][]*schemas.StatusEvent{}
	done := func() bool {
		for _, id := range ids {
			evs := out[id]
			if len(evs) == 0 || !contains2(final, evs[len(evs)-1].Status) {
				return false
			}
		}
		return true
	}
	for !done() {
		if e.ctx.Err() != nil {
			got := map[string][]string{}
			for id, evs := range out {
				for _, ev := range evs {
					got[id] = append(got[id], ev.Status)
				}
			}
			t.Fatalf("not every notification ended %v; statuses %v", final, got)
		}
		ctx, cancel := context.WithTimeout(e.ctx, 500*time.Millisecond)
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			if ev, err := schemas.StatusEventCodec.Decode(r.Value); err == nil {
				out[ev.NotificationID] = append(out[ev.NotificationID], ev)
			}
		})
		cancel()
	}
	return out
}

// A customer webhook pointing at an internal address (cloud metadata, a
// private network, loopback) is refused by the SSRF guard. A burst of such
// notifications, interleaved with notifications to a legitimate endpoint of
// the same provider, through the real sink on a broker: every refused one
// fails after exactly one attempt with a reason naming the refusal, is never
// handed to the next provider of the chain, and is not retried; the breaker
// (set to open after 2 failures) never counts them, so it stays closed and
// every legitimate notification is sent by the first provider on its first
// attempt.
func TestRefusedWebhookTargetsFailAloneAndNeverOpenTheBreaker(t *testing.T) {
	env := newSinkEnv(t)
	legit := webhooktest.Start("s")
	defer legit.Close()
	evil, evilHits := countingServer(t)
	evilPort := evil.Listener.Addr().(*net.TCPAddr).Port

	// The provider under test, with the production setting
	// (allowPrivateTargets off). "evil" is a name that resolves to loopback
	// (checked at dial time, after DNS); the others are literal addresses
	// that are refused before any packet leaves.
	hooksCfg := config.Provider{Name: "hooks", Type: "webhook", Webhook: config.Webhook{Timeout: 5 * time.Second,
		Endpoints: map[string]config.Endpoint{
			"default":  {URL: legit.URL, Secret: "s"},
			"evil":     {URL: fmt.Sprintf("http://localhost:%d/hook", evilPort), Secret: "s"},
			"metadata": {URL: "http://169.254.169.254/latest/meta-data/", Secret: "s"},
			"internal": {URL: "http://10.0.0.1:8080/hook", Secret: "s"},
		}}}
	hooks, err := newWebhookProvider(hooksCfg, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	hooks.(*webhookProvider).guard = allowOnly(t, legit.URL)
	// The next provider of the chain would reach every endpoint (all on
	// loopback here): a refusal handed over to it shows as a hit on evil.
	backup, err := newWebhookProvider(config.Provider{Name: "backup", Type: "webhook", Webhook: config.Webhook{
		AllowPrivateTargets: true, Timeout: 5 * time.Second,
		Endpoints: map[string]config.Endpoint{
			"default": {URL: legit.URL, Secret: "s"}, "evil": {URL: evil.URL, Secret: "s"},
			"metadata": {URL: evil.URL, Secret: "s"}, "internal": {URL: evil.URL, Secret: "s"},
		}}}, Deps{})
	if err != nil {
		t.Fatal(err)
	}

	s := env.sink(hooks, backup)
	s.Opts.Attempts = 3 // quick tries for transient errors; a refusal gets none
	s.Opts.Breaker = config.Breaker{Failures: 2, OpenFor: time.Hour, Probes: 1}
	s.Metrics = NewMetrics(prometheus.NewRegistry())
	s.Log = discardLog()
	env.run(t, s)

	const n = 30
	refusedAt := map[string]string{"evil": "127.0.0.1 (loopback address)", "metadata": "169.254.169.254 (link-local address)",
		"internal": "10.0.0.1 (private address)"}
	names := []string{"evil", "metadata", "internal"}
	var ok, bad []string
	endpointOf := map[string]string{}
	for i := 0; i < n; i++ {
		good, refused := fmt.Sprintf("ok-%d", i), fmt.Sprintf("bad-%d", i)
		ep := names[i%len(names)]
		env.routeTo(t, "webhook", "normal", refused, func(m *schemas.Notification) { m.Address = ep })
		env.routeTo(t, "webhook", "normal", good)
		ok, bad = append(ok, good), append(bad, refused)
		endpointOf[refused] = ep
	}
	events := eventsUntil(t, env, append(append([]string(nil), ok...), bad...), processors.StatusSent, processors.StatusFailed)

	for _, id := range bad {
		evs := events[id]
		if len(evs) != 1 || evs[0].Status != processors.StatusFailed {
			t.Errorf("%s: want exactly one failed event, got %s", id, describeEvents(evs))
			continue
		}
		ev := evs[0]
		want := "target refused, not sent: webhook " + endpointOf[id] + ": " + ErrPrivateTarget.Error() + " " + refusedAt[endpointOf[id]]
		if !strings.HasPrefix(ev.Reason, want) {
			t.Errorf("%s: reason %q, want it to start with %q", id, ev.Reason, want)
		}
		if ev.Attempt != 1 || ev.Provider != "hooks" {
			t.Errorf("%s: attempt %d by %q, want attempt 1 by hooks", id, ev.Attempt, ev.Provider)
		}
	}
	for _, id := range ok {
		evs := events[id]
		if len(evs) != 1 || evs[0].Status != processors.StatusSent || evs[0].Attempt != 1 || evs[0].Provider != "hooks" {
			t.Errorf("%s: want one sent event, attempt 1, by hooks; got %s", id, describeEvents(evs))
		}
	}
	if got := distinct(legit.Deliveries()); len(got) != n {
		t.Errorf("the legitimate endpoint got %d distinct notifications, want %d", len(got), n)
	}
	if h := evilHits.Load(); h != 0 {
		t.Errorf("refused targets were reached %d times (through the next provider)", h)
	}

	// Neither breaker counted a refusal, and nothing looks like an outage.
	m := s.Metrics
	for _, name := range []string{"hooks", "channel:webhook"} {
		if v := testutil.ToFloat64(m.breaker.WithLabelValues("webhook", name)); v != breakerClosed {
			t.Errorf("breaker %s state %v, want closed", name, v)
		}
	}
	if c := testutil.CollectAndCount(m.transitions); c != 0 {
		t.Errorf("%d breaker transitions, want none", c)
	}
	counts := s.lanes[0].breaker.Counts()
	if counts.TotalFailures != 0 || counts.TotalExclusions != n || counts.TotalSuccesses != n {
		t.Errorf("hooks breaker counted %+v; want %d successes, %d exclusions (the refusals), no failure", counts, n, n)
	}
	if st := s.lanes[0].breaker.State(); st != gobreaker.StateClosed {
		t.Errorf("hooks breaker %s", st)
	}
	if c := testutil.CollectAndCount(m.retries); c != 0 {
		t.Errorf("%d retry series, want none", c)
	}
	if c := testutil.CollectAndCount(m.exhausted); c != 0 {
		t.Errorf("%d exhausted series, want none", c)
	}
	if v := testutil.ToFloat64(m.outcomes.WithLabelValues("webhook", "hooks", processors.StatusFailed)); v != n {
		t.Errorf("hooks failed %v notifications, want %d (the refused ones, once each)", v, n)
	}
	if v := testutil.ToFloat64(m.outcomes.WithLabelValues("webhook", "hooks", "sent")); v != n {
		t.Errorf("hooks sent %v notifications, want %d", v, n)
	}
	if c := testutil.CollectAndCount(m.outcomes); c != 2 {
		t.Errorf("%d outcome series, want 2 (hooks sent, hooks failed): backup must never be used", c)
	}
	// Dead letters: one per refused notification, as for any permanent failure.
	if v := testutil.ToFloat64(m.deadLetters.WithLabelValues("webhook")); v != n {
		t.Fatalf("%v dead letters, want %d", v, n)
	}
	for _, dl := range env.deadLetters(t, n) {
		if !strings.HasPrefix(dl.NotificationID, "bad-") || !strings.Contains(dl.Reason, "target refused") {
			t.Errorf("dead letter of %s: reason %q", dl.NotificationID, dl.Reason)
		}
	}
}

// The breaker of a provider neither opens nor forgets an outage because of
// refused targets: refusals between real failures do not reset the count of
// failures in a row, and refusals alone count as nothing.
func TestRefusedTargetsDoNotCountInTheBreaker(t *testing.T) {
	evil, hits := countingServer(t)
	p := newTestWebhook(t, evil.URL, "s", false) // evil listens on 127.0.0.1
	n := &schemas.Notification{ID: "n", Channel: "webhook", Address: "default"}
	refused := func() (string, error) { return p.Send(context.Background(), n) }
	outage := func() (string, error) { return "", errors.New("webhook default: HTTP 503") }

	br := newBreaker("webhook", "hooks", config.Breaker{Failures: 3, OpenFor: time.Hour, Probes: 1}, nil, discardLog())
	for i := 0; i < 50; i++ {
		if _, err := br.Execute(refused); !IsRefusedTarget(err) || !errors.Is(err, ErrPrivateTarget) || !IsPermanent(err) {
			t.Fatalf("want a permanent refused target, got %v", err)
		}
	}
	if c := br.Counts(); br.State() != gobreaker.StateClosed || c.TotalFailures != 0 || c.TotalSuccesses != 0 || c.TotalExclusions != 50 {
		t.Fatalf("after 50 refusals: %s, %+v; want closed with 50 exclusions only", br.State(), c)
	}

	br = newBreaker("webhook", "hooks", config.Breaker{Failures: 3, OpenFor: time.Hour, Probes: 1}, nil, discardLog())
	for i := 0; i < 3; i++ {
		_, _ = br.Execute(outage)
		for j := 0; j < 5; j++ {
			_, _ = br.Execute(refused)
		}
	}
	if br.State() != gobreaker.StateOpen {
		t.Fatalf("3 failures in a row (refusals between them) left the breaker %s: %+v", br.State(), br.Counts())
	}
	if h := hits.Load(); h != 0 {
		t.Fatalf("the refused target was reached %d times", h)
	}
}

func describeEvents(evs []*schemas.StatusEvent) string {
	var parts []string
	for _, ev := range evs {
		parts = append(parts, fmt.Sprintf("%s(attempt %d, %s: %s)", ev.Status, ev.Attempt, ev.Provider, ev.Reason))
	}
	return "[" + strings.Join(parts, " ") + "]"
}
