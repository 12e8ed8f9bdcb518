package service_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/sinks/smtptest"
	"github.com/notifyd/notifyd/topology"
)

// Two all-in-one instances against one external broker, as two replicas of
// a deployment: each owns part of every group's partitions.
func TestTwoInstancesServeEveryStatusAndEachOthersWrites(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close) // after the instances stop (cleanups run last first)
	smtpSrv, err := smtptest.Start(smtptest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(smtpSrv.Close)
	instance := func() *harness {
		h := &harness{t: t, smtp: smtpSrv, cfg: testConfig(t, smtpSrv, nil)}
		h.cfg.Kafka.Brokers = cluster.ListenAddrs()
		h.cfg.Kafka.Partitions = 4
		h.cfg.Scheduler.Interval = 100 * time.Millisecond
		h.start()
		return h
	}
	a, b := instance(), instance()
	// Wait until the groups have settled with both members.
	a.waitSettled(2, string(topology.StatusGroup), string(topology.DedupGroup))

	// A template written through one instance is usable and readable through
	// the other at once.
	a.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	b.mustCall(http.StatusOK, "GET", "/v1/templates/order-shipped", nil)
	a.mustCall(http.StatusOK, "PUT", "/v1/profiles/twin-user", map[string]any{"email": "twin@example.com"})
	if p := b.mustCall(http.StatusOK, "GET", "/v1/profiles/twin-user", nil); p["email"] != "twin@example.com" {
		t.Fatalf("profile read through the other instance: %v", p)
	}

	const n = 60
	var ids []string
	for i := 0; i < n; i++ {
		h := a
		if i%2 == 1 {
			h = b
		}
		user := fmt.Sprintf("twin-%d", i)
		body := map[string]any{"template": "order-shipped", "data": map[string]any{"orderId": i, "eta": "now"},
			"recipients": []any{map[string]any{"userId": user, "email": user + "@example.com"}}}
		if i%3 == 0 {
			body["sendAt"] = time.Now().Add(1500 * time.Millisecond).UTC().Format(time.RFC3339Nano)
		}
		ids = append(ids, h.send(body)[user])
	}
	// Every notification reads sent through either instance: whichever owns
	// its status partition.
	for _, id := range ids {
		a.waitStatus(id, processors.StatusSent)
		b.waitStatus(id, processors.StatusSent)
	}
	smtpSrv.WaitFor(n, 30*time.Second)
	time.Sleep(time.Second)
	if got := len(smtpSrv.Messages()); got != n {
		t.Fatalf("%d emails for %d notifications", got, n)
	}
	// The scheduler's sweeper runs in the owner of each partition only: one
	// release command per scheduled notification, not one per instance.
	ends, err := kadm.NewClient(a.producer()).ListEndOffsets(context.Background(), string(topology.SchedulerDue))
	if err != nil {
		t.Fatal(err)
	}
	var commands int64
	ends.Each(func(o kadm.ListedOffset) { commands += o.Offset })
	if scheduled := int64((n + 2) / 3); commands != scheduled {
		t.Fatalf("%d release commands for %d scheduled notifications", commands, scheduled)
	}
}

// waitSettled waits until each of groups is Stable with members members.
func (h *harness) waitSettled(members int, groups ...string) {
	h.t.Helper()
	adm := kadm.NewClient(h.producer())
	deadline := time.Now().Add(60 * time.Second)
	for {
		described, err := adm.DescribeGroups(context.Background(), groups...)
		settled := err == nil && len(described) == len(groups)
		for _, g := range described {
			settled = settled && g.State == "Stable" && len(g.Members) == members
		}
		if settled {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("groups never settled with %d members: %v %v", members, described, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
