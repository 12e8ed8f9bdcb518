package topology

import (
	"hash"
	"path/filepath"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/lovoo/goka"
	"github.com/lovoo/goka/storage"
	"github.com/rcrowley/go-metrics"
)

// sarama keeps histograms and meters of every request, batch and topic in a
// go-metrics registry that notifyd never reads (its own metrics are
// Prometheus'): 2 % of the pipeline's CPU in bulk (docs/PERFORMANCE.md).
// go-metrics then hands out metrics that do nothing.
func init() { metrics.UseNilMetrics = true }

// Kafka is how the goka parts of notifyd reach the broker and keep local state.
type Kafka struct {
	Brokers     []string
	Replication int
	// FlushEvery is the linger of the processors' producers (0: a record is
	// sent at once, and batched with others while a request is in flight).
	FlushEvery time.Duration
	// SessionTimeout of the consumer groups (10s when zero).
	SessionTimeout time.Duration
	// StorageDir holds goka's local tables (DESIGN rule 3); "" keeps them in memory.
	StorageDir string
	// Priority, when set, is the process's PriorityGate: the groups tell it
	// of high-priority records and hold their lower lanes while it holds.
	Priority *PriorityGate
	// Tables, when set, registers the processors' table partitions as goka
	// opens and closes them (the sweepers read them).
	Tables *Tables
}

func (k Kafka) saramaConfig() *sarama.Config {
	c := goka.DefaultConfig()
	c.Version = sarama.V3_6_0_0
	// A group that joins for the first time must not skip what was already
	// produced: start streams at the oldest offset, not goka's default newest.
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	// sarama's consumer fetches every partition of a broker in one request
	// and sends the next only once each partition has taken in its share
	// of the answer: a partition with a backlog makes every other wait
	// until goka has processed what was fetched for it. 16 KiB per
	// partition (sarama's default: 1 MiB) keeps that wait to tens of
	// records, so a high-priority lane is not held by a low one's backlog;
	// measured no slower in bulk (docs/PERFORMANCE.md, issue 17).
	c.Consumer.Fetch.Default = laneFetchBytes
	// goka's producers are franz-go clients (producerBuilder), not sarama's.
	c.Metadata.RefreshFrequency = time.Minute
	// A crashed member must not hold its partitions for sarama's default minute.
	c.Consumer.Group.Session.Timeout = SessionTimeout(k.SessionTimeout)
	c.Consumer.Group.Heartbeat.Interval = c.Consumer.Group.Session.Timeout / 10
	c.Consumer.Group.Rebalance.Timeout = 10 * time.Second
	secureSarama(c)
	return c
}

// laneFetchBytes is what a consumer that reads priority lanes fetches per
// partition (see saramaConfig).
const laneFetchBytes = 16 << 10

// groupFetchBytes is what group's consumer fetches per partition:
// laneFetchBytes, so that a low lane's backlog does not hold the fetch that
// brings a high-priority record, except for the status group. It reads no
// lanes (only notify.events), and small fetches only slowed it: the last
// stage of every notification, it caught up with a bulk's events about a
// second after the last delivery with 16 KiB, and with it at 1 MiB
// (docs/PERFORMANCE.md, issue 17, eighth sitting).
func groupFetchBytes(group goka.Group) int32 {
	if group == StatusGroup {
		return 1 << 20
	}
	return laneFetchBytes
}

func (k Kafka) topicManager() goka.TopicManagerBuilder {
	tmc := goka.NewTopicManagerConfig()
	tmc.Table.Replication = k.Replication
	tmc.Stream.Replication = k.Replication
	tmc.MismatchBehavior = goka.TMConfigMismatchBehaviorFail
	return func(brokers []string) (goka.TopicManager, error) {
		tm, err := goka.NewTopicManager(brokers, k.saramaConfig(), tmc)
		if err != nil {
			// Every goka processor and view starts here: say which setting a
			// refused connection points at.
			return nil, explainConnectError(brokers, saramaConnectError(brokers, k.saramaConfig(), err))
		}
		return tm, nil
	}
}

// The builders below give every client its own sarama.Config. goka's
// *BuilderWithConfig helpers write ClientID into one shared config on every
// rebalance while running sarama clients read it: a data race.

