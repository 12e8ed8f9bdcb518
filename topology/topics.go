// Package topology names every topic and goka group of notifyd and wires the
// processors into groups: read it to see the pipeline.
package topology

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"hash/fnv"
	"sort"
	"strconv"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/crypt"
	"github.com/notifyd/notifyd/processors"
)

// Streams and tables.
const (
	Ingest       goka.Stream = "notify.ingest"           // SendRequest, key eventId
	DedupExpire  goka.Stream = "notify.dedup.expire"     // DedupEntry, key eventId
	Accepted     goka.Stream = "notify.accepted"         // Notification, key userId
	Events       goka.Stream = "notify.events"           // StatusEvent, key notificationId
	DLQ          goka.Stream = "notify.dlq"              // DeadLetter, key: the bad record's key
	Ledger       goka.Stream = "notify.ledger"           // LedgerEntry, key notificationId/channel (compacted)
	Scheduled    goka.Stream = "notify.scheduled"        // Notification, key <dueMillis>/<notificationId>
	SchedulerDue goka.Stream = "notify.scheduler.due"    // release command (empty), same key
	Feedback     goka.Stream = "notify.deliver.feedback" // DeliveryFeedback, key userId
	// DLQReplays remembers which dead letters `notifyd dlq replay` re-injected
	// (key <partition>/<offset> of the dead letter, compacted), so each is replayed once.
	DLQReplays goka.Stream = "notify.dlq.replays"
	// Recoveries holds, per provider of a channel (and per channel chain,
	// provider "channel:<channel>"), when a sink's circuit breaker last closed
	// again (JSON, key <channel>/<provider>, compacted). Every retrier reads it
	// whole and releases at once what that provider's failures parked.
	Recoveries goka.Stream = "notify.recoveries"

	Profiles goka.Table = "notify.profiles" // Profile, key userId (compacted)
	// DataKeys holds the wrapped keys of personal data (crypt.DataKey, compacted).
	DataKeys goka.Table = crypt.Topic
	// APIKeys holds managed API keys, hashed (compacted; key: the key id).
	APIKeys goka.Table = "notify.apikeys"
	// Audit receives an AuditEvent for every write through the API (key tenant).
	Audit     goka.Stream = "notify.audit"
	Templates goka.Table  = "notify.templates" // Template, key template id (compacted)
	// TemplateVersions keeps every saved version of every template (Template,
	// key schemas.TemplateVersionKey, compacted; never deleted): notifications
	// and campaigns render the version they were accepted or approved with.
	TemplateVersions goka.Table = "notify.template.versions"

	// Campaigns carries CampaignCommands (key processors.CampaignKey); an
	// empty value is the sweeper's tick.
	Campaigns goka.Stream = "notify.campaigns"
	// Audiences holds topic and list memberships (AudienceMember, key
	// processors.AudienceKey, compacted; a tombstone removes one).
	Audiences goka.Table = "notify.audiences"
	// Cancels holds cancelled notifications and campaigns (Cancellation,
	// compacted): every stage before a provider checks it.
	Cancels goka.Table = "notify.cancels"
	// Schedules carries ScheduleCommands (key ScheduleKey); an empty value is a tick.
	Schedules goka.Stream = "notify.schedules"

	DedupGroup     goka.Group = "notify.dedup"
	DeliverGroup   goka.Group = "notify.deliver"
	StatusGroup    goka.Group = "notify.status"
	SchedulerGroup goka.Group = "notify.scheduler"
	CampaignGroup  goka.Group = "notify.campaign"
	ScheduleGroup  goka.Group = "notify.schedule"
)

// Priority lanes before routing. A notification's priority chose its sink
// queue (Out) only after the deliver group, so an OTP waited behind any
// backlog of marketing in notify.ingest and notify.accepted. Each of those
// has a lane per priority now: goka feeds a partition's records of all its
// input topics through one channel, taking from each topic in turn, so a
// high-priority record waits for a few records of another lane, never for
// its backlog. notify.ingest and notify.accepted stay the normal lane (and
// what a producer that does not know lanes writes to).
const (
	IngestHigh   goka.Stream = "notify.ingest.high"
	IngestLow    goka.Stream = "notify.ingest.low"
	AcceptedHigh goka.Stream = "notify.accepted.high"
	AcceptedLow  goka.Stream = "notify.accepted.low"
)

// IngestLanes and AcceptedLanes list the lanes, high first.
var (
	IngestLanes   = []goka.Stream{IngestHigh, Ingest, IngestLow}
	AcceptedLanes = []goka.Stream{AcceptedHigh, Accepted, AcceptedLow}
)

// IngestLane is the ingest topic of a request of priority ("" and any
// unknown value: the normal lane, whose stage rejects a bad priority).
func IngestLane(priority string) goka.Stream {
	switch priority {
	case "high":
		return IngestHigh
	case "low":
		return IngestLow
	}
	return Ingest
}

