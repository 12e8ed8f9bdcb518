package schemas

import (
	"fmt"
	"strings"
	"testing"
)

// Realistic records, for the benchmarks and as fuzz seeds.

// renderedEmail is what the render stage puts in an email's Content: a
// templated HTML body of a few KiB and its text alternative.
func renderedEmail() Content {
	var html, text strings.Builder
	html.WriteString(`<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Your order has shipped</title></head>` +
		`<body style="font-family:Helvetica,Arial,sans-serif;color:#222"><table role="presentation" width="100%">`)
	text.WriteString("Hi Ada,\n\nYour order 4711-0815 has shipped. Items:\n")
	for i := 1; i <= 12; i++ {
		fmt.Fprintf(&html, `<tr><td class="item">Item %d — Größe M, 颜色 蓝色</td><td class="qty">%d</td><td class="price">€%d.99</td></tr>`, i, i%3+1, 10+i)
		fmt.Fprintf(&text, "  - Item %d (x%d) €%d.99\n", i, i%3+1, 10+i)
	}
	html.WriteString(`</table><p>Track it at <a href="https://shop.example.com/track/4711-0815?utm_source=notifyd">shop.example.com</a>.</p>` +
		`<p style="font-size:12px;color:#888">You get this email because you ordered at shop.example.com. ` +
		`<a href="https://notify.example.com/u/eyJ0IjoiYWNtZSIsInUiOiJ1LTQyIn0">Unsubscribe</a></p></body></html>`)
	text.WriteString("\nTrack it at https://shop.example.com/track/4711-0815\n")
	return Content{
		Subject:  "Your order 4711-0815 has shipped 📦",
		HTML:     html.String(),
		Text:     text.String(),
		Endpoint: "smtp",
		Data:     map[string]string{"orderId": "4711-0815"},
	}
}

func sampleNotification() *Notification {
	return &Notification{
		ID: "01JD7ZK3M4QX8R2V5N6B9C0D1E", EventID: "order-4711-0815-shipped", UserID: "u-42",
		Template: "order_shipped", Priority: "normal", Category: "transactional",
		Channels:  []string{"email", "push"},
		Recipient: Recipient{UserID: "u-42", Email: "ada@example.com", Locale: "en-GB"},
		Data:      `{"orderId":"4711-0815","carrier":"DHL","eta":"2026-11-24","items":12}`,
		SendAt:    1795000000000, ExpiresAt: 1795086400000, AcceptedAt: 1794999999123,
		Channel: "email", Address: "ada@example.com", Locale: "en-GB",
		Content:  renderedEmail(),
		RoutedAt: 1795000000456, Attempts: 1,
		Targets: []Target{{Platform: "fcm", Token: "dGVzdC10b2tlbi0xMjM0NTY3ODkw"}},
		Tenant:  "acme", TemplateVersion: 7, TemplateHash: "sha256:9f2c0a5e4b1d7c3a8e6f0b2d4c6a8e0f1a3c5e7b9d1f3a5c7e9b1d3f5a7c9e1b",
	}
}

func sampleStatusEvent() *StatusEvent {
	return &StatusEvent{
		ID: "01JD7ZK3M4QX8R2V5N6B9C0D1F", NotificationID: "01JD7ZK3M4QX8R2V5N6B9C0D1E", EventID: "order-4711-0815-shipped",
		UserID: "u-42", Template: "order_shipped", Channel: "email", Priority: "normal", Category: "transactional",
		Provider: "smtp-primary", Status: "delivered", Reason: "250 2.0.0 OK queued as 4XyZ",
		At: 1795000001789, AcceptedAt: 1794999999123, Attempt: 1, ProviderMessageID: "<4XyZ.1795000001@mx.example.com>",
		Tenant: "acme", Campaign: "black-friday-2026", TemplateVersion: 7, QueuedAt: 1795000000456,
	}
}

