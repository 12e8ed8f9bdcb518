package service_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/analytics"
	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/sinks/sendgridtest"
	"github.com/notifyd/notifyd/sinks/smtptest"
	"github.com/notifyd/notifyd/sinks/twiliotest"
	"github.com/notifyd/notifyd/topology"
)

// Free text from outside notifyd — a receipt's reason posted with an API key,
// a SendGrid bounce's reason in a signed callback, the error body of an SMS
// provider that quotes the recipient — keeps no email address and no phone
// number anywhere notifyd records it: the status history, the raw records of
// notify.events, the retry topic and notify.dlq, and ClickHouse. The rest of
// the text (the SMTP codes, "user unknown") stays.
func TestReceiptAndProviderTextIsRedactedEverywhere(t *testing.T) {
	const (
		alice    = "alice@example.com"   // a recipient, quoted by the bounce of her mail
		sgUser   = "sg.user@example.org" // a recipient whose mail SendGrid sent, quoted by its bounce
		smsTo    = "+14155550142"        // an SMS recipient
		smsQuote = "+1 (415) 555-0142"   // how the SMS provider's error body writes it
		opsAddr  = "ops@example.net"
	)
	// What must be nowhere, in every form it was written in.
	leaks := []string{alice, "alice@", sgUser, "sg.user@", opsAddr, "ops@",
		"+14155550100", "4155550100", "+86 138 0013 8000", "138 0013 8000", "+44 20 7946 0958", "7946 0958",
		smsTo, smsQuote, "555-0142", "4155550142"}

	// The mail server refuses sg.user for now, so her mail goes out through
	// SendGrid, the second provider of the chain.
	smtpSrv, err := smtptest.Start(smtptest.Options{OnData: func(m smtptest.Message) error {
		if strings.Contains(strings.Join(m.To, ","), "sg.user") {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 1}, Message: "try another route"}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(smtpSrv.Close)
	sg := sendgridtest.Start("SG.test-key")
	t.Cleanup(sg.Close)
	tw := twiliotest.Start(twilioSid, twilioToken)
	t.Cleanup(tw.Close)
	// Twilio is out, and says so quoting the number it could not reach.
	tw.FailNext(-1, twiliotest.Failure{Status: http.StatusServiceUnavailable, Code: twiliotest.CodeServiceUnavailable,
		Message: "Service unavailable: carrier rejected " + smsQuote + "; escalate to " + opsAddr})

	h := &harness{t: t, smtp: smtpSrv, cfg: testConfig(t, smtpSrv, nil)}
	h.cfg.Channels["email"] = append(h.cfg.Channels["email"], providerYAML(t, "sendgrid", "sendgrid", fmt.Sprintf(
		"apiKey: SG.test-key\nfromEmail: no-reply@example.com\nbaseUrl: %s\neventWebhookPublicKey: %s", sg.URL, sg.EventWebhookPublicKey())))
	h.cfg.Channels["sms"] = []config.Provider{providerYAML(t, "twilio-main", "twilio", fmt.Sprintf(
		"accountSid: %s\nauthToken: %s\nfrom: \"+15005550006\"\nbaseUrl: %s", twilioSid, twilioToken, tw.BaseURL()))}
	// Retried twice at most, then failed with a dead letter: the provider's
	// answer must reach the retry and the dead letter, not a breaker's.
	h.cfg.Sink.Retry = config.Retry{Tiers: []time.Duration{time.Second},
		Horizon: map[string]time.Duration{"high": 3 * time.Second, "normal": 3 * time.Second, "low": 3 * time.Second}}
	h.cfg.Sink.Breaker.Failures = 1000
	on := true
	h.cfg.Analytics.Enabled = &on
	h.cfg.Analytics.FlushEvery = 100 * time.Millisecond
	h.start()

	h.mustCall(http.StatusOK, "PUT", "/v1/templates/redaction", map[string]any{"category": "orders", "channels": map[string]any{
		"email": map[string]any{"subject": "Order {{.orderId}}", "text": "Order {{.orderId}} shipped"},
		"sms":   map[string]any{"text": "Order {{.orderId}} shipped"}}})
	send := func(user, channel string, contact map[string]any) string {
		contact["userId"] = user
		return h.send(map[string]any{"template": "redaction", "data": map[string]any{"orderId": "R-1"},
			"channels": []string{channel}, "recipients": []any{contact}})[user]
	}

	// 1. Receipts through the API: a bounce quoting the address, one quoting
	// phone numbers (and a message id made of one).
	bounced := send("alice", "email", map[string]any{"email": alice})
	forwarded := send("bob", "email", map[string]any{"email": "bob@example.com"})
	h.waitStatus(bounced, processors.StatusSent)
	h.waitStatus(forwarded, processors.StatusSent)
	h.mustCall(http.StatusAccepted, "POST", "/v1/receipts", map[string]any{"receipts": []any{
		map[string]any{"notificationId": bounced, "channel": "email", "provider": "smtp-main", "status": "failed",
			"reason": "550 5.1.1 <" + alice + ">: user unknown"},
		map[string]any{"notificationId": forwarded, "channel": "email", "provider": "smtp-main", "status": "failed",
			"reason":            "550 5.1.1 mailbox forwards to +14155550100 and +86 138 0013 8000: user unknown",
			"providerMessageId": "14155550100-0001"},
	}})

	// 2. A provider's signed callback: SendGrid's bounce event.
	viaSG := send("sg-user", "email", map[string]any{"email": sgUser})
	h.waitStatus(viaSG, processors.StatusSent)
	var sgMsg *sendgridtest.Message
	for _, m := range sg.Messages() {
		if m.CustomArgs["notification_id"] == viaSG {
			sgMsg = &m
		}
	}
	if sgMsg == nil {
		t.Fatalf("SendGrid did not send %s: %+v", viaSG, sg.Messages())
	}
	bounce := sendgridtest.EventsFor(*sgMsg, "bounce", map[string]any{"type": "bounce", "status": "5.1.1",
		"reason": "550 5.1.1 <" + sgUser + ">: Recipient address rejected: User unknown (forwarded from +44 20 7946 0958)"})
	if code, err := sg.PostEvents(context.Background(), h.base+"/v1/receipts/sendgrid", bounce); err != nil || code != http.StatusOK {
		t.Fatalf("sendgrid bounce: %d %v", code, err)
	}

	// 3. A provider's error body: retried, then failed with a dead letter.
	sms := send("sms-user", "sms", map[string]any{"phone": smsTo})

	want := map[string]string{ // a reason each notification's history must show, as recorded
		bounced:   "550 5.1.1 <[redacted]>: user unknown",
		forwarded: "550 5.1.1 mailbox forwards to [redacted] and [redacted]: user unknown",
		viaSG:     "sendgrid bounce: 550 5.1.1 <[redacted]>: Recipient address rejected: User unknown (forwarded from [redacted])",
	}
	histories := map[string][]any{}
	for _, id := range []string{bounced, forwarded, viaSG} {
		h.waitHistory(id, "email", processors.StatusFailed)
		histories[id] = h.mustCall(http.StatusOK, "GET", "/v1/notifications/"+id, nil)["history"].([]any)
		if !hasReason(histories[id], processors.StatusFailed, want[id]) {
			t.Errorf("%s: no failed entry with reason %q: %v", id, want[id], histories[id])
		}
	}
	st := h.waitStatus(sms, processors.StatusFailed)
	histories[sms] = st["history"].([]any)
	providerSaid := "carrier rejected [redacted]; escalate to [redacted]"
	for _, status := range []string{processors.StatusRetrying, processors.StatusFailed} {
		if !hasReasonContaining(histories[sms], status, providerSaid) {
			t.Errorf("sms: no %s entry saying %q: %v", status, providerSaid, histories[sms])
		}
	}
	for id, hist := range histories {
		for _, e := range hist {
			reason, _ := e.(map[string]any)["reason"].(string)
			for _, leak := range leaks {
				if strings.Contains(reason, leak) {
					t.Errorf("%s: status reason %q carries %q", id, reason, leak)
				}
			}
		}
	}

	// The raw records: status events (receipts, retries, failures), the
	// retry record's last error, the dead letter's reason.
	retryTopic := topology.RetryTopic(time.Second)
	raw := topicsNow(t, h, string(topology.Events), retryTopic, string(topology.DLQ))
	for topic, b := range raw {
		for _, leak := range leaks {
			if bytes.Contains(b, []byte(leak)) {
				t.Errorf("%s carries %q", topic, leak)
			}
		}
	}
	for topic, kept := range map[string][]string{
		string(topology.Events): {"550 5.1.1", "user unknown", want[bounced], want[forwarded], want[viaSG], providerSaid},
		retryTopic:              {providerSaid},
		string(topology.DLQ):    {"retries exhausted", providerSaid},
	} {
		for _, k := range kept {
			if !bytes.Contains(raw[topic], []byte(k)) {
				t.Errorf("%s lost %q", topic, k)
			}
		}
	}

	// ClickHouse: every row of these notifications, once the failures are in.
	for deadline := time.Now().Add(90 * time.Second); h.svc.AnalyticsAddr() == ""; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("all-in-one started no ClickHouse")
		}
	}
	conn, err := analytics.Open(h.svc.AnalyticsAddr(), "default", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ids := []string{bounced, forwarded, viaSG, sms}
	var failed uint64
	for deadline := time.Now().Add(30 * time.Second); failed < uint64(len(ids)); time.Sleep(100 * time.Millisecond) {
		if err := conn.QueryRow(context.Background(), "SELECT uniqExact(notification_id) FROM notifyd.events WHERE status = 'failed' AND notification_id IN (?, ?, ?, ?)",
			bounced, forwarded, viaSG, sms).Scan(&failed); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("ClickHouse has the failure of %d of %d notifications", failed, len(ids))
		}
	}
	rows, err := conn.Query(context.Background(), "SELECT reason, provider_message_id FROM notifyd.events WHERE notification_id IN (?, ?, ?, ?)",
		bounced, forwarded, viaSG, sms)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := map[string]bool{}
	for rows.Next() {
		var reason, msgID string
		if err := rows.Scan(&reason, &msgID); err != nil {
			t.Fatal(err)
		}
		seen[reason] = true
		for _, leak := range leaks {
			if strings.Contains(reason, leak) || strings.Contains(msgID, leak) {
				t.Errorf("ClickHouse row (reason %q, provider_message_id %q) carries %q", reason, msgID, leak)
			}
		}
	}
	for _, id := range []string{bounced, forwarded, viaSG} {
		if !seen[want[id]] {
			t.Errorf("ClickHouse has no reason %q; has %v", want[id], seen)
		}
	}
}

