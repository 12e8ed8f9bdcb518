package processors_test

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/notifyd/notifyd/crypt"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// keyring is a real crypt.Keyring over a kfake broker and a goka view.
func keyring(t testing.TB) *crypt.Keyring {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	producer, err := topology.NewProducer(c.ListenAddrs())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(producer.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := kadm.NewClient(producer).CreateTopic(ctx, 1, 1, nil, crypt.Topic); err != nil {
		t.Fatal(err)
	}
	k := topology.Kafka{Brokers: c.ListenAddrs(), Replication: 1}
	view, err := goka.NewView(c.ListenAddrs(), goka.Table(crypt.Topic), crypt.TableCodec(), k.ViewOptions("datakeys")...)
	if err != nil {
		t.Fatal(err)
	}
	vctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- view.Run(vctx) }()
	t.Cleanup(func() { stop(); <-done })
	for !view.Recovered() {
		if ctx.Err() != nil {
			t.Fatal("view did not recover")
		}
		time.Sleep(10 * time.Millisecond)
	}
	mk, err := crypt.ParseMasterKeys("t1:" + base64.StdEncoding.EncodeToString([]byte(strings.Repeat("k", 32))))
	if err != nil {
		t.Fatal(err)
	}
	return crypt.New(mk, view, producer, slog.New(slog.DiscardHandler), crypt.WithWait(time.Second))
}

// A sealed notification carries none of its personal fields in clear, opens
// back to the same record, and cannot be moved to another user or passed off
// as another kind of record; profiles, inbox messages and feedback alike.
func TestSealedRecordsOpenOnlyForTheirUser(t *testing.T) {
	kr := keyring(t)
	ctx := context.Background()
	n := &schemas.Notification{ID: "n1", UserID: "ann", Tenant: "acme", Channel: "email", Address: "ann@example.com",
		Data: `{"code":"123456"}`, Recipient: schemas.Recipient{UserID: "ann", Email: "ann@example.com", Phone: "+14155550100"},
		Content: schemas.Content{Subject: "Hi Ann", Text: "order 42", Data: map[string]string{"k": "v"}},
		Targets: []schemas.Target{{Platform: "fcm", Token: "tok-1"}}}
	sealed, err := processors.SealNotification(ctx, kr, n)
	if err != nil {
		t.Fatal(err)
	}
	b, err := schemas.NotificationCodec.Encode(sealed)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"ann@example.com", "+14155550100", "123456", "Hi Ann", "order 42", "tok-1"} {
		if strings.Contains(string(b), s) {
			t.Errorf("the sealed record holds %q", s)
		}
	}
	back, err := schemas.NotificationCodec.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := processors.OpenNotification(ctx, kr, back); err != nil {
		t.Fatal(err)
	}
	back.Sealed = nil
	got, _ := schemas.NotificationCodec.Encode(back)
	want, _ := schemas.NotificationCodec.Encode(n)
	if string(got) != string(want) {
		t.Fatalf("opened %+v\nwant   %+v", back, n)
	}
	if s := processors.Stripped(sealed); s.Address != "" || len(s.Sealed) == 0 {
		t.Fatalf("stripped %+v", s)
	}

	moved, _ := schemas.NotificationCodec.Decode(b)
	moved.UserID = "bob"
	if err := processors.OpenNotification(ctx, kr, moved); !errors.Is(err, processors.ErrSubjectMismatch) {
		t.Fatalf("a record moved to another user opens: %v", err)
	}
	p := &schemas.Profile{UserID: "ann", Tenant: "acme", Sealed: sealed.Sealed}
	if _, err := processors.OpenProfile(ctx, kr, p); !errors.Is(err, crypt.ErrAuth) {
		t.Fatalf("a notification's envelope opens as a profile: %v", err)
	}

	prof := &schemas.Profile{UserID: "ann", Tenant: "acme", Email: "ann@example.com", Locale: "en",
		Devices: []schemas.Device{{Platform: "apns", Token: "t"}}, Chat: map[string]map[string]string{"slack": {"channel": "C1"}}}
	sp, err := processors.SealProfile(ctx, kr, prof)
	if err != nil || sp.Email != "" || sp.Devices != nil || sp.Chat != nil || sp.Locale != "en" {
		t.Fatalf("sealed profile %+v, %v", sp, err)
	}
	op, err := processors.OpenProfile(ctx, kr, sp)
	if err != nil || !reflect.DeepEqual(op, prof) {
		t.Fatalf("opened profile %+v, %v", op, err)
	}

	it := &schemas.InboxItem{ID: "n1", Title: "Hi", Body: "secret body", Data: map[string]string{"a": "b"}}
	if err := processors.SealInboxItem(ctx, kr, "acme|ann", it); err != nil || it.Body != "" {
		t.Fatalf("sealed item %+v, %v", it, err)
	}
	if err := processors.OpenInboxItem(ctx, kr, "acme|bob", it); !errors.Is(err, processors.ErrSubjectMismatch) {
		t.Fatalf("ann's message opens in bob's inbox: %v", err)
	}
	if err := processors.OpenInboxItem(ctx, kr, "acme|ann", it); err != nil || it.Body != "secret body" {
		t.Fatalf("opened item %+v, %v", it, err)
	}

	fb := &schemas.DeliveryFeedback{NotificationID: "n1", Invalid: []schemas.InvalidTarget{{Platform: "fcm", Token: "tok-1"}}, Reason: "gone"}
	if err := processors.SealFeedback(ctx, kr, "acme|ann", fb); err != nil || fb.Invalid != nil || fb.Reason != "" {
		t.Fatalf("sealed feedback %+v, %v", fb, err)
	}
	if err := processors.OpenFeedback(ctx, kr, "acme|ann", fb); err != nil || len(fb.Invalid) != 1 || fb.Reason != "gone" {
		t.Fatalf("opened feedback %+v, %v", fb, err)
	}

	// Erased: nothing opens any more.
	if _, err := kr.Erase(ctx, "acme|ann"); err != nil {
		t.Fatal(err)
	}
	again, _ := schemas.NotificationCodec.Decode(b)
	if err := processors.OpenNotification(ctx, kr, again); !errors.Is(err, crypt.ErrErased) {
		t.Fatalf("after erasure: %v", err)
	}
}

