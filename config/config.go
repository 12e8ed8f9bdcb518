// Package config loads notifyd's configuration: a YAML file, then environment
// overrides (NOTIFYD_*), with ${VAR} references in the file expanded from the
// environment so secrets need not be written down.
package config

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole configuration. Zero values take the defaults of Default().
type Config struct {
	DataDir    string                `yaml:"dataDir"`
	HTTP       HTTP                  `yaml:"http"`
	Kafka      Kafka                 `yaml:"kafka"`
	APIKeys    []APIKey              `yaml:"apiKeys"`
	Dedup      Dedup                 `yaml:"dedup"`
	Scheduler  Scheduler             `yaml:"scheduler"`
	Limits     Limits                `yaml:"limits"`
	Sink       Sink                  `yaml:"sink"`
	Channels   map[string][]Provider `yaml:"channels"`
	Analytics  Analytics             `yaml:"analytics"`
	Render     Render                `yaml:"render"`
	Health     Health                `yaml:"health"`
	Alerts     Alerts                `yaml:"alerts"`
	Inbox      Inbox                 `yaml:"inbox"`
	Encryption Encryption            `yaml:"encryption"`
	Tracking   Tracking              `yaml:"tracking"`
	Campaigns  Campaigns             `yaml:"campaigns"`
	Priority   Priority              `yaml:"priority"`
	LogLevel   string                `yaml:"logLevel"`
}

// Render bounds the work of rendering one notification on one channel, in the
// deliver group and in preview: a template or a request that exceeds a budget
// is rejected with the reason, never allowed to stall its partition.
type Render struct {
	// Timeout is the wall time one channel's render may take.
	Timeout time.Duration `yaml:"timeout"`
	// MaxIterations bounds the range iterations of one render, nested loops counted
	// in full.
	MaxIterations int `yaml:"maxIterations"`
	// MaxBytes bounds the rendered content of a channel (all its fields), in
	// bytes; sms counts characters. "default" applies to channels not listed.
	MaxBytes map[string]int `yaml:"maxBytes"`
}

// Budget is the rendered-size bound of a channel.
func (r Render) Budget(channel string) int {
	if n, ok := r.MaxBytes[channel]; ok {
		return n
	}
	return r.MaxBytes["default"]
}

// Health tunes readiness.
type Health struct {
	// Addr is where roles without the API (process, sink, analytics) serve
	// /healthz, /readyz and /metrics; "" = nowhere. The API serves them itself.
	Addr string `yaml:"addr"`
	// StuckAfter: a partition whose record has been in work longer than this
	// makes /readyz answer 503.
	StuckAfter time.Duration `yaml:"stuckAfter"`
}

// Inbox is the in-app inbox (channel inapp, provider type inbox).
type Inbox struct {
	// Secret signs the per-user tokens of the end-user endpoints (HMAC); every
	// API instance needs the same. Empty: one is generated once and kept in
	// dataDir/inbox.secret (fine for one instance).
	Secret string `yaml:"secret"`
	// MaxMessages is how many messages a user's inbox keeps, newest first.
	MaxMessages int `yaml:"maxMessages"`
	// AllowedOrigins may call the end-user endpoints from a browser (CORS); "*" = any.
	AllowedOrigins []string `yaml:"allowedOrigins"`
	// Heartbeat is the interval of keep-alive comments on an open stream.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// MaxStreams bounds the streams one API instance holds open.
	MaxStreams int `yaml:"maxStreams"`
}

// Alerts tell operators about notifications that exhausted their retries.
type Alerts struct {
	// WebhookURL, when set, receives a JSON POST per exhausted notification
	// (best effort; the metric notifyd_sink_exhausted_total counts them all).
	WebhookURL string        `yaml:"webhookUrl"`
	Timeout    time.Duration `yaml:"timeout"`
}

// HTTP is the API listener.
type HTTP struct {
	Addr         string `yaml:"addr"`
	MaxBodyBytes int64  `yaml:"maxBodyBytes"`
	MaxBatch     int    `yaml:"maxBatch"`
}

// Kafka says where the broker is. With no brokers, notifyd runs the embedded one.
type Kafka struct {
	Brokers      []string      `yaml:"brokers"`
	EmbeddedPort int           `yaml:"embeddedPort"`
	Partitions   int           `yaml:"partitions"`
	Replication  int           `yaml:"replication"`
	FlushEvery   time.Duration `yaml:"flushEvery"`
	// SessionTimeout is how long a consumer group waits for a member that
	// stopped answering (crashed) before it gives its partitions to the others.
	SessionTimeout time.Duration `yaml:"sessionTimeout"`
	// Security is TLS and SASL towards external brokers (kafka_security.go).
	Security KafkaSecurity `yaml:"security"`
}

