package sinks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"gopkg.in/yaml.v3"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/apnstest"
	"github.com/notifyd/notifyd/sinks/fcmtest"
	"github.com/notifyd/notifyd/sinks/sendgridtest"
	"github.com/notifyd/notifyd/topology"
)

// delivery is what became of one notification sent through a real sink.
type delivery struct {
	Final    *schemas.StatusEvent   // the terminal event: sent, failed or expired
	Events   []*schemas.StatusEvent // every event of the notification, in order
	Feedback *schemas.DeliveryFeedback
	// DeadLetters of the notification (a failure has one).
	DeadLetters []*schemas.DeadLetter
}

// Statuses lists the statuses of the events in order.
func (d delivery) Statuses() []string {
	var out []string
	for _, ev := range d.Events {
		out = append(out, ev.Status)
	}
	return out
}

// deliverThroughSink sends n through a real sink of its channel on a fresh
// embedded broker, with the providers as the channel's failover chain, one
// quick try per provider, and retry tiers of 1 s and 2 s (a retry-later
// answer is retried through notify.retry.*). It waits for a terminal status.
func deliverThroughSink(t *testing.T, n *schemas.Notification, providers ...Provider) delivery {
	t.Helper()
	env := newSinkEnv(t)
	s := &Sink{Channel: n.Channel, Brokers: env.brokers, Providers: providers, Producer: env.producer, Log: discardLog(),
		Opts: Options{Chunk: 16, Concurrency: 4, Attempts: 1, Backoff: 5 * time.Millisecond, SendTimeout: 5 * time.Second,
			LedgerLookback: time.Hour,
			Retry: config.Retry{Tiers: []time.Duration{time.Second, 2 * time.Second},
				Horizon: map[string]time.Duration{"high": time.Minute, "normal": time.Minute, "low": time.Minute}},
			Breaker: config.Breaker{Failures: 100, OpenFor: time.Second, Probes: 1}}}
	env.run(t, s)
	env.retrier(t)
	if n.Priority == "" {
		n.Priority = "normal"
	}
	if n.AcceptedAt == 0 {
		n.AcceptedAt = time.Now().UnixMilli()
	}
	if n.EventID == "" {
		n.EventID = "e-" + n.ID
	}
	if n.Template == "" {
		n.Template = "t"
	}
	b, err := schemas.NotificationCodec.Encode(n)
	if err != nil {
		t.Fatal(err)
	}
	env.produce(t, string(topology.Out(n.Channel, n.Priority)), n.ID, b)
	var d delivery
	terminal := func(s string) bool {
		return s == processors.StatusSent || s == processors.StatusFailed || s == processors.StatusExpired
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(env.brokers...), kgo.ConsumeTopics(string(topology.Events)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for d.Final == nil {
		if env.ctx.Err() != nil {
			t.Fatalf("no terminal status for %s; statuses %v", n.ID, d.Statuses())
		}
		ctx, cancel := context.WithTimeout(env.ctx, 500*time.Millisecond)
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			ev, err := schemas.StatusEventCodec.Decode(r.Value)
			if err != nil || ev.NotificationID != n.ID {
				return
			}
			d.Events = append(d.Events, ev)
			if terminal(ev.Status) && d.Final == nil {
				d.Final = ev
			}
		})
		cancel()
	}
	// A failed or expired notification always has feedback, produced just
	// after its final event: worth waiting for on a loaded machine. Others
	// may have none.
	wait := time.Second
	if d.Final.Status != processors.StatusSent {
		wait = 10 * time.Second
	}
	d.Feedback = readOptional(t, env, string(topology.Feedback), schemas.FeedbackCodec, wait)
	if d.Final.Status == processors.StatusFailed {
		d.DeadLetters = readTopic(t, env, string(topology.DLQ), schemas.DeadLetterCodec, 1)
	}
	return d
}

// readOptional reads the first record of topic, or nil when none comes within
// a second (produces of a finished job are acknowledged before its terminal
// status is readable, so a second is plenty).
func readOptional[T any](t *testing.T, e *sinkEnv, topic string, codec *schemas.Codec[T], wait time.Duration) *T {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(e.ctx, wait)
	defer cancel()
	var out *T
	cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
		if out != nil {
			return
		}
		v, err := codec.Decode(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		out = v
	})
	return out
}

