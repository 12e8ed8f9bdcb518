-- The schema of version 1 exactly as released (before tenants), for the
-- migration test: tables made by it must migrate in place.

CREATE TABLE IF NOT EXISTS {db}.events (
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
		ORDER BY (toDate(at), channel, status, id);

CREATE TABLE IF NOT EXISTS {db}.events_per_minute (
			minute DateTime,
			channel String,
			provider String,
			template String,
			priority String,
			status String,
			notifications AggregateFunction(uniqExact, String)
		) ENGINE = AggregatingMergeTree
		PARTITION BY toYYYYMM(minute)
		ORDER BY (minute, channel, status, provider, template, priority);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.events_per_minute_mv TO {db}.events_per_minute AS
		SELECT toStartOfMinute(at) AS minute, channel, provider, template, priority, status,
			uniqExactState(notification_id) AS notifications
		FROM {db}.events
		GROUP BY minute, channel, provider, template, priority, status;

CREATE VIEW IF NOT EXISTS {db}.latency AS
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
		GROUP BY notification_id, channel;

CREATE TABLE IF NOT EXISTS {db}.prices (
			provider String,
			channel String,
			price_micros UInt64,
			currency String,
			updated_at DateTime
		) ENGINE = ReplacingMergeTree(updated_at)
		ORDER BY (provider, channel);

CREATE VIEW IF NOT EXISTS {db}.cost_per_day AS
		SELECT day, provider, channel, sent, price_micros, currency, sent * price_micros / 1000000 AS cost
		FROM (
			SELECT toDate(at) AS day, provider, channel, uniqExact(notification_id) AS sent
			FROM {db}.events WHERE status = 'sent'
			GROUP BY day, provider, channel
		) ANY LEFT JOIN (
			SELECT provider, channel, argMax(price_micros, updated_at) AS price_micros, argMax(currency, updated_at) AS currency
			FROM {db}.prices GROUP BY provider, channel
		) USING (provider, channel);