// APIKey is one key allowed to call the API, configured rather than created
// through POST /v1/keys. Key is cleared once hashed.
type APIKey struct {
	Name string `yaml:"name"`
	Key  string `yaml:"key"`
	// Tenant the key acts in; "" or "default" is the default tenant.
	Tenant string `yaml:"tenant"`
	// Scopes the key holds (api.Scope* names). None: every scope (admin and
	// tenants), as keys had before scopes existed.
	Scopes []string `yaml:"scopes"`
	// RateLimit is the requests per second the key may make on one API
	// instance; 0 = unlimited.
	RateLimit float64 `yaml:"rateLimit"`
	// Burst is how many requests above RateLimit may come at once (0 = the
	// rate rounded up, at least 1).
	Burst int `yaml:"burst"`
}

// Priority is how a process gives high-priority work its CPU first
// (topology.PriorityGate).
type Priority struct {
	// Enabled holds lower-priority work while high-priority work passes
	// (default true).
	Enabled *bool `yaml:"enabled"`
	// Hold is how long the lower lanes wait after the last high-priority
	// request or record a stage saw.
	Hold time.Duration `yaml:"hold"`
	// MaxHold bounds one hold; after a hold this long the lower lanes run
	// for as long before the next, so a stream of high-priority work leaves
	// them at least half of the time.
	MaxHold time.Duration `yaml:"maxHold"`
}

// On tells whether the gate runs.
func (p Priority) On() bool { return p.Enabled == nil || *p.Enabled }

// Dedup bounds the eventId deduplication state.
type Dedup struct {
	Window        time.Duration `yaml:"window"`
	SweepInterval time.Duration `yaml:"sweepInterval"`
}

// Analytics is where status events go for analysts (ClickHouse).
type Analytics struct {
	// Enabled runs the analytics sink in `notifyd run` (default true); the
	// `analytics` role always does. See On.
	Enabled *bool `yaml:"enabled"`
	// Addr is a ClickHouse native-protocol address; empty in `notifyd run` starts
	// a local clickhouse-server with its data under dataDir/clickhouse.
	Addr       string        `yaml:"addr"`
	LocalPort  int           `yaml:"localPort"` // of the local server; 0 = a free port
	Database   string        `yaml:"database"`
	User       string        `yaml:"user"`
	Password   string        `yaml:"password"`
	BatchSize  int           `yaml:"batchSize"`
	FlushEvery time.Duration `yaml:"flushEvery"`
	MaxBackoff time.Duration `yaml:"maxBackoff"`
	// ReceiptGrace is how long a sent notification may wait for its provider's
	// receipt before reconciliation lists it as missing.
	ReceiptGrace time.Duration `yaml:"receiptGrace"`
	Prices       []Price       `yaml:"prices"`
}

// On tells whether `notifyd run` runs analytics.
func (a Analytics) On() bool { return a.Enabled == nil || *a.Enabled }

// Price is what one message costs on a provider and channel.
type Price struct {
	Provider string  `yaml:"provider"`
	Channel  string  `yaml:"channel"`
	Price    float64 `yaml:"price"`    // per message, in currency units
	Currency string  `yaml:"currency"` // e.g. USD
}

// Scheduler releases notifications with a sendAt; Interval is its resolution.
type Scheduler struct {
	Interval time.Duration `yaml:"interval"`
}

// Limits are the per-user protections of the deliver group.
type Limits struct {
	ContentDedupWindow time.Duration  `yaml:"contentDedupWindow"`
	PerChannelPerDay   map[string]int `yaml:"perChannelPerDay"`
	DefaultPerDay      int            `yaml:"defaultPerDay"`
	TableWait          time.Duration  `yaml:"tableWait"`
}

// Sink tunes the channel sink consumers.
type Sink struct {
	Concurrency    int           `yaml:"concurrency"`
	Chunk          int           `yaml:"chunk"`
	Attempts       int           `yaml:"attempts"`
	Backoff        time.Duration `yaml:"backoff"`
	SendTimeout    time.Duration `yaml:"sendTimeout"`
	LedgerLookback time.Duration `yaml:"ledgerLookback"`
	// DrainTimeout is how long a stopping sink (SIGTERM) or one losing partitions
	// in a rebalance lets sends in flight finish before it cancels them.
	DrainTimeout time.Duration `yaml:"drainTimeout"`
	Retry        Retry         `yaml:"retry"`
	Breaker      Breaker       `yaml:"breaker"`
}

// Retry is the delayed retry of notifications whose providers failed
// transiently: one topic notify.retry.<delay> per tier.
type Retry struct {
	// Tiers are the delays of successive retries; the last repeats.
	Tiers []time.Duration `yaml:"tiers"`
	// Horizon bounds the time from acceptance to the last retry, per priority;
	// past it the notification fails (DLQ, alert).
	Horizon map[string]time.Duration `yaml:"horizon"`
}

// Breaker is the circuit breaker of every provider.
type Breaker struct {
	// Failures in a row that open the breaker.
	Failures int `yaml:"failures"`
	// OpenFor is how long an open breaker refuses calls before it lets probes through.
	OpenFor time.Duration `yaml:"openFor"`
	// Probes are the calls let through while half-open; all must succeed to close it.
	Probes int `yaml:"probes"`
}

