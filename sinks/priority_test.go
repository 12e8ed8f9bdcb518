package sinks

import (
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/webhooktest"
	"github.com/notifyd/notifyd/topology"
)

// While the process's priority gate holds, the sink starts no normal or low
// notification: a high one goes to its provider, the others wait (queued,
// nothing lost) and go when the hold ends. A high-priority record the sink
// polls holds the gate itself.
func TestSinkStartsNoLowerPriorityWorkWhileTheGateHolds(t *testing.T) {
	env := newSinkEnv(t)
	rc := webhooktest.Start("s")
	defer rc.Close()
	gate := topology.NewPriorityGate(2*time.Second, 2*time.Second)
	routeAs := func(id, priority string) {
		b, _ := schemas.NotificationCodec.Encode(&schemas.Notification{ID: id, EventID: "e-" + id, UserID: "u", Template: "t",
			Channel: "webhook", Address: "default", Priority: priority, Content: schemas.Content{Body: `{"id":"` + id + `"}`},
			RoutedAt: routedAt})
		env.produce(t, string(topology.Out("webhook", priority)), id, b)
	}
	delivered := func(id string) bool {
		for _, d := range rc.Deliveries() {
			if strings.Contains(string(d.Body), `"`+id+`"`) {
				return true
			}
		}
		return false
	}
	waitFor := func(id string) {
		deadline := time.Now().Add(30 * time.Second)
		for !delivered(id) {
			if time.Now().After(deadline) {
				t.Fatalf("%s was not delivered", id)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	s := env.sink(newTestWebhook(t, rc.URL, "s", true))
	s.Priority = gate
	env.run(t, s)

	routeAs("h1", "high")
	waitFor("h1")
	if gate.Holds() != 1 {
		t.Fatalf("the sink's high-priority record began %d holds, want 1", gate.Holds())
	}
	routeAs("n1", "normal")
	routeAs("l1", "low")
	routeAs("h2", "high")
	waitFor("h2")
	if !gate.Held() {
		t.Fatal("the gate no longer holds: the test could not tell")
	}
	for gate.Held() {
		if delivered("n1") || delivered("l1") {
			t.Fatal("a lower-priority notification went to its provider while the gate held")
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitFor("n1")
	waitFor("l1")
}
