package crypt

import (
	"crypto/rand"
	"encoding/hex"
	"strings"

	"github.com/lovoo/goka"

	"github.com/notifyd/notifyd/schemas"
)

// Topic holds every tenant and subject key record (compacted, never tombstoned).
const Topic = "notify.datakeys"

// Kinds of DataKey.
const (
	KindTenant  = "tenant"
	KindSubject = "subject"
)

// DataKey is one record of Topic: a wrapped key, or the marker left by its erasure.
type DataKey struct {
	Kind      string `avro:"kind"`
	Tenant    string `avro:"tenant"`
	Subject   string `avro:"subject"`
	ID        string `avro:"id"`
	WrappedBy string `avro:"wrappedBy"`
	Wrapped   []byte `avro:"wrapped"`
	CreatedAt int64  `avro:"createdAt"`
	ErasedAt  int64  `avro:"erasedAt"`
}

// Erased tells whether the record is an erasure marker.
func (d *DataKey) Erased() bool { return d.ErasedAt != 0 }

// DataKeyCodec is the shared codec of DataKey (DESIGN rule 6).
var DataKeyCodec = schemas.NewCodec[DataKey]("notifyd.DataKey")

// TableCodec is the goka codec of a view of Topic; values are *DataKey.
func TableCodec() goka.Codec { return schemas.Goka[DataKey]{C: DataKeyCodec} }

// TopicSpec is how Topic must be created.
type TopicSpec struct {
	Name string
	// Configs go into CreateTopics as they are.
	Configs map[string]string
	// KafkaConfigs are added on a real Kafka cluster (2.3+): they bound how
	// long a replaced key record can stay in the log. The embedded broker
	// does not implement them.
	KafkaConfigs map[string]string
}

// Spec is the TopicSpec of Topic. Erasure overwrites a key record; the old
// record (with the wrapped key) stays in the log until compaction removes
// it, so compaction must run promptly: small segments, a low dirty ratio,
// and a maximum compaction lag.
func Spec() TopicSpec {
	return TopicSpec{
		Name: Topic,
		Configs: map[string]string{
			"cleanup.policy": "compact",
			"segment.ms":     "3600000", // roll hourly so the old record leaves the active segment
		},
		KafkaConfigs: map[string]string{
			"max.compaction.lag.ms":     "86400000", // an overwritten key is compacted away within a day
			"min.cleanable.dirty.ratio": "0.01",
			"min.compaction.lag.ms":     "0",
		},
	}
}

// Record keys: "tenant/<tenant name>/<kid>" and "subject/<subject>/<kid>".
// Every key id is fresh, so two processes creating a key for one owner at
// the same moment write two records instead of overwriting one.
func tenantPrefix(tenant string) string {
	return KindTenant + "/" + schemas.TenantName(tenant) + "/"
}

func subjectPrefix(subject string) string { return KindSubject + "/" + subject + "/" }

func tenantRecordKey(tenant, kid string) string   { return tenantPrefix(tenant) + kid }
func subjectRecordKey(subject, kid string) string { return subjectPrefix(subject) + kid }

// RecordPrefix is the owner part of a record key: everything up to and
// including its last "/" (a key id has none). findLive looks for an owner's
// keys under exactly this prefix, so a PrefixView built over RecordPrefix
// answers it.
func RecordPrefix(rk string) string { return rk[:strings.LastIndexByte(rk, '/')+1] }

// prefixLimit is the first key after every key that starts with prefix.
func prefixLimit(prefix string) string {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return ""
}

func newKeyID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// wrapAAD binds a wrapped key to its record key and the id of its wrapping key.
func wrapAAD(recordKey, wrappedBy string) []byte {
	return []byte("notifyd.datakey.v1\x00" + recordKey + "\x00" + wrappedBy)
}
