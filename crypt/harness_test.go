package crypt_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/crypt"
	"github.com/notifyd/notifyd/topology"
)

// broker is a kfake cluster with notify.datakeys created from crypt.Spec.
type broker struct {
	cluster *kfake.Cluster
	addrs   []string
}

func newBroker(t testing.TB) *broker {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	spec := crypt.Spec()
	cfg := map[string]*string{}
	for k, v := range spec.Configs {
		cfg[k] = &v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := kadm.NewClient(cl).CreateTopic(ctx, 3, 1, cfg, spec.Name)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatal(err)
	}
	return &broker{cluster: c, addrs: c.ListenAddrs()}
}

// process is what one notifyd process holds: its own view, producer and keyring.
type process struct {
	view    *goka.View
	keyring *crypt.Keyring
}

// newProcess starts a real goka view of notify.datakeys and a keyring over
// it, with the filter of owners' prefixes the service gives it.
func (b *broker) newProcess(t testing.TB, master crypt.MasterKeys, opts ...crypt.Option) *process {
	return b.newProcessView(t, master, func(v crypt.PrefixView) crypt.KeyView { return v }, opts...)
}

// filteredView is the service's view of notify.datakeys: a goka view and the
// prefix filter its storages feed.
type filteredView struct {
	*goka.View
	*topology.PrefixFilter
}

// newProcessView is newProcess with the keyring's view passed through wrap.
func (b *broker) newProcessView(t testing.TB, master crypt.MasterKeys, wrap func(crypt.PrefixView) crypt.KeyView, opts ...crypt.Option) *process {
	t.Helper()
	k := topology.Kafka{Brokers: b.addrs, Replication: 1}
	filter, opt := k.PrefixFilteredStorage("datakeys", crypt.RecordPrefix)
	view, err := goka.NewView(b.addrs, goka.Table(crypt.Topic), crypt.TableCodec(), append(k.ViewOptions("datakeys"), opt)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- view.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("view: %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !view.Recovered() {
		if time.Now().After(deadline) {
			t.Fatal("view did not recover")
		}
		time.Sleep(10 * time.Millisecond)
	}
	producer, err := topology.NewProducer(b.addrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(producer.Close)
	log := slog.New(slog.DiscardHandler)
	return &process{view: view, keyring: crypt.New(master, wrap(filteredView{view, filter}), producer, log, opts...)}
}

// rawRecords reads every record of notify.datakeys as the broker holds it.
func (b *broker) rawRecords(t testing.TB) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.addrs...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, crypt.Topic)
	if err != nil {
		t.Fatal(err)
	}
	cl.Close()
	want := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			want[o.Partition] = o.Offset
		}
	})
	cl, err = kgo.NewClient(kgo.SeedBrokers(b.addrs...), kgo.ConsumeTopics(crypt.Topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	for len(want) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading %s: %v (left %v)", crypt.Topic, ctx.Err(), want)
		}
		fs.EachRecord(func(r *kgo.Record) {
			out = append(out, r)
			if r.Offset+1 >= want[r.Partition] {
				delete(want, r.Partition)
			}
		})
	}
	return out
}

// rollPartitionOf copies the newest record of subject's keys to the end of
// its partition, so the previous ones leave the broker's active batch.
func (b *broker) rollPartitionOf(t testing.TB, subject string) {
	t.Helper()
	var last *kgo.Record
	for _, r := range b.rawRecords(t) {
		if strings.HasPrefix(string(r.Key), crypt.KindSubject+"/"+subject+"/") {
			last = r
		}
	}
	if last == nil {
		t.Fatalf("no key record of %s", subject)
	}
	p, err := topology.NewProducer(b.addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.ProduceSync(ctx, &kgo.Record{Topic: crypt.Topic, Key: last.Key, Value: last.Value}).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func masterKey(t testing.TB, id string) (crypt.MasterKey, []byte) {
	t.Helper()
	raw := make([]byte, crypt.KeySize)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	k, err := crypt.DecodeMasterKey(id, base64.StdEncoding.EncodeToString(raw))
	if err != nil {
		t.Fatal(err)
	}
	return k, raw
}

func masters(t testing.TB, current string, keys ...crypt.MasterKey) crypt.MasterKeys {
	t.Helper()
	m, err := crypt.NewMasterKeys(current, keys...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// eventually retries f until it returns nil or 10s pass.
func eventually(t testing.TB, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func contains(haystack, needle []byte) bool {
	return strings.Contains(string(haystack), string(needle))
}
