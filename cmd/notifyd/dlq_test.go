package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

type dlqEnv struct {
	t        *testing.T
	ctx      context.Context
	brokers  []string
	producer *kgo.Client
}

func newDLQEnv(t *testing.T) *dlqEnv {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := topology.CreateTopics(ctx, c.ListenAddrs(), 2, 1); err != nil {
		t.Fatal(err)
	}
	producer, err := topology.NewProducer(c.ListenAddrs())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(producer.Close)
	return &dlqEnv{t: t, ctx: ctx, brokers: c.ListenAddrs(), producer: producer}
}

// deadLetter writes a record to notify.dlq and returns where it is.
func (e *dlqEnv) deadLetter(key, value []byte) dlqRef {
	e.t.Helper()
	r, err := e.producer.ProduceSync(e.ctx, &kgo.Record{Topic: string(topology.DLQ), Key: key, Value: value}).First()
	if err != nil {
		e.t.Fatal(err)
	}
	return dlqRef{r.Partition, r.Offset}
}

func (e *dlqEnv) encoded(dl *schemas.DeadLetter) dlqRef {
	e.t.Helper()
	b, err := schemas.DeadLetterCodec.Encode(dl)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.deadLetter(dl.Key, b)
}

// run is `notifyd dlq args… --brokers <the test broker>`.
func (e *dlqEnv) run(args ...string) (string, error) {
	var out bytes.Buffer
	full := append([]string{args[0], "--brokers", strings.Join(e.brokers, ",")}, args[1:]...)
	err := runDLQ(e.ctx, full, &out)
	return out.String(), err
}

func (e *dlqEnv) mustRun(args ...string) string {
	e.t.Helper()
	out, err := e.run(args...)
	if err != nil {
		e.t.Fatalf("dlq %v: %v\n%s", args, err, out)
	}
	return out
}

// line is the line of a list table about the dead letter at ref.
func line(out string, ref dlqRef) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, ref.String()+" ") {
			return l
		}
	}
	return ""
}

func wantAll(t *testing.T, what, s string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(s, p) {
			t.Errorf("%s: want %q in\n%s", what, p, s)
		}
	}
}