// buildProvider builds a provider of a registered type from a YAML settings
// section, as the configuration file would give it.
func buildProvider(t testing.TB, channel, typ, settingsYAML string) Provider {
	t.Helper()
	c := providerConfig(t, typ, settingsYAML)
	ps, err := BuildProviders(channel, []config.Provider{c}, Deps{Log: discardLog()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c, ok := ps[0].(Closer); ok {
			_ = c.Close()
		}
	})
	return ps[0]
}

// providerConfig is the configuration of one provider of type typ named typ,
// with settingsYAML (unindented) as its section.
func providerConfig(t testing.TB, typ, settingsYAML string) config.Provider {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\ntype: %s\n%s:\n", typ, typ, typ)
	for _, line := range strings.Split(strings.TrimSpace(settingsYAML), "\n") {
		b.WriteString("  " + line + "\n")
	}
	var c config.Provider
	if err := yaml.Unmarshal([]byte(b.String()), &c); err != nil {
		t.Fatalf("provider yaml: %v\n%s", err, b.String())
	}
	return c
}

// The framework: settings are decoded strictly, unknown types and channels are
// refused with the known ones named.
func TestProviderRegistryAndSettings(t *testing.T) {
	if _, err := BuildProviders("email", []config.Provider{{Name: "x", Type: "nosuch"}}, Deps{}); err == nil ||
		!strings.Contains(err.Error(), `unknown provider type "nosuch"`) || !strings.Contains(err.Error(), "smtp") {
		t.Fatalf("unknown type: %v", err)
	}
	if _, err := BuildProviders("sms", []config.Provider{{Name: "x", Type: "smtp"}}, Deps{}); err == nil ||
		!strings.Contains(err.Error(), "serves email, not sms") {
		t.Fatalf("wrong channel: %v", err)
	}
	var v struct {
		A string `yaml:"a"`
	}
	if err := (Spec{Provider: providerConfig(t, "kit", "a: 1\nb: 2")}).Settings(&v); err == nil || !strings.Contains(err.Error(), "field b not found") {
		t.Fatalf("unknown key: %v", err)
	}
	if err := (Spec{Provider: providerConfig(t, "kit", "a: x")}).Settings(&v); err != nil || v.A != "x" {
		t.Fatalf("settings: %v %+v", err, v)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for h, want := range map[string]time.Duration{"": 0, "7": 7 * time.Second, "-1": 0, "x": 0, "99999999": 24 * time.Hour,
		"Tue, 01 Dec 2026 10:00:30 GMT": 30 * time.Second, "Tue, 01 Dec 2026 09:00:00 GMT": 0} {
		if got := ParseRetryAfter(h, now); got != want {
			t.Errorf("ParseRetryAfter(%q) = %s, want %s", h, got, want)
		}
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"1", "Tue, 01 Dec 2026 10:00:30 GMT", "", "-5", "1e9"} {
		f.Add(s)
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, h string) {
		if d := ParseRetryAfter(h, now); d < 0 || d > 24*time.Hour {
			t.Fatalf("ParseRetryAfter(%q) = %s", h, d)
		}
	})
}

// SendEach folds per-target answers: partial success keeps the ids and names
// the invalid targets; no success with a transient failure retries.
func TestSendEachFoldsTargetAnswers(t *testing.T) {
	ts := []schemas.Target{{Platform: "fcm", Token: "a"}, {Platform: "fcm", Token: "gone"}, {Platform: "fcm", Token: "busy"}}
	answer := func(_ context.Context, tg schemas.Target) (string, error) {
		switch tg.Token {
		case "gone":
			return "", InvalidRecipient(errors.New("UNREGISTERED"), DeviceTarget(tg))
		case "busy":
			return "", RetryLater(errors.New("503"), time.Second)
		}
		return "id-" + tg.Token, nil
	}
	id, err := SendEach(context.Background(), ts, answer)
	var ir *InvalidRecipientError
	if id != "id-a" || !errors.As(err, &ir) || len(ir.Targets) != 1 || ir.Targets[0].Token != "gone" {
		t.Fatalf("partial: %q %v", id, err)
	}
	id, err = SendEach(context.Background(), ts[1:], answer)
	if id != "" || IsPermanent(err) || retryAfter(err) != time.Second {
		t.Fatalf("none accepted, one busy: %q %v", id, err)
	}
	id, err = SendEach(context.Background(), ts[1:2], answer)
	if id != "" || !errors.As(err, &ir) {
		t.Fatalf("all gone: %q %v", id, err)
	}
}

