package service_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/service"
	"github.com/notifyd/notifyd/topology"
)

func TestAPIRejectsBadInputWithFieldPath(t *testing.T) {
	h := newHarness(t)
	h.cfg.HTTP.MaxBodyBytes = 4096
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	rcpt := func(fields map[string]any) map[string]any {
		r := map[string]any{"userId": "u1"}
		for k, v := range fields {
			r[k] = v
		}
		return map[string]any{"template": "order-shipped", "recipients": []any{map[string]any{"userId": "u0"}, r}}
	}
	cases := []struct {
		name   string
		body   any
		status int
		field  string
		msg    string
	}{
		{"malformed JSON", `{"template": "order-shipped", "recipients": [`, 400, "", "malformed JSON"},
		{"not an object", `[1,2]`, 400, "", "must be"},
		{"unknown field", `{"template": "order-shipped", "recipient": []}`, 400, "recipient", "unknown field"},
		{"wrong type", `{"template": 5}`, 400, "template", "must be string"},
		{"unknown template", map[string]any{"template": "nope", "recipients": []any{map[string]any{"userId": "u1"}}}, 400, "template", "unknown template"},
		{"missing template", map[string]any{"recipients": []any{map[string]any{"userId": "u1"}}}, 400, "template", "required"},
		{"missing recipient", map[string]any{"template": "order-shipped"}, 400, "recipients", "at least one recipient"},
		{"missing userId", rcpt(map[string]any{"userId": ""}), 400, "recipients[1].userId", "required"},
		{"bad email", rcpt(map[string]any{"email": "not-an-email"}), 400, "recipients[1].email", "invalid email"},
		{"bad phone", rcpt(map[string]any{"phone": "+1234"}), 400, "recipients[1].phone", "invalid phone"},
		{"phone not E.164", rcpt(map[string]any{"phone": "138 0013 8000"}), 400, "recipients[1].phone", "E.164"},
		{"bad priority", map[string]any{"template": "order-shipped", "priority": "urgent", "recipients": []any{map[string]any{"userId": "u1"}}}, 400, "priority", "high, normal or low"},
		{"unknown channel", map[string]any{"template": "order-shipped", "channels": []any{"email", "pigeon"}, "recipients": []any{map[string]any{"userId": "u1"}}}, 400, "channels[1]", "unknown channel"},
		{"data not an object", map[string]any{"template": "order-shipped", "data": []any{1}, "recipients": []any{map[string]any{"userId": "u1"}}}, 400, "data", "JSON object"},
		{"sendAt not a time", map[string]any{"template": "order-shipped", "sendAt": "tomorrow", "recipients": []any{map[string]any{"userId": "u1"}}}, 400, "sendAt", "RFC 3339"},
		{"sendAt too far", map[string]any{"template": "order-shipped", "sendAt": "2099-01-01T00:00:00Z", "recipients": []any{map[string]any{"userId": "u1"}}}, 400, "sendAt", "at most"},
		{"sendAt after expiresAt", map[string]any{"template": "order-shipped", "sendAt": time.Now().Add(2 * time.Hour).UTC().Format(time.RFC3339),
			"expiresAt": time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "recipients": []any{map[string]any{"userId": "u1"}}}, 400, "sendAt", "not before expiresAt"},
		{"expiresAt past", map[string]any{"template": "order-shipped", "expiresAt": "2020-01-01T00:00:00Z", "recipients": []any{map[string]any{"userId": "u1"}}}, 400, "expiresAt", "already past"},
		{"oversized body", `{"template": "order-shipped", "data": {"x": "` + strings.Repeat("a", 5000) + `"}}`, 413, "", "exceeds 4096 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, out := h.call("POST", "/v1/notifications", c.body)
			if code != c.status {
				t.Fatalf("status %d, want %d: %v", code, c.status, out)
			}
			e, _ := out["error"].(map[string]any)
			if e == nil {
				t.Fatalf("no error body: %v", out)
			}
			if f, _ := e["field"].(string); f != c.field {
				t.Errorf("field %q, want %q (%v)", f, c.field, e)
			}
			if m, _ := e["message"].(string); !strings.Contains(m, c.msg) {
				t.Errorf("message %q does not say %q", m, c.msg)
			}
		})
	}
	// Nothing of the above reached the pipeline.
	if n := len(h.smtp.Messages()); n != 0 {
		t.Fatalf("%d emails sent for rejected requests", n)
	}
}

func TestAPIAuthentication(t *testing.T) {
	h := newHarness(t)
	h.start()
	for _, auth := range []string{"", "Bearer", "Bearer ", "Bearer wrong", "Basic " + testKey, testKey, "Bearer " + testKey + "x"} {
		req, _ := http.NewRequest("GET", h.base+"/v1/templates", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q: status %d, want 401", auth, resp.StatusCode)
		}
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get(h.base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: status %d: %s", path, resp.StatusCode, body)
		}
	}
}