func sampleUserState() *UserState {
	st := &UserState{Day: "2026-11-22", SentToday: map[string]int32{"email": 3}}
	channels := []string{"email", "push", "sms", "inbox"}
	for i := range 20 {
		st.Recent = append(st.Recent, RecentContent{
			Hash:           fmt.Sprintf("sha256:%064x", uint64(i)*0x9e3779b97f4a7c15),
			At:             1795000000000 - int64(i)*60_000,
			NotificationID: fmt.Sprintf("01JD7ZK3M4QX8R2V5N6B9C%04d", i),
			Channel:        channels[i%len(channels)],
		})
	}
	st.Digests = []Digest{{
		Key: "comments", Template: "comment_digest", NotificationID: "01JD7ZK3M4QX8R2V5N6B9CDIGE",
		FirstAt: 1794999000000, DueAt: 1795003600000, Count: 3,
		Items:    []string{`{"by":"grace","text":"Nice!"}`, `{"by":"linus","text":"LGTM"}`, `{"by":"ken","text":"👍"}`},
		EventIDs: []string{"c-1", "c-2", "c-3"},
	}}
	return st
}

func sampleLifecycle() *Lifecycle {
	lc := &Lifecycle{
		ID: "01JD7ZK3M4QX8R2V5N6B9C0D1E", EventID: "order-4711-0815-shipped", UserID: "u-42", Template: "order_shipped",
		Priority: "normal", Category: "transactional", Channel: "email", Provider: "smtp-primary", Status: "opened",
		Channels: map[string]string{"email": "opened"}, Tenant: "acme", Campaign: "black-friday-2026", TemplateVersion: 7,
	}
	for i, s := range []string{"accepted", "queued", "sent", "delivered", "opened"} {
		lc.History = append(lc.History, HistoryEntry{Status: s, At: 1794999999123 + int64(i)*1500, Reason: "",
			Channel: "email", Provider: "smtp-primary", EventID: fmt.Sprintf("01JD7ZK3M4QX8R2V5N6B9CEV%02d", i)})
	}
	lc.History[2].Reason = "250 2.0.0 OK"
	return lc
}

func sampleSendRequest() *SendRequest {
	return &SendRequest{
		EventID: "order-4711-0815-shipped", Template: "order_shipped",
		Recipients: []Recipient{{UserID: "u-42", Email: "ada@example.com", Locale: "en-GB", Upsert: true}, {UserID: "u-43"}},
		Data:       `{"orderId":"4711-0815","carrier":"DHL"}`, Priority: "high", Category: "transactional",
		Channels: []string{"email", "push"}, SendAt: 1795000000000, ExpiresAt: 1795086400000, AcceptedAt: 1794999999123,
		Source: "api", OTP: false, Tenant: "acme", LocalTime: "09:30", DigestKey: "", ScheduleID: "",
		TemplateVersion: 7, TemplateHash: "sha256:9f2c",
	}
}

func sampleDedupEntry() *DedupEntry {
	return &DedupEntry{FirstSeen: 1794999999123, Origin: "notify.ingest/3/1048576"}
}

func sampleLedgerEntry() *LedgerEntry {
	return &LedgerEntry{NotificationID: "01JD7ZK3M4QX8R2V5N6B9C0D1E", Channel: "email", Provider: "smtp-primary",
		Topic: "notify.out.email.normal", Partition: 5, Offset: 1048577, At: 1795000001789}
}

func sampleProfile() *Profile {
	return &Profile{UserID: "u-42", Email: "ada@example.com", Phone: "+447700900123", Locale: "en-GB", Timezone: "Europe/London",
		Devices:     []Device{{Platform: "fcm", Token: "tok"}, {Platform: "webpush", Endpoint: "https://push.example/abc", P256dh: "k", Auth: "a"}},
		Chat:        map[string]map[string]string{"slack": {"webhookUrl": "https://hooks.slack.com/x"}},
		Preferences: Preferences{Categories: map[string]map[string]bool{"marketing": {"email": false}}, QuietStart: "22:00", QuietEnd: "07:00"},
		UpdatedAt:   1795000000000, Tenant: "acme", Attributes: map[string]string{"plan": "pro"}}
}