// Provider is one provider of a channel; a channel's list is its failover order.
type Provider struct {
	Name string `yaml:"name"`
	Type string `yaml:"type"` // log, smtp, webhook, or a type registered by sinks (twilio, fcm, …)
	// RateLimit is the provider's messages per second across the cluster (0 =
	// unlimited); each sink instance takes the share of the partitions it owns.
	RateLimit float64 `yaml:"rateLimit"`
	// Burst is how many calls may go at once above the rate (default 1).
	Burst int `yaml:"burst"`
	// Concurrency bounds calls in flight across the cluster, shared like
	// RateLimit (0 = sink.concurrency per instance).
	Concurrency int `yaml:"concurrency"`
	// Priorities the provider serves (default all): a channel can send high
	// priority through one provider and bulk through another.
	Priorities []string `yaml:"priorities"`
	SMTP       SMTP     `yaml:"smtp"`
	Webhook    Webhook  `yaml:"webhook"`
	// Settings hold the section of every other provider type, under the key
	// named after the type (`twilio:` for type twilio). The sinks package
	// decodes it into the type's own configuration (sinks.Check).
	Settings map[string]yaml.Node `yaml:",inline"`
}

// SMTP configures the smtp provider.
type SMTP struct {
	Host               string `yaml:"host"`
	Port               int    `yaml:"port"`
	Username           string `yaml:"username"`
	Password           string `yaml:"password"`
	TLS                string `yaml:"tls"` // none | starttls | tls
	InsecureSkipVerify bool   `yaml:"insecureSkipVerify"`
	From               string `yaml:"from"`
	Connections        int    `yaml:"connections"`
}

// Webhook configures the webhook provider.
type Webhook struct {
	Endpoints           map[string]Endpoint `yaml:"endpoints"`
	AllowPrivateTargets bool                `yaml:"allowPrivateTargets"`
	Timeout             time.Duration       `yaml:"timeout"`
}

// Endpoint is one customer endpoint with its signing secret.
type Endpoint struct {
	URL    string `yaml:"url"`
	Secret string `yaml:"secret"`
}

// Default is the configuration of `notifyd run` with no file.
func Default() Config {
	return Config{
		DataDir:   "./data",
		HTTP:      HTTP{Addr: ":8080", MaxBodyBytes: 1 << 20, MaxBatch: 1000},
		Kafka:     Kafka{EmbeddedPort: 9092, Partitions: 4, Replication: 1, FlushEvery: 2 * time.Millisecond, SessionTimeout: 10 * time.Second},
		Priority:  Priority{Hold: 50 * time.Millisecond, MaxHold: 250 * time.Millisecond},
		Dedup:     Dedup{Window: 24 * time.Hour, SweepInterval: time.Minute},
		Scheduler: Scheduler{Interval: time.Second},
		Campaigns: Campaigns{Step: time.Second, CatchUp: time.Hour, MaxListBytes: 1 << 30},
		Analytics: Analytics{Database: "notifyd", User: "default", BatchSize: 10000,
			FlushEvery: time.Second, MaxBackoff: 30 * time.Second, ReceiptGrace: time.Hour},
		Limits: Limits{ContentDedupWindow: 10 * time.Minute, DefaultPerDay: 100,
			PerChannelPerDay: map[string]int{}, TableWait: time.Second},
		Sink: Sink{Concurrency: 64, Chunk: 256, Attempts: 3, Backoff: 200 * time.Millisecond,
			SendTimeout: 30 * time.Second, LedgerLookback: time.Hour, DrainTimeout: 10 * time.Second,
			Retry: Retry{Tiers: []time.Duration{10 * time.Second, time.Minute, 10 * time.Minute, time.Hour},
				Horizon: map[string]time.Duration{"high": 10 * time.Minute, "normal": 6 * time.Hour, "low": 24 * time.Hour}},
			Breaker: Breaker{Failures: 5, OpenFor: 10 * time.Second, Probes: 1}},
		Render: Render{Timeout: time.Second, MaxIterations: 100_000, MaxBytes: map[string]int{
			"email": 256 << 10, "webhook": 256 << 10, "push": 4 << 10, "webpush": 4 << 10, "sms": 1600,
			"whatsapp": 4096, "telegram": 4096, "wecom": 4096, "slack": 40_000, "dingtalk": 20_000,
			"feishu": 30_000, "inapp": 16 << 10, "default": 64 << 10}},
		Health: Health{StuckAfter: 30 * time.Second},
		Alerts: Alerts{Timeout: 5 * time.Second},
		Inbox:  Inbox{MaxMessages: 200, AllowedOrigins: []string{"*"}, Heartbeat: 15 * time.Second, MaxStreams: 10000},
		Channels: map[string][]Provider{
			"email":   {{Name: "log-email", Type: "log"}},
			"webhook": {{Name: "log-webhook", Type: "log"}},
			"inapp":   {{Name: "inbox", Type: "inbox"}},
		},
		LogLevel: "info",
	}
}