func (k Kafka) consumerGroupBuilder() goka.ConsumerGroupBuilder {
	return func(brokers []string, group, clientID string) (sarama.ConsumerGroup, error) {
		c := k.saramaConfig()
		c.ClientID = clientID
		c.Consumer.Fetch.Default = groupFetchBytes(goka.Group(group))
		f := newFlowControl()
		f.gate, f.gated = k.Priority, heldByPriority(goka.Group(group))
		flowConfig(c, f)
		cg, err := sarama.NewConsumerGroup(brokers, group, c)
		if err != nil {
			return nil, err
		}
		return newFlowGroup(cg, f), nil
	}
}

func (k Kafka) consumerBuilder() goka.SaramaConsumerBuilder {
	return func(brokers []string, clientID string) (sarama.Consumer, error) {
		c := k.saramaConfig()
		c.ClientID = clientID
		return sarama.NewConsumer(brokers, c)
	}
}

// producerBuilder gives goka a franz-go producer (gokaProducer). Its
// partitioner is Partitioner, which agrees with Hasher, the only hasher
// notifyd gives goka.
func (k Kafka) producerBuilder() goka.ProducerBuilder {
	return func(brokers []string, clientID string, _ func() hash.Hash32) (goka.Producer, error) {
		return NewGokaProducer(brokers, clientID, k.FlushEvery)
	}
}

func (k Kafka) storage(name string) storage.Builder {
	if k.StorageDir == "" {
		return storage.MemoryBuilder()
	}
	if strings.HasPrefix(name, "view-") {
		return batchedLevelDB(filepath.Join(k.StorageDir, name), 20*time.Millisecond, viewWriteBuffer)
	}
	return BatchedLevelDB(filepath.Join(k.StorageDir, name), 20*time.Millisecond)
}

// ProcessorOptions are the options every notifyd processor runs with.
func (k Kafka) ProcessorOptions(group goka.Group) []goka.ProcessorOption {
	st := k.storage("processor-" + string(group))
	if k.Tables != nil {
		st = k.Tables.Wrap(st)
	}
	return append([]goka.ProcessorOption{
		goka.WithTopicManagerBuilder(k.topicManager()),
		goka.WithConsumerGroupBuilder(k.consumerGroupBuilder()),
		goka.WithConsumerSaramaBuilder(k.consumerBuilder()),
		goka.WithProducerBuilder(k.producerBuilder()),
		goka.WithStorageBuilder(st),
		goka.WithHasher(Hasher),
	}, GroupOptions()...)
}

// GroupOptions are the processor options that change what the callbacks see;
// tests on goka's tester run with them too.
func GroupOptions() []goka.ProcessorOption {
	return []goka.ProcessorOption{
		// A null value on a stream is a bad record like any other: the callbacks
		// dead-letter it instead of goka dropping it unseen.
		goka.WithNilHandling(goka.NilProcess),
	}
}

// ViewOptions are the options of every notifyd view; name keeps storages apart.
func (k Kafka) ViewOptions(name string) []goka.ViewOption {
	return []goka.ViewOption{
		goka.WithViewTopicManagerBuilder(k.topicManager()),
		goka.WithViewConsumerSaramaBuilder(k.consumerBuilder()),
		goka.WithViewStorageBuilder(k.storage("view-" + name)),
		goka.WithViewHasher(Hasher),
		goka.WithViewAutoReconnect(),
	}
}

// PrefixFilteredStorage is the storage option of view name whose storages
// feed a PrefixFilter of prefixOf(key) (append it after ViewOptions(name)).
func (k Kafka) PrefixFilteredStorage(name string, prefixOf func(string) string) (*PrefixFilter, goka.ViewOption) {
	f := NewPrefixFilter(prefixOf, prefixFilterCapacity)
	return f, goka.WithViewStorageBuilder(f.Wrap(k.storage("view-" + name)))
}

// prefixFilterCapacity is what a PrefixFilter starts with: 1,000,000 owners
// in 1.2 MB; it doubles when more are added.
const prefixFilterCapacity = 1 << 20

// EmitterOptions are the options of a goka emitter of notifyd (tests and
// tools): the same topic manager, producer and partitioning as the processors.
func (k Kafka) EmitterOptions() []goka.EmitterOption {
	return []goka.EmitterOption{
		goka.WithEmitterTopicManagerBuilder(k.topicManager()),
		goka.WithEmitterProducerBuilder(k.producerBuilder()),
		goka.WithEmitterHasher(Hasher),
	}
}

// SessionTimeout is d, or the default 10s when d is zero.
func SessionTimeout(d time.Duration) time.Duration {
	if d <= 0 {
		return 10 * time.Second
	}
	return d
}
