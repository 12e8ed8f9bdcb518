package analytics

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/notifyd/notifyd/config"
)

// Migration is one version of the schema. Every step is idempotent (IF NOT
// EXISTS, IF EXISTS, a column added only if missing), so a migration
// interrupted half-way runs again cleanly.
// The DDL runs on Debian's ClickHouse 18.16 and on current ClickHouse: plain
// String columns (18.16's LowCardinality breaks materialized views), DateTime
// plus a millisecond UInt64 instead of DateTime64, no Map, no TTL.
type Migration struct {
	Version uint32
	Name    string
	// Columns are added before Statements run, each unless already there.
	Columns    []NewColumn
	Statements []string
}

// NewColumn adds a column to an existing table. 18.16 has no ADD COLUMN IF NOT
// EXISTS, so Migrate reads system.columns first. With OrderBy set, the same
// ALTER appends the column to the sorting key, which both 18.16 and current
// ClickHouse allow only for a column added by that ALTER and without a
// DEFAULT clause: rows written before read the type's default ("" for String).
type NewColumn struct {
	Table   string // without the database
	Name    string
	Type    string
	OrderBy string // the table's new sorting key, the column at its end; "" keeps the key
}

// Migrations in order; append, never edit a released one.
var Migrations = []Migration{{
	Version: 1,
	Name:    "events, per-minute rollup, latency, prices and cost",
	Statements: []string{
		// Every StatusEvent, once per event id: a redelivered batch inserts the
		// same rows again and ReplacingMergeTree folds them (id is in the key);
		// exact counts read FINAL or count uniqExact(id).
		`CREATE TABLE IF NOT EXISTS {db}.events (
			id String,
			notification_id String,
			event_id String,
			user_id String,
			template String,
			channel String,
			priority String,
			category String,
			provider String,
			status String,
			reason String,
			at DateTime,
			at_ms UInt64,
			accepted_at_ms UInt64,
			attempt UInt32,
			provider_message_id String
		) ENGINE = ReplacingMergeTree
		PARTITION BY toYYYYMM(at)
		ORDER BY (toDate(at), channel, status, id)`,
		// Notifications per minute and dimensions. uniqExact of the notification
		// id, not count(): a redelivered batch cannot count twice.
		`CREATE TABLE IF NOT EXISTS {db}.events_per_minute (
			minute DateTime,
			channel String,
			provider String,
			template String,
			priority String,
			status String,
			notifications AggregateFunction(uniqExact, String)
		) ENGINE = AggregatingMergeTree
		PARTITION BY toYYYYMM(minute)
		ORDER BY (minute, channel, status, provider, template, priority)`,
		`CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.events_per_minute_mv TO {db}.events_per_minute AS
		SELECT toStartOfMinute(at) AS minute, channel, provider, template, priority, status,
			uniqExactState(notification_id) AS notifications
		FROM {db}.events
		GROUP BY minute, channel, provider, template, priority, status`,
		// One row per notification and channel with its milestones (0 = not reached).
		`CREATE VIEW IF NOT EXISTS {db}.latency AS
		SELECT notification_id, channel,
			anyIf(provider, status = 'sent') AS provider,
			any(template) AS template,
			any(priority) AS priority,
			toDate(min(at)) AS day,
			max(accepted_at_ms) AS accepted_ms,
			minIf(at_ms, status = 'sent') AS sent_ms,
			minIf(at_ms, status = 'delivered') AS delivered_ms
		FROM {db}.events
		WHERE channel != ''
		GROUP BY notification_id, channel`,
		// Prices per provider and channel, from configuration; the newest row wins.
		`CREATE TABLE IF NOT EXISTS {db}.prices (
			provider String,
			channel String,
			price_micros UInt64,
			currency String,
			updated_at DateTime
		) ENGINE = ReplacingMergeTree(updated_at)
		ORDER BY (provider, channel)`,
		`CREATE VIEW IF NOT EXISTS {db}.cost_per_day AS
		SELECT day, provider, channel, sent, price_micros, currency, sent * price_micros / 1000000 AS cost
		FROM (
			SELECT toDate(at) AS day, provider, channel, uniqExact(notification_id) AS sent
			FROM {db}.events WHERE status = 'sent'
			GROUP BY day, provider, channel
		) ANY LEFT JOIN (
			SELECT provider, channel, argMax(price_micros, updated_at) AS price_micros, argMax(currency, updated_at) AS currency
			FROM {db}.prices GROUP BY provider, channel
		) USING (provider, channel)`,
	},
}, {
	Version: 2,
	Name:    "tenant on every table and view",
	// Rows written before tenants existed belong to the default tenant "".
	// events gets tenant in its key so that two tenants' events never fold
	// into one; the rollup needs it in its key so that merges sum per tenant.
	Columns: []NewColumn{
		{Table: "events", Name: "tenant", Type: "String", OrderBy: "toDate(at), channel, status, id, tenant"},
		{Table: "events_per_minute", Name: "tenant", Type: "String",
			OrderBy: "minute, channel, status, provider, template, priority, tenant"},
	},
	Statements: []string{
		// The rollup's view is replaced, not altered: a new one is created
		// before the old one is dropped. In between, an insert into events
		// fails on 18.16 (the old view lacks tenant) and the sink retries it
		// once the old view is gone, so no event misses the rollup. The
		// rollup's rows from before keep tenant "".
		`CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.events_per_minute_tenant_mv TO {db}.events_per_minute AS
		SELECT toStartOfMinute(at) AS minute, tenant, channel, provider, template, priority, status,
			uniqExactState(notification_id) AS notifications
		FROM {db}.events
		GROUP BY minute, tenant, channel, provider, template, priority, status`,
		`DROP TABLE IF EXISTS {db}.events_per_minute_mv`,
		// Plain views hold no rows: dropped and created again with tenant.
		// (18.16 has neither CREATE OR REPLACE VIEW nor DROP VIEW.)
		`DROP TABLE IF EXISTS {db}.latency`,
		`CREATE VIEW IF NOT EXISTS {db}.latency AS
		SELECT tenant, notification_id, channel,
			anyIf(provider, status = 'sent') AS provider,
			any(template) AS template,
			any(priority) AS priority,
			toDate(min(at)) AS day,
			max(accepted_at_ms) AS accepted_ms,
			minIf(at_ms, status = 'sent') AS sent_ms,
			minIf(at_ms, status = 'delivered') AS delivered_ms
		FROM {db}.events
		WHERE channel != ''
		GROUP BY tenant, notification_id, channel`,
		// Prices stay global: providers and their prices are configured for
		// the whole service; cost is per tenant through what it sent.
		`DROP TABLE IF EXISTS {db}.cost_per_day`,
		`CREATE VIEW IF NOT EXISTS {db}.cost_per_day AS
		SELECT tenant, day, provider, channel, sent, price_micros, currency, sent * price_micros / 1000000 AS cost
		FROM (
			SELECT tenant, toDate(at) AS day, provider, channel, uniqExact(notification_id) AS sent
			FROM {db}.events WHERE status = 'sent'
			GROUP BY tenant, day, provider, channel
		) ANY LEFT JOIN (
			SELECT provider, channel, argMax(price_micros, updated_at) AS price_micros, argMax(currency, updated_at) AS currency
			FROM {db}.prices GROUP BY provider, channel
		) USING (provider, channel)`,
	},
}, {
	Version: 3,
	Name:    "campaign on events and the per-minute rollup",
	// Rows written before campaigns existed, and notifications no campaign
	// sent, have campaign "". events keeps its key: an event id names one
	// notification, which belongs to one campaign, so copies of an event
	// cannot differ in campaign (and a copy written by an older sink, without
	// the column, still folds with one that has it). The rollup needs
	// campaign in its key so that merges keep campaigns apart.
	Columns: []NewColumn{
		{Table: "events", Name: "campaign", Type: "String"},
		{Table: "events_per_minute", Name: "campaign", Type: "String",
			OrderBy: "minute, channel, status, provider, template, priority, tenant, campaign"},
	},
	Statements: []string{
		// As in version 2: the new view before the old one is dropped, an
		// insert in between fails on 18.16 and the sink retries it; the
		// rollup's rows from before keep campaign "".
		`CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.events_per_minute_campaign_mv TO {db}.events_per_minute AS
		SELECT toStartOfMinute(at) AS minute, tenant, campaign, channel, provider, template, priority, status,
			uniqExactState(notification_id) AS notifications
		FROM {db}.events
		GROUP BY minute, tenant, campaign, channel, provider, template, priority, status`,
		`DROP TABLE IF EXISTS {db}.events_per_minute_tenant_mv`,
	},
}}

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// SchemaVersion is the newest migration's version.
func SchemaVersion() uint32 { return Migrations[len(Migrations)-1].Version }