func TestKeyLimiterBoundsEachKey(t *testing.T) {
	k := NewKeyLimiter(20, 2) // 20 a minute: one every 3 s after a burst of 2
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	if k.Take("a", now) != 0 || k.Take("a", now) != 0 {
		t.Fatal("the burst was refused")
	}
	if d := k.Take("a", now); d <= 0 || d > 3*time.Second {
		t.Fatalf("third call at once: wait %s, want (0, 3s]", d)
	}
	if k.Take("b", now) != 0 {
		t.Fatal("another key was limited by the first")
	}
	if k.Take("a", now.Add(3*time.Second)) != 0 {
		t.Fatal("refused after the wait")
	}
	if NewKeyLimiter(0, 1).Take("a", now) != 0 {
		t.Fatal("no limit limited")
	}
}

// Every provider documented in docs/CONFIG.md builds from the documented
// section (with its secrets and key files supplied as the environment would),
// and a section with an unknown key is refused at start.
func TestDocumentedProvidersBuild(t *testing.T) {
	doc, err := os.ReadFile("../docs/CONFIG.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, _ := strings.Cut(string(doc), "```yaml\n")
	block, _, _ = strings.Cut(block, "```")
	dir := t.TempDir()
	fcm, err := fcmtest.Start("doc-project")
	if err != nil {
		t.Fatal(err)
	}
	defer fcm.Close()
	fcmKey, err := fcm.WriteKeyFile(dir, fcm.KeyJSON())
	if err != nil {
		t.Fatal(err)
	}
	apnsKey, err := apnstest.NewKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	apnsFile := filepath.Join(dir, "AuthKey.p8")
	if err := os.WriteFile(apnsFile, []byte(apnsKey), 0o600); err != nil {
		t.Fatal(err)
	}
	public, private := vapidKeys(t)
	sg := sendgridtest.Start("SG.k")
	defer sg.Close()
	sendgridKey := sg.EventWebhookPublicKey()
	env := map[string]string{"FCM_CREDENTIALS_FILE": fcmKey, "APNS_KEY_FILE": apnsFile, "VAPID_PUBLIC_KEY": public,
		"VAPID_PRIVATE_KEY": private, "TWILIO_AUTH_TOKEN": "tw-token", "SENDGRID_API_KEY": "SG.k", "SENDGRID_EVENTS_KEY": sendgridKey, "WHATSAPP_APP_SECRET": "w-s", "WHATSAPP_VERIFY_TOKEN": "w-v", "ALIYUN_SECRET": "a", "TENCENT_SECRET": "t",
		"SLACK_BOT_TOKEN": "xoxb-1", "TELEGRAM_BOT_TOKEN": "123:abc", "WHATSAPP_TOKEN": "w", "DINGTALK_TOKEN": "d",
		"DINGTALK_SECRET": "SECd", "WECOM_KEY": "k-1", "FEISHU_HOOK": "h-1", "FEISHU_SECRET": "f", "INBOX_SECRET": "inbox-secret-0123456789",
		"NOTIFYD_BACKEND_KEY": "backend-key-0001", "SMTP_PASSWORD": "p", "WEBHOOK_SECRET": "s"}
	path := filepath.Join(dir, "notifyd.yaml")
	if err := os.WriteFile(path, []byte(block), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if err := Check(cfg); err != nil {
		t.Fatalf("docs/CONFIG.md: %v", err)
	}
	documented := map[string]bool{}
	for _, ps := range cfg.Channels {
		for _, p := range ps {
			documented[p.Type] = true
		}
	}
	for _, typ := range ProviderTypes() {
		if !documented[typ] {
			t.Errorf("provider type %s is not in docs/CONFIG.md", typ)
		}
	}
	bad := cfg
	bad.Channels = map[string][]config.Provider{"telegram": {providerConfig(t, "telegram", "botToken: 1:a\nbotTokn: typo")}}
	if err := Check(bad); err == nil || !strings.Contains(err.Error(), "botTokn") {
		t.Fatalf("a misspelled key was accepted: %v", err)
	}
	bad.Channels = map[string][]config.Provider{"sms": {{Name: "x", Type: "carrier-pigeon"}}}
	if err := Check(bad); err == nil || !strings.Contains(err.Error(), "carrier-pigeon") {
		t.Fatalf("an unknown type was accepted: %v", err)
	}
}

// ---- assertions shared by the provider tests

// buildErr is the error of building a provider of type typ from YAML.
func buildErr(t *testing.T, channel, typ, settingsYAML string) error {
	t.Helper()
	_, err := BuildProviders(channel, []config.Provider{providerConfig(t, typ, settingsYAML)}, Deps{Log: discardLog()})
	return err
}

// wantSent: the delivery ended sent with the provider's message id wantID.
func wantSent(t *testing.T, d delivery, wantID string) {
	t.Helper()
	if d.Final.Status != "sent" || d.Final.ProviderMessageID != wantID {
		t.Fatalf("final %s id %q (want sent %q), reason %q, statuses %v", d.Final.Status, d.Final.ProviderMessageID, wantID,
			d.Final.Reason, d.Statuses())
	}
}

// wantFailed: the delivery failed at once (no retry) with a reason saying
// each of reason, and one dead letter.
func wantFailed(t *testing.T, d delivery, reason ...string) {
	t.Helper()
	if d.Final.Status != "failed" {
		t.Fatalf("final %s (want failed), statuses %v", d.Final.Status, d.Statuses())
	}
	for _, r := range reason {
		if !strings.Contains(d.Final.Reason, r) {
			t.Errorf("reason %q does not say %q", d.Final.Reason, r)
		}
	}
	if len(d.DeadLetters) != 1 {
		t.Errorf("dead letters: %d, want 1", len(d.DeadLetters))
	}
	if slices.Contains(d.Statuses(), "retrying") {
		t.Errorf("a permanent failure was retried: %v", d.Statuses())
	}
}

// wantInvalid: the delivery failed and its feedback names target as invalid.
func wantInvalid(t *testing.T, d delivery, target schemas.InvalidTarget, reason ...string) {
	t.Helper()
	wantFailed(t, d, reason...)
	if d.Feedback == nil || !slices.Contains(d.Feedback.Invalid, target) {
		t.Fatalf("feedback %+v does not name %+v as invalid", d.Feedback, target)
	}
}

// wantNoInvalid: nothing is removed from the profile (a configuration error
// is not the recipient's).
func wantNoInvalid(t *testing.T, d delivery) {
	t.Helper()
	if d.Feedback != nil && len(d.Feedback.Invalid) > 0 {
		t.Fatalf("a configuration error removed the profile's target: %+v", d.Feedback.Invalid)
	}
}

// wantRetriedThenSent: a retry-later answer was retried through the retry
// topics and the notification then sent.
func wantRetriedThenSent(t *testing.T, d delivery) {
	t.Helper()
	if d.Final.Status != "sent" || !slices.Contains(d.Statuses(), "retrying") {
		t.Fatalf("statuses %v (want retrying then sent), reason %q", d.Statuses(), d.Final.Reason)
	}
}

// fuzzClassified is what every classifier must do with any answer: accept
// only a 2xx, and say why otherwise in a bounded reason with a sane wait.
func fuzzClassified(t *testing.T, status int, body []byte, err error) {
	if err == nil {
		if status < 200 || status > 299 {
			t.Fatalf("HTTP %d %q accepted", status, body)
		}
		return
	}
	if len(err.Error()) > 700 {
		t.Fatalf("unbounded reason (%d bytes)", len(err.Error()))
	}
	var rl *RetryLaterError
	if errors.As(err, &rl) && (rl.After < 0 || rl.After > 24*time.Hour) {
		t.Fatalf("retry after %s", rl.After)
	}
}

// The docker-compose stack's configuration loads and its providers build;
// its secrets come only from the environment, which docker-compose.yml
// requires: without them there is no default key or inbox secret to run on.
func TestComposeConfigBuilds(t *testing.T) {
	env := map[string]string{"NOTIFYD_API_KEYS": "ops:0123456789abcdef0123", "NOTIFYD_INBOX_SECRET": "0123456789abcdef0123456789abcdef",
		"NOTIFYD_MASTER_KEYS": "m1:BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="}
	cfg, err := config.Load("../deploy/notifyd.compose.yaml", func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if err := Check(cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Channels["inapp"]) != 1 || cfg.Inbox.Secret != env["NOTIFYD_INBOX_SECRET"] || len(cfg.APIKeys) != 1 ||
		cfg.Encryption.MasterKeys != env["NOTIFYD_MASTER_KEYS"] {
		t.Fatalf("compose config: %+v inbox %q keys %d", cfg.Channels, cfg.Inbox.Secret, len(cfg.APIKeys))
	}
	bare, err := config.Load("../deploy/notifyd.compose.yaml", func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if bare.Inbox.Secret != "" || len(bare.APIKeys) != 0 || bare.Encryption.MasterKeys != "" {
		t.Fatalf("the compose config carries a default secret: inbox %q, keys %v", bare.Inbox.Secret, bare.APIKeys)
	}
	compose, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	for k := range env {
		if !strings.Contains(string(compose), k+": ${"+k+":?") {
			t.Errorf("docker-compose.yml does not require %s", k)
		}
	}
}

// A provider's Retry-After longer than the next tier picks the shortest tier
// that waits at least that long (the longest when none does); a shorter one
// keeps the tier's delay.
func TestPlanRetryHonoursRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	r := config.Retry{Tiers: []time.Duration{10 * time.Second, time.Minute, 10 * time.Minute},
		Horizon: map[string]time.Duration{"normal": 24 * time.Hour}}
	n := &schemas.Notification{ID: "n", Priority: "normal", AcceptedAt: now.UnixMilli()}
	for after, want := range map[time.Duration]time.Duration{0: 10 * time.Second, 5 * time.Second: 10 * time.Second,
		30 * time.Second: time.Minute, 5 * time.Minute: 10 * time.Minute, 2 * time.Hour: 10 * time.Minute} {
		if got := PlanRetryAfter(n, now, r, after).Delay; got != want {
			t.Errorf("Retry-After %s: delay %s, want %s", after, got, want)
		}
	}
	// Never past the deadline: an expiry in 2 minutes takes the 1m tier.
	soon := *n
	soon.ExpiresAt = now.Add(2 * time.Minute).UnixMilli()
	if got := PlanRetryAfter(&soon, now, r, 5*time.Minute); got.Delay != time.Minute {
		t.Errorf("before the expiry: %+v", got)
	}
}

// A push to devices no configured provider serves (only iPhones, only FCM
// configured) fails at once with the platforms named, not "unknown error".
func TestPushToUnservedPlatformFailsClearly(t *testing.T) {
	srv, err := fcmtest.Start("p")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	path, err := srv.WriteKeyFile(t.TempDir(), srv.KeyJSON())
	if err != nil {
		t.Fatal(err)
	}
	p := buildProvider(t, "push", "fcm", fmt.Sprintf("credentialsFile: %s\nbaseUrl: %s", path, srv.URL))
	n := &schemas.Notification{ID: "ios-only", UserID: "u", Channel: "push", Address: "apns:tok",
		Content: schemas.Content{Title: "t", Body: "b"}, Targets: []schemas.Target{{Platform: "apns", Token: "tok"}}}
	d := deliverThroughSink(t, n, p)
	wantFailed(t, d, "serves the user's devices (apns)")
	if srv.Requests() != 0 {
		t.Fatalf("fcm was asked %d times for an iPhone", srv.Requests())
	}
}
