package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// `notifyd bench -roles` at a small size, with the notifyd binary built from
// this checkout as its children: the broker, two process, two webhook sinks
// and the api as separate OS processes. Every notification of both phases
// reaches the bench's webhook receiver exactly once, the JSON report says
// so, it has each process's CPU, and no child outlives the bench.
func TestBenchRolesDeliversEachOnceAndReportsCPUPerProcess(t *testing.T) {
	bin := build(t)
	out := filepath.Join(t.TempDir(), "roles.json")
	ctx, cancel := context.WithTimeout(context.Background(), 85*time.Second)
	defer cancel()
	err := runBench(ctx, []string{"-roles", "-roles-bin", bin, "-n", "2000", "-duration", "2s", "-rate", "200",
		"-partitions", "2", "-ceiling=false", "-json", out})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Roles *rolesFigures `json:"roles"`
	}
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	r := rep.Roles
	if r == nil || r.Partitions != 2 || r.Binary != bin {
		t.Fatalf("roles section %s", raw)
	}
	var names []string
	pids := map[string]int{}
	for _, p := range r.Processes {
		names = append(names, p.Name)
		pids[p.Name] = p.PID
	}
	want := []string{"broker", "process-1", "process-2", "sink-1", "sink-2", "api"}
	if !slices.Equal(names, want) {
		t.Fatalf("processes %v, want %v", names, want)
	}

	for _, ph := range []struct {
		name  string
		f     *rolesPhaseFigures
		count int
	}{{"bulk", r.Bulk, 2000}, {"api", r.API, 400}} {
		f := ph.f
		if f == nil {
			t.Fatalf("%s: no figures", ph.name)
		}
		if f.Count != ph.count || f.Accepted != ph.count || f.Duplicates != 0 || f.Unexpected != 0 {
			t.Errorf("%s: count %d, accepted %d, duplicates %d, unexpected %d; want each of %d accepted once",
				ph.name, f.Count, f.Accepted, f.Duplicates, f.Unexpected, ph.count)
		}
		if f.Rate <= 0 || f.Latency == nil || f.Latency.P99 < f.Latency.P50 || f.CPUWindowMS <= 0 {
			t.Errorf("%s: rate %v, latency %+v, CPU window %v ms", ph.name, f.Rate, f.Latency, f.CPUWindowMS)
		}
		cpu := map[string]roleCPU{}
		for _, c := range f.CPU {
			cpu[c.Name] = c
		}
		for _, name := range want {
			c, ok := cpu[name]
			if !ok || c.PID != pids[name] || c.Seconds <= 0 || c.ShareOfPhase <= 0 {
				t.Errorf("%s: CPU of %s %+v (found %v), want positive figures of PID %d", ph.name, name, c, ok, pids[name])
			}
		}
		if len(f.CPU) != len(want)+1 || f.CPU[len(want)].PID != os.Getpid() {
			t.Errorf("%s: CPU rows %+v, want the six processes and the bench's own last", ph.name, f.CPU)
		}
	}
	if r.API.RequestLatency == nil || r.API.TargetRate != 200 {
		t.Errorf("api: request latency %+v, target rate %d", r.API.RequestLatency, r.API.TargetRate)
	}

	// The bench waited for each child it started: none is left.
	for name, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s (PID %d) still exists after the bench: kill -0 says %v", name, pid, err)
		}
	}
}

func TestBenchRolesParseProcStatCPU(t *testing.T) {
	// The command name may hold spaces and parentheses; utime 250 and stime
	// 50 ticks of 10 ms.
	line := "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1000 0 0\n"
	got, err := parseProcStatCPU(line)
	if err != nil || got != 3*time.Second {
		t.Fatalf("parseProcStatCPU = %v, %v; want 3s", got, err)
	}
	if _, err := parseProcStatCPU("1234 (x) S 1 2"); err == nil {
		t.Fatal("a short line parsed")
	}
	self, err := procCPU(os.Getpid())
	if err != nil || self <= 0 {
		t.Fatalf("procCPU(self) = %v, %v", self, err)
	}
}

func TestBenchRolesLogField(t *testing.T) {
	line := `time=2026-01-02T03:04:05.000Z level=INFO msg="notifyd ready" api=127.0.0.1:41234 brokers=[127.0.0.1:9092]`
	if got := logField(line, "api"); got != "127.0.0.1:41234" {
		t.Fatalf("api = %q", got)
	}
	if got := logField(`level=INFO msg="notifyd ready" api="" brokers=[x]`, "api"); got != "" {
		t.Fatalf("api of a role without the API = %q", got)
	}
}
