package schemas

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func TestRoundTripEveryRecord(t *testing.T) {
	check := func(name string, enc func() ([]byte, error), dec func([]byte) (any, error), want any) {
		t.Helper()
		b, err := enc()
		if err != nil {
			t.Fatalf("%s: encode: %v", name, err)
		}
		if !bytes.HasPrefix(b, []byte{0xC3, 0x01}) {
			t.Fatalf("%s: not single-object encoded: % x", name, b[:4])
		}
		got, err := dec(b)
		if err != nil {
			t.Fatalf("%s: decode: %v", name, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: round trip\n got %+v\nwant %+v", name, got, want)
		}
	}
	req := &SendRequest{EventID: "e1", Template: "t", Recipients: []Recipient{{UserID: "u1", Email: "a@b.c", Upsert: true}},
		Data: `{"x":1}`, Priority: "high", Channels: []string{"email"}, SendAt: 5, ExpiresAt: 6, AcceptedAt: 7, Source: "api"}
	check("SendRequest", func() ([]byte, error) { return SendRequestCodec.Encode(req) },
		func(b []byte) (any, error) { return SendRequestCodec.Decode(b) }, req)
	prof := &Profile{UserID: "u1", Email: "a@b.c", Devices: []Device{{Platform: "fcm", Token: "tok"}},
		Chat:        map[string]map[string]string{"slack": {"webhookUrl": "https://x"}},
		Preferences: Preferences{Categories: map[string]map[string]bool{"marketing": {"email": false}}, QuietStart: "22:00"},
		Attributes:  map[string]string{"plan": "pro"}}
	check("Profile", func() ([]byte, error) { return ProfileCodec.Encode(prof) },
		func(b []byte) (any, error) { return ProfileCodec.Decode(b) }, prof)
	tmpl := &Template{ID: "t", Channels: map[string]ChannelContent{"push": {Title: "s", Badge: 3, Sound: "ding",
		Data: map[string]string{"order": "{{.orderId}}"}, TemplateParams: map[string]string{"code": "1"}}},
		Locales: map[string]map[string]ChannelContent{"zh-CN": {"email": {Subject: "主题",
			Data: map[string]string{"a": "b"}, TemplateParams: map[string]string{"c": "d"}}}}}
	check("Template", func() ([]byte, error) { return TemplateCodec.Encode(tmpl) },
		func(b []byte) (any, error) { return TemplateCodec.Decode(b) }, tmpl)
	n := &Notification{ID: "n1", EventID: "e1", UserID: "u1", Template: "t", Channels: []string{"push"}, Channel: "push",
		Content: Content{Title: "hi", Badge: 2, CollapseKey: "c", Data: map[string]string{"k": "v"}, TemplateParams: map[string]string{"p": "q"}},
		Targets: []Target{{Platform: "fcm", Token: "t1"}, {Platform: "webpush", Endpoint: "https://e", P256dh: "k", Auth: "a"}}, OTP: true}
	check("Notification", func() ([]byte, error) { return NotificationCodec.Encode(n) },
		func(b []byte) (any, error) { return NotificationCodec.Decode(b) }, n)
	fb := &DeliveryFeedback{NotificationID: "n1", Channel: "push", Status: "failed", Invalid: []InvalidTarget{{Platform: "apns", Token: "x"}},
		Unsubscribe: true, Moved: []MovedTarget{{Platform: "telegram", From: "-1", To: "-1001"}}, Reason: "r"}
	check("DeliveryFeedback", func() ([]byte, error) { return FeedbackCodec.Encode(fb) },
		func(b []byte) (any, error) { return FeedbackCodec.Decode(b) }, fb)
	dl := &DeadLetter{Topic: "notify.ingest", Key: []byte{1}, Value: []byte{0, 255}, Reason: "bad"}
	check("DeadLetter", func() ([]byte, error) { return DeadLetterCodec.Encode(dl) },
		func(b []byte) (any, error) { return DeadLetterCodec.Decode(b) }, dl)
	lc := &Lifecycle{ID: "n", Channels: map[string]string{"email": "sent"}, History: []HistoryEntry{{Status: "accepted", At: 1}}}
	check("Lifecycle", func() ([]byte, error) { return LifecycleCodec.Encode(lc) },
		func(b []byte) (any, error) { return LifecycleCodec.Decode(b) }, lc)
}

// A record written by an older writer (fewer fields) decodes with the current type:
// the fields it lacks take their defaults.
func TestDecodesRecordOfPreviousSchemaVersion(t *testing.T) {
	old, err := registerForTest("testdata/send_request.v0.avsc", 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := old.SingleFromNative(nil, map[string]any{
		"eventId": "e-old", "template": "welcome", "data": `{"a":"b"}`,
		"recipients": []any{map[string]any{"userId": "u9", "email": "u9@example.com"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := SendRequestCodec.Decode(b)
	if err != nil {
		t.Fatalf("decode older version: %v", err)
	}
	want := &SendRequest{EventID: "e-old", Template: "welcome", Data: `{"a":"b"}`,
		Recipients: []Recipient{{UserID: "u9", Email: "u9@example.com"}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v want %+v", got, want)
	}
}

// Every embedded version of every record decodes into the current Go type, so an
// old version file cannot be dropped or broken while records of it may exist.
func TestEveryEmbeddedVersionDecodes(t *testing.T) {
	if err := load(); err != nil {
		t.Fatal(err)
	}
	for fp, v := range byFingerprint {
		if v.file == "testdata/send_request.v0.avsc" {
			continue
		}
		spec := v.codec.Schema()
		if spec == "" {
			t.Fatalf("%s: empty schema", v.file)
		}
		latest := latestByName[v.record]
		if latest == nil {
			t.Fatalf("%s: no latest for %s", v.file, v.record)
		}
		if fp != v.codec.Rabin {
			t.Fatalf("%s: fingerprint mismatch", v.file)
		}
	}
	files, err := Versions("notifyd.StatusEvent")
	if err != nil || len(files) == 0 || files[0] != "status_event.v1.avsc" {
		t.Fatalf("versions = %v, %v", files, err)
	}
}

func TestDecodeRejectsGarbageWithClearError(t *testing.T) {
	cases := map[string][]byte{
		"empty":             nil,
		"json":              []byte(`{"eventId":"x"}`),
		"unknown schema":    {0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0},
		"truncated":         nil,
		"wrong record type": nil,
	}
	good, _ := SendRequestCodec.Encode(&SendRequest{EventID: "e", Template: "t", Recipients: []Recipient{{UserID: "u"}}})
	cases["truncated"] = good[:len(good)-3]
	cases["wrong record type"], _ = ProfileCodec.Encode(&Profile{UserID: "u"})
	for name, b := range cases {
		_, err := SendRequestCodec.Decode(b)
		if err == nil {
			t.Errorf("%s: decoded garbage without error", name)
			continue
		}
		if name == "unknown schema" && !errors.Is(err, ErrUnknownSchema) {
			t.Errorf("%s: want ErrUnknownSchema, got %v", name, err)
		}
	}
}

func FuzzDecodeSendRequest(f *testing.F) {
	good, _ := SendRequestCodec.Encode(&SendRequest{EventID: "e", Template: "t", Recipients: []Recipient{{UserID: "u"}}, Channels: []string{"email"}})
	f.Add(good)
	f.Add([]byte{0xC3, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := SendRequestCodec.Decode(b)
		if err != nil {
			return
		}
		// Whatever decodes must encode again and decode to the same value.
		again, err := SendRequestCodec.Encode(v)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		v2, err := SendRequestCodec.Decode(again)
		if err != nil || !reflect.DeepEqual(v, v2) {
			t.Fatalf("unstable round trip: %v", err)
		}
	})
}

// A record that claims a huge item count must fail cleanly, not allocate for it.
// (The fuzzer's crasher, and a hand-made one with a bigger claim.)
func TestDecodeRefusesHugeClaimedCounts(t *testing.T) {
	fuzzed := []byte("\xc3\x01\xd3m\xfcE\x04ã\xe3\x020\x020\xfc\xfc\xfc\xfc\x0e\xfc\xfc0")
	if _, err := SendRequestCodec.Decode(fuzzed); err == nil {
		t.Fatal("crafted record decoded")
	}
	good, _ := SendRequestCodec.Encode(&SendRequest{EventID: "e", Template: "t"})
	// header (10 bytes) + eventId + template, then the recipients array's block
	// count: zig-zag varint for 2^40 items.
	crafted := append([]byte(nil), good[:10+2+2]...)
	crafted = append(crafted, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40)
	if _, err := SendRequestCodec.Decode(crafted); err == nil {
		t.Fatal("a claim of 2^40 recipients decoded")
	}
	if _, err := SendRequestCodec.Decode(make([]byte, MaxRecordBytes+1)); err == nil {
		t.Fatal("an oversized record decoded")
	}
}

// Every schema change keeps the previous versions embedded, and records they
// wrote still decode, with the fields added since at their zero value (DESIGN
// rule 6).
func TestOlderSchemaVersionsStillDecode(t *testing.T) {
	if err := load(); err != nil {
		t.Fatal(err)
	}
	older := func(file string) *version {
		for _, v := range byFingerprint {
			if v.file == file {
				return v
			}
		}
		t.Fatalf("%s must stay embedded", file)
		return nil
	}
	encode := func(file string, native map[string]any) []byte {
		b, err := older(file).codec.SingleFromNative(nil, native)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		return b
	}
	recentV1 := map[string]any{"day": "2026-11-22", "sentToday": map[string]any{"email": int32(3)},
		"recent": []any{map[string]any{"hash": "h", "at": int64(5)}}}
	for _, file := range []string{"user_state.v1.avsc", "user_state.v2.avsc"} {
		st, err := UserStateCodec.Decode(encode(file, recentV1))
		if err != nil || st.SentToday["email"] != 3 || len(st.Recent) != 1 || st.Recent[0].Hash != "h" ||
			st.Recent[0].NotificationID != "" || st.Recent[0].Channel != "" {
			t.Fatalf("%s decoded %+v, %v", file, st, err)
		}
	}
	dl, err := DeadLetterCodec.Decode(encode("dead_letter.v1.avsc", map[string]any{"topic": "notify.ingest", "partition": int32(1),
		"offset": int64(7), "key": []byte("k"), "value": []byte{1}, "reason": "bad", "stage": "dedup", "at": int64(9)}))
	if err != nil || dl.Offset != 7 || dl.Reason != "bad" || dl.NotificationID != "" || dl.Truncated {
		t.Fatalf("dead_letter v1 decoded %+v, %v", dl, err)
	}
	de, err := DedupEntryCodec.Decode(encode("dedup_entry.v1.avsc", map[string]any{"firstSeen": int64(42)}))
	if err != nil || de.FirstSeen != 42 || de.Origin != "" {
		t.Fatalf("dedup_entry v1 decoded %+v, %v", de, err)
	}
	lc, err := LifecycleCodec.Decode(encode("lifecycle.v1.avsc", map[string]any{"id": "n", "status": "sent",
		"history": []any{map[string]any{"status": "sent", "at": int64(3)}}}))
	if err != nil || lc.Status != "sent" || len(lc.History) != 1 || lc.History[0].EventID != "" {
		t.Fatalf("lifecycle v1 decoded %+v, %v", lc, err)
	}
	n, err := NotificationCodec.Decode(encode("notification.v1.avsc", map[string]any{"id": "n", "eventId": "e", "userId": "u",
		"template": "t", "recipient": map[string]any{}, "content": map[string]any{}, "routedAt": int64(11)}))
	if err != nil || n.ID != "n" || n.RoutedAt != 11 || n.Attempts != 0 || n.RetryAt != 0 {
		t.Fatalf("notification v1 decoded %+v, %v", n, err)
	}
	n, err = NotificationCodec.Decode(encode("notification.v2.avsc", map[string]any{"id": "n", "eventId": "e", "userId": "u",
		"template": "t", "recipient": map[string]any{}, "content": map[string]any{"title": "hi"}, "retries": int32(2)}))
	if err != nil || n.Content.Title != "hi" || n.Retries != 2 || len(n.Targets) != 0 || n.OTP || n.Content.Badge != 0 {
		t.Fatalf("notification v2 decoded %+v, %v", n, err)
	}
	tm, err := TemplateCodec.Decode(encode("template.v1.avsc", map[string]any{"id": "t",
		"channels": map[string]any{"push": map[string]any{"title": "x"}}}))
	if err != nil || tm.Channels["push"].Title != "x" || tm.Channels["push"].Sound != "" {
		t.Fatalf("template v1 decoded %+v, %v", tm, err)
	}
	fb, err := FeedbackCodec.Decode(encode("delivery_feedback.v1.avsc", map[string]any{"notificationId": "n", "channel": "sms",
		"status": "failed", "at": int64(1)}))
	if err != nil || fb.Status != "failed" || len(fb.Invalid) != 0 || fb.Unsubscribe {
		t.Fatalf("delivery_feedback v1 decoded %+v, %v", fb, err)
	}
	// Issue 9 and 10 versions: records of the versions before them read as
	// the default tenant, unsealed, with no local time.
	n, err = NotificationCodec.Decode(encode("notification.v3.avsc", map[string]any{"id": "n", "eventId": "e", "userId": "u",
		"template": "t", "recipient": map[string]any{"email": "a@b.c"}, "content": map[string]any{}, "otp": true}))
	if err != nil || n.Tenant != "" || len(n.Sealed) != 0 || n.Recipient.Email != "a@b.c" || !n.OTP || n.LocalTime != "" {
		t.Fatalf("notification v3 decoded %+v, %v", n, err)
	}
	n, err = NotificationCodec.Decode(encode("notification.v4.avsc", map[string]any{"id": "n", "eventId": "e", "userId": "u",
		"template": "t", "recipient": map[string]any{}, "content": map[string]any{}, "tenant": "acme", "sealed": []byte{1, 2}}))
	if err != nil || n.Tenant != "acme" || len(n.Sealed) != 2 || n.LocalTime != "" {
		t.Fatalf("notification v4 decoded %+v, %v", n, err)
	}
	rq, err := SendRequestCodec.Decode(encode("send_request.v2.avsc", map[string]any{"eventId": "e", "template": "t",
		"recipients": []any{map[string]any{"userId": "u"}}, "otp": true}))
	if err != nil || rq.Tenant != "" || !rq.OTP || rq.LocalTime != "" {
		t.Fatalf("send_request v2 decoded %+v, %v", rq, err)
	}
	pr, err := ProfileCodec.Decode(encode("profile.v1.avsc", map[string]any{"userId": "u", "email": "a@b.c",
		"preferences": map[string]any{}}))
	if err != nil || pr.Email != "a@b.c" || pr.Tenant != "" || len(pr.Sealed) != 0 {
		t.Fatalf("profile v1 decoded %+v, %v", pr, err)
	}
	se, err := StatusEventCodec.Decode(encode("status_event.v1.avsc", map[string]any{"id": "i", "notificationId": "n",
		"status": "sent", "at": int64(1)}))
	if err != nil || se.Status != "sent" || se.Tenant != "" {
		t.Fatalf("status_event v1 decoded %+v, %v", se, err)
	}
	fb, err = FeedbackCodec.Decode(encode("delivery_feedback.v3.avsc", map[string]any{"notificationId": "n", "channel": "email",
		"status": "unsubscribed", "at": int64(1), "unsubscribe": true}))
	if err != nil || !fb.Unsubscribe || fb.UnsubscribeCategory != "" {
		t.Fatalf("delivery_feedback v3 decoded %+v, %v", fb, err)
	}
	ic, err := InboxCommandCodec.Decode(encode("inbox_command.v1.avsc", map[string]any{"op": "add", "userId": "u",
		"message": map[string]any{"id": "m", "title": "hi"}}))
	if err != nil || ic.Message.Title != "hi" || len(ic.Message.Sealed) != 0 || ic.Tenant != "" {
		t.Fatalf("inbox_command v1 decoded %+v, %v", ic, err)
	}
	// Issue 10 (campaigns, digests): the versions before read with no
	// campaign, no digest and no attributes.
	n, err = NotificationCodec.Decode(encode("notification.v5.avsc", map[string]any{"id": "n", "eventId": "e", "userId": "u",
		"template": "t", "recipient": map[string]any{}, "content": map[string]any{}, "localTime": "09:00"}))
	if err != nil || n.LocalTime != "09:00" || n.Campaign != "" || n.DigestKey != "" || n.DigestFlush {
		t.Fatalf("notification v5 decoded %+v, %v", n, err)
	}
	rq, err = SendRequestCodec.Decode(encode("send_request.v4.avsc", map[string]any{"eventId": "e", "template": "t",
		"recipients": []any{map[string]any{"userId": "u"}}, "localTime": "09:00"}))
	if err != nil || rq.LocalTime != "09:00" || rq.DigestKey != "" || rq.ScheduleID != "" {
		t.Fatalf("send_request v4 decoded %+v, %v", rq, err)
	}
	se, err = StatusEventCodec.Decode(encode("status_event.v2.avsc", map[string]any{"id": "i", "notificationId": "n",
		"status": "sent", "at": int64(1), "tenant": "acme"}))
	if err != nil || se.Tenant != "acme" || se.Campaign != "" {
		t.Fatalf("status_event v2 decoded %+v, %v", se, err)
	}
	lc, err = LifecycleCodec.Decode(encode("lifecycle.v3.avsc", map[string]any{"id": "n", "status": "sent", "tenant": "acme"}))
	if err != nil || lc.Tenant != "acme" || lc.Campaign != "" {
		t.Fatalf("lifecycle v3 decoded %+v, %v", lc, err)
	}
	pr, err = ProfileCodec.Decode(encode("profile.v2.avsc", map[string]any{"userId": "u", "locale": "de",
		"preferences": map[string]any{}, "tenant": "acme"}))
	if err != nil || pr.Locale != "de" || len(pr.Attributes) != 0 {
		t.Fatalf("profile v2 decoded %+v, %v", pr, err)
	}
	tm, err = TemplateCodec.Decode(encode("template.v3.avsc", map[string]any{"id": "t", "tenant": "acme"}))
	if err != nil || tm.Tenant != "acme" || tm.DigestWindowMs != 0 || tm.DigestMax != 0 {
		t.Fatalf("template v3 decoded %+v, %v", tm, err)
	}
	st, err := UserStateCodec.Decode(encode("user_state.v3.avsc", recentV1))
	if err != nil || len(st.Recent) != 1 || len(st.Digests) != 0 {
		t.Fatalf("user_state v3 decoded %+v, %v", st, err)
	}
	// Issue 16 (template versions, pinning, sealed campaign data): the
	// versions before read as saved before versions, pinned to nothing.
	tm, err = TemplateCodec.Decode(encode("template.v4.avsc", map[string]any{"id": "t", "category": "marketing", "digestMax": int32(3)}))
	if err != nil || tm.Category != "marketing" || tm.DigestMax != 3 || tm.Version != 0 || tm.Hash != "" || tm.SavedBy != "" || tm.RestoredFrom != 0 {
		t.Fatalf("template v4 decoded %+v, %v", tm, err)
	}
	n, err = NotificationCodec.Decode(encode("notification.v6.avsc", map[string]any{"id": "n", "eventId": "e", "userId": "u",
		"template": "t", "recipient": map[string]any{}, "content": map[string]any{}, "campaign": "c"}))
	if err != nil || n.Campaign != "c" || n.TemplateVersion != 0 || n.TemplateHash != "" || len(n.SealedData) != 0 {
		t.Fatalf("notification v6 decoded %+v, %v", n, err)
	}
	rq, err = SendRequestCodec.Decode(encode("send_request.v5.avsc", map[string]any{"eventId": "e", "template": "t",
		"recipients": []any{map[string]any{"userId": "u"}}, "digestKey": "d"}))
	if err != nil || rq.DigestKey != "d" || rq.TemplateVersion != 0 || rq.TemplateHash != "" {
		t.Fatalf("send_request v5 decoded %+v, %v", rq, err)
	}
	se, err = StatusEventCodec.Decode(encode("status_event.v3.avsc", map[string]any{"id": "i", "notificationId": "n",
		"status": "sent", "at": int64(1), "campaign": "c"}))
	if err != nil || se.Campaign != "c" || se.TemplateVersion != 0 {
		t.Fatalf("status_event v3 decoded %+v, %v", se, err)
	}
	se, err = StatusEventCodec.Decode(encode("status_event.v4.avsc", map[string]any{"id": "i", "notificationId": "n",
		"status": "sent", "at": int64(1), "templateVersion": int64(3)}))
	if err != nil || se.TemplateVersion != 3 || se.QueuedAt != 0 {
		t.Fatalf("status_event v4 decoded %+v, %v", se, err)
	}
	lc, err = LifecycleCodec.Decode(encode("lifecycle.v4.avsc", map[string]any{"id": "n", "status": "sent", "campaign": "c"}))
	if err != nil || lc.Campaign != "c" || lc.TemplateVersion != 0 {
		t.Fatalf("lifecycle v4 decoded %+v, %v", lc, err)
	}
	campaignV1 := map[string]any{"id": "c", "template": "t", "data": `{"a":1}`, "state": "approved",
		"decisions": []any{map[string]any{"by": "k", "decision": "approved", "at": int64(2)}}}
	cp, err := CampaignCodec.Decode(encode("campaign.v1.avsc", campaignV1))
	if err != nil || cp.Data != `{"a":1}` || cp.TemplateVersion != 0 || cp.TemplateHash != "" || len(cp.SealedData) != 0 ||
		len(cp.Decisions) != 1 || cp.Decisions[0].TemplateVersion != 0 {
		t.Fatalf("campaign v1 decoded %+v, %v", cp, err)
	}
	cc, err := CampaignCommandCodec.Decode(encode("campaign_command.v1.avsc", map[string]any{"op": "create", "campaign": campaignV1}))
	if err != nil || cc.Campaign.Data != `{"a":1}` || cc.TemplateVersion != 0 || cc.Campaign.TemplateSetBy != "" {
		t.Fatalf("campaign_command v1 decoded %+v, %v", cc, err)
	}
}