// A notification's envelope holds Avro (notification_pii.v1), and an envelope
// sealed before it, holding JSON, still opens to the same fields: records
// written by the previous build are read by this one.
func TestNotificationEnvelopeIsAvroAndOldJSONEnvelopesStillOpen(t *testing.T) {
	kr := keyring(t)
	ctx := context.Background()
	n := &schemas.Notification{ID: "n1", UserID: "ann", Tenant: "acme", Channel: "push", Address: "ann@example.com",
		Data: `{"code":"123456"}`, Recipient: schemas.Recipient{UserID: "ann", Email: "ann@example.com", Phone: "+14155550100", Locale: "zh-CN"},
		Content: schemas.Content{Subject: "你好 Ann", HTML: "<p>hi</p>", Badge: 3, Data: map[string]string{"k": "v"}, TemplateParams: map[string]string{"a": "b"}},
		Targets: []schemas.Target{{Platform: "fcm", Token: "tok-1"}, {Platform: "web", Endpoint: "https://push.example/1", P256dh: "p", Auth: "a"}}}
	sealed, err := processors.SealNotification(ctx, kr, n)
	if err != nil {
		t.Fatal(err)
	}
	plain, subject, err := kr.Open(ctx, "notification", sealed.Sealed)
	if err != nil || subject != processors.Subject(n) {
		t.Fatalf("open: %v (subject %q)", err, subject)
	}
	if name, err := schemas.RecordName(plain); err != nil || name != "notifyd.NotificationPII" {
		t.Fatalf("envelope plaintext is %q (%v), want an Avro notifyd.NotificationPII", name, err)
	}
	opened := processors.Stripped(sealed)
	if err := processors.OpenNotification(ctx, kr, opened); err != nil {
		t.Fatal(err)
	}
	opened.Sealed = nil
	if !reflect.DeepEqual(opened, n) {
		t.Fatalf("opened %+v\nwant %+v", opened, n)
	}

	// What the previous build sealed: the same fields as JSON.
	legacy := `{"r":{"userId":"ann","email":"ann@example.com","phone":"+14155550100","locale":"zh-CN"},"d":"{\"code\":\"123456\"}",` +
		`"a":"ann@example.com","c":{"subject":"你好 Ann","html":"<p>hi</p>","badge":3,"data":{"k":"v"},"templateParams":{"a":"b"}},` +
		`"t":[{"platform":"fcm","token":"tok-1"},{"platform":"web","endpoint":"https://push.example/1","p256dh":"p","auth":"a"}]}`
	env, err := kr.Seal(ctx, processors.Subject(n), "notification", []byte(legacy))
	if err != nil {
		t.Fatal(err)
	}
	old := processors.Stripped(sealed)
	old.Sealed = env
	if err := processors.OpenNotification(ctx, kr, old); err != nil {
		t.Fatal(err)
	}
	old.Sealed = nil
	if !reflect.DeepEqual(old, n) {
		t.Fatalf("legacy envelope opened to %+v\nwant %+v", old, n)
	}

	// Neither Avro nor JSON: a clear error, not a zero notification.
	bad, err := kr.Seal(ctx, processors.Subject(n), "notification", []byte("\xc3\x01garbage"))
	if err != nil {
		t.Fatal(err)
	}
	old.Sealed = bad
	if err := processors.OpenNotification(ctx, kr, old); err == nil || !strings.Contains(err.Error(), "open notification n1") {
		t.Fatalf("garbage plaintext: %v", err)
	}
}