func sampleTemplate() *Template {
	return &Template{ID: "order_shipped", Category: "transactional", Priority: "normal",
		Channels: map[string]ChannelContent{"email": {Subject: "Order {{.orderId}} shipped", HTML: "<p>{{.carrier}}</p>",
			Data: map[string]string{"order": "{{.orderId}}"}}},
		Locales:   map[string]map[string]ChannelContent{"zh-CN": {"email": {Subject: "订单已发货", TemplateParams: map[string]string{"c": "d"}}}},
		UpdatedAt: 1795000000000, Tenant: "acme", DigestWindowMs: 3600000, DigestMax: 10, Version: 7, Hash: "sha256:9f2c",
		SavedBy: "k1", SavedByName: "ci", RestoredFrom: 5}
}

func sampleDeadLetter() *DeadLetter {
	return &DeadLetter{Topic: "notify.ingest", Partition: 3, Offset: 99, Key: []byte("order-1"), Value: []byte{0xC3, 0x01, 0xff},
		Reason: "decode: unknown schema fingerprint", Stage: "dedup", At: 1795000000000, NotificationID: "n1", Truncated: true}
}

func sampleFeedback() *DeliveryFeedback {
	return &DeliveryFeedback{NotificationID: "n1", Channel: "push", Status: "failed", At: 1795000000000,
		Invalid: []InvalidTarget{{Platform: "apns", Token: "x"}}, Unsubscribe: true,
		Moved: []MovedTarget{{Platform: "telegram", From: "-1", To: "-1001"}}, Reason: "410 Gone", UnsubscribeCategory: "marketing"}
}

func sampleScheduled() *ScheduledEntry {
	b, err := NotificationCodec.encodeGeneric(&Notification{ID: "n1", EventID: "e", UserID: "u", Template: "t"})
	if err != nil {
		panic(err)
	}
	return &ScheduledEntry{Notification: b, ReleasedBy: "tick-7", ReleasedAt: 1795000000000}
}

func sampleInboxItem() InboxItem {
	return InboxItem{ID: "m1", Template: "comment", Category: "social", Title: "Grace replied", Body: "Nice!",
		ActionURL: "https://app.example/c/1", Data: map[string]string{"thread": "t1"}, CreatedAt: 1795000000000, Seq: 12, Seen: true}
}

func sampleInboxCommand() *InboxCommand {
	return &InboxCommand{Op: "add", UserID: "u-42", MessageIDs: []string{"m1"}, At: 1795000000000, Message: sampleInboxItem(), Tenant: "acme"}
}

func sampleInboxFeed() *InboxFeed {
	return &InboxFeed{Messages: []InboxItem{sampleInboxItem(), {ID: "m0", Title: "Welcome", Read: true, Archived: true}},
		Seq: 12, Unread: 1, Unseen: 0, Recalled: []string{"m-1"}}
}

func sampleInboxEvent() *InboxEvent {
	return &InboxEvent{UserID: "u-42", Seq: 12, Kind: "added", Items: []InboxItem{sampleInboxItem()}, Unread: 1, At: 1795000000000}
}

func sampleCampaign() *Campaign {
	return &Campaign{ID: "c1", Tenant: "acme", Name: "Black Friday", Template: "bf", Data: `{"pct":30}`, Priority: "low",
		Category: "marketing", Channels: []string{"email"}, AudienceKind: "segment", Segment: `plan = "pro"`, Rate: 100,
		SendAt: 1795000000000, State: "approved", CreatedBy: "k1", CreatedAt: 1794000000000,
		Decisions: []CampaignDecision{{By: "k2", Decision: "approved", At: 1794500000000, TemplateVersion: 3, TemplateHash: "sha256:ab"}},
		Cursor:    "u-100", Targeted: 1000, Scanned: 1200, TemplateVersion: 3, TemplateHash: "sha256:ab", SealedData: []byte{1, 2, 3}}
}

