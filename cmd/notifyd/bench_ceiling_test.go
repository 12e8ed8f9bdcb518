package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/notifyd/notifyd/service"
	"github.com/notifyd/notifyd/topology"
)

// ceilingBroker is the bench's kind of broker (kfake with a data dir) on loopback.
func ceilingBroker(t *testing.T) []string {
	t.Helper()
	cluster, err := service.StartBroker(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	return cluster.ListenAddrs()
}

func recordsOn(t *testing.T, ctx context.Context, brokers []string, topic string) int64 {
	t.Helper()
	cl, err := topology.NewClient(brokers)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	n, err := endOffsets(ctx, kadm.NewClient(cl), topic)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestCeilingRawBrokerPassesEveryRecordThrough(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	brokers := ceilingBroker(t)
	got, err := measureBroker(ctx, brokers, 2, 1, 2000)
	if err != nil {
		t.Fatal(err)
	}
	if got.Count != 2000 || got.Rate <= 0 || got.DurationMS <= 0 {
		t.Fatalf("raw broker figures %+v, want 2000 records at a positive rate", got)
	}
	if n := recordsOn(t, ctx, brokers, ceilingRawTopic); n != 2000 {
		t.Fatalf("%s holds %d records, want 2000", ceilingRawTopic, n)
	}
}

// The hop reads each key's value and writes the next: after 2,000 messages
// over 200 keys, each key's value names its last message and counts ten, and
// the output holds one record per message.
func TestCeilingGokaHopUpdatesItsTableAndEmitsOncePerMessage(t *testing.T) {
	for _, storage := range []string{"leveldb", "memory"} {
		t.Run(storage, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			const n, keys = 2000, 200
			brokers := ceilingBroker(t)
			kafka := topology.Kafka{Brokers: brokers, Replication: 1, FlushEvery: 2 * time.Millisecond}
			if storage == "leveldb" {
				kafka.StorageDir = t.TempDir()
			}
			inspect := func(p *goka.Processor) error {
				for k := 0; k < keys; k++ {
					v, err := p.Get(benchHopKey(k))
					if err != nil {
						return err
					}
					seq, count := topology.BenchHopState(v)
					if want := uint64(n - keys + k); seq != want || count != n/keys {
						return fmt.Errorf("%s: last message %d after %d, want %d after %d", benchHopKey(k), seq, count, want, n/keys)
					}
				}
				return nil
			}
			got, err := measureHop(ctx, kafka, 2, n, keys, inspect)
			if err != nil {
				t.Fatal(err)
			}
			if got.Count != n || got.Keys != keys || got.Rate <= 0 || got.DurationMS <= 0 {
				t.Fatalf("hop figures %+v, want %d messages over %d keys at a positive rate", got, n, keys)
			}
			if out := recordsOn(t, ctx, brokers, string(topology.BenchHopOutput)); out != n {
				t.Fatalf("%s holds %d records, want %d", topology.BenchHopOutput, out, n)
			}
			if storage == "leveldb" {
				if _, err := os.Stat(filepath.Join(kafka.StorageDir, "processor-"+string(topology.BenchHopGroup))); err != nil {
					t.Fatalf("the hop's table is not under the storage dir: %v", err)
				}
			}
		})
	}
}

// A short bench run with -json: the file holds every phase's figures, and
// each ratio is its rate over the bare hop's.
func TestBenchJSONHoldsEveryFigure(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	path := filepath.Join(t.TempDir(), "bench.json")
	err := runBench(ctx, []string{"-n", "400", "-paced-rate", "200", "-rate", "200", "-duration", "1s", "-partitions", "2",
		"-ceiling-n", "2000", "-ceiling-hop-n", "2000", "-json", path, "-cpuprofile-paced", path + ".paced.prof"})
	if err != nil {
		t.Fatal(err)
	}
	// A CPU profile is a gzip-compressed protocol buffer.
	if b, err := os.ReadFile(path + ".paced.prof"); err != nil || len(b) < 64 || b[0] != 0x1f || b[1] != 0x8b {
		t.Errorf("the paced phase's CPU profile: %v, %d bytes", err, len(b))
	}
	r, _ := readBenchReport(t, path)
	if r.Build.GoVersion == "" || r.Build.GOMAXPROCS < 1 || r.Flags["n"] != "400" || r.Flags["partitions"] != "2" {
		t.Errorf("build %+v, flags %v", r.Build, r.Flags)
	}
	c := r.Ceiling
	if c == nil || c.RawBroker.Count != 2000 || c.RawBroker.Rate <= 0 || c.GokaHop.Count != 2000 || c.GokaHop.Rate <= 0 ||
		c.GokaHop.Keys != 2000 || c.Partitions != 2 || c.GokaState != "disk" {
		t.Fatalf("ceiling %+v", c)
	}
	for name, tc := range map[string]struct {
		p     *phaseFigures
		count int
	}{"bulk": {r.Phases.Bulk, 400}, "paced": {r.Phases.Paced, 200}, "api": {r.Phases.API, 200}} {
		p := tc.p
		if p == nil {
			t.Errorf("%s: missing", name)
			continue
		}
		if p.Count != tc.count || p.Errors != 0 || p.DurationMS <= 0 || p.Latency == nil {
			t.Errorf("%s: %+v, want count %d, no errors, a duration and latencies", name, p, tc.count)
			continue
		}
		if want := float64(p.Count) / (p.DurationMS / 1000); math.Abs(p.Rate-want) > want*1e-3 {
			t.Errorf("%s: rate %f, want count / duration = %f", name, p.Rate, want)
		}
		if p.RatioToHop == nil || math.Abs(*p.RatioToHop-p.Rate/c.GokaHop.Rate) > 1e-9 {
			t.Errorf("%s: ratio to hop %v, want %f", name, p.RatioToHop, p.Rate/c.GokaHop.Rate)
		}
		if l := p.Latency; !(l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.Max && l.Max > 0) {
			t.Errorf("%s: latencies %+v out of order", name, l)
		}
	}
	// The bulk's work ends when the status group recorded its last events,
	// after the last delivery.
	if b := r.Phases.Bulk; b != nil && b.SettledMS < b.DurationMS {
		t.Errorf("bulk: the status group caught up %.1f ms after the first produce, before the last delivery (%.1f ms)", b.SettledMS, b.DurationMS)
	}
	if api := r.Phases.API; api != nil && (api.RequestLatency == nil || api.TargetRate != 200) {
		t.Errorf("api: %+v, want request latencies and target rate 200", api)
	}
	if r.Phases.Campaign != nil {
		t.Errorf("campaign figures without -campaign: %+v", r.Phases.Campaign)
	}
}

// A phase profile that cannot be written is refused before the bench starts
// anything (the ceiling would take seconds, the bulk minutes).
func TestBenchRefusesAnUnwritableProfileAtOnce(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-dir", "p.prof")
	for _, flag := range []string{"-cpuprofile-paced", "-cpuprofile-api"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := runBench(ctx, []string{flag, missing})
		cancel()
		if err == nil || !strings.Contains(err.Error(), "CPU profile") || !strings.Contains(err.Error(), "no-such-dir") {
			t.Fatalf("%s %s: %v, want the profile's error before anything ran", flag, missing, err)
		}
	}
}

// A batch size franz-go cannot use is refused before the bench starts anything.
func TestBenchRefusesABadPriorityBatchSize(t *testing.T) {
	for _, v := range []string{"0", "-5", "100", "999999999"} {
		err := runBench(context.Background(), []string{"-priority-batch-bytes", v, "-ceiling=false"})
		if err == nil || !strings.Contains(err.Error(), "-priority-batch-bytes must be between 1024 and 16777216") {
			t.Fatalf("-priority-batch-bytes %s: %v", v, err)
		}
	}
	if err := runBench(context.Background(), []string{"-priority-batch-bytes", "x"}); err == nil {
		t.Fatal("-priority-batch-bytes x was accepted")
	}
}

// The outage phase: the provider refuses every call for a while, and the
// bench reports what it accepted before, at its return and after, up to
// every notification, each counted once.
func TestBenchOutagePhaseReportsEveryParkedNotificationArriving(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	path := filepath.Join(t.TempDir(), "bench.json")
	err := runBench(ctx, []string{"-n", "200", "-paced-rate", "100", "-rate", "100", "-duration", "1s", "-partitions", "2",
		"-ceiling=false", "-outage", "2s", "-outage-n", "100", "-outage-rate", "50", "-outage-wait", "3m", "-json", path})
	if err != nil {
		t.Fatal(err)
	}
	r, b := readBenchReport(t, path)
	o := r.Phases.Outage
	if o == nil {
		t.Fatalf("no outage figures in %s", b)
	}
	t.Logf("outage figures %+v", *o)
	if o.N != 100 || o.Rate != 50 || o.OutageMS != 2000 {
		t.Errorf("figures %+v, want n 100 at 50/s for 2000 ms", *o)
	}
	if o.Refused == 0 || o.DeliveredAtReturn >= 100 {
		t.Errorf("the provider refused %d calls and had %d of 100 at its return: it was not down", o.Refused, o.DeliveredAtReturn)
	}
	if o.AllDeliveredMS < 0 {
		t.Fatalf("not every notification arrived after the outage: %+v", *o)
	}
	if !(o.DeliveredBefore <= o.DeliveredAtReturn && o.DeliveredAtReturn <= o.DeliveredAfter30s &&
		o.DeliveredAfter30s <= o.DeliveredAfter60s && o.DeliveredAfter60s == 100) {
		t.Errorf("delivered counts out of order or not all: %+v", *o)
	}
}

func TestBenchRefusesABadOutage(t *testing.T) {
	for _, args := range [][]string{{"-outage", "-1s"}, {"-outage", "5s", "-outage-n", "4"}, {"-outage", "5s", "-outage-rate", "0"}} {
		err := runBench(context.Background(), append([]string{"-ceiling=false"}, args...))
		if err == nil || !strings.Contains(err.Error(), "-outage") {
			t.Errorf("%v: %v, want the outage flags refused before the bench starts", args, err)
		}
	}
}

// readBenchReport reads what -json wrote, and its bytes.
func readBenchReport(t *testing.T, path string) (benchReport, []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r benchReport
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r, b
}

// The priority phase sends high-priority requests through the API while a
// low-priority backlog drains, and reports their latency, their stages and
// what the priority gate held the backlog for.
func TestBenchPriorityPhaseReportsTheHighOnesAndTheHolds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	path := filepath.Join(t.TempDir(), "bench.json")
	err := runBench(ctx, []string{"-n", "200", "-paced-rate", "100", "-rate", "100", "-duration", "1s", "-partitions", "2",
		"-ceiling=false", "-priority-backlog", "3000", "-priority-high", "5", "-json", path})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := readBenchReport(t, path)
	p := r.Phases.Priority
	if p == nil {
		t.Fatal("no priority figures")
	}
	if p.Backlog != 3000 || p.High != 5 || p.Errors != 0 || p.HighLatency == nil || p.HighLatency.Max <= 0 || p.DrainedMS <= 0 {
		t.Fatalf("priority figures %+v", p)
	}
	if p.Holds < 1 || p.HeldMS <= 0 {
		t.Errorf("the gate held %d times for %.1f ms while 5 high-priority requests passed", p.Holds, p.HeldMS)
	}
	if p.LowDeliveredAtLastHigh > int64(p.Backlog) {
		t.Errorf("%d of a backlog of %d delivered before the last high one", p.LowDeliveredAtLastHigh, p.Backlog)
	}
}
