package service_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/sinks/smtptest"
	"github.com/notifyd/notifyd/topology"
)

// After the SMTP server restarts, the pooled connection is dead: the next
// send goes out on a fresh connection instead of failing. And content dedup
// counts only what a provider accepted: after a notification failed, the same
// content sent again is delivered, not suppressed as "same content sent".
func TestStaleConnectionsAndFailedSendsDoNotBlockResends(t *testing.T) {
	var refuse atomic.Bool
	srv, err := smtptest.Start(smtptest.Options{OnData: func(smtptest.Message) error {
		if refuse.Load() {
			return &smtp.SMTPError{Code: 550, Message: "mailbox unavailable"}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	h := &harness{t: t, smtp: srv, cfg: testConfig(t, srv, nil)}
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("transactional"))
	send := func(event, orderID string) string {
		return h.send(map[string]any{"eventId": event, "template": "order-shipped",
			"data":       map[string]any{"orderId": orderID, "eta": "now"},
			"recipients": []any{map[string]any{"userId": "resend-1", "email": "resend@example.com"}}})["resend-1"]
	}
	h.waitStatus(send("r-1", "1"), processors.StatusSent)
	if err := srv.Restart(); err != nil { // the pooled connection dies with it
		t.Fatal(err)
	}
	h.waitStatus(send("r-2", "2"), processors.StatusSent)

	refuse.Store(true)
	failed := h.waitStatus(send("r-3", "3"), processors.StatusFailed)
	if !strings.Contains(failed["history"].([]any)[len(failed["history"].([]any))-1].(map[string]any)["reason"].(string), "550") {
		t.Fatalf("failed for another reason: %v", failed)
	}
	refuse.Store(false)
	// The sink told the deliver group that nothing was sent; once it has read that,
	// the same content goes out.
	adm := kadm.NewClient(h.producer())
	deadline := time.Now().Add(30 * time.Second)
	for {
		ends, err1 := adm.ListEndOffsets(context.Background(), string(topology.Feedback))
		offs, err2 := adm.FetchOffsets(context.Background(), string(topology.DeliverGroup))
		var lag int64
		if err1 == nil && err2 == nil {
			ends.Each(func(e kadm.ListedOffset) {
				o, _ := offs.Lookup(e.Topic, e.Partition)
				lag += e.Offset - max(o.At, 0)
			})
		}
		if err1 == nil && err2 == nil && lag == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deliver group never read the feedback (lag %d, %v %v)", lag, err1, err2)
		}
		time.Sleep(50 * time.Millisecond)
	}
	st := h.waitStatus(send("r-4", "3"), processors.StatusSent)
	for _, s := range historyStatuses(st) {
		if s == processors.StatusSuppressed {
			t.Fatalf("the resend was suppressed: %v", st)
		}
	}
	if n := len(srv.Messages()); n != 3 {
		t.Fatalf("%d emails accepted, want 3 (r-1, r-2, r-4)", n)
	}
}