func TestDLQListAndReplayEachDeadLetterOnce(t *testing.T) {
	e := newDLQEnv(t)
	now := time.Now()
	target := string(topology.Out("webhook", "normal"))
	notification, err := schemas.NotificationCodec.Encode(&schemas.Notification{ID: "n-good", UserID: "u1",
		Channel: "webhook", Priority: "normal", Template: "hook"})
	if err != nil {
		t.Fatal(err)
	}
	// A sink's dead letter of a notification a provider refused for good,
	// written before DeadLetter.NotificationID existed: list names the
	// notification from the kept record.
	good := e.encoded(&schemas.DeadLetter{Topic: target, Partition: 1, Offset: 7, Key: []byte("n-good"), Value: notification,
		Reason: "provider hook: 410 Gone\n<html>gone for good</html>", Stage: "sink.webhook", At: now.UnixMilli()})
	garbage := e.deadLetter([]byte("u2"), []byte("not a dead letter"))
	truncated := e.encoded(&schemas.DeadLetter{Topic: string(topology.Accepted), Partition: 0, Offset: 3, Key: []byte("u3"),
		Value: notification[:16], Reason: "record of 2000000 bytes exceeds 983040", Stage: "deliver", At: now.UnixMilli(),
		NotificationID: "n-trunc", Truncated: true})
	old := e.encoded(&schemas.DeadLetter{Topic: string(topology.Ledger), Partition: 1, Offset: 9, Key: []byte("n-old/email"),
		Value: []byte{1, 2}, Reason: "bad ledger entry", Stage: "ledger", At: now.Add(-2 * time.Hour).UnixMilli(), NotificationID: "n-old"})

	t.Run("list", func(t *testing.T) {
		out := e.mustRun("list")
		wantAll(t, "good", line(out, good), "sink.webhook", target+"/1@7", "n-good", stateReplayable, "provider hook: 410 Gone …")
		if strings.Contains(out, "<html>") {
			t.Errorf("the reason is not cut to its first line:\n%s", out)
		}
		wantAll(t, "garbage", line(out, garbage), stateUndecodable, "decode notifyd.DeadLetter")
		wantAll(t, "truncated", line(out, truncated), "deliver", "notify.accepted/0@3", "n-trunc", stateTruncated)
		wantAll(t, "not an input", line(out, old), "ledger", "n-old", stateNotInput)
		wantAll(t, "summary", out, "4 dead letters: 1 replayable, 0 replayed, 3 cannot be replayed (1 truncated, 1 not from a notifyd input, 1 undecodable)")

		states := map[dlqRef]string{}
		for _, l := range strings.Split(strings.TrimSpace(e.mustRun("list", "--format", "json")), "\n") {
			var row letterRow
			if err := json.Unmarshal([]byte(l), &row); err != nil {
				t.Fatalf("json line %q: %v", l, err)
			}
			states[dlqRef{row.DLQPartition, row.DLQOffset}] = row.State
			if row.DLQOffset == good.Offset && row.DLQPartition == good.Partition &&
				(row.Source == nil || row.Source.Topic != target || row.NotificationID != "n-good" || !strings.Contains(row.Reason, "<html>")) {
				t.Errorf("json row of the good dead letter: %+v", row)
			}
		}
		want := map[dlqRef]string{good: stateReplayable, garbage: stateUndecodable, truncated: stateTruncated, old: stateNotInput}
		if len(states) != len(want) {
			t.Errorf("json states %v, want %v", states, want)
		}
		for ref, st := range want {
			if states[ref] != st {
				t.Errorf("json state of %s: %q, want %q", ref, states[ref], st)
			}
		}
	})

	t.Run("filters", func(t *testing.T) {
		for _, c := range []struct {
			args []string
			want []dlqRef
		}{
			{[]string{"--stage", "sink.webhook"}, []dlqRef{good}},
			{[]string{"--stage", "sink.*"}, []dlqRef{good}},
			{[]string{"--topic", "notify.out.*"}, []dlqRef{good}},
			{[]string{"--topic", "notify.accepted"}, []dlqRef{truncated}},
			{[]string{"--id", "n-good"}, []dlqRef{good}},
			{[]string{"--since", "1h"}, []dlqRef{good, garbage, truncated}},
			{[]string{"--offset", garbage.String()}, []dlqRef{garbage}},
			{[]string{"--offset", good.String() + "," + old.String()}, []dlqRef{good, old}},
			{[]string{"--stage", "deliver", "--id", "n-good"}, nil},
		} {
			out := e.mustRun(append([]string{"list"}, c.args...)...)
			for _, ref := range []dlqRef{good, garbage, truncated, old} {
				listed := line(out, ref) != ""
				wanted := false
				for _, w := range c.want {
					wanted = wanted || w == ref
				}
				if listed != wanted {
					t.Errorf("list %v: %s listed %v, want %v\n%s", c.args, ref, listed, wanted, out)
				}
			}
			if c.want == nil && !strings.Contains(out, "no dead letters") {
				t.Errorf("list %v: %s", c.args, out)
			}
		}
	})

	t.Run("dry run produces nothing", func(t *testing.T) {
		out := e.mustRun("replay", "--dry-run")
		wantAll(t, "dry run", out, "would replay "+good.String()+" n-good → "+target,
			"dry run: would replay 1, skipped 0 (already replayed), refused 3")
		if n := len(topicRecords(t, e.brokers, target)); n != 0 {
			t.Fatalf("dry run produced %d records to %s", n, target)
		}
		if n := len(topicRecords(t, e.brokers, string(topology.DLQReplays))); n != 0 {
			t.Fatalf("dry run noted %d replays", n)
		}
	})

	t.Run("replay re-injects the good one once", func(t *testing.T) {
		out := e.mustRun("replay")
		wantAll(t, "replay", out,
			"replayed "+good.String()+" n-good → "+target+"/",
			"refused "+truncated.String()+" n-trunc: truncated",
			"refused "+garbage.String()+" -: the dead letter does not decode",
			"refused "+old.String()+" n-old: notify.ledger is not a topic notifyd consumes",
			"replayed 1, skipped 0 (already replayed), refused 3")
		got := topicRecords(t, e.brokers, target)
		if len(got) != 1 || string(got[0].Key) != "n-good" || !bytes.Equal(got[0].Value, notification) {
			t.Fatalf("%s holds %d records, want the one replayed with its key and value", target, len(got))
		}
		if want := topology.PartitionFor("n-good", 2); got[0].Partition != want {
			t.Errorf("replayed to partition %d, goka reads n-good from %d", got[0].Partition, want)
		}
		notes := topicRecords(t, e.brokers, string(topology.DLQReplays))
		if len(notes) != 1 || string(notes[0].Key) != good.replayKey() {
			t.Fatalf("want one replay note keyed %s, got %d", good.replayKey(), len(notes))
		}
		var note replayNote
		if err := json.Unmarshal(notes[0].Value, &note); err != nil || note.Topic != target ||
			note.Partition != got[0].Partition || note.Offset != got[0].Offset || note.NotificationID != "n-good" {
			t.Fatalf("replay note %s: %v", notes[0].Value, err)
		}

		out = e.mustRun("replay")
		wantAll(t, "second replay", out, "skipped "+good.String()+" n-good: already replayed",
			"replayed 0, skipped 1 (already replayed), refused 3")
		if n := len(topicRecords(t, e.brokers, target)); n != 1 {
			t.Fatalf("a second replay re-injected again: %d records", n)
		}
		wantAll(t, "list after replay", line(e.mustRun("list"), good), stateReplayed)

		out = e.mustRun("replay", "--force", "--offset", good.String())
		wantAll(t, "forced replay", out, "replayed 1, skipped 0 (already replayed), refused 0")
		got = topicRecords(t, e.brokers, target)
		if len(got) != 2 || string(got[1].Key) != "n-good" || !bytes.Equal(got[1].Value, notification) {
			t.Fatalf("--force: %s holds %d records, want the replayed one twice", target, len(got))
		}
	})

	t.Run("replay selects by offset and filter", func(t *testing.T) {
		request := e.encoded(&schemas.DeadLetter{Topic: string(topology.Ingest), Partition: 0, Offset: 5, Key: []byte("evt-9"),
			Value: []byte("request bytes"), Reason: "dedup table unavailable", Stage: "dedup", At: time.Now().UnixMilli()})
		out := e.mustRun("replay", "--stage", "sink.*")
		wantAll(t, "--stage sink.*", out, "replayed 0, skipped 1 (already replayed), refused 0")
		if n := len(topicRecords(t, e.brokers, string(topology.Ingest))); n != 0 {
			t.Fatalf("--stage sink.* replayed %d records to notify.ingest", n)
		}
		out = e.mustRun("replay", "--offset", request.String())
		wantAll(t, "--offset", out, "replayed 1, skipped 0 (already replayed), refused 0")
		got := topicRecords(t, e.brokers, string(topology.Ingest))
		if len(got) != 1 || string(got[0].Key) != "evt-9" || string(got[0].Value) != "request bytes" {
			t.Fatalf("notify.ingest holds %d records, want the replayed request", len(got))
		}
	})
}

