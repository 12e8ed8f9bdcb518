package processors

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/notifyd/notifyd/schemas"
)

func TestNotificationIDIsDeterministic(t *testing.T) {
	a, b := NotificationID("e1", "u1"), NotificationID("e1", "u1")
	if a != b || a == NotificationID("e1", "u2") || a == NotificationID("e2", "u1") {
		t.Fatalf("ids %s %s", a, b)
	}
	// The separator keeps ("e1u", "1") apart from ("e1", "u1").
	if NotificationID("e1u", "1") == a {
		t.Fatal("ambiguous id")
	}
}

func TestValidateEmail(t *testing.T) {
	for _, ok := range []string{"a@example.com", "first.last+tag@sub.example.co.uk"} {
		if err := ValidateEmail(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a", "a@", "@example.com", "Ann <a@example.com>", "a@localhost", "a b@example.com"} {
		if err := ValidateEmail(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestValidatePhone(t *testing.T) {
	for _, ok := range []string{"+14155550100", "+8613800138000", "+442071838750"} {
		if err := ValidatePhone(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "4155550100", "+1234", "+1 415 555 0100", "+999999999999", "+1415555010a"} {
		if err := ValidatePhone(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestSuppression(t *testing.T) {
	p := &schemas.Profile{Preferences: schemas.Preferences{Categories: map[string]map[string]bool{
		"marketing": {"email": false, "sms": true}, "digest": {"all": false}}}}
	cases := []struct{ category, channel, want string }{
		{"marketing", "email", "user opted out of marketing email"},
		{"marketing", "sms", ""},
		{"digest", "push", "user opted out of digest on every channel"},
		{"transactional", "email", ""},
		{"news", "email", ""},
	}
	for _, c := range cases {
		if got := Suppression(p, c.category, c.channel); got != c.want {
			t.Errorf("%s/%s: %q, want %q", c.category, c.channel, got, c.want)
		}
	}
	p.Preferences.UnsubscribedAll = true
	if got := Suppression(p, "news", "email"); !strings.Contains(got, "unsubscribed from all") {
		t.Errorf("unsubscribed all: %q", got)
	}
	if got := Suppression(p, CategoryTransactional, "email"); got != "" {
		t.Errorf("transactional must pass a global unsubscribe: %q", got)
	}
	if Suppression(nil, "marketing", "email") != "" {
		t.Error("no profile, no opt-out")
	}
}

func TestRender(t *testing.T) {
	tmpl := &schemas.Template{ID: "t", UpdatedAt: 1}
	cc := schemas.ChannelContent{Subject: "Hi {{.name}}", HTML: `<a href="{{.url}}">{{.name}}</a>`, Text: "{{.name}} & co"}
	data, err := ParseData(`{"name": "<Ann>", "url": "javascript:alert(1)"}`)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Render(tmpl, "email", cc, data, RenderLimits{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject != "Hi <Ann>" || c.Text != "<Ann> & co" {
		t.Errorf("text fields are not HTML-escaped: %+v", c)
	}
	if c.HTML != `<a href="#ZgotmplZ">&lt;Ann&gt;</a>` {
		t.Errorf("html not escaped in context: %s", c.HTML)
	}
	_, err = Render(tmpl, "email", schemas.ChannelContent{Subject: "Order {{.orderId}}"}, map[string]any{}, RenderLimits{})
	var re *RenderError
	if !errors.As(err, &re) || re.Field != "subject" || !strings.Contains(err.Error(), "orderId") {
		t.Fatalf("missing variable: %v", err)
	}
	if _, err := ParseData(`[1]`); err == nil {
		t.Error("non-object data accepted")
	}
	n, _ := ParseData(`{"n": 12345678901234567}`)
	c, _ = Render(tmpl, "sms", schemas.ChannelContent{Text: "{{.n}}"}, n, RenderLimits{})
	if c.Text != "12345678901234567" {
		t.Errorf("large numbers must render exactly: %s", c.Text)
	}
}

func TestSelectContentFallsBack(t *testing.T) {
	tmpl := &schemas.Template{
		Channels: map[string]schemas.ChannelContent{"email": {Subject: "en"}, "sms": {Text: "en"}},
		Locales: map[string]map[string]schemas.ChannelContent{
			"zh-CN": {"email": {Subject: "zh-CN"}}, "pt": {"email": {Subject: "pt"}}},
	}
	cases := []struct{ channel, locale, want string }{
		{"email", "zh-CN", "zh-CN"}, {"email", "pt-BR", "pt"}, {"email", "de", "en"}, {"email", "", "en"},
		{"sms", "zh-CN", ""},
	}
	for _, c := range cases {
		cc, _, ok := SelectContent(tmpl, c.channel, c.locale)
		if !ok {
			t.Fatalf("%s/%s: no content", c.channel, c.locale)
		}
		if got := cc.Subject; got != c.want && !(c.channel == "sms" && cc.Text == "en") {
			t.Errorf("%s/%s: %q want %q", c.channel, c.locale, got, c.want)
		}
	}
	if _, _, ok := SelectContent(tmpl, "push", "en"); ok {
		t.Error("content for a channel the template lacks")
	}
}

func TestValidateTemplate(t *testing.T) {
	good := &schemas.Template{ID: "t", Channels: map[string]schemas.ChannelContent{"email": {Subject: "{{.x}}"}}}
	if err := ValidateTemplate(good); err != nil {
		t.Fatal(err)
	}
	bad := []*schemas.Template{
		{ID: "t"},
		{ID: "t", Channels: map[string]schemas.ChannelContent{"email": {Subject: "{{.x"}}},
		{ID: "t", Channels: map[string]schemas.ChannelContent{"fax": {Text: "x"}}},
		{ID: "t", Channels: map[string]schemas.ChannelContent{"email": {Text: "x"}}, Priority: "urgent"},
		{ID: "t", Channels: map[string]schemas.ChannelContent{"email": {Text: "x"}},
			Locales: map[string]map[string]schemas.ChannelContent{"de": {"email": {HTML: "{{end}}"}}}},
	}
	for i, b := range bad {
		if err := ValidateTemplate(b); err == nil {
			t.Errorf("bad template %d accepted", i)
		}
	}
}

func TestLimiter(t *testing.T) {
	now := time.Date(2026, 11, 22, 23, 30, 0, 0, time.UTC)
	l := Limiter{ContentWindow: 10 * time.Minute, PerDay: func(ch string) int { return map[string]int{"sms": 2}[ch] }}
	st := &schemas.UserState{}
	day := UserDay(now, "")
	if s, _ := l.Check(st, now, day, "sms", "h1", "n1"); s != "" {
		t.Fatal("first send refused")
	}
	if s, r := l.Check(st, now.Add(time.Minute), day, "sms", "h1", "n2"); s != StatusSuppressed || !strings.Contains(r, "same content") {
		t.Fatalf("same content within window: %s %s", s, r)
	}
	if s, _ := l.Check(st, now.Add(11*time.Minute), day, "sms", "h1", "n3"); s != "" {
		t.Fatal("same content after the window refused")
	}
	if s, r := l.Check(st, now.Add(12*time.Minute), day, "sms", "h3", "n4"); s != StatusRateLimited || !strings.Contains(r, "daily cap of 2 sms") {
		t.Fatalf("third sms of the day: %s %s", s, r)
	}
	if s, _ := l.Check(st, now, day, "email", "h4", "n5"); s != "" {
		t.Fatal("a channel without a cap was limited")
	}
	// A new day (in the user's time zone) resets the count.
	next := now.Add(time.Hour)
	if s, _ := l.Check(st, next, UserDay(next, ""), "sms", "h5", "n6"); s != "" {
		t.Fatal("cap not reset on a new day")
	}
	// A replay of a notification already counted passes, and is not counted again.
	before := st.SentToday["sms"]
	if s, r := l.Check(st, next, UserDay(next, ""), "sms", "h5", "n6"); s != "" || st.SentToday["sms"] != before {
		t.Fatalf("replay of n6: %s %s, count %d -> %d", s, r, before, st.SentToday["sms"])
	}
	if UserDay(now, "Asia/Shanghai") != "2026-11-23" || UserDay(now, "Nowhere/City") != "2026-11-22" {
		t.Fatal("user day ignores the time zone")
	}
}

func TestApplyStatusOrdersAndBoundsHistory(t *testing.T) {
	var lc *schemas.Lifecycle
	for i, s := range []string{StatusQueued, StatusSent, StatusAccepted, StatusDuplicate} {
		lc = ApplyStatus(lc, &schemas.StatusEvent{NotificationID: "n", Status: s, At: int64(10 - i), Channel: "email"})
	}
	if lc.Status != StatusSent || lc.Channels["email"] != StatusSent {
		t.Fatalf("a late accepted or a duplicate moved the status: %+v", lc)
	}
	if lc.History[0].At != 7 {
		t.Fatalf("history not in time order: %+v", lc.History)
	}
	for i := 0; i < MaxHistory+10; i++ {
		lc = ApplyStatus(lc, &schemas.StatusEvent{NotificationID: "n", Status: StatusOpened, At: int64(100 + i)})
	}
	if len(lc.History) != MaxHistory || lc.DroppedHistory != 14 {
		t.Fatalf("history %d dropped %d", len(lc.History), lc.DroppedHistory)
	}
	dupFirst := ApplyStatus(nil, &schemas.StatusEvent{NotificationID: "m", Status: StatusDuplicate})
	dupFirst = ApplyStatus(dupFirst, &schemas.StatusEvent{NotificationID: "m", Status: StatusAccepted, At: 1})
	if dupFirst.Status != StatusAccepted {
		t.Fatalf("status %s", dupFirst.Status)
	}
}

func TestDelivererOutcomes(t *testing.T) {
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	d := Deliverer{Limiter: Limiter{PerDay: func(string) int { return 0 }},
		Enabled: func(ch string) bool { return ch != "push" }}
	tmpl := &schemas.Template{ID: "t", Category: "marketing", Channels: map[string]schemas.ChannelContent{
		"email": {Subject: "s"}, "sms": {Text: "{{.code}}"}, "push": {Title: "x"}}}
	n := &schemas.Notification{ID: "n", UserID: "u", Template: "t", Data: `{"code":"1"}`,
		Recipient: schemas.Recipient{Email: "u@example.com", Phone: "12345"}}
	got := map[string]string{}
	for _, o := range d.Deliver(n, nil, tmpl, &schemas.UserState{}, now) {
		got[o.Channel] = o.Status + ": " + o.Reason
	}
	if got["email"] != "queued: " || !strings.HasPrefix(got["sms"], "rejected: invalid phone") ||
		got["push"] != "rejected: no provider is configured for channel push" {
		t.Fatalf("outcomes %v", got)
	}
	expired := *n
	expired.ExpiresAt = now.Add(-time.Second).UnixMilli()
	expired.Channels = []string{"email"}
	if o := d.Deliver(&expired, nil, tmpl, &schemas.UserState{}, now); o[0].Status != StatusExpired {
		t.Fatalf("expired: %+v", o)
	}
	if o := d.Deliver(n, nil, nil, &schemas.UserState{}, now); o[0].Status != StatusRejected || !strings.Contains(o[0].Reason, "unknown template") {
		t.Fatalf("unknown template: %+v", o)
	}
	noAddr := &schemas.Notification{ID: "n", UserID: "u", Template: "t", Channels: []string{"email"}}
	if o := d.Deliver(noAddr, nil, tmpl, &schemas.UserState{}, now); o[0].Reason != "user u has no email address" {
		t.Fatalf("no address: %+v", o)
	}
}

func FuzzParseData(f *testing.F) {
	f.Add(`{"a": 1}`)
	f.Add(`{"a": {"b": [1, "x", null]}}`)
	f.Add(`[`)
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseData(s)
		if err == nil && m == nil {
			t.Fatal("nil map without error")
		}
		if err == nil {
			// Whatever parses renders without panicking.
			_, _ = Render(&schemas.Template{ID: "f"}, "sms", schemas.ChannelContent{Text: "{{.a}}"}, m, RenderLimits{})
		}
	})
}

func TestQuietHours(t *testing.T) {
	p := &schemas.Profile{Timezone: "Asia/Shanghai", Preferences: schemas.Preferences{QuietStart: "22:00", QuietEnd: "08:00"}}
	sh, _ := time.LoadLocation("Asia/Shanghai")
	at := func(h, m int) time.Time { return time.Date(2026, 11, 22, h, m, 0, 0, sh) }
	cases := []struct {
		now       time.Time
		quiet     bool
		untilHour int
		nextDay   bool
	}{
		{at(23, 30), true, 8, true},
		{at(2, 0), true, 8, false},
		{at(7, 59), true, 8, false},
		{at(8, 0), false, 0, false},
		{at(21, 59), false, 0, false},
		{at(22, 0), true, 8, true},
	}
	for _, c := range cases {
		until, why, quiet := QuietUntil(p, "marketing", "normal", c.now)
		if quiet != c.quiet {
			t.Errorf("%v: quiet=%v", c.now, quiet)
			continue
		}
		if !quiet {
			continue
		}
		want := time.Date(2026, 11, 22, c.untilHour, 0, 0, 0, sh)
		if c.nextDay {
			want = want.AddDate(0, 0, 1)
		}
		if !until.Equal(want) || !strings.Contains(why, "quiet hours 22:00–08:00 (Asia/Shanghai)") {
			t.Errorf("%v: until %v (%s), want %v", c.now, until, why, want)
		}
	}
	if _, _, q := QuietUntil(p, CategoryTransactional, "normal", at(23, 0)); q {
		t.Error("transactional held by quiet hours")
	}
	if _, _, q := QuietUntil(p, "marketing", "high", at(23, 0)); q {
		t.Error("high priority held by quiet hours")
	}
	day := &schemas.Profile{Preferences: schemas.Preferences{QuietStart: "12:00", QuietEnd: "14:00"}}
	if until, _, q := QuietUntil(day, "news", "low", time.Date(2026, 11, 22, 13, 0, 0, 0, time.UTC)); !q || until.Hour() != 14 {
		t.Errorf("same-day window: %v %v", until, q)
	}
	if _, _, q := QuietUntil(day, "news", "low", time.Date(2026, 11, 22, 15, 0, 0, 0, time.UTC)); q {
		t.Error("outside a same-day window")
	}
}

func TestNeedsProfile(t *testing.T) {
	tmpl := &schemas.Template{Channels: map[string]schemas.ChannelContent{"webhook": {}}}
	cases := []struct {
		n    schemas.Notification
		want bool
	}{
		{schemas.Notification{}, false}, // the template's only channel is webhook
		{schemas.Notification{Channels: []string{"inapp", "webhook"}}, false},
		{schemas.Notification{Channels: []string{"email"}}, true},
		{schemas.Notification{Channels: []string{"email"}, Recipient: schemas.Recipient{Email: "a@b.co"}}, false},
		{schemas.Notification{Channels: []string{"sms"}, Recipient: schemas.Recipient{Email: "a@b.co"}}, true},
		{schemas.Notification{Channels: []string{"push"}, Recipient: schemas.Recipient{Email: "a@b.co", Phone: "+1"}}, true},
	}
	for i, c := range cases {
		if got := NeedsProfile(&c.n, tmpl); got != c.want {
			t.Errorf("case %d: %v, want %v", i, got, c.want)
		}
	}
}

// FuzzValidID: the hand-written ValidID accepts exactly what idPattern does.
func FuzzValidID(f *testing.F) {
	for _, s := range []string{"", "a", "user-42", "a b", "x\n", "é", strings.Repeat("a", 200), strings.Repeat("a", 201), "a$", "tenant/user:1@x+y=z.w_v-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidID(s), idPattern.MatchString(s); got != want {
			t.Fatalf("ValidID(%q) = %v, idPattern says %v", s, got, want)
		}
	})
}

// FuzzNameUUID: the ids computed without allocations are uuid.NewSHA1's, so
// ids written before stay what a replay computes.
func FuzzNameUUID(f *testing.F) {
	f.Add("evt-1", "user-1", "accepted", "email", int32(0))
	f.Add("", "", "", "", int32(-3))
	f.Add(strings.Repeat("e", 300), "u", "sent", strings.Repeat("c", 300), int32(1<<30))
	f.Fuzz(func(t *testing.T, a, b, status, channel string, attempt int32) {
		if got, want := NotificationID(a, b), uuid.NewSHA1(notificationNS, []byte(a+"\x00"+b)).String(); got != want {
			t.Fatalf("NotificationID(%q, %q) = %s, want %s", a, b, got, want)
		}
		want := uuid.NewSHA1(notificationNS, []byte(a+"\x00"+status+"\x00"+channel+"\x00"+strconv.Itoa(int(attempt)))).String()
		if got := StatusEventID(a, status, channel, attempt); got != want {
			t.Fatalf("StatusEventID = %s, want %s", got, want)
		}
	})
}

// TestNameUUIDIsUUIDv5 pins one id computed by the code before nameUUID, so
// the fuzz target's reference cannot drift with it.
func TestNameUUIDIsUUIDv5(t *testing.T) {
	id := NotificationID("evt-1", "user-1")
	if want := "9f781b2b-e5ee-5e39-a1ea-6073db27e594"; id != want { // uuid.NewSHA1's, computed before nameUUID
		t.Fatalf("NotificationID = %s, want %s", id, want)
	}
	if u := uuid.MustParse(id); u.Version() != 5 || u.Variant() != uuid.RFC4122 {
		t.Fatalf("%s is version %d variant %s, want a version-5 RFC 4122 uuid", id, u.Version(), u.Variant())
	}
}

func BenchmarkIDs(b *testing.B) {
	b.ReportAllocs()
	b.Run("ValidID", func(b *testing.B) {
		for b.Loop() {
			ValidID("0f8b7c6e-1d2a-5b3c-9e4f-a1b2c3d4e5f6")
		}
	})
	b.Run("ValidID/regexp", func(b *testing.B) {
		for b.Loop() {
			idPattern.MatchString("0f8b7c6e-1d2a-5b3c-9e4f-a1b2c3d4e5f6")
		}
	})
	b.Run("StatusEventID", func(b *testing.B) {
		for b.Loop() {
			StatusEventID("0f8b7c6e-1d2a-5b3c-9e4f-a1b2c3d4e5f6", "queued", "email", 0)
		}
	})
	b.Run("StatusEventID/uuid.NewSHA1", func(b *testing.B) {
		for b.Loop() {
			_ = uuid.NewSHA1(notificationNS, []byte("0f8b7c6e-1d2a-5b3c-9e4f-a1b2c3d4e5f6"+"\x00"+"queued"+"\x00"+"email"+"\x00"+strconv.Itoa(0))).String()
		}
	})
}

// A sink's event implies the queued entry of its channel once; a history that
// dropped old entries does not get it again once the channel has a state.
func TestImpliedQueued(t *testing.T) {
	ev := &schemas.StatusEvent{ID: "s", NotificationID: "n", Status: StatusSent, At: 9, Channel: "email", QueuedAt: 2, Tenant: "acme"}
	q := ImpliedQueued(nil, ev)
	if q == nil || q.Status != StatusQueued || q.At != 2 || q.Channel != "email" || q.Tenant != "acme" ||
		q.ID != StatusEventID("n", StatusQueued, "email", 0) || q.QueuedAt != 0 {
		t.Fatalf("implied %+v", q)
	}
	lc := ApplyStatus(ApplyStatus(nil, q), ev)
	if ImpliedQueued(lc, ev) != nil {
		t.Fatal("implied again after the history has it")
	}
	if ImpliedQueued(nil, &schemas.StatusEvent{NotificationID: "n", Status: StatusSent, Channel: "email"}) != nil ||
		ImpliedQueued(nil, &schemas.StatusEvent{NotificationID: "n", Status: StatusOpened, QueuedAt: 2}) != nil {
		t.Fatal("implied without a routing time or a channel")
	}
	trimmed := &schemas.Lifecycle{ID: "n", DroppedHistory: 3, Channels: map[string]string{"email": StatusSent}}
	if ImpliedQueued(trimmed, ev) != nil {
		t.Fatal("implied again into a trimmed history whose channel has a state")
	}
	if ImpliedQueued(trimmed, &schemas.StatusEvent{NotificationID: "n", Channel: "sms", QueuedAt: 2}) == nil {
		t.Fatal("not implied for another channel")
	}
}