// Migrate creates the database and applies every migration newer than the one
// recorded in {db}.schema_migrations. It returns the versions it applied.
func Migrate(ctx context.Context, conn driver.Conn, db string) ([]uint32, error) {
	return migrate(ctx, conn, db, Migrations)
}

// migrate applies the migrations of ms newer than the recorded version; the
// tests use it to build a database of an earlier version.
func migrate(ctx context.Context, conn driver.Conn, db string, ms []Migration) ([]uint32, error) {
	if !identifier.MatchString(db) {
		return nil, fmt.Errorf("analytics database name %q is not a plain identifier", db)
	}
	q := func(s string) string { return strings.ReplaceAll(s, "{db}", db) }
	for _, s := range []string{
		"CREATE DATABASE IF NOT EXISTS {db}",
		`CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, applied_at DateTime)
		 ENGINE = MergeTree ORDER BY version`,
	} {
		if err := conn.Exec(ctx, q(s)); err != nil {
			return nil, fmt.Errorf("migrate: %w", err)
		}
	}
	var current uint32
	if err := conn.QueryRow(ctx, q("SELECT toUInt32(max(version)) FROM {db}.schema_migrations")).Scan(&current); err != nil {
		return nil, fmt.Errorf("migrate: read version: %w", err)
	}
	var applied []uint32
	for _, m := range ms {
		if m.Version <= current {
			continue
		}
		for _, c := range m.Columns {
			if err := addColumn(ctx, conn, db, c); err != nil {
				return applied, fmt.Errorf("migration %d (%s): %w", m.Version, m.Name, err)
			}
		}
		for i, s := range m.Statements {
			if err := conn.Exec(ctx, q(s)); err != nil {
				return applied, fmt.Errorf("migration %d (%s) statement %d: %w", m.Version, m.Name, i+1, err)
			}
		}
		// Inserts go as native batches: 18.16 does not take INSERT … VALUES through Exec.
		b, err := conn.PrepareBatch(ctx, q("INSERT INTO {db}.schema_migrations (version, name, applied_at)"))
		if err == nil {
			if err = b.Append(m.Version, m.Name, time.Now()); err == nil {
				err = b.Send()
			}
		}
		if err != nil {
			return applied, fmt.Errorf("migration %d: record version: %w", m.Version, err)
		}
		applied = append(applied, m.Version)
	}
	return applied, nil
}