func TestDLQCommandRejectsBadFlags(t *testing.T) {
	e := newDLQEnv(t)
	for _, c := range []struct {
		args []string
		say  string
	}{
		{[]string{"list", "--offset", "x"}, `want PARTITION:OFFSET of a notify.dlq record, as dlq list prints it (e.g. 0:42), got "x"`},
		{[]string{"replay", "--offset", "1"}, "want PARTITION:OFFSET"},
		{[]string{"replay", "--offset", "0:-4"}, "want PARTITION:OFFSET"},
		{[]string{"list", "--since", "soon"}, `invalid value "soon" for flag -since`},
		{[]string{"list", "--since", "-1h"}, "--since must be positive"},
		{[]string{"list", "--format", "xml"}, "--format must be table or json"},
		{[]string{"list", "--topic", "notify.out.[x"}, "--topic"},
		{[]string{"replay", "--stage", "sink.[x"}, "--stage"},
		{[]string{"replay", "--format", "json"}, "flag provided but not defined: -format"},
	} {
		if _, err := e.run(c.args...); err == nil || !strings.Contains(err.Error(), c.say) {
			t.Errorf("dlq %v: error %v, want it to say %q", c.args, err, c.say)
		}
	}
	t.Setenv("NOTIFYD_KAFKA_BROKERS", "")
	if err := runDLQ(e.ctx, []string{"list"}, new(bytes.Buffer)); err == nil || !strings.Contains(err.Error(), "--brokers (or kafka.brokers) is required") {
		t.Errorf("no brokers: %v", err)
	}
	for _, args := range [][]string{nil, {"--stage", "sink"}, {"purge"}} {
		if err := runDLQ(e.ctx, args, new(bytes.Buffer)); !errors.As(err, new(usageError)) || !strings.Contains(err.Error(), "usage: notifyd dlq") {
			t.Errorf("dlq %v: %v, want the usage", args, err)
		}
	}

	bin := build(t)
	for _, c := range []struct {
		args []string
		code int
		say  string
	}{
		{[]string{"dlq"}, 2, "usage: notifyd dlq <list|replay>"},
		{[]string{"dlq", "purge"}, 2, `unknown command "purge"`},
		{[]string{"dlq", "replay", "--brokers", "127.0.0.1:1", "--offset", "x"}, 1, "want PARTITION:OFFSET"},
	} {
		out, err := exec.Command(bin, c.args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != c.code || !bytes.Contains(out, []byte(c.say)) {
			t.Errorf("notifyd %v: exit %d, want %d, output %q (want it to say %q)", c.args, code, c.code, out, c.say)
		}
	}
}
