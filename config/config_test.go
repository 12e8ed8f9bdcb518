package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadFileEnvAndExpansion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notifyd.yaml")
	yaml := `
dataDir: /var/lib/notifyd
http: {addr: ":9000"}
kafka: {partitions: 12}
dedup: {window: 48h}
apiKeys: [{name: ci, key: "${CI_KEY}"}]
encryption: {masterKeys: "m1:${MASTER}"}
tracking: {baseUrl: "https://t.example.com"}
channels:
  email:
    - name: smtp-main
      type: smtp
      smtp: {host: mail.example.com, port: 587, from: no-reply@example.com, tls: starttls, username: u}
  webhook:
    - name: hooks
      type: webhook
      webhook: {endpoints: {default: {url: "https://hooks.example.com/n", secret: placeholder}}}
`
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path, env(map[string]string{
		"CI_KEY":                                "from-env",
		"MASTER":                                "a2V5",
		"NOTIFYD_TRACKING_SECRET":               "tracking-secret-from-env",
		"NOTIFYD_HTTP_ADDR":                     ":9100",
		"NOTIFYD_PROVIDER_SMTP_MAIN_PASSWORD":   "pw",
		"NOTIFYD_PROVIDER_HOOKS_SECRET_DEFAULT": "whsec",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != "/var/lib/notifyd" || cfg.HTTP.Addr != ":9100" || cfg.Kafka.Partitions != 12 || cfg.Dedup.Window != 48*time.Hour {
		t.Fatalf("cfg %+v", cfg)
	}
	if cfg.APIKeys[0].Key != "from-env" || cfg.Channels["email"][0].SMTP.Password != "pw" ||
		cfg.Channels["webhook"][0].Webhook.Endpoints["default"].Secret != "whsec" {
		t.Fatalf("secrets not taken from the environment: %+v", cfg)
	}
	if cfg.Encryption.MasterKeys != "m1:a2V5" || cfg.Tracking.BaseURL != "https://t.example.com" ||
		cfg.Tracking.Secret != "tracking-secret-from-env" {
		t.Fatalf("encryption %+v, tracking %+v", cfg.Encryption, cfg.Tracking)
	}
	// Defaults survive where the file is silent.
	if cfg.Sink.Attempts != 3 || cfg.HTTP.MaxBodyBytes != 1<<20 || cfg.Kafka.EmbeddedPort != 9092 {
		t.Fatalf("defaults lost: %+v", cfg)
	}
}

func TestLoadRejectsBadConfig(t *testing.T) {
	cases := map[string]string{
		"unknown key":      "htp: {addr: x}",
		"bad duration":     "dedup: {window: forever}",
		"settings key":     "channels: {sms: [{name: x, type: twilio, tencentsms: {}}]}",
		"no type":          "channels: {sms: [{name: x}]}",
		"smtp incomplete":  "channels: {email: [{name: x, type: smtp, smtp: {host: h}}]}",
		"smtp tls":         "channels: {email: [{name: x, type: smtp, smtp: {host: h, port: 25, from: a@b.c, tls: maybe}}]}",
		"webhook secret":   "channels: {webhook: [{name: x, type: webhook, webhook: {endpoints: {d: {url: 'https://x'}}}}]}",
		"provider no name": "channels: {email: [{type: log}]}",
		"not yaml":         "{{{",
		"empty api key":    "apiKeys: [{name: a, key: '${UNSET_VAR}'}]",
		"short api key":    "apiKeys: [{name: a, key: abc}]",
		"retry tier < 1s":  "sink: {retry: {tiers: [500ms]}}",
		"retry tier twice": "sink: {retry: {tiers: [1m, 60s]}}",
		"no retry tiers":   "sink: {retry: {tiers: []}}",
		"horizon priority": "sink: {retry: {horizon: {urgent: 1h}}}",
		"horizon negative": "sink: {retry: {horizon: {high: -1m}}}",
		"breaker failures": "sink: {breaker: {failures: -1}}",
		"drain negative":   "sink: {drainTimeout: -1s}",
		"provider rate":    "channels: {email: [{name: x, type: log, rateLimit: -5}]}",
		"provider prio":    "channels: {email: [{name: x, type: log, priorities: [urgent]}]}",
		"render maxBytes":  "render: {maxBytes: {email: -1}}",
		"render timeout":   "render: {timeout: -1s}",
		"stuckAfter":       "health: {stuckAfter: -1s}",
		"session timeout":  "kafka: {sessionTimeout: 1s}",
		"campaign step":    "campaigns: {step: 5m}",
		"approvalAbove":    "campaigns: {approvalAbove: -1}",
		"catchUp":          "campaigns: {catchUp: -1h}",
		"maxListBytes":     "campaigns: {maxListBytes: 10}",
		"priority hold":    "priority: {hold: 2s}",
		"priority maxHold": "priority: {hold: 50ms, maxHold: 20ms}",
		"priority neg":     "priority: {hold: -1ms}",
	}
	for name, body := range cases {
		path := filepath.Join(t.TempDir(), "c.yaml")
		_ = os.WriteFile(path, []byte(body), 0o600)
		if _, err := Load(path, env(nil)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := Load("", env(map[string]string{"NOTIFYD_API_KEYS": "nocolon"})); err == nil || !strings.Contains(err.Error(), "name:key") {
		t.Errorf("bad NOTIFYD_API_KEYS: %v", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), env(nil)); err == nil {
		t.Error("missing file accepted")
	}
}

func TestPriorityGateSettings(t *testing.T) {
	d := Default()
	if !d.Priority.On() || d.Priority.Hold != 50*time.Millisecond || d.Priority.MaxHold != 250*time.Millisecond {
		t.Fatalf("default priority %+v", d.Priority)
	}
	path := filepath.Join(t.TempDir(), "c.yaml")
	_ = os.WriteFile(path, []byte("priority: {hold: 5ms, maxHold: 40ms}"), 0o600)
	c, err := Load(path, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Priority.On() || c.Priority.Hold != 5*time.Millisecond || c.Priority.MaxHold != 40*time.Millisecond {
		t.Fatalf("priority from the file: %+v", c.Priority)
	}
	_ = os.WriteFile(path, []byte("priority: {enabled: false}"), 0o600)
	if c, err = Load(path, env(nil)); err != nil || c.Priority.On() || c.Priority.Hold != 50*time.Millisecond {
		t.Fatalf("priority off: %+v %v", c.Priority, err)
	}
}

func TestExpansionDefaults(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	_ = os.WriteFile(path, []byte("apiKeys: [{name: a, key: '${K:-fallback-key}'}]\ndataDir: ${D:-/x}"), 0o600)
	cfg, err := Load(path, env(map[string]string{"D": "/from-env"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.APIKeys[0].Key != "fallback-key" || cfg.DataDir != "/from-env" {
		t.Fatalf("keys %+v dataDir %s", cfg.APIKeys, cfg.DataDir)
	}
}

func TestEnsureAPIKeyNeverLeavesTheAPIOpen(t *testing.T) {
	cfg := Default()
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	path, err := cfg.EnsureAPIKey()
	if err != nil || path != filepath.Join(cfg.DataDir, "api.key") {
		t.Fatalf("path %q, %v", path, err)
	}
	key := cfg.APIKeys[0].Key
	if !strings.HasPrefix(key, "ndk_") || len(cfg.APIKeys) != 1 || len(cfg.APIKeys[0].Scopes) != 0 {
		t.Fatalf("generated keys %+v", cfg.APIKeys)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v", st, err)
	}
	if b, _ := os.ReadFile(path); strings.TrimSpace(string(b)) != key {
		t.Fatalf("file holds %q", b)
	}
	if again, err := cfg.EnsureAPIKey(); again != "" || err != nil {
		t.Fatal("replaced configured keys")
	}
	// A restart reuses the file's key.
	next := Default()
	next.DataDir = cfg.DataDir
	if _, err := next.EnsureAPIKey(); err != nil || next.APIKeys[0].Key != key {
		t.Fatalf("restart: %+v, %v", next.APIKeys, err)
	}
	// An empty or truncated file is an error, not an open API.
	_ = os.WriteFile(path, []byte("short\n"), 0o600)
	bad := Default()
	bad.DataDir = cfg.DataDir
	if _, err := bad.EnsureAPIKey(); err == nil || len(bad.APIKeys) != 0 {
		t.Fatalf("short key file accepted: %+v", bad.APIKeys)
	}
}

func TestAPIKeyScopesFromFileAndEnv(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yaml")
	_ = os.WriteFile(path, []byte("apiKeys: [{name: ci, key: ci-key-0001, tenant: acme, scopes: [send, 'profiles:read'], rateLimit: 2.5, burst: 5}]"), 0o600)
	cfg, err := Load(path, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := APIKey{Name: "ci", Key: "ci-key-0001", Tenant: "acme", Scopes: []string{"send", "profiles:read"}, RateLimit: 2.5, Burst: 5}
	if !reflect.DeepEqual(cfg.APIKeys, []APIKey{want}) {
		t.Fatalf("file: %+v", cfg.APIKeys)
	}
	cfg, err = Load("", env(map[string]string{"NOTIFYD_API_KEYS": "ci:ci-key-0001;scopes=send+profiles:read;tenant=acme;rateLimit=2.5;burst=5, old:old:key-with-colon"}))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.APIKeys, []APIKey{want, {Name: "old", Key: "old:key-with-colon"}}) {
		t.Fatalf("env: %+v", cfg.APIKeys)
	}
	for _, bad := range []string{"a:secret-key-1;scopes", "a:secret-key-1;colour=red", "a:secret-key-1;rateLimit=-1", "a:secret-key-1;burst=x", "secret-key-1"} {
		_, err := Load("", env(map[string]string{"NOTIFYD_API_KEYS": bad}))
		if err == nil {
			t.Errorf("%q accepted", bad)
		} else if strings.Contains(err.Error(), "secret-key-1") {
			t.Errorf("%q: the error quotes the key: %v", bad, err)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add("http: {addr: ':1'}\n")
	f.Add("channels: {email: [{name: a, type: log}]}")
	f.Fuzz(func(t *testing.T, body string) {
		path := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(path, env(nil))
		if err == nil && cfg.Validate() != nil {
			t.Fatal("Load returned a config that does not validate")
		}
	})
}

// The reference configuration of docs/CONFIG.md is a file notifyd accepts: every
// key it documents exists (unknown keys are errors), every value is valid, and
// the analytics keys it shows reach the configuration.
func TestDocumentedConfigLoads(t *testing.T) {
	doc, err := os.ReadFile("../docs/CONFIG.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(doc), "```yaml\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatal("docs/CONFIG.md has no yaml block")
	}
	path := filepath.Join(t.TempDir(), "notifyd.yaml")
	if err := os.WriteFile(path, []byte(block), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path, env(map[string]string{"NOTIFYD_BACKEND_KEY": "backend-key-0001", "SMTP_PASSWORD": "p",
		"WEBHOOK_SECRET": "s", "CLICKHOUSE_PASSWORD": "ch-secret"}))
	if err != nil {
		t.Fatalf("docs/CONFIG.md: %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("docs/CONFIG.md: %v", err)
	}
	a := c.Analytics
	if !a.On() || a.Password != "ch-secret" || a.BatchSize != 10000 || a.FlushEvery != time.Second ||
		a.ReceiptGrace != time.Hour || len(a.Prices) != 1 || a.Prices[0].Provider != "smtp-main" {
		t.Fatalf("analytics %+v", a)
	}
}