func sampleCampaignCommand() *CampaignCommand {
	return &CampaignCommand{Op: "create", Tenant: "acme", CampaignID: "c1", By: "k1", At: 1794000000000, Campaign: *sampleCampaign(),
		TemplateVersion: 3, TemplateHash: "sha256:ab"}
}

func sampleSchedule() *Schedule {
	return &Schedule{ID: "s1", Tenant: "acme", Cron: "0 9 * * MON", TimeZone: "Europe/Berlin",
		Request: []byte{0xC3, 0x01, 0, 1}, State: "active", CreatedBy: "k1", CreatedAt: 1, NextAt: 2, Fired: 3, FireOrigin: "tick-1"}
}

func sampleAPIKey() *APIKey {
	return &APIKey{ID: "0123456789abcdef", Tenant: "acme", Name: "ci", Scopes: []string{"send", "profiles:read"},
		Hash: []byte{1, 2, 3}, CreatedAt: 1, CreatedBy: "config:root", ExpiresAt: 2, RateLimit: 2.5, Burst: 5, Replaces: "fedcba9876543210"}
}

func sampleAuditEvent() *AuditEvent {
	return &AuditEvent{ID: "a", At: 9, Tenant: "acme", KeyID: "k", KeyName: "ci", Action: "DELETE /v1/profiles/{userId}",
		Resources: map[string]string{"userId": "u1"}, Status: 204, RemoteAddr: "127.0.0.1:1"}
}

// dataKey has crypt.DataKey's shape (crypt imports this package, so its
// test cannot): it puts data_key.avsc under the same checks.
type dataKey struct {
	Kind      string `avro:"kind"`
	Tenant    string `avro:"tenant"`
	Subject   string `avro:"subject"`
	ID        string `avro:"id"`
	WrappedBy string `avro:"wrappedBy"`
	Wrapped   []byte `avro:"wrapped"`
	CreatedAt int64  `avro:"createdAt"`
	ErasedAt  int64  `avro:"erasedAt"`
}

var dataKeyCodec = NewCodec[dataKey]("notifyd.DataKey")

// codecCheck is one record type under the equivalence checks (typed_fuzz_test.go).
type codecCheck struct {
	record string
	check  func(t *testing.T, data []byte)
	seeds  func() [][]byte
	plans  func() (enc bool, dec int)
}

func checkOf[T any](c *Codec[T], samples ...*T) codecCheck {
	return codecCheck{
		record: c.record,
		check:  func(t *testing.T, data []byte) { checkCodec(t, c, data, true) },
		seeds: func() [][]byte {
			var out [][]byte
			for _, s := range samples {
				b, err := c.encodeGeneric(s)
				if err != nil {
					panic(err)
				}
				out = append(out, b)
			}
			return out
		},
		plans: func() (bool, int) { return c.typed.enc != nil, len(c.typed.dec) },
	}
}

// The records fuzzed one target each; otherChecks share FuzzCodecOthers.
var (
	checkNotification = checkOf(NotificationCodec, sampleNotification(), &Notification{ID: "n", Content: Content{Title: "hi"}})
	checkStatusEvent  = checkOf(StatusEventCodec, sampleStatusEvent())
	checkSendRequest  = checkOf(SendRequestCodec, sampleSendRequest(), &SendRequest{EventID: "e", Template: "t"})
	checkUserState    = checkOf(UserStateCodec, sampleUserState(), &UserState{})
	checkLifecycle    = checkOf(LifecycleCodec, sampleLifecycle())
	checkLedgerEntry  = checkOf(LedgerEntryCodec, sampleLedgerEntry())
	checkDedupEntry   = checkOf(DedupEntryCodec, sampleDedupEntry(), &DedupEntry{FirstSeen: -1})
)

func hotChecks() []codecCheck {
	return []codecCheck{checkNotification, checkStatusEvent, checkSendRequest, checkUserState, checkLifecycle, checkLedgerEntry, checkDedupEntry}
}

