package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/smtptest"
	"github.com/notifyd/notifyd/topology"
)

// A campaign fans out while its process instances die at the crash points
// of a step — between its notifications and its state (campaign.after-step),
// and between its state and the commit of its tick (campaign.after-state:
// the tick comes again and the step is replayed from its recorded range) —
// and random role instances are killed -9 every 3 s, as separate OS
// processes against one broker. Every eligible user of
// the segment gets exactly one message — SMTP has no idempotency key, so a
// sink killed between the server's 250 and its ledger entry may send one
// twice, at most a few per sink kill, as in TestChaosSeparateProcesses —
// users who opted out and users outside the segment none, and the
// campaign's progress settles to the exact counts.
func TestChaosCampaignSeparateProcesses(t *testing.T) {
	const users = 2400
	srv, err := smtptest.Start(smtptest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	c := startCluster(t, fmt.Sprintf(`campaigns: {step: 500ms}
channels:
  email:
    - name: smtp
      type: smtp
      smtp: {host: %q, port: %d, from: chaos@example.com, tls: none, connections: 8}
`, srv.Host, srv.Port),
		roleSpec{"process-1", "campaign.after-step=0.1,campaign.after-state=0.1", []string{"process"}},
		roleSpec{"process-2", "campaign.after-step=0.1,campaign.after-state=0.1", []string{"process"}},
		roleSpec{"sink-1", "", []string{"sink", "--channel=email"}},
		roleSpec{"api", "", []string{"api"}})

	// Profiles, straight to notify.profiles as an import job would write them.
	eligible, optedOut, segment := map[string]bool{}, map[string]bool{}, 0
	cl, err := topology.NewProducer([]string{fmt.Sprintf("127.0.0.1:%d", c.brokerPort)}) // goka's partitioner
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < users; i++ {
		u := fmt.Sprintf("cu%05d", i)
		p := &schemas.Profile{UserID: u, Email: u + "@example.com", UpdatedAt: time.Now().UnixMilli(),
			Attributes: map[string]string{"plan": map[bool]string{true: "pro", false: "free"}[i%4 != 3]}}
		if i%4 != 3 {
			segment++
			if i%10 == 0 {
				p.Preferences.Categories = map[string]map[string]bool{"marketing": {"email": false}}
				optedOut[u] = true
			} else {
				eligible[u] = true
			}
		}
		v, err := schemas.ProfileCodec.Encode(p)
		if err != nil {
			t.Fatal(err)
		}
		cl.Produce(ctx, &kgo.Record{Topic: "notify.profiles", Key: []byte(u), Value: v}, nil)
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	chaosCall(t, c.base, "PUT", "/v1/templates/promo", map[string]any{"category": "marketing",
		"channels": map[string]any{"email": map[string]any{"subject": "Spring sale", "text": "20% off"}}}, http.StatusOK, time.Minute)
	chaosCall(t, c.base, "POST", "/v1/campaigns", map[string]any{"id": "chaos", "template": "promo", "rate": 100,
		"audience": map[string]any{"segment": `attributes.plan = "pro"`}}, http.StatusAccepted, time.Minute)

	k := c.startKiller(4)
	chaosCallAs(t, "chaos-approver-1", c.base, "POST", "/v1/campaigns/chaos/approve", map[string]any{"comment": "go"}, http.StatusOK, time.Minute)
	readCampaign := func() (state string, p processors.Progress) {
		var out struct {
			State    string               `json:"state"`
			Progress *processors.Progress `json:"progress"`
		}
		_ = json.Unmarshal(chaosCall(t, c.base, "GET", "/v1/campaigns/chaos", nil, http.StatusOK, 3*time.Minute), &out)
		if out.Progress != nil {
			p = *out.Progress
		}
		return out.State, p
	}
	// Four random kills while it starts (the killer stops then: with a kill
	// every 3 s on top of the crash point, the groups would be rebalancing
	// more than working), then the crash point alone.
	k.wait(t, segment)
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		state, p := readCampaign()
		if state == processors.CampaignCompleted {
			break
		}
		if time.Now().After(deadline) {
			for _, in := range c.roles {
				if strings.HasPrefix(in.name, "process") {
					t.Logf("%s: stacks in %s", in.name, in.dumpStacks())
				}
			}
			t.Fatalf("the campaign never completed its fan-out: %s, %+v, %d messages received; %s; campaign: %s",
				state, p, len(receivedIDs(t, srv)), groupOffsets(c.brokerPort, "notify.campaign", "notify.campaigns"),
				chaosCall(t, c.base, "GET", "/v1/campaigns/chaos", nil, http.StatusOK, time.Minute))
		}
	}

	var got map[string]int
	for deadline := time.Now().Add(4 * time.Minute); ; time.Sleep(time.Second) {
		got = receivedIDs(t, srv)
		if len(got) >= len(eligible) || time.Now().After(deadline) {
			break
		}
	}
	time.Sleep(2 * time.Second) // late duplicates arrive now
	got = receivedIDs(t, srv)
	faultKills := c.faultKills()
	dups, missing := 0, 0
	for id, n := range got {
		u := id[strings.LastIndex(id, ":")+1:]
		if !eligible[u] {
			t.Errorf("%s got a message (opted out: %v)", id, optedOut[u])
		}
		dups += n - 1
	}
	for u := range eligible {
		if got[processors.CampaignNotificationID("", "chaos", u)] == 0 {
			missing++
		}
	}
	t.Logf("%d of %d eligible users received, %d duplicates; %d random kills (%d of sinks), crash points hit: %v",
		len(eligible)-missing, len(eligible), dups, k.kills.Load(), k.sinkKills.Load(), faultKills)
	if missing > 0 {
		n := 0
		for u := range eligible {
			if id := processors.CampaignNotificationID("", "chaos", u); got[id] == 0 && n < 3 {
				n++
				t.Logf("%s", chaosCall(t, c.base, "GET", "/v1/notifications/"+id, nil, http.StatusOK, time.Minute))
			}
		}
		for _, in := range c.roles {
			if strings.HasPrefix(in.name, "sink") {
				t.Logf("%s; %s; %s: stacks in %s", groupOffsets(c.brokerPort, "notify.sink.email", "notify.out.email.low"),
					groupOffsets(c.brokerPort, "notify.retry", "notify.retry.email.1s"), in.name, in.dumpStacks())
			}
		}
		t.Fatalf("%d eligible users got nothing", missing)
	}
	// Either crash point proves a window; over runs both are hit (each
	// alone would be missed in a few runs in a hundred).
	if faultKills["campaign.after-step"]+faultKills["campaign.after-state"] == 0 {
		t.Fatalf("no crash point was hit: %v", faultKills)
	}
	if dups > 5*int(k.sinkKills.Load()) {
		t.Fatalf("%d duplicates for %d sink kills", dups, k.sinkKills.Load())
	}
	// The status group catches up with every event, and the API instance
	// reads its table; then the progress is exact.
	waitGroupCaughtUp(t, c.brokerPort, "notify.status", "notify.events", 4*time.Minute)
	waitReady(t, c.base)
	want := processors.Progress{Targeted: int64(segment), Sent: int64(len(eligible)), Suppressed: int64(len(optedOut))}
	var p processors.Progress
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if _, p = readCampaign(); p == want {
			break
		}
		if time.Now().After(deadline) {
			// Which notifications does the API not know? Their partitions
			// tell whether a partition of the status table is behind.
			var unknown []string
			for u := range eligible {
				id := processors.CampaignNotificationID("", "chaos", u)
				if code, _ := getStatus(c.base, id); code == http.StatusNotFound && len(unknown) < 10 {
					unknown = append(unknown, id)
				}
			}
			t.Fatalf("progress %+v, want %+v; unknown to the API, e.g. %v", p, want, unknown)
		}
	}
}

func getStatus(base, id string) (int, []byte) {
	req, _ := http.NewRequest("GET", base+"/v1/notifications/"+id, nil)
	req.Header.Set("Authorization", "Bearer chaos-key-1")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}