// Load reads the file at path (if non-empty) over the defaults, then applies env.
func Load(path string, env func(string) string) (Config, error) {
	cfg := Default()
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("config: %w", err)
		}
		expanded := os.Expand(string(raw), func(name string) string {
			// ${VAR:-default}, as in a shell.
			if v, def, ok := strings.Cut(name, ":-"); ok {
				if got := env(v); got != "" {
					return got
				}
				return def
			}
			return env(name)
		})
		dec := yaml.NewDecoder(bytes.NewReader([]byte(expanded)))
		dec.KnownFields(true)
		var file Config
		if err := dec.Decode(&file); err != nil {
			return cfg, fmt.Errorf("config %s: %w", path, err)
		}
		cfg.merge(file)
	}
	if err := cfg.applyEnv(env); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// merge overlays the fields a file set.
func (c *Config) merge(f Config) {
	if f.DataDir != "" {
		c.DataDir = f.DataDir
	}
	if f.HTTP.Addr != "" {
		c.HTTP.Addr = f.HTTP.Addr
	}
	if f.HTTP.MaxBodyBytes != 0 {
		c.HTTP.MaxBodyBytes = f.HTTP.MaxBodyBytes
	}
	if f.HTTP.MaxBatch != 0 {
		c.HTTP.MaxBatch = f.HTTP.MaxBatch
	}
	if len(f.Kafka.Brokers) > 0 {
		c.Kafka.Brokers = f.Kafka.Brokers
	}
	if f.Kafka.EmbeddedPort != 0 {
		c.Kafka.EmbeddedPort = f.Kafka.EmbeddedPort
	}
	if f.Kafka.Partitions != 0 {
		c.Kafka.Partitions = f.Kafka.Partitions
	}
	if f.Kafka.Replication != 0 {
		c.Kafka.Replication = f.Kafka.Replication
	}
	if f.Kafka.FlushEvery != 0 {
		c.Kafka.FlushEvery = f.Kafka.FlushEvery
	}
	if f.Kafka.SessionTimeout != 0 {
		c.Kafka.SessionTimeout = f.Kafka.SessionTimeout
	}
	if f.Kafka.Security != (KafkaSecurity{}) {
		c.Kafka.Security = f.Kafka.Security
	}
	if len(f.APIKeys) > 0 {
		c.APIKeys = f.APIKeys
	}
	if f.Priority.Enabled != nil {
		c.Priority.Enabled = f.Priority.Enabled
	}
	if f.Priority.Hold != 0 {
		c.Priority.Hold = f.Priority.Hold
	}
	if f.Priority.MaxHold != 0 {
		c.Priority.MaxHold = f.Priority.MaxHold
	}
	if f.Dedup.Window != 0 {
		c.Dedup.Window = f.Dedup.Window
	}
	if f.Dedup.SweepInterval != 0 {
		c.Dedup.SweepInterval = f.Dedup.SweepInterval
	}
	c.Campaigns.merge(f.Campaigns)
	if f.Scheduler.Interval != 0 {
		c.Scheduler.Interval = f.Scheduler.Interval
	}
	if f.Limits.ContentDedupWindow != 0 {
		c.Limits.ContentDedupWindow = f.Limits.ContentDedupWindow
	}
	if f.Limits.DefaultPerDay != 0 {
		c.Limits.DefaultPerDay = f.Limits.DefaultPerDay
	}
	if f.Limits.PerChannelPerDay != nil {
		c.Limits.PerChannelPerDay = f.Limits.PerChannelPerDay
	}
	if f.Limits.TableWait != 0 {
		c.Limits.TableWait = f.Limits.TableWait
	}
	if f.Sink.Concurrency != 0 {
		c.Sink.Concurrency = f.Sink.Concurrency
	}
	if f.Sink.Chunk != 0 {
		c.Sink.Chunk = f.Sink.Chunk
	}
	if f.Sink.Attempts != 0 {
		c.Sink.Attempts = f.Sink.Attempts
	}
	if f.Sink.Backoff != 0 {
		c.Sink.Backoff = f.Sink.Backoff
	}
	if f.Sink.SendTimeout != 0 {
		c.Sink.SendTimeout = f.Sink.SendTimeout
	}
	if f.Sink.LedgerLookback != 0 {
		c.Sink.LedgerLookback = f.Sink.LedgerLookback
	}
	if f.Sink.DrainTimeout != 0 {
		c.Sink.DrainTimeout = f.Sink.DrainTimeout
	}
	if f.Sink.Retry.Tiers != nil {
		c.Sink.Retry.Tiers = f.Sink.Retry.Tiers
	}
	for p, d := range f.Sink.Retry.Horizon {
		c.Sink.Retry.Horizon[p] = d
	}
	if f.Sink.Breaker.Failures != 0 {
		c.Sink.Breaker.Failures = f.Sink.Breaker.Failures
	}
	if f.Sink.Breaker.OpenFor != 0 {
		c.Sink.Breaker.OpenFor = f.Sink.Breaker.OpenFor
	}
	if f.Sink.Breaker.Probes != 0 {
		c.Sink.Breaker.Probes = f.Sink.Breaker.Probes
	}
	if f.Render.Timeout != 0 {
		c.Render.Timeout = f.Render.Timeout
	}
	if f.Render.MaxIterations != 0 {
		c.Render.MaxIterations = f.Render.MaxIterations
	}
	for ch, n := range f.Render.MaxBytes {
		c.Render.MaxBytes[ch] = n
	}
	if f.Health.Addr != "" {
		c.Health.Addr = f.Health.Addr
	}
	if f.Health.StuckAfter != 0 {
		c.Health.StuckAfter = f.Health.StuckAfter
	}
	if f.Alerts.WebhookURL != "" {
		c.Alerts.WebhookURL = f.Alerts.WebhookURL
	}
	if f.Alerts.Timeout != 0 {
		c.Alerts.Timeout = f.Alerts.Timeout
	}
	if f.Channels != nil {
		c.Channels = f.Channels
	}
	if f.Inbox.Secret != "" {
		c.Inbox.Secret = f.Inbox.Secret
	}
	if f.Inbox.MaxMessages != 0 {
		c.Inbox.MaxMessages = f.Inbox.MaxMessages
	}
	if f.Inbox.AllowedOrigins != nil {
		c.Inbox.AllowedOrigins = f.Inbox.AllowedOrigins
	}
	if f.Inbox.Heartbeat != 0 {
		c.Inbox.Heartbeat = f.Inbox.Heartbeat
	}
	if f.Inbox.MaxStreams != 0 {
		c.Inbox.MaxStreams = f.Inbox.MaxStreams
	}
	if f.Encryption.MasterKeys != "" {
		c.Encryption.MasterKeys = f.Encryption.MasterKeys
	}
	c.Tracking.merge(f.Tracking)
	c.Analytics.merge(f.Analytics)
	if f.LogLevel != "" {
		c.LogLevel = f.LogLevel
	}
}

