package service_test

import (
	"context"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/mail"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/smtptest"
	"github.com/notifyd/notifyd/topology"
	"github.com/twmb/franz-go/pkg/kgo"
)

// parts reads a multipart/alternative email into its text and HTML bodies.
func parts(t *testing.T, m smtptest.Message) (subject, text, html string) {
	t.Helper()
	msg, err := mail.ReadMessage(strings.NewReader(string(m.Data)))
	if err != nil {
		t.Fatalf("email does not parse: %v\n%s", err, m.Data)
	}
	dec := new(mime.WordDecoder)
	subject, _ = dec.DecodeHeader(msg.Header.Get("Subject"))
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/alternative" {
		t.Fatalf("want multipart/alternative, got %q (%v)", msg.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(decodeTransfer(p))
		ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		switch ct {
		case "text/plain":
			text = string(body)
		case "text/html":
			html = string(body)
		}
	}
	return subject, text, html
}

func TestEmailEndToEnd(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	h.mustCall(http.StatusOK, "PUT", "/v1/profiles/u1", map[string]any{"email": "ann@example.com", "locale": "en"})

	ids := h.send(map[string]any{"template": "order-shipped", "recipients": []any{map[string]any{"userId": "u1"}},
		"data": map[string]any{"orderId": "123", "eta": "Monday <soon>"}})
	st := h.waitStatus(ids["u1"], "sent")

	msgs := h.smtp.WaitFor(1, 10*time.Second)
	if len(msgs) != 1 {
		t.Fatalf("want 1 email, got %d", len(msgs))
	}
	if !slices.Equal(msgs[0].To, []string{"ann@example.com"}) || msgs[0].From != "notifyd@example.com" {
		t.Fatalf("envelope from %q to %v", msgs[0].From, msgs[0].To)
	}
	subject, text, html := parts(t, msgs[0])
	if subject != "Order 123 shipped" {
		t.Errorf("subject %q", subject)
	}
	if !strings.Contains(text, "Your order 123 arrives Monday <soon>") {
		t.Errorf("text part %q", text)
	}
	// html/template escapes data in HTML.
	if !strings.Contains(html, "<b>123</b> arrives Monday &lt;soon&gt;") {
		t.Errorf("html part %q", html)
	}
	if got := smtptest.Header(msgs[0].Data, "X-Notifyd-Notification-Id"); got != ids["u1"] {
		t.Errorf("notification id header %q", got)
	}
	if st["provider"] != "smtp-main" || st["channel"] != "email" || st["template"] != "order-shipped" {
		t.Errorf("status %v", st)
	}
	if got := historyStatuses(st); !slices.Equal(got, []string{"accepted", "queued", "sent"}) {
		t.Errorf("history %v", got)
	}
	for _, e := range st["history"].([]any) {
		at, err := time.Parse(time.RFC3339, e.(map[string]any)["at"].(string))
		if err != nil || time.Since(at) > time.Minute {
			t.Errorf("history timestamp %v (%v)", e, err)
		}
	}
}

func TestLocaleFallback(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	// zh-CN has its own content; zh-TW falls back to the default.
	ids := h.send(map[string]any{"template": "order-shipped", "data": map[string]any{"orderId": "9", "eta": "x"},
		"recipients": []any{
			map[string]any{"userId": "cn", "email": "cn@example.com", "locale": "zh-CN"},
			map[string]any{"userId": "tw", "email": "tw@example.com", "locale": "zh-TW"}}})
	h.waitStatus(ids["cn"], "sent")
	h.waitStatus(ids["tw"], "sent")
	subjects := map[string]string{}
	for _, m := range h.smtp.WaitFor(2, 10*time.Second) {
		s, _, _ := parts(t, m)
		subjects[m.To[0]] = s
	}
	if subjects["cn@example.com"] != "订单 9 已发货" || subjects["tw@example.com"] != "Order 9 shipped" {
		t.Fatalf("subjects %v", subjects)
	}
}

