package topology

import (
	"path/filepath"
	"time"

	"github.com/IBM/sarama"
	"github.com/lovoo/goka"
	"github.com/lovoo/goka/storage"
)

// Kafka is how the goka parts of notifyd reach the broker and keep local state.
type Kafka struct {
	Brokers     []string
	Replication int
	FlushEvery  time.Duration
	// StorageDir holds goka's local tables (DESIGN rule 3); "" keeps them in memory.
	StorageDir string
}

func (k Kafka) saramaConfig() *sarama.Config {
	c := goka.DefaultConfig()
	c.Version = sarama.V3_6_0_0
	// A group that joins for the first time must not skip what was already
	// produced: start streams at the oldest offset, not goka's default newest.
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Producer.Compression = sarama.CompressionNone
	if k.FlushEvery > 0 {
		c.Producer.Flush.Frequency = k.FlushEvery
	}
	c.Producer.Flush.Messages = 500
	c.Metadata.RefreshFrequency = time.Minute
	return c
}

func (k Kafka) topicManager() goka.TopicManagerBuilder {
	tmc := goka.NewTopicManagerConfig()
	tmc.Table.Replication = k.Replication
	tmc.Stream.Replication = k.Replication
	tmc.MismatchBehavior = goka.TMConfigMismatchBehaviorFail
	return goka.TopicManagerBuilderWithConfig(k.saramaConfig(), tmc)
}

func (k Kafka) storage(name string) storage.Builder {
	if k.StorageDir == "" {
		return storage.MemoryBuilder()
	}
	return storage.DefaultBuilder(filepath.Join(k.StorageDir, name))
}

// ProcessorOptions are the options every notifyd processor runs with.
func (k Kafka) ProcessorOptions(group goka.Group) []goka.ProcessorOption {
	cfg := k.saramaConfig()
	return []goka.ProcessorOption{
		goka.WithTopicManagerBuilder(k.topicManager()),
		goka.WithConsumerGroupBuilder(goka.ConsumerGroupBuilderWithConfig(cfg)),
		goka.WithConsumerSaramaBuilder(goka.SaramaConsumerBuilderWithConfig(cfg)),
		goka.WithProducerBuilder(goka.ProducerBuilderWithConfig(cfg)),
		goka.WithStorageBuilder(k.storage("processor-" + string(group))),
		goka.WithHasher(Hasher),
	}
}

// ViewOptions are the options of every notifyd view; name keeps storages apart.
func (k Kafka) ViewOptions(name string) []goka.ViewOption {
	cfg := k.saramaConfig()
	return []goka.ViewOption{
		goka.WithViewTopicManagerBuilder(k.topicManager()),
		goka.WithViewConsumerSaramaBuilder(goka.SaramaConsumerBuilderWithConfig(cfg)),
		goka.WithViewStorageBuilder(k.storage("view-" + name)),
		goka.WithViewHasher(Hasher),
		goka.WithViewAutoReconnect(),
	}
}
