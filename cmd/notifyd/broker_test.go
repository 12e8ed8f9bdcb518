package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/topology"
)

// syncBuffer collects a child's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startBroker starts `notifyd broker args…` and waits for its ready line.
func startBroker(t *testing.T, bin string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"broker"}, args...)...)
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("notifyd broker stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stdout.String(), "broker listening on ") {
		if time.Now().After(deadline) {
			t.Fatal("notifyd broker did not say it listens within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cmd
}

// stopBroker sends SIGTERM and wants a clean exit.
func stopBroker(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("notifyd broker exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("notifyd broker did not stop within 30s of SIGTERM")
	}
}

// topicRecords reads every record topic holds now.
func topicRecords(t *testing.T, brokers []string, topic string) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		t.Fatalf("end offsets of %s: %v", topic, err)
	}
	var want int64
	ends.Each(func(o kadm.ListedOffset) { want += o.Offset }) // nothing here deletes records
	var got []*kgo.Record
	for int64(len(got)) < want {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %s: %d of %d records", topic, len(got), want)
		}
		fetches.EachRecord(func(r *kgo.Record) { got = append(got, r) })
	}
	return got
}

// The broker role alone: any Kafka client produces and consumes through it,
// it has every topic, stops cleanly on SIGTERM and keeps its records across a
// restart on the same data directory.
func TestBrokerCommandServesEveryTopicAndKeepsRecordsAcrossRestarts(t *testing.T) {
	bin := build(t)
	dataDir := t.TempDir()
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	brokers := []string{addr}
	args := []string{"--data-dir", dataDir, "--port", strconv.Itoa(port), "--partitions", "2"}

	b := startBroker(t, bin, args...)
	producer, err := topology.NewProducer(brokers)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := producer.ProduceSync(ctx, &kgo.Record{Topic: string(topology.Ingest), Key: []byte("evt-1"), Value: []byte("request 1")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	producer.Close()
	if got := topicRecords(t, brokers, string(topology.Ingest)); len(got) != 1 || string(got[0].Value) != "request 1" {
		t.Fatalf("notify.ingest holds %d records, want the one produced", len(got))
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	topics, err := kadm.NewClient(cl).ListTopics(ctx)
	cl.Close()
	if err != nil {
		t.Fatal(err)
	}
	want := append(topology.Topics(), topology.RetryTopics(config.Default().Sink.Retry.Tiers)...)
	for _, tp := range want {
		d, ok := topics[tp.Name]
		if !ok {
			t.Errorf("topic %s missing", tp.Name)
		} else if len(d.Partitions) != 2 {
			t.Errorf("topic %s has %d partitions, want 2 (--partitions)", tp.Name, len(d.Partitions))
		}
	}
	stopBroker(t, b)

	b = startBroker(t, bin, args...)
	got := topicRecords(t, brokers, string(topology.Ingest))
	if len(got) != 1 || string(got[0].Key) != "evt-1" || string(got[0].Value) != "request 1" {
		t.Fatalf("after the restart notify.ingest holds %d records, want the one produced before", len(got))
	}
	stopBroker(t, b)

	// The same data with another partition count is refused, not silently mixed.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel2()
	out, err := exec.CommandContext(ctx2, bin, "broker", "--data-dir", dataDir, "--port", strconv.Itoa(port), "--partitions", "3").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !bytes.Contains(out, []byte("do not match kafka.partitions")) {
		t.Fatalf("broker with --partitions 3 on a 2-partition data dir: %v, output %s", err, out)
	}
}

func TestBrokerCommandRejectsBadInvocations(t *testing.T) {
	bin := build(t)
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		say  string
	}{
		{[]string{"--port", "notanumber"}, `invalid value "notanumber" for flag -port`},
		{[]string{"--port", "70000"}, "--port must be 0 (any free port) to 65535"},
		{[]string{"--partitions", "0"}, "--partitions must be >= 1"},
		{[]string{"--brokers", "127.0.0.1:9092"}, "--brokers does not apply"},
	} {
		args := append([]string{"broker", "--data-dir", dir}, c.args...)
		out, err := exec.Command(bin, args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code == 0 || !bytes.Contains(out, []byte(c.say)) {
			t.Errorf("notifyd %v: exit %d, output %q (want non-zero and %q)", args, code, out, c.say)
		}
	}
	out, _ := exec.Command(bin, "help").CombinedOutput()
	for _, cmd := range []string{"\n  broker ", "\n  dlq list|replay "} {
		if !bytes.Contains(out, []byte(cmd)) {
			t.Errorf("usage does not list %q:\n%s", strings.TrimSpace(cmd), out)
		}
	}
}