func TestBatchAnswersPerItem(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	data := map[string]any{"orderId": "b", "eta": "now"}
	out := h.mustCall(http.StatusOK, "POST", "/v1/notifications/batch", map[string]any{"requests": []any{
		map[string]any{"template": "order-shipped", "data": data, "recipients": []any{map[string]any{"userId": "b1", "email": "b1@example.com"}}},
		map[string]any{"template": "order-shipped", "recipients": []any{map[string]any{"userId": "b2", "email": "bad"}}},
		map[string]any{"template": "order-shipped", "data": data, "recipients": []any{map[string]any{"userId": "b3", "email": "b3@example.com"}}},
	}})
	results := out["results"].([]any)
	if len(results) != 3 {
		t.Fatalf("results %v", results)
	}
	bad := results[1].(map[string]any)["error"].(map[string]any)
	if bad["field"] != "requests[1].recipients[0].email" {
		t.Errorf("batch error field %v", bad)
	}
	for _, i := range []int{0, 2} {
		n := results[i].(map[string]any)["notifications"].([]any)[0].(map[string]any)
		h.waitStatus(n["id"].(string), "sent")
	}
	if n := len(h.smtp.WaitFor(2, 5*time.Second)); n != 2 {
		t.Fatalf("want 2 emails, got %d", n)
	}
}

