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
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole configuration. Zero values take the defaults of Default().
type Config struct {
	DataDir   string                `yaml:"dataDir"`
	HTTP      HTTP                  `yaml:"http"`
	Kafka     Kafka                 `yaml:"kafka"`
	APIKeys   []APIKey              `yaml:"apiKeys"`
	Dedup     Dedup                 `yaml:"dedup"`
	Scheduler Scheduler             `yaml:"scheduler"`
	Limits    Limits                `yaml:"limits"`
	Sink      Sink                  `yaml:"sink"`
	Channels  map[string][]Provider `yaml:"channels"`
	Analytics Analytics             `yaml:"analytics"`
	LogLevel  string                `yaml:"logLevel"`
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
}

// APIKey is one key allowed to call the API. Key is cleared once hashed.
type APIKey struct {
	Name string `yaml:"name"`
	Key  string `yaml:"key"`
}

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
}

// Provider is one provider of a channel; a channel's list is its failover order.
type Provider struct {
	Name    string  `yaml:"name"`
	Type    string  `yaml:"type"` // smtp | webhook | log
	SMTP    SMTP    `yaml:"smtp"`
	Webhook Webhook `yaml:"webhook"`
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
		Kafka:     Kafka{EmbeddedPort: 9092, Partitions: 4, Replication: 1, FlushEvery: 2 * time.Millisecond},
		Dedup:     Dedup{Window: 24 * time.Hour, SweepInterval: time.Minute},
		Scheduler: Scheduler{Interval: time.Second},
		Analytics: Analytics{Database: "notifyd", User: "default", BatchSize: 10000,
			FlushEvery: time.Second, MaxBackoff: 30 * time.Second, ReceiptGrace: time.Hour},
		Limits: Limits{ContentDedupWindow: 10 * time.Minute, DefaultPerDay: 100,
			PerChannelPerDay: map[string]int{}, TableWait: time.Second},
		Sink: Sink{Concurrency: 64, Chunk: 256, Attempts: 3, Backoff: 200 * time.Millisecond,
			SendTimeout: 30 * time.Second, LedgerLookback: time.Hour},
		Channels: map[string][]Provider{
			"email":   {{Name: "log-email", Type: "log"}},
			"webhook": {{Name: "log-webhook", Type: "log"}},
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
	if len(f.APIKeys) > 0 {
		c.APIKeys = f.APIKeys
	}
	if f.Dedup.Window != 0 {
		c.Dedup.Window = f.Dedup.Window
	}
	if f.Dedup.SweepInterval != 0 {
		c.Dedup.SweepInterval = f.Dedup.SweepInterval
	}
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
	if f.Channels != nil {
		c.Channels = f.Channels
	}
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
		set("NOTIFYD_API_KEYS", func(v string) error {
			keys, err := parseKeys(v)
			c.APIKeys = keys
			return err
		}),
		set("NOTIFYD_ANALYTICS_ADDR", str(&c.Analytics.Addr)),
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

// parseKeys reads "name:key,name2:key2".
func parseKeys(v string) ([]APIKey, error) {
	var out []APIKey
	for _, item := range splitList(v) {
		name, key, ok := strings.Cut(item, ":")
		if !ok || name == "" || key == "" {
			return nil, fmt.Errorf("want name:key, got %q", item)
		}
		out = append(out, APIKey{Name: name, Key: key})
	}
	return out, nil
}

// MinAPIKeyLength refuses keys short enough to guess (and the empty key an
// unset environment variable would leave).
const MinAPIKeyLength = 8

// Validate reports the first problem of a configuration.
func (c *Config) Validate() error {
	for i, k := range c.APIKeys {
		if k.Name == "" || len(k.Key) < MinAPIKeyLength {
			return fmt.Errorf("config: apiKeys[%d] (%q): needs a name and a key of at least %d characters", i, k.Name, MinAPIKeyLength)
		}
	}
	if c.Kafka.Partitions < 1 {
		return fmt.Errorf("config: kafka.partitions must be >= 1")
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
	for _, ch := range c.ChannelNames() {
		for i, p := range c.Channels[ch] {
			where := fmt.Sprintf("config: channels.%s[%d]", ch, i)
			if p.Name == "" {
				return fmt.Errorf("%s: name is required", where)
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
			default:
				return fmt.Errorf("%s (%s): unknown provider type %q", where, p.Name, p.Type)
			}
		}
	}
	return nil
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

// EnsureAPIKey generates a key when none is configured, so the API is never open.
// It returns the generated key ("" if keys were configured).
func (c *Config) EnsureAPIKey() string {
	if len(c.APIKeys) > 0 {
		return ""
	}
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	key := "ndk_" + hex.EncodeToString(b)
	c.APIKeys = []APIKey{{Name: "generated", Key: key}}
	return key
}

// PerDay is the frequency cap of a channel (0 = unlimited).
func (l Limits) PerDay(channel string) int {
	if n, ok := l.PerChannelPerDay[channel]; ok {
		return n
	}
	return l.DefaultPerDay
}
