package service_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/syndtr/goleveldb/leveldb"
	"github.com/syndtr/goleveldb/leveldb/opt"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/crypt"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/smtptest"
)

// topicRecords reads every record of the topics matching pattern (a regular
// expression) as they are on the broker.
func topicRecords(t *testing.T, h *harness, pattern string) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.svc.Brokers()...), kgo.ConsumeRegex(), kgo.ConsumeTopics(pattern),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.MetadataMinAge(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	for idle := 0; idle < 2; {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		n := 0
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r); n++ })
		if n == 0 {
			idle++
		}
	}
	return out
}

// Personal data at rest: contacts and rendered content are sealed in every
// record a stage writes (profiles, accepted, out, retry, scheduled, DLQ,
// inbox) and in goka's local state; the pipeline still delivers. Deleting
// the profile destroys the user's key: the records stop decrypting, the
// profile answers 404, and another user's data still opens.
func TestPersonalDataIsSealedEverywhereAndErasable(t *testing.T) {
	const (
		aliceEmail = "pii.alice@example.org"
		alicePhone = "+14155550199"
		bobEmail   = "pii.bob@example.org"
		bodyMark   = "BODYMARK-7731"
		orderID    = "ORD-PII-55417"
		fcmToken   = "fcm-token-PII-0123456789"
	)
	smtpSrv, err := smtptest.Start(smtptest.Options{OnData: func(m smtptest.Message) error {
		for _, to := range m.To {
			if strings.Contains(to, "pii.bob") {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user " + to}
			}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(smtpSrv.Close)
	logs := &syncBuffer{}
	h := &harness{t: t, smtp: smtpSrv, cfg: testConfig(t, smtpSrv, nil),
		log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	withInbox(&h.cfg)
	h.start()

	h.mustCall(http.StatusOK, "PUT", "/v1/templates/pii", map[string]any{"category": "account", "channels": map[string]any{
		"email": map[string]any{"subject": "Order {{.orderId}}", "text": bodyMark + " order {{.orderId}}"},
		"inapp": map[string]any{"title": bodyMark + " inbox", "body": "order {{.orderId}}"}}})
	h.mustCall(http.StatusOK, "PUT", "/v1/profiles/alice", map[string]any{"email": aliceEmail, "phone": alicePhone,
		"devices": []any{map[string]any{"platform": "fcm", "token": fcmToken}}})
	h.mustCall(http.StatusOK, "PUT", "/v1/profiles/bob", map[string]any{"email": bobEmail})
	send := func(event, user string, extra map[string]any) string {
		body := map[string]any{"template": "pii", "eventId": event, "data": map[string]any{"orderId": orderID},
			"recipients": []any{map[string]any{"userId": user}}}
		for k, v := range extra {
			body[k] = v
		}
		return h.send(body)[user]
	}
	aliceID := send("pii-1", "alice", nil)
	bobID := send("pii-2", "bob", map[string]any{"channels": []string{"email"}})
	laterID := send("pii-3", "alice", map[string]any{"sendAt": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)})
	// carol has no profile: only the inline address of her one send.
	carolID := h.send(map[string]any{"template": "pii", "eventId": "pii-4", "data": map[string]any{"orderId": orderID},
		"channels": []string{"email"}, "recipients": []any{map[string]any{"userId": "carol", "email": "pii.carol@example.org"}}})["carol"]
	h.waitStatus(carolID, "sent")
	h.waitStatus(aliceID, "sent")
	h.waitStatus(bobID, "failed")
	h.waitStatus(laterID, "scheduled")

	// Sealing takes nothing away from delivery: the mail and the inbox carry
	// the content.
	var aliceMail *smtptest.Message
	for _, m := range smtpSrv.WaitFor(2, 10*time.Second) {
		if m.To[0] == aliceEmail {
			aliceMail = &m
		}
	}
	if aliceMail == nil || !bytes.Contains(aliceMail.Data, []byte(bodyMark)) {
		t.Fatalf("alice's mail: %+v", smtpSrv.Messages())
	}
	tok := h.token("alice")
	var list map[string]any
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, list = h.userCall("GET", "/v1/inbox/alice/messages", tok, nil); list["seq"] != float64(0) {
			break
		}
	}
	if ms, _ := list["messages"].([]any); len(ms) != 1 || ms[0].(map[string]any)["title"] != bodyMark+" inbox" {
		t.Fatalf("alice's inbox: %v", list)
	}
	if p := h.mustCall(http.StatusOK, "GET", "/v1/profiles/alice", nil); p["email"] != aliceEmail || p["phone"] != alicePhone {
		t.Fatalf("alice's profile reads %v", p)
	}

	// The template's own text is not personal data (templates are stored as
	// written); the rendered text is, and so is the request's data.
	rendered := bodyMark + " order " + orderID
	secrets := []string{aliceEmail, alicePhone, bobEmail, "pii.carol@example.org", rendered, orderID, fcmToken}
	// Every topic but notify.ingest, which holds requests as their producer
	// wrote them (docs/SECURITY.md), and notify.deliver.feedback is included.
	recs := topicRecords(t, h, `^notify\.(profiles|accepted(\.high|\.low)?|out\..*|dlq|retry\..*|scheduled|inbox\..*|events|deliver\.feedback|.*-table)$`)
	seen := map[string]int{}
	for _, r := range recs {
		seen[r.Topic]++
		for _, s := range secrets {
			if bytes.Contains(r.Value, []byte(s)) || bytes.Contains(r.Key, []byte(s)) {
				t.Errorf("%s offset %d holds %q in clear", r.Topic, r.Offset, s)
			}
		}
	}
	for _, topic := range []string{"notify.profiles", "notify.accepted", "notify.out.email.normal", "notify.dlq", "notify.scheduled",
		"notify.inbox.commands", "notify.inbox.events"} {
		if seen[topic] == 0 {
			t.Errorf("no record read from %s (seen %v): the scan proves nothing there", topic, seen)
		}
	}

	// Alice's records open before the erasure, and not after it.
	keys := h.svc.Keyring()
	opens := func(user string) (opened, failed int, errs []error) {
		for _, r := range recs {
			if !strings.HasPrefix(r.Topic, "notify.accepted") && !strings.HasPrefix(r.Topic, "notify.out.") && r.Topic != "notify.scheduled" {
				continue
			}
			n, err := schemas.NotificationCodec.Decode(r.Value)
			if err != nil || n.UserID != user || len(n.Sealed) == 0 {
				continue
			}
			if err := processors.OpenNotification(context.Background(), keys, n); err != nil {
				failed++
				errs = append(errs, err)
				continue
			}
			opened++
		}
		return
	}
	if o, f, errs := opens("alice"); o == 0 || f != 0 {
		t.Fatalf("before erasure: %d of alice's records opened, %d failed: %v", o, f, errs)
	}
	h.mustCall(http.StatusNoContent, "DELETE", "/v1/profiles/alice", nil)
	h.mustCall(http.StatusNotFound, "GET", "/v1/profiles/alice", nil)
	o, f, errs := opens("alice")
	if o != 0 || f == 0 {
		t.Fatalf("after erasure: %d of alice's records still open (%d do not)", o, f)
	}
	for _, err := range errs {
		if !errors.Is(err, crypt.ErrErased) {
			t.Fatalf("after erasure a record fails with %v, want crypt.ErrErased", err)
		}
	}
	if o, f, errs := opens("bob"); o == 0 || f != 0 {
		t.Fatalf("bob (not erased): %d opened, %d failed: %v", o, f, errs)
	}
	// A user who never had a profile (inline contacts only) is erased too;
	// a second DELETE finds nothing left to erase.
	if o, f, _ := opens("carol"); o == 0 || f != 0 {
		t.Fatalf("carol before erasure: %d opened, %d failed", o, f)
	}
	h.mustCall(http.StatusNoContent, "DELETE", "/v1/profiles/carol", nil)
	if o, f, _ := opens("carol"); o != 0 || f == 0 {
		t.Fatalf("carol after erasure: %d of her records still open", o)
	}
	h.mustCall(http.StatusNotFound, "DELETE", "/v1/profiles/carol", nil)
	_, list = h.userCall("GET", "/v1/inbox/alice/messages", tok, nil)
	if ms, _ := list["messages"].([]any); len(ms) != 1 || ms[0].(map[string]any)["title"] != nil {
		t.Fatalf("alice's inbox after erasure shows content: %v", list)
	}

	// Nor in the log, at debug level, bob's refusal by the SMTP server (which
	// quoted his address) included.
	if !strings.Contains(logs.String(), "notification failed") {
		t.Fatal("the log shows no failure: the check below proves nothing")
	}
	for _, sec := range secrets {
		if strings.Contains(logs.String(), sec) {
			t.Errorf("the log holds %q", sec)
		}
	}

	// goka's local state, read value by value once the service has stopped
	// (leveldb compresses blocks, so the files alone could hide a value).
	h.stop()
	scanned := 0
	root := filepath.Join(h.cfg.DataDir, "goka")
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "CURRENT" {
			return err
		}
		db, err := leveldb.OpenFile(filepath.Dir(path), &opt.Options{ReadOnly: true})
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Dir(path), err)
		}
		defer db.Close()
		it := db.NewIterator(nil, nil)
		defer it.Release()
		for it.Next() {
			scanned++
			for _, s := range secrets {
				if bytes.Contains(it.Value(), []byte(s)) || bytes.Contains(it.Key(), []byte(s)) {
					t.Errorf("local state %s key %q holds %q in clear", filepath.Dir(path), it.Key(), s)
				}
			}
		}
		return it.Error()
	})
	if err != nil {
		t.Fatal(err)
	}
	if scanned == 0 {
		t.Fatalf("no value found under %s: the scan proves nothing", root)
	}
}