func TestIdempotencyKeyDeliversOnce(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	body := map[string]any{"template": "order-shipped", "data": map[string]any{"orderId": "7", "eta": "now"},
		"recipients": []any{map[string]any{"userId": "u2", "email": "bob@example.com"}}}
	first := h.send(body, "Idempotency-Key", "order-7-shipped")
	h.waitStatus(first["u2"], "sent")
	second := h.send(body, "Idempotency-Key", "order-7-shipped")
	if first["u2"] != second["u2"] {
		t.Fatalf("a retried request must return the same notification id: %s vs %s", first["u2"], second["u2"])
	}
	// The duplicate shows in the history without moving the status back.
	deadline := time.Now().Add(20 * time.Second)
	var st map[string]any
	for time.Now().Before(deadline) {
		_, st = h.call("GET", "/v1/notifications/"+first["u2"], nil)
		if slices.Contains(historyStatuses(st), "duplicate") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !slices.Contains(historyStatuses(st), "duplicate") || st["status"] != "sent" {
		t.Fatalf("want sent with a duplicate in history, got %v %v", st["status"], historyStatuses(st))
	}
	for _, e := range st["history"].([]any) {
		if m := e.(map[string]any); m["status"] == "duplicate" && !strings.Contains(m["reason"].(string), "order-7-shipped") {
			t.Errorf("duplicate reason %q", m["reason"])
		}
	}
	time.Sleep(500 * time.Millisecond) // room for a wrong second email to arrive
	if n := len(h.smtp.Messages()); n != 1 {
		t.Fatalf("want exactly 1 email, got %d", n)
	}
}

func TestMarketingOptOut(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/promo", orderTemplate("marketing"))
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/receipt", orderTemplate("transactional"))
	h.mustCall(http.StatusOK, "PUT", "/v1/profiles/u3", map[string]any{"email": "cy@example.com",
		"preferences": map[string]any{"categories": map[string]any{"marketing": map[string]any{"email": false}}}})
	data := map[string]any{"orderId": "1", "eta": "soon"}
	promo := h.send(map[string]any{"template": "promo", "data": data, "recipients": []any{map[string]any{"userId": "u3"}}})
	receipt := h.send(map[string]any{"template": "receipt", "data": data, "recipients": []any{map[string]any{"userId": "u3"}}})

	st := h.waitStatus(promo["u3"], "suppressed")
	hist := st["history"].([]any)
	if reason := hist[len(hist)-1].(map[string]any)["reason"]; reason != "user opted out of marketing email" {
		t.Errorf("suppression reason %q", reason)
	}
	h.waitStatus(receipt["u3"], "sent")
	time.Sleep(300 * time.Millisecond)
	msgs := h.smtp.Messages()
	if len(msgs) != 1 {
		t.Fatalf("want only the transactional email, got %d emails", len(msgs))
	}
	if got := smtptest.Header(msgs[0].Data, "X-Notifyd-Notification-Id"); got != receipt["u3"] {
		t.Fatalf("the email sent is %s, want the receipt %s", got, receipt["u3"])
	}
}

// A client that is not notifyd's API produces straight to notify.ingest.
func TestIngestFromKafkaClient(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	cl := h.producer()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var ids []string
	for i, user := range []string{"k1", "k2", "k3", "k4", "k5", "k6"} {
		req := &schemas.SendRequest{EventID: "kafka-evt-" + user, Template: "order-shipped",
			Recipients: []schemas.Recipient{{UserID: user, Email: user + "@example.com"}},
			Data:       `{"orderId": "` + user + `", "eta": "now"}`}
		v, _ := schemas.SendRequestCodec.Encode(req)
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: string(topology.Ingest), Key: []byte(req.EventID), Value: v}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, processors.NotificationID(req.EventID, user))
		_ = i
	}
	// Each id reaching "sent" proves the request was read by the dedup partition
	// that owns its key, and the per-user state by the deliver partition.
	for _, id := range ids {
		h.waitStatus(id, "sent")
	}
	if n := len(h.smtp.WaitFor(len(ids), 10*time.Second)); n != len(ids) {
		t.Fatalf("want %d emails, got %d", len(ids), n)
	}
}

func decodeTransfer(p *multipart.Part) io.Reader {
	switch strings.ToLower(p.Header.Get("Content-Transfer-Encoding")) {
	case "quoted-printable":
		return quotedPrintable(p)
	case "base64":
		return base64Reader(p)
	}
	return p
}

// A client left on its default partitioner (murmur2, as Java's and librdkafka's)
// produces to notify.ingest: everything is still delivered once, deduplicated
// against the API, and its dedup state lives where goka looks for it.
func TestIngestFromClientWithDefaultPartitioner(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.svc.Brokers()...)) // default partitioner
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	moved := 0
	var ids []string
	for i := 0; i < 12; i++ {
		eventID := fmt.Sprintf("murmur-%d", i)
		user := fmt.Sprintf("m%d", i)
		req := &schemas.SendRequest{EventID: eventID, Template: "order-shipped",
			Recipients: []schemas.Recipient{{UserID: user, Email: user + "@example.com"}}, Data: `{"orderId":"m","eta":"now"}`}
		v, _ := schemas.SendRequestCodec.Encode(req)
		r := &kgo.Record{Topic: string(topology.Ingest), Key: []byte(eventID), Value: v}
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if r.Partition != topology.PartitionFor(eventID, h.cfg.Kafka.Partitions) {
			moved++
		}
		ids = append(ids, processors.NotificationID(eventID, user))
	}
	if moved == 0 {
		t.Fatal("no record landed on another partition than goka's; the test proves nothing")
	}
	for _, id := range ids {
		h.waitStatus(id, "sent")
	}
	// The same eventId through the API is a duplicate of the Kafka-produced one.
	h.send(map[string]any{"template": "order-shipped", "data": map[string]any{"orderId": "m", "eta": "now"},
		"recipients": []any{map[string]any{"userId": "m0", "email": "m0@example.com"}}}, "Idempotency-Key", "murmur-0")
	deadline := time.Now().Add(15 * time.Second)
	for !slices.Contains(historyStatuses(h.waitStatus(ids[0], "sent")), "duplicate") {
		if time.Now().After(deadline) {
			t.Fatal("the API repeat of a Kafka-produced event was not recognised as a duplicate")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v, err := h.svc.Processor(topology.DedupGroup).Get("murmur-0"); err != nil || v == nil {
		t.Fatalf("dedup entry not on goka's partition: %v %v", v, err)
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(h.smtp.Messages()); n != len(ids) {
		t.Fatalf("%d emails for %d notifications", n, len(ids))
	}
}