// Receipt times must be plausible: POST /v1/receipts refuses a time of year
// 1 or 9999, in the future, or before the notification was accepted (400
// naming receipts[i].at, nothing recorded); a normal one is recorded at its
// time. A provider's signed callback with such a time is recorded at the time
// it came.
func TestReceiptTimesMustBePlausible(t *testing.T) {
	sg := sendgridtest.Start("SG.test-key")
	t.Cleanup(sg.Close)
	h := newHarness(t)
	h.cfg.Channels["email"] = []config.Provider{providerYAML(t, "sendgrid", "sendgrid", fmt.Sprintf(
		"apiKey: SG.test-key\nfromEmail: no-reply@example.com\nbaseUrl: %s\neventWebhookPublicKey: %s", sg.URL, sg.EventWebhookPublicKey()))}
	h.start()
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/order-shipped", orderTemplate("orders"))
	send := func(user string) string {
		return h.send(map[string]any{"template": "order-shipped", "data": map[string]any{"orderId": 7, "eta": "now"},
			"recipients": []any{map[string]any{"userId": user, "email": user + "@example.com"}}})[user]
	}
	id := send("t1")
	st := h.waitStatus(id, processors.StatusSent)
	first, err := time.Parse(time.RFC3339, st["history"].([]any)[0].(map[string]any)["at"].(string))
	if err != nil {
		t.Fatal(err)
	}
	receipt := func(status, at string) map[string]any {
		return map[string]any{"notificationId": id, "channel": "email", "provider": "sendgrid", "status": status, "at": at}
	}
	for _, at := range []string{
		"0001-01-01T00:00:00Z",
		"9999-12-31T23:59:59Z",
		time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
		first.Add(-time.Hour).UTC().Format(time.RFC3339),
		"1970-01-01T00:00:00Z",
	} {
		// The bad one second in a batch: the whole request is refused.
		body := map[string]any{"receipts": []any{receipt(processors.StatusDelivered, ""), receipt(processors.StatusOpened, at)}}
		code, out := h.call("POST", "/v1/receipts", body)
		if e, _ := out["error"].(map[string]any); code != http.StatusBadRequest || e == nil || e["field"] != "receipts[1].at" {
			t.Errorf("at %s: %d %v, want 400 naming receipts[1].at", at, code, out)
		}
	}
	if got := historyStatuses(h.mustCall(http.StatusOK, "GET", "/v1/notifications/"+id, nil)); strings.Contains(strings.Join(got, ","), processors.StatusDelivered) {
		t.Fatalf("a refused request recorded a receipt: %v", got)
	}
	at := time.Now().Add(-time.Second).UTC().Truncate(time.Second)
	h.mustCall(http.StatusAccepted, "POST", "/v1/receipts", map[string]any{"receipts": []any{receipt(processors.StatusDelivered, at.Format(time.RFC3339))}})
	h.waitHistory(id, "email", processors.StatusDelivered)
	if e := historyEntry(h.mustCall(http.StatusOK, "GET", "/v1/notifications/"+id, nil), processors.StatusDelivered); e["at"] != at.Format("2006-01-02T15:04:05.000Z07:00") {
		t.Fatalf("delivered at %v, want %s", e["at"], at)
	}

	// SendGrid's events carry a unix timestamp: one far in the future and one
	// from before the notification are recorded at the time of the callback.
	for i, ts := range []int64{253402300799, 1} {
		id := send(fmt.Sprintf("t%d", i+2))
		h.waitStatus(id, processors.StatusSent)
		var msg *sendgridtest.Message
		for _, m := range sg.Messages() {
			if m.CustomArgs["notification_id"] == id {
				msg = &m
			}
		}
		if msg == nil {
			t.Fatalf("SendGrid did not send %s", id)
		}
		before := time.Now().Truncate(time.Millisecond)
		if code, err := sg.PostEvents(context.Background(), h.base+"/v1/receipts/sendgrid",
			sendgridtest.EventsFor(*msg, "delivered", map[string]any{"timestamp": ts})); err != nil || code != http.StatusOK {
			t.Fatalf("callback with timestamp %d: %d %v", ts, code, err)
		}
		after := time.Now()
		h.waitHistory(id, "email", processors.StatusDelivered)
		e := historyEntry(h.mustCall(http.StatusOK, "GET", "/v1/notifications/"+id, nil), processors.StatusDelivered)
		got, err := time.Parse(time.RFC3339, e["at"].(string))
		if err != nil || got.Before(before) || got.After(after) {
			t.Fatalf("timestamp %d recorded at %v (%v), want the time of the callback, between %s and %s", ts, e["at"], err, before, after)
		}
	}
}