func (a *Analytics) merge(f Analytics) {
	if f.Enabled != nil {
		a.Enabled = f.Enabled
	}
	if f.Addr != "" {
		a.Addr = f.Addr
	}
	if f.LocalPort != 0 {
		a.LocalPort = f.LocalPort
	}
	if f.Database != "" {
		a.Database = f.Database
	}
	if f.User != "" {
		a.User = f.User
	}
	if f.Password != "" {
		a.Password = f.Password
	}
	if f.BatchSize != 0 {
		a.BatchSize = f.BatchSize
	}
	if f.FlushEvery != 0 {
		a.FlushEvery = f.FlushEvery
	}
	if f.MaxBackoff != 0 {
		a.MaxBackoff = f.MaxBackoff
	}
	if f.Prices != nil {
		a.Prices = f.Prices
	}
	if f.ReceiptGrace != 0 {
		a.ReceiptGrace = f.ReceiptGrace
	}
}

// Environment overrides. Secrets of providers: NOTIFYD_PROVIDER_<NAME>_PASSWORD
// (smtp) and NOTIFYD_PROVIDER_<NAME>_SECRET_<ENDPOINT> (webhook), names upper-cased
// with '-' as '_'.
func (c *Config) applyEnv(env func(string) string) error {
	set := func(name string, fn func(string) error) error {
		if v := env(name); v != "" {
			if err := fn(v); err != nil {
				return fmt.Errorf("config: %s: %w", name, err)
			}
		}
		return nil
	}
	str := func(dst *string) func(string) error { return func(v string) error { *dst = v; return nil } }
	num := func(dst *int) func(string) error {
		return func(v string) error { n, err := strconv.Atoi(v); *dst = n; return err }
	}
	errs := []error{
		set("NOTIFYD_DATA_DIR", str(&c.DataDir)),
		set("NOTIFYD_HTTP_ADDR", str(&c.HTTP.Addr)),
		set("NOTIFYD_LOG_LEVEL", str(&c.LogLevel)),
		set("NOTIFYD_KAFKA_BROKERS", func(v string) error { c.Kafka.Brokers = splitList(v); return nil }),
		set("NOTIFYD_KAFKA_EMBEDDED_PORT", num(&c.Kafka.EmbeddedPort)),
		set("NOTIFYD_KAFKA_PARTITIONS", num(&c.Kafka.Partitions)),
		set("NOTIFYD_KAFKA_SASL_MECHANISM", str(&c.Kafka.Security.SASL.Mechanism)),
		set("NOTIFYD_KAFKA_SASL_USERNAME", str(&c.Kafka.Security.SASL.Username)),
		set("NOTIFYD_KAFKA_SASL_PASSWORD", str(&c.Kafka.Security.SASL.Password)),
		set("NOTIFYD_API_KEYS", func(v string) error {
			keys, err := parseKeys(v)
			c.APIKeys = keys
			return err
		}),
		set("NOTIFYD_ANALYTICS_ADDR", str(&c.Analytics.Addr)),
		set("NOTIFYD_HEALTH_ADDR", str(&c.Health.Addr)),
		set("NOTIFYD_INBOX_SECRET", str(&c.Inbox.Secret)),
		set("NOTIFYD_MASTER_KEYS", str(&c.Encryption.MasterKeys)),
		set("NOTIFYD_TRACKING_SECRET", str(&c.Tracking.Secret)),
		set("NOTIFYD_TRACKING_BASE_URL", str(&c.Tracking.BaseURL)),
		set("NOTIFYD_TRACKING_LEGACY_UNTIL", str(&c.Tracking.LegacyUntil)),
		set("NOTIFYD_ANALYTICS_PASSWORD", str(&c.Analytics.Password)),
		set("NOTIFYD_DEDUP_WINDOW", func(v string) error {
			d, err := time.ParseDuration(v)
			c.Dedup.Window = d
			return err
		}),
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	for ch, ps := range c.Channels {
		for i := range ps {
			p := &c.Channels[ch][i]
			prefix := "NOTIFYD_PROVIDER_" + envName(p.Name) + "_"
			if v := env(prefix + "PASSWORD"); v != "" {
				p.SMTP.Password = v
			}
			for name, ep := range p.Webhook.Endpoints {
				if v := env(prefix + "SECRET_" + envName(name)); v != "" {
					ep.Secret = v
					p.Webhook.Endpoints[name] = ep
				}
			}
		}
	}
	return nil
}

func envName(s string) string {
	return strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(s))
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// parseKeys reads "name:key,name2:key2". A key may carry attributes after a
// ';': "name:key;scopes=send+profiles:read;tenant=acme;rateLimit=10;burst=20"
// (scopes joined by '+', since ',' separates keys).
func parseKeys(v string) ([]APIKey, error) {
	var out []APIKey
	for i, item := range splitList(v) {
		head, attrs, _ := strings.Cut(item, ";")
		name, key, ok := strings.Cut(head, ":")
		if !ok || name == "" || key == "" {
			// Not quoted: the item may be a key.
			return nil, fmt.Errorf("item %d: want name:key", i+1)
		}
		k := APIKey{Name: name, Key: key}
		if attrs != "" {
			if err := k.parseAttrs(attrs); err != nil {
				return nil, fmt.Errorf("key %q: %w", name, err)
			}
		}
		out = append(out, k)
	}
	return out, nil
}

// parseAttrs reads "scopes=a+b;tenant=t;rateLimit=r;burst=n".
func (k *APIKey) parseAttrs(attrs string) error {
	for _, a := range strings.Split(attrs, ";") {
		name, val, ok := strings.Cut(strings.TrimSpace(a), "=")
		if !ok || val == "" {
			return fmt.Errorf("want attribute=value after ';', got %q", a)
		}
		var err error
		switch name {
		case "scopes":
			k.Scopes = strings.Split(val, "+")
		case "tenant":
			k.Tenant = val
		case "rateLimit":
			k.RateLimit, err = strconv.ParseFloat(val, 64)
			if err == nil && (k.RateLimit < 0 || k.RateLimit != k.RateLimit) {
				err = fmt.Errorf("must be a number >= 0")
			}
		case "burst":
			k.Burst, err = strconv.Atoi(val)
			if err == nil && k.Burst < 0 {
				err = fmt.Errorf("must be >= 0")
			}
		default:
			return fmt.Errorf("unknown attribute %q (want scopes, tenant, rateLimit or burst)", name)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// MinAPIKeyLength refuses keys short enough to guess (and the empty key an
// unset environment variable would leave).
const MinAPIKeyLength = 8

// SameKeyName tells whether two API key names read as one: compared without
// surrounding or repeated spaces and ignoring case ("ops" and "Ops " are one
// name). Names label keys in campaigns' decisions and the audit trail.
func SameKeyName(a, b string) bool {
	return strings.EqualFold(strings.Join(strings.Fields(a), " "), strings.Join(strings.Fields(b), " "))
}

// Validate reports the first problem of a configuration.
func (c *Config) Validate() error {
	for i, k := range c.APIKeys {
		if strings.TrimSpace(k.Name) == "" || len(k.Key) < MinAPIKeyLength {
			return fmt.Errorf("config: apiKeys[%d] (%q): needs a name and a key of at least %d characters", i, k.Name, MinAPIKeyLength)
		}
		// A configured key is the principal config:<name>: two keys of one
		// name (or one secret) would be one approver to the two-person rule.
		for j, o := range c.APIKeys[:i] {
			if SameKeyName(o.Name, k.Name) {
				return fmt.Errorf("config: apiKeys[%d] (%q): the same name as apiKeys[%d] (%q); names are unique, ignoring case and spaces", i, k.Name, j, o.Name)
			}
			if o.Key == k.Key {
				return fmt.Errorf("config: apiKeys[%d] (%q): the same key as apiKeys[%d] (%q)", i, k.Name, j, o.Name)
			}
		}
	}
	if c.Kafka.Partitions < 1 {
		return fmt.Errorf("config: kafka.partitions must be >= 1")
	}
	if c.Inbox.MaxMessages < 1 || c.Inbox.MaxMessages > 10000 {
		return fmt.Errorf("config: inbox.maxMessages must be between 1 and 10000")
	}
	if c.Inbox.Secret != "" && len(c.Inbox.Secret) < 16 {
		return fmt.Errorf("config: inbox.secret must be at least 16 characters")
	}
	if c.Inbox.Heartbeat < time.Second || c.Inbox.MaxStreams < 1 {
		return fmt.Errorf("config: inbox.heartbeat must be at least 1s and inbox.maxStreams at least 1")
	}
	if c.Kafka.SessionTimeout < 6*time.Second || c.Kafka.SessionTimeout > 5*time.Minute {
		return fmt.Errorf("config: kafka.sessionTimeout must be between 6s (the brokers' group.min.session.timeout.ms) and 5m")
	}
	if err := c.Kafka.Security.Validate(); err != nil {
		return err
	}
	if cp := c.Campaigns; cp.ApprovalAbove < 0 || cp.Step < 10*time.Millisecond || cp.Step > time.Minute ||
		cp.CatchUp < 0 || cp.MaxListBytes < 1024 {
		return fmt.Errorf("config: campaigns: approvalAbove must be >= 0, step between 10ms and 1m, catchUp >= 0 and maxListBytes at least 1024")
	}
	if p := c.Priority; p.Hold < time.Millisecond || p.Hold > time.Second || p.MaxHold < p.Hold || p.MaxHold > 10*time.Second {
		return fmt.Errorf("config: priority.hold must be between 1ms and 1s, and priority.maxHold between it and 10s")
	}
	if c.Dedup.Window <= 0 || c.Dedup.SweepInterval <= 0 {
		return fmt.Errorf("config: dedup.window and dedup.sweepInterval must be positive")
	}
	if a := c.Analytics; a.BatchSize < 1 || a.FlushEvery <= 0 || a.MaxBackoff <= 0 {
		return fmt.Errorf("config: analytics.batchSize, analytics.flushEvery and analytics.maxBackoff must be positive")
	}
	for i, p := range c.Analytics.Prices {
		if p.Provider == "" || p.Channel == "" || p.Price < 0 || p.Currency == "" {
			return fmt.Errorf("config: analytics.prices[%d]: provider, channel, currency and a price >= 0 are required", i)
		}
	}
	if c.Scheduler.Interval <= 0 {
		return fmt.Errorf("config: scheduler.interval must be positive")
	}
	if c.Sink.Attempts < 1 || c.Sink.Chunk < 1 || c.Sink.Concurrency < 1 {
		return fmt.Errorf("config: sink.attempts, sink.chunk and sink.concurrency must be >= 1")
	}
	if err := c.Sink.validate(); err != nil {
		return err
	}
	if r := c.Render; r.Timeout <= 0 || r.MaxIterations < 1 {
		return fmt.Errorf("config: render.timeout and render.maxIterations must be positive")
	}
	for ch, n := range c.Render.MaxBytes {
		if n < 1 {
			return fmt.Errorf("config: render.maxBytes.%s must be positive", ch)
		}
	}
	if c.Render.Budget("default") < 1 {
		return fmt.Errorf("config: render.maxBytes.default is required")
	}
	if c.Health.StuckAfter <= 0 {
		return fmt.Errorf("config: health.stuckAfter must be positive")
	}
	for _, ch := range c.ChannelNames() {
		for i, p := range c.Channels[ch] {
			where := fmt.Sprintf("config: channels.%s[%d]", ch, i)
			if p.Name == "" {
				return fmt.Errorf("%s: name is required", where)
			}
			if p.RateLimit < 0 || p.Burst < 0 || p.Concurrency < 0 {
				return fmt.Errorf("%s (%s): rateLimit, burst and concurrency must not be negative", where, p.Name)
			}
			for j, pr := range p.Priorities {
				if pr != "high" && pr != "normal" && pr != "low" {
					return fmt.Errorf("%s (%s): priorities[%d]: must be high, normal or low, got %q", where, p.Name, j, pr)
				}
			}
			for key := range p.Settings {
				if key != p.Type {
					return fmt.Errorf("%s (%s): unknown key %q (a %s provider's settings go under %q)", where, p.Name, key, p.Type, p.Type)
				}
			}
			switch p.Type {
			case "log":
			case "smtp":
				if p.SMTP.Host == "" || p.SMTP.Port == 0 || p.SMTP.From == "" {
					return fmt.Errorf("%s (%s): smtp.host, smtp.port and smtp.from are required", where, p.Name)
				}
				switch p.SMTP.TLS {
				case "", "none", "starttls", "tls":
				default:
					return fmt.Errorf("%s (%s): smtp.tls must be none, starttls or tls", where, p.Name)
				}
			case "webhook":
				if len(p.Webhook.Endpoints) == 0 {
					return fmt.Errorf("%s (%s): webhook.endpoints is required", where, p.Name)
				}
				for name, ep := range p.Webhook.Endpoints {
					if ep.URL == "" || ep.Secret == "" {
						return fmt.Errorf("%s (%s): endpoint %s needs url and secret", where, p.Name, name)
					}
				}
			case "":
				return fmt.Errorf("%s (%s): type is required", where, p.Name)
			default:
				// Checked against the registered types, settings and all, by sinks.Check.
			}
		}
	}
	return nil
}

func (s Sink) validate() error {
	if s.DrainTimeout <= 0 {
		return fmt.Errorf("config: sink.drainTimeout must be positive")
	}
	if len(s.Retry.Tiers) == 0 {
		return fmt.Errorf("config: sink.retry.tiers needs at least one delay")
	}
	seen := map[string]bool{}
	for i, d := range s.Retry.Tiers {
		if d < time.Second {
			return fmt.Errorf("config: sink.retry.tiers[%d]: %v is under a second", i, d)
		}
		if seen[RetryTierName(d)] {
			return fmt.Errorf("config: sink.retry.tiers[%d]: %v is listed twice", i, d)
		}
		seen[RetryTierName(d)] = true
	}
	for p, d := range s.Retry.Horizon {
		if p != "high" && p != "normal" && p != "low" {
			return fmt.Errorf("config: sink.retry.horizon: unknown priority %q", p)
		}
		if d <= 0 {
			return fmt.Errorf("config: sink.retry.horizon.%s must be positive", p)
		}
	}
	if b := s.Breaker; b.Failures < 1 || b.OpenFor <= 0 || b.Probes < 1 {
		return fmt.Errorf("config: sink.breaker.failures, openFor and probes must be positive")
	}
	return nil
}

// RetryTierName names a retry delay the way its topic does: the largest units
// that express it exactly, "10s", "1m", "1h30m".
func RetryTierName(d time.Duration) string {
	d = d.Truncate(time.Second)
	var b strings.Builder
	for _, u := range []struct {
		d time.Duration
		s string
	}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}} {
		if n := d / u.d; n > 0 {
			b.WriteString(strconv.FormatInt(int64(n), 10) + u.s)
			d -= n * u.d
		}
	}
	return b.String()
}

// ChannelNames lists the channels that have at least one provider, sorted.
func (c *Config) ChannelNames() []string {
	var out []string
	for ch, ps := range c.Channels {
		if len(ps) > 0 {
			out = append(out, ch)
		}
	}
	sort.Strings(out)
	return out
}

// APIKeyFile is where EnsureAPIKey keeps a generated key, under the data directory.
const APIKeyFile = "api.key"

// EnsureAPIKey makes sure the API is never open: when no key is configured it
// uses the key in <dataDir>/api.key, generating that file (mode 0600) on the
// first start, so restarts keep the key. The key has every scope in the
// default tenant. It returns the file's path, or "" if keys were configured;
// the key itself is never returned, so it cannot end up in a log.
func (c *Config) EnsureAPIKey() (string, error) {
	if len(c.APIKeys) > 0 {
		return "", nil
	}
	path := filepath.Join(c.DataDir, APIKeyFile)
	key, err := readOrCreateKey(path)
	if err != nil {
		return "", fmt.Errorf("generated API key %s: %w", path, err)
	}
	c.APIKeys = []APIKey{{Name: "generated", Key: key}}
	return path, nil
}

func readOrCreateKey(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		key := strings.TrimSpace(string(b))
		if len(key) < MinAPIKeyLength {
			return "", fmt.Errorf("holds no key of at least %d characters; delete it to generate a new one", MinAPIKeyLength)
		}
		return key, nil
	} else if !os.IsNotExist(err) {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	b := make([]byte, 18)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	key := "ndk_" + hex.EncodeToString(b)
	// Written aside and linked into place, so another instance starting on
	// the same data directory reads either no file or the whole key.
	f, err := os.CreateTemp(filepath.Dir(path), ".api.key-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(key + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	if err := os.Link(f.Name(), path); os.IsExist(err) {
		return readOrCreateKey(path)
	} else if err != nil {
		return "", err
	}
	return key, nil
}

// PerDay is the frequency cap of a channel (0 = unlimited).
func (l Limits) PerDay(channel string) int {
	if n, ok := l.PerChannelPerDay[channel]; ok {
		return n
	}
	return l.DefaultPerDay
}