// AcceptedLane is the accepted topic of a notification of priority.
func AcceptedLane(priority string) goka.Stream {
	switch priority {
	case "high":
		return AcceptedHigh
	case "low":
		return AcceptedLow
	}
	return Accepted
}

// Out is the queue of routed notifications of one channel and priority.
func Out(channel, priority string) goka.Stream {
	return goka.Stream("notify.out." + channel + "." + priority)
}

// SinkGroup is the consumer group of a channel's sink.
func SinkGroup(channel string) string { return "notify.sink." + channel }

// RetryGroup is the consumer group that moves due notifications from the
// retry topics back to their channel's queue.
const RetryGroup = "notify.retry"

// RetryPrefix starts the name of every retry topic; RetryTopic names one.
const RetryPrefix = "notify.retry."

// RetryTopic is the delayed-retry topic of one tier: notify.retry.10s, notify.retry.1m…
func RetryTopic(delay time.Duration) string { return RetryPrefix + config.RetryTierName(delay) }

// RetryTopics are the topics of the configured retry tiers.
func RetryTopics(tiers []time.Duration) []Topic {
	out := make([]Topic, len(tiers))
	for i, d := range tiers {
		out[i] = Topic{Name: RetryTopic(d)}
	}
	return out
}

// MaxRecordBytes bounds key plus value of every record notifyd produces. The
// producers refuse larger records (and Kafka's default limit is about 1 MB), so
// every stage checks this before producing and turns an oversized record into
// a rejected notification instead of a failed producer.
const MaxRecordBytes = 960 << 10

// producerMaxBytes is what the producers are configured to accept: above
// MaxRecordBytes by the record overhead, so a checked record always fits.
const producerMaxBytes = 1 << 20

// Hasher is goka's partitioning hash; every producer to a goka-consumed topic
// must use it (DESIGN rule 1).
func Hasher() hash.Hash32 { return fnv.New32a() }

// Partitioner is the franz-go partitioner that agrees with goka.
func Partitioner() kgo.Partitioner {
	return kgo.StickyKeyPartitioner(kgo.SaramaCompatHasher(func(b []byte) uint32 {
		h := fnv.New32a()
		h.Write(b)
		return h.Sum32()
	}))
}

// PartitionFor is the partition goka reads key from, of n.
func PartitionFor(key string, n int) int32 {
	return int32(partitioner.Partition(&kgo.Record{Key: []byte(key)}, n))
}

var partitioner = Partitioner().ForTopic("")

// Topic is one topic notifyd creates.
type Topic struct {
	Name    string
	Compact bool
	// Retention, when set, also deletes records older than it.
	Retention time.Duration
	// Extra are further topic configs (segment.ms of the data keys).
	Extra map[string]string
}

func (t Topic) configs() map[string]*string {
	policy := "delete"
	if t.Compact {
		policy = "compact"
	}
	cfg := map[string]*string{}
	if t.Retention > 0 {
		ms := strconv.FormatInt(t.Retention.Milliseconds(), 10)
		cfg["retention.ms"] = &ms
		if t.Compact {
			policy = "compact,delete"
		}
	}
	cfg["cleanup.policy"] = &policy
	for k, v := range t.Extra {
		if k != "cleanup.policy" {
			cfg[k] = &v
		}
	}
	maxBytes := strconv.Itoa(producerMaxBytes + 64<<10)
	cfg["max.message.bytes"] = &maxBytes
	return cfg
}

// Topics lists every topic of the pipeline. All share one partition count:
// co-partitioned inputs, joined tables and group tables must (DESIGN rule 2).
func Topics() []Topic {
	ts := []Topic{
		{Name: string(Ingest)}, {Name: string(IngestHigh)}, {Name: string(IngestLow)}, {Name: string(DedupExpire)},
		{Name: string(Accepted)}, {Name: string(AcceptedHigh)}, {Name: string(AcceptedLow)},
		{Name: string(Events)}, {Name: string(DLQ)}, {Name: string(Ledger), Compact: true, Retention: 7 * 24 * time.Hour},
		{Name: string(Profiles), Compact: true}, {Name: string(Templates), Compact: true},
		{Name: string(TemplateVersions), Compact: true},
		{Name: string(goka.GroupTable(DedupGroup)), Compact: true},
		{Name: string(goka.GroupTable(DeliverGroup)), Compact: true},
		{Name: string(goka.GroupTable(StatusGroup)), Compact: true},
		{Name: string(Scheduled)}, {Name: string(SchedulerDue)},
		{Name: string(goka.GroupTable(SchedulerGroup)), Compact: true},
		{Name: string(Feedback)}, {Name: string(DLQReplays), Compact: true}, {Name: string(Recoveries), Compact: true},
		{Name: string(DataKeys), Compact: true, Extra: crypt.Spec().Configs},
		{Name: string(APIKeys), Compact: true}, {Name: string(Audit)},
		{Name: string(Campaigns)}, {Name: string(goka.GroupTable(CampaignGroup)), Compact: true},
		{Name: string(Audiences), Compact: true}, {Name: string(Cancels), Compact: true},
		{Name: string(Schedules)}, {Name: string(goka.GroupTable(ScheduleGroup)), Compact: true},
	}
	ts = append(ts, inboxTopics()...)
	for _, ch := range processors.AllChannels() {
		for _, p := range processors.Priorities {
			ts = append(ts, Topic{Name: string(Out(ch, p))})
		}
	}
	return ts
}