// topicsNow reads every record the topics hold now — up to each partition's
// end offset, taken first — and returns their values, concatenated, by topic.
func topicsNow(t *testing.T, h *harness, topics ...string) map[string][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.svc.Brokers()...), kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topics...)
	if err != nil {
		t.Fatal(err)
	}
	left := map[string]map[int32]int64{} // offsets still to read up to
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			t.Fatalf("%s/%d: %v", o.Topic, o.Partition, o.Err)
		}
		if o.Offset > 0 {
			if left[o.Topic] == nil {
				left[o.Topic] = map[int32]int64{}
			}
			left[o.Topic][o.Partition] = o.Offset
		}
	})
	out := map[string][]byte{}
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("records still to read after 30s: %v", left)
		}
		fs.EachError(func(topic string, p int32, err error) { t.Fatalf("fetch %s/%d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			out[r.Topic] = append(out[r.Topic], r.Value...)
			if end, ok := left[r.Topic][r.Partition]; ok && r.Offset+1 >= end {
				delete(left[r.Topic], r.Partition)
				if len(left[r.Topic]) == 0 {
					delete(left, r.Topic)
				}
			}
		})
	}
	for _, topic := range topics {
		if len(out[topic]) == 0 {
			t.Fatalf("%s holds no record", topic)
		}
	}
	return out
}

// hasReason: an entry of history has status and exactly reason.
func hasReason(history []any, status, reason string) bool {
	for _, e := range history {
		if m := e.(map[string]any); m["status"] == status && m["reason"] == reason {
			return true
		}
	}
	return false
}

// hasReasonContaining: an entry of history has status and a reason saying part.
func hasReasonContaining(history []any, status, part string) bool {
	for _, e := range history {
		if m := e.(map[string]any); m["status"] == status && strings.Contains(fmt.Sprint(m["reason"]), part) {
			return true
		}
	}
	return false
}

// historyEntry is the first entry of a status answer's history with status.
func historyEntry(st map[string]any, status string) map[string]any {
	for _, e := range st["history"].([]any) {
		if m := e.(map[string]any); m["status"] == status {
			return m
		}
	}
	return nil
}