// An undecodable record on notify.ingest goes to notify.dlq with its reason and
// a rejected status, and the records after it are still delivered.
func TestUndecodableIngestRecordGoesToDLQ(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	cl := h.producer()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Same key for all three, so they share a partition and the good ones come after the bad one.
	key := []byte("evt-after-garbage")
	garbage := &kgo.Record{Topic: string(topology.Ingest), Key: key, Value: []byte(`{"template":"json is not avro"}`)}
	if err := cl.ProduceSync(ctx, garbage).FirstErr(); err != nil {
		t.Fatal(err)
	}
	invalid, _ := schemas.SendRequestCodec.Encode(&schemas.SendRequest{EventID: string(key), Template: "order-shipped"})
	good, _ := schemas.SendRequestCodec.Encode(&schemas.SendRequest{EventID: string(key), Template: "order-shipped",
		Data: `{"orderId":"g","eta":"now"}`, Recipients: []schemas.Recipient{{UserID: "g1", Email: "g1@example.com"}}})
	if err := cl.ProduceSync(ctx,
		&kgo.Record{Topic: string(topology.Ingest), Key: key, Value: invalid},
		&kgo.Record{Topic: string(topology.Ingest), Key: key, Value: good}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	h.waitStatus(processors.NotificationID(string(key), "g1"), "sent")

	// Read the DLQ: both bad records are there with their reasons.
	dlq, err := kgo.NewClient(kgo.SeedBrokers(h.svc.Brokers()...), kgo.ConsumeTopics(string(topology.DLQ)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer dlq.Close()
	var letters []*schemas.DeadLetter
	for len(letters) < 2 && ctx.Err() == nil {
		dlq.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			d, err := schemas.DeadLetterCodec.Decode(r.Value)
			if err != nil {
				t.Fatalf("dead letter does not decode: %v", err)
			}
			letters = append(letters, d)
		})
	}
	if len(letters) != 2 {
		t.Fatalf("want 2 dead letters, got %d", len(letters))
	}
	if !strings.Contains(letters[0].Reason, "not an Avro single-object record") || string(letters[0].Value) != string(garbage.Value) {
		t.Errorf("dead letter 0: %q %q", letters[0].Reason, letters[0].Value)
	}
	if !strings.Contains(letters[1].Reason, "recipients: at least one recipient") || letters[1].Stage != "dedup" {
		t.Errorf("dead letter 1: %q stage %q", letters[1].Reason, letters[1].Stage)
	}
	// The undecodable record has its own rejected status, named by its position.
	id := processors.RecordID(letters[0].Topic, letters[0].Partition, letters[0].Offset)
	st := h.waitStatus(id, "rejected")
	if r := st["history"].([]any)[0].(map[string]any)["reason"].(string); !strings.Contains(r, "not an Avro") {
		t.Errorf("rejected reason %q", r)
	}
}

// A record on notify.profiles that is not a Profile (another writer's bug) does
// not stop the deliver group: the user is treated as having no profile.
func TestUndecodableProfileRecordDoesNotStopDelivery(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	cl := h.producer()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: string(topology.Profiles), Key: []byte("p1"), Value: []byte("{not avro}")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	waitRouted(t, ctx, h, goka.Stream(topology.Profiles), 1)
	code, _ := h.call("GET", "/v1/profiles/p1", nil)
	if code != http.StatusNotFound {
		t.Fatalf("undecodable profile served with status %d", code)
	}
	data := map[string]any{"orderId": "p", "eta": "now"}
	withInline := h.send(map[string]any{"template": "order-shipped", "data": data,
		"recipients": []any{map[string]any{"userId": "p1", "email": "p1@example.com"}}})
	h.waitStatus(withInline["p1"], "sent")
	// Without inline contact the user has no address: rejected with that reason, not a stuck pipeline.
	without := h.send(map[string]any{"template": "order-shipped", "data": map[string]any{"orderId": "q", "eta": "now"},
		"recipients": []any{map[string]any{"userId": "p1"}}})
	st := h.waitStatus(without["p1"], "rejected")
	hist := st["history"].([]any)
	if r := hist[len(hist)-1].(map[string]any)["reason"]; r != "user p1 has no email address" {
		t.Fatalf("reason %q", r)
	}
}

// A component that cannot start (here: the API's port is taken) stops the
// others and Run returns the error, rather than hanging.
func TestStartFailureStopsEverything(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	h := newHarness(t)
	h.cfg.HTTP.Addr = taken.Addr().String()
	svc := &service.Service{Cfg: h.cfg, Roles: service.AllInOne, Log: logger()}
	done := make(chan error, 1)
	go func() { done <- svc.Run(context.Background()) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "api listen") {
			t.Fatalf("Run returned %v, want the listen error", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Run hung after a component failed to start")
	}
}

// A body under http.maxBodyBytes whose record would not fit a Kafka record,
// or whose data multiplied by its recipients would flood the topics, answers
// 413 naming the field to shrink — not a 503 that invites a retry of the same.
func TestRecordsTooLargeAnswer413(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	huge := strings.Repeat("x", 1_000_000) // 1 MB of data in a body under 1 MiB
	out := h.mustCall(http.StatusRequestEntityTooLarge, "POST", "/v1/notifications", map[string]any{"template": "order-shipped",
		"data": map[string]any{"orderId": huge}, "recipients": []any{map[string]any{"userId": "big-1"}}})
	if e := out["error"].(map[string]any); e["field"] != "data" || e["code"] != "payload_too_large" {
		t.Fatalf("oversized record: %v", out)
	}
	var rcpts []any
	for i := 0; i < 1000; i++ {
		rcpts = append(rcpts, map[string]any{"userId": fmt.Sprintf("fan-%d", i)})
	}
	out = h.mustCall(http.StatusRequestEntityTooLarge, "POST", "/v1/notifications", map[string]any{"template": "order-shipped",
		"data": map[string]any{"orderId": strings.Repeat("y", 100_000)}, "recipients": rcpts})
	if e := out["error"].(map[string]any); e["field"] != "data" || !strings.Contains(e["message"].(string), "fewer recipients") {
		t.Fatalf("fan-out: %v", out)
	}
	// In a batch, the item says so; the others are accepted.
	res := h.mustCall(http.StatusOK, "POST", "/v1/notifications/batch", map[string]any{"requests": []any{
		map[string]any{"template": "order-shipped", "data": map[string]any{"orderId": "ok", "eta": "now"},
			"recipients": []any{map[string]any{"userId": "fine-1", "email": "fine@example.com"}}},
		map[string]any{"template": "order-shipped", "data": map[string]any{"orderId": strings.Repeat("z", 990_000)},
			"recipients": []any{map[string]any{"userId": "big-2"}}}}})["results"].([]any)
	if e, _ := res[1].(map[string]any)["error"].(map[string]any); e == nil || e["field"] != "requests[1].data" {
		t.Fatalf("batch item: %v", res[1])
	}
	if res[0].(map[string]any)["error"] != nil {
		t.Fatalf("the good item was refused: %v", res[0])
	}
	id := res[0].(map[string]any)["notifications"].([]any)[0].(map[string]any)["id"].(string)
	h.waitStatus(id, "sent")
}

// The priority lanes are entry points like notify.ingest: an undecodable
// record on any of them goes to notify.dlq naming its lane, and what comes
// after it on the lane is still delivered. A hostile notifyd-keys header
// (not a number, negative, huge) changes nothing for a valid request.
func TestBadRecordsOnPriorityLanesGoToDLQ(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	cl := h.producer()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lanes := []goka.Stream{topology.IngestHigh, topology.IngestLow, topology.AcceptedHigh, topology.AcceptedLow}
	for _, lane := range lanes {
		bad := &kgo.Record{Topic: string(lane), Key: []byte("lane-garbage"), Value: []byte("\xc3\x01not avro at all")}
		if err := cl.ProduceSync(ctx, bad).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	var ids []string
	for i, hv := range []string{"not-a-number", "-5", "99999999999999999999999"} {
		key := fmt.Sprintf("lane-good-%d", i)
		good, _ := schemas.SendRequestCodec.Encode(&schemas.SendRequest{EventID: key, Template: "order-shipped", Priority: "high",
			Data: `{"orderId":"g","eta":"now"}`, Recipients: []schemas.Recipient{{UserID: key, Email: key + "@example.com"}}})
		rec := &kgo.Record{Topic: string(topology.IngestHigh), Key: []byte(key), Value: good,
			Headers: []kgo.RecordHeader{{Key: "notifyd-keys", Value: []byte(hv)}}}
		if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, processors.NotificationID(key, key))
	}
	for _, id := range ids {
		h.waitStatus(id, "sent")
	}
	seen := map[string]bool{}
	for _, r := range topicRecords(t, h, `^notify\.dlq$`) {
		d, err := schemas.DeadLetterCodec.Decode(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		if string(d.Key) == "lane-garbage" && d.Reason != "" {
			seen[d.Topic] = true
		}
	}
	for _, lane := range lanes {
		if !seen[string(lane)] {
			t.Errorf("no dead letter naming %s (have %v)", lane, seen)
		}
	}
}