func otherChecks() []codecCheck {
	return []codecCheck{
		checkOf(NotificationPIICodec, &NotificationPII{Recipient: Recipient{UserID: "u-42", Email: "ada@example.com"},
			Data: `{"orderId":"4711"}`, Address: "ada@example.com", Content: renderedEmail(), Targets: []Target{{Platform: "fcm", Token: "t"}}}),
		checkOf(ProfileCodec, sampleProfile()),
		checkOf(TemplateCodec, sampleTemplate()),
		checkOf(DeadLetterCodec, sampleDeadLetter()),
		checkOf(FeedbackCodec, sampleFeedback()),
		checkOf(ScheduledCodec, sampleScheduled()),
		checkOf(InboxCommandCodec, sampleInboxCommand()),
		checkOf(InboxFeedCodec, sampleInboxFeed()),
		checkOf(InboxEventCodec, sampleInboxEvent()),
		checkOf(CampaignCodec, sampleCampaign()),
		checkOf(CampaignCommandCodec, sampleCampaignCommand()),
		checkOf(AudienceMemberCodec, &AudienceMember{Tenant: "acme", Kind: "topic", AudienceID: "news", UserID: "u-42", At: 1}),
		checkOf(ScheduleCodec, sampleSchedule()),
		checkOf(ScheduleCommandCodec, &ScheduleCommand{Op: "create", By: "k1", At: 1, Schedule: *sampleSchedule()}),
		checkOf(CancellationCodec, &Cancellation{Tenant: "acme", NotificationID: "n1", By: "k1", At: 1}),
		checkOf(APIKeyCodec, sampleAPIKey()),
		checkOf(AuditEventCodec, sampleAuditEvent()),
		checkOf(dataKeyCodec, &dataKey{Kind: "tenant", Tenant: "acme", ID: "k1", WrappedBy: "m1", Wrapped: []byte{9, 9}, CreatedAt: 1}),
	}
}

func allChecks() []codecCheck { return append(hotChecks(), otherChecks()...) }

// Go types with one field of a record: decoding them skips every other
// field, which must still be read as goavro reads it (duplicate map keys,
// boolean bytes, lengths), so these run the decoding checks only.
type (
	notificationIDOnly struct {
		ID string `avro:"id"`
	}
	profileUserOnly struct {
		UserID string `avro:"userId"`
	}
	templateTenantOnly struct {
		Tenant string `avro:"tenant"`
	}
	userStateDayOnly struct {
		Day string `avro:"day"`
	}
	inboxFeedSeqOnly struct {
		Seq int64 `avro:"seq"`
	}
	apiKeyBurstOnly struct {
		Burst int32 `avro:"burst"`
	}
	campaignCommandOpOnly struct {
		Op string `avro:"op"`
	}
)

func skipCheckOf[T any](c *Codec[T], seeds codecCheck) codecCheck {
	return codecCheck{
		record: c.record,
		check:  func(t *testing.T, data []byte) { checkCodec(t, c, data, false) },
		seeds:  seeds.seeds,
		plans:  func() (bool, int) { return c.typed.enc != nil, len(c.typed.dec) },
	}
}

func skipChecks() []codecCheck {
	return []codecCheck{
		skipCheckOf(NewCodec[notificationIDOnly]("notifyd.Notification"), checkNotification),
		skipCheckOf(NewCodec[profileUserOnly]("notifyd.Profile"), checkOf(ProfileCodec, sampleProfile())),
		skipCheckOf(NewCodec[templateTenantOnly]("notifyd.Template"), checkOf(TemplateCodec, sampleTemplate())),
		skipCheckOf(NewCodec[userStateDayOnly]("notifyd.UserState"), checkUserState),
		skipCheckOf(NewCodec[inboxFeedSeqOnly]("notifyd.InboxFeed"), checkOf(InboxFeedCodec, sampleInboxFeed())),
		skipCheckOf(NewCodec[apiKeyBurstOnly]("notifyd.APIKey"), checkOf(APIKeyCodec, sampleAPIKey())),
		skipCheckOf(NewCodec[campaignCommandOpOnly]("notifyd.CampaignCommand"), checkOf(CampaignCommandCodec, sampleCampaignCommand())),
	}
}