// CreateTopics creates every topic (of Topics and extra) that is missing and
// fails if an existing one has another partition count than configured.
func CreateTopics(ctx context.Context, brokers []string, partitions, replication int, extra ...Topic) error {
	cl, err := kgo.NewClient(ClientOpts(brokers...)...)
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	var lastErr error
	for attempt := 0; attempt < 50; attempt++ { // the broker may still be starting
		if lastErr = createTopics(ctx, adm, partitions, replication, extra); lastErr == nil {
			return nil
		}
		var mismatch *partitionMismatch
		if errors.As(lastErr, &mismatch) {
			return lastErr
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return lastErr
}

type partitionMismatch struct{ msg string }

func (p *partitionMismatch) Error() string { return p.msg }

func createTopics(ctx context.Context, adm *kadm.Client, partitions, replication int, extra []Topic) error {
	existing, err := adm.ListTopics(ctx)
	if err != nil {
		return fmt.Errorf("list topics: %w", err)
	}
	var mismatches []string
	seen := map[string]bool{}
	// An extra topic of the same name as one of Topics() replaces it (the
	// data keys' compaction settings on a real Kafka cluster).
	for _, t := range append(append([]Topic(nil), extra...), Topics()...) {
		if seen[t.Name] {
			continue
		}
		seen[t.Name] = true
		if d, ok := existing[t.Name]; ok {
			if len(d.Partitions) != partitions {
				mismatches = append(mismatches, fmt.Sprintf("%s has %d partitions, config says %d", t.Name, len(d.Partitions), partitions))
			}
			continue
		}
		resp, err := adm.CreateTopic(ctx, int32(partitions), int16(replication), t.configs(), t.Name)
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", t.Name, err)
		}
		if resp.Err != nil && !errors.Is(resp.Err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", t.Name, resp.Err)
		}
	}
	if len(mismatches) > 0 {
		sort.Strings(mismatches)
		return &partitionMismatch{msg: fmt.Sprintf("topics do not match kafka.partitions: %v", mismatches)}
	}
	return nil
}

// NewProducer returns a franz-go client for producing to notifyd topics, with
// the partitioner goka agrees with. extra options are appended.
func NewProducer(brokers []string, extra ...kgo.Opt) (*kgo.Client, error) {
	opts := append(ClientOpts(brokers...),
		kgo.RecordPartitioner(Partitioner()),
		kgo.ProducerLinger(0),
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		kgo.MaxBufferedRecords(100_000),
		kgo.ProducerBatchMaxBytes(producerMaxBytes))
	return kgo.NewClient(append(opts, extra...)...)
}

// IngestBatchBytes bounds the record batches an IngestProducer writes to
// the ingest lanes. A broker answers a fetch with at least one whole batch
// per partition whatever the consumer asks for, and the dedup group's
// consumer sends its next fetch, the one that brings a high-priority request,
// only once every partition took in its share of the last answer: batches of
// 1 MiB (a producer's default) make a high-priority request wait behind
// thousands of low ones. 16 KiB measured no better for priority and cost the
// API its throughput at 10,000 requests/s (docs/PERFORMANCE.md, issue 17).
const IngestBatchBytes = 64 << 10

// FitsIngestBatch tells whether a record of this key and value fits a batch
// of IngestBatchBytes (with room for the batch's and the record's headers).
func FitsIngestBatch(key, value []byte) bool {
	return len(key)+len(value)+512 <= IngestBatchBytes
}

// NewIngestProducer returns a producer (as NewProducer) whose batches to the
// ingest lanes are at most IngestBatchBytes. franz-go fails a record larger
// than a batch, so the caller gives it the records FitsIngestBatch accepts and
// a larger one to a NewProducer client.
func NewIngestProducer(brokers []string, extra ...kgo.Opt) (*kgo.Client, error) {
	return NewProducer(brokers, append([]kgo.Opt{kgo.ProducerBatchMaxBytesFn(func(topic string) int32 {
		for _, l := range IngestLanes {
			if topic == string(l) {
				return IngestBatchBytes
			}
		}
		return producerMaxBytes
	})}, extra...)...)
}

// DataKeysOnKafka is notify.datakeys with the settings a real Kafka cluster
// (2.3+) has and the embedded broker lacks: a replaced key record is
// compacted away within a day (docs/SECURITY.md).
func DataKeysOnKafka() Topic {
	extra := map[string]string{}
	for k, v := range crypt.Spec().Configs {
		extra[k] = v
	}
	for k, v := range crypt.Spec().KafkaConfigs {
		extra[k] = v
	}
	return Topic{Name: string(DataKeys), Compact: true, Extra: extra}
}