// addColumn applies c unless the table has the column already (a migration
// that stopped half-way and runs again).
func addColumn(ctx context.Context, conn driver.Conn, db string, c NewColumn) error {
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?",
		db, c.Table, c.Name).Scan(&n); err != nil {
		return fmt.Errorf("add column %s.%s: %w", c.Table, c.Name, err)
	}
	if n > 0 {
		return nil
	}
	alter := "ALTER TABLE " + db + "." + c.Table + " ADD COLUMN " + c.Name + " " + c.Type
	if c.OrderBy != "" {
		alter += ", MODIFY ORDER BY (" + c.OrderBy + ")"
	}
	if err := conn.Exec(ctx, alter); err != nil {
		return fmt.Errorf("add column %s.%s: %w", c.Table, c.Name, err)
	}
	return nil
}

// Open connects to ClickHouse over the native protocol.
func Open(addr, user, password string) (driver.Conn, error) {
	return clickhouse.Open(&clickhouse.Options{
		Addr:        []string{addr},
		Auth:        clickhouse.Auth{Username: user, Password: password},
		DialTimeout: 5 * time.Second,
		ReadTimeout: 60 * time.Second,
	})
}

// Price is what one message costs on a provider and channel.
type Price struct {
	Provider    string
	Channel     string
	PriceMicros uint64 // millionths of the currency unit
	Currency    string
}

// LoadPrices writes the configured prices; the newest row per provider and channel wins.
func LoadPrices(ctx context.Context, conn driver.Conn, db string, prices []Price) error {
	if len(prices) == 0 {
		return nil
	}
	b, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".prices (provider, channel, price_micros, currency, updated_at)")
	if err != nil {
		return fmt.Errorf("load prices: %w", err)
	}
	now := time.Now()
	for _, p := range prices {
		if err := b.Append(p.Provider, p.Channel, p.PriceMicros, p.Currency, now); err != nil {
			return fmt.Errorf("load prices: %w", err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("load prices: %w", err)
	}
	return nil
}

// PricesFromConfig converts configured prices to millionths of the currency unit.
func PricesFromConfig(ps []config.Price) []Price {
	out := make([]Price, len(ps))
	for i, p := range ps {
		out[i] = Price{Provider: p.Provider, Channel: p.Channel, PriceMicros: uint64(p.Price*1e6 + 0.5), Currency: p.Currency}
	}
	return out
}
