package topology

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// lagBroker is a kfake broker with notifyd's topics (2 partitions each).
func lagBroker(t *testing.T) (*kfake.Cluster, *kgo.Client, *kadm.Client) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := CreateTopics(ctx, c.ListenAddrs(), 2, 1); err != nil {
		t.Fatal(err)
	}
	// Records go to the partition the test names.
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return c, cl, kadm.NewClient(cl)
}

func produceTo(t *testing.T, cl *kgo.Client, topic goka.Stream, partition int32, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		r := &kgo.Record{Topic: string(topic), Partition: partition, Value: []byte(fmt.Sprint(i))}
		if err := cl.ProduceSync(context.Background(), r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
}

func commitAt(t *testing.T, adm *kadm.Client, group goka.Group, topic goka.Stream, partition int32, at int64) {
	t.Helper()
	var os kadm.Offsets
	os.AddOffset(string(topic), partition, at, -1)
	if err := adm.CommitAllOffsets(context.Background(), string(group), os); err != nil {
		t.Fatal(err)
	}
}

// gather scrapes reg like /metrics does: "name{k=v,…}" → value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(labels)
			v := m.GetGauge().GetValue()
			if m.GetCounter() != nil {
				v = m.GetCounter().GetValue()
			}
			out[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = v
		}
	}
	return out
}

func expectMetrics(t *testing.T, got map[string]float64, want map[string]float64) {
	t.Helper()
	for k, v := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("%s missing; got %v", k, got)
			continue
		}
		if g != v {
			t.Errorf("%s = %v, want %v", k, g, v)
		}
	}
}

func TestLagCountsWhatGroupsHaveNotCommittedAndTheDeadLetters(t *testing.T) {
	c, cl, adm := lagBroker(t)
	produceTo(t, cl, Accepted, 0, 10)
	commitAt(t, adm, DeliverGroup, Accepted, 0, 4)
	// notify.status committed partition 0 of notify.events only: partition 1
	// counts from its start.
	produceTo(t, cl, Events, 0, 5)
	produceTo(t, cl, Events, 1, 3)
	commitAt(t, adm, StatusGroup, Events, 0, 5)

	lag := NewLagCollector(c.ListenAddrs(), []string{string(DeliverGroup), string(StatusGroup), SinkGroup("email")}, nil)
	defer lag.Close()
	lag.maxAge = 0 // every scrape reads the offsets
	reg := prometheus.NewRegistry()
	reg.MustRegister(lag)

	got := gather(t, reg)
	expectMetrics(t, got, map[string]float64{
		"notifyd_consumer_lag{group=notify.deliver,topic=notify.accepted}":               6,
		"notifyd_consumer_lag_max_partition{group=notify.deliver,topic=notify.accepted}": 6,
		"notifyd_consumer_lag{group=notify.status,topic=notify.events}":                  3,
		"notifyd_consumer_lag_max_partition{group=notify.status,topic=notify.events}":    3,
		"notifyd_dlq_records{}":             0,
		"notifyd_lag_scrape_errors_total{}": 0,
	})
	// A group without commits (notify.sink.email) has no topics, and no error.
	for k := range got {
		if strings.Contains(k, "notify.sink.email") {
			t.Errorf("group without commits reported: %s", k)
		}
	}
	if n := len(got); n != 6 {
		t.Errorf("got %d series, want 6: %v", n, got)
	}

	produceTo(t, cl, DLQ, 0, 2)
	produceTo(t, cl, DLQ, 1, 1)
	commitAt(t, adm, DeliverGroup, Accepted, 0, 10)
	expectMetrics(t, gather(t, reg), map[string]float64{
		"notifyd_dlq_records{}": 3,
		"notifyd_consumer_lag{group=notify.deliver,topic=notify.accepted}": 0,
	})

	// Dead letters deleted from the topic are no longer held by it.
	var before kadm.Offsets
	before.AddOffset(string(DLQ), 0, 1, -1)
	if _, err := adm.DeleteRecords(context.Background(), before); err != nil {
		t.Fatal(err)
	}
	expectMetrics(t, gather(t, reg), map[string]float64{"notifyd_dlq_records{}": 2})
}

func TestLagKeepsTheLastValuesWhenTheBrokerIsGone(t *testing.T) {
	c, cl, adm := lagBroker(t)
	produceTo(t, cl, Accepted, 1, 10)
	commitAt(t, adm, DeliverGroup, Accepted, 1, 4)

	lag := NewLagCollector(c.ListenAddrs(), []string{string(DeliverGroup)}, nil)
	defer lag.Close()
	lag.maxAge = 300 * time.Millisecond
	reg := prometheus.NewRegistry()
	reg.MustRegister(lag)
	const key = "notifyd_consumer_lag{group=notify.deliver,topic=notify.accepted}"
	expectMetrics(t, gather(t, reg), map[string]float64{key: 6, "notifyd_lag_scrape_errors_total{}": 0})

	c.Close()
	// Within maxAge a scrape does not ask the broker.
	expectMetrics(t, gather(t, reg), map[string]float64{key: 6, "notifyd_lag_scrape_errors_total{}": 0})

	time.Sleep(lag.maxAge)
	start := time.Now()
	got := gather(t, reg)
	if d := time.Since(start); d > lag.timeout+time.Second {
		t.Errorf("scrape against a closed broker took %v", d)
	}
	// The error is counted and the last good values stay.
	expectMetrics(t, got, map[string]float64{key: 6, "notifyd_lag_scrape_errors_total{}": 1})
}

func TestLagScrapeIsBoundedWhenTheBrokerNeverAnswers(t *testing.T) {
	// A broker that accepts connections and then says nothing (hung, or
	// behind a black-holing network) must not hang /metrics.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()

	lag := NewLagCollector([]string{ln.Addr().String()}, []string{string(DeliverGroup)}, nil)
	defer lag.Close()
	lag.timeout = 500 * time.Millisecond
	reg := prometheus.NewRegistry()
	reg.MustRegister(lag)
	start := time.Now()
	got := gather(t, reg)
	if d := time.Since(start); d > lag.timeout+time.Second {
		t.Errorf("scrape against a silent broker took %v", d)
	}
	expectMetrics(t, got, map[string]float64{"notifyd_lag_scrape_errors_total{}": 1})
}
