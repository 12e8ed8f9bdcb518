package crypt_test

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lovoo/goka"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/crypt"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// Prepare creates a new subject's key without writing it; nothing is sealed
// with that key until the view shows its record, and once the caller wrote
// it, the key seals and opens in every process.
func TestPrepareLeavesTheWriteToTheCallerAndSealWaitsForIt(t *testing.T) {
	b := newBroker(t)
	m1, _ := masterKey(t, "m1")
	keys := masters(t, "m1", m1)
	a := b.newProcess(t, keys, crypt.WithWait(300*time.Millisecond))
	other := b.newProcess(t, keys)
	ctx := testCtx(t)
	subject := schemas.TenantKey("acme", "new-user")

	written, recs, err := a.keyring.Prepare(ctx, subject)
	if err != nil || written || len(recs) != 1 {
		t.Fatalf("first prepare: written %v, %d records, %v; want a record to write", written, len(recs), err)
	}
	// Asked again before the write: the same key is on its way, no second one.
	if written, again, err := a.keyring.Prepare(ctx, subject); err != nil || written || len(again) != 0 {
		t.Fatalf("second prepare: written %v, %d records, %v", written, len(again), err)
	}
	// Not written: Seal refuses to use it (a sealed record would outlive a
	// key that a crash lost).
	if _, err := a.keyring.Seal(ctx, subject, "notification", []byte("x")); !errors.Is(err, crypt.ErrNotWritten) {
		t.Fatalf("seal with an unwritten key: %v, want ErrNotWritten", err)
	}
	if raw := b.rawRecords(t); len(raw) != 1 { // the tenant key only
		t.Fatalf("%d records on %s before the caller wrote, want the tenant key alone", len(raw), crypt.Topic)
	}

	producer, err := topology.NewProducer(b.addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	if err := producer.ProduceSync(ctx, &kgo.Record{Topic: crypt.Topic, Key: []byte(recs[0].Key), Value: recs[0].Value}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "prepare sees the key written", func() error {
		written, more, err := a.keyring.Prepare(ctx, subject)
		if err != nil || len(more) != 0 {
			t.Fatalf("prepare after the write: %d records, %v", len(more), err)
		}
		if !written {
			return errors.New("not yet")
		}
		return nil
	})
	env, err := a.keyring.Seal(ctx, subject, "notification", []byte("your code is 123456"))
	if err != nil {
		t.Fatal(err)
	}
	e, _ := crypt.ParseEnvelope(env)
	if want := "subject/" + subject + "/" + e.KeyID; want != recs[0].Key {
		t.Fatalf("sealed with %s, want the prepared key %s", want, recs[0].Key)
	}
	if plain, got, err := other.keyring.Open(ctx, "notification", env); err != nil || string(plain) != "your code is 123456" || got != subject {
		t.Fatalf("open in another process: %q %q %v", plain, got, err)
	}
	// Another process finds the written key: nothing to write.
	if written, more, err := other.keyring.Prepare(ctx, subject); err != nil || !written || len(more) != 0 {
		t.Fatalf("prepare in another process: written %v, %d records, %v", written, len(more), err)
	}
}

// A subject whose key Seal created (written before it is used) is ready at
// once; an erased subject gets a new key to write.
func TestPrepareOfKnownAndErasedSubjects(t *testing.T) {
	b := newBroker(t)
	m1, _ := masterKey(t, "m1")
	a := b.newProcess(t, masters(t, "m1", m1))
	ctx := testCtx(t)
	subject := schemas.TenantKey("", "known")
	if _, err := a.keyring.Seal(ctx, subject, "profile", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if written, recs, err := a.keyring.Prepare(ctx, subject); err != nil || !written || len(recs) != 0 {
		t.Fatalf("known subject: written %v, %d records, %v", written, len(recs), err)
	}
	if _, err := a.keyring.Erase(ctx, subject); err != nil {
		t.Fatal(err)
	}
	written, recs, err := a.keyring.Prepare(ctx, subject)
	if err != nil || written || len(recs) != 1 {
		t.Fatalf("erased subject: written %v, %d records, %v; want a new key to write", written, len(recs), err)
	}
	if _, _, err := a.keyring.Prepare(ctx, "bad\xffsubject"); err == nil {
		t.Fatal("a subject that is not UTF-8 was prepared")
	}
}

// A prepared key leaves the pending set once it is seen written, also when
// the bounded cache forgot its subject in between (a campaign's users
// outnumber it): nothing stays behind to grow with the users.
func TestPreparedKeysLeaveThePendingSetWhenTheCacheForgotThem(t *testing.T) {
	b := newBroker(t)
	m1, _ := masterKey(t, "m1")
	a := b.newProcess(t, masters(t, "m1", m1), crypt.WithCacheSize(2))
	ctx := testCtx(t)
	producer, err := topology.NewProducer(b.addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	const n = 6
	for i := 0; i < n; i++ {
		_, recs, err := a.keyring.Prepare(ctx, schemas.TenantKey("", fmt.Sprintf("u%d", i)))
		if err != nil || len(recs) != 1 {
			t.Fatalf("prepare u%d: %d records, %v", i, len(recs), err)
		}
		if err := producer.ProduceSync(ctx, &kgo.Record{Topic: crypt.Topic, Key: []byte(recs[0].Key), Value: recs[0].Value}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the view holds "+recs[0].Key, func() error {
			if v, err := a.view.Get(recs[0].Key); err != nil || v == nil {
				return fmt.Errorf("not yet (%v)", err)
			}
			return nil
		})
	}
	if got := crypt.PendingKeys(a.keyring); got != n {
		t.Fatalf("%d pending, want %d", got, n)
	}
	for i := 0; i < n; i++ {
		subject := schemas.TenantKey("", fmt.Sprintf("u%d", i))
		eventually(t, "the key of "+subject+" seen written", func() error {
			written, recs, err := a.keyring.Prepare(ctx, subject)
			if err != nil || len(recs) != 0 {
				t.Fatalf("prepare %s again: %d records, %v", subject, len(recs), err)
			}
			if !written {
				return errors.New("not yet")
			}
			return nil
		})
	}
	if got := crypt.PendingKeys(a.keyring); got != 0 {
		t.Fatalf("%d keys still pending after every one was seen written", got)
	}
}

// scanCounter counts the prefix scans a keyring makes of its view.
type scanCounter struct {
	crypt.PrefixView
	scans atomic.Int64
}

func (c *scanCounter) IteratorWithRange(start, limit string) (goka.Iterator, error) {
	c.scans.Add(1)
	return c.PrefixView.IteratorWithRange(start, limit)
}

// A user never seen before costs no scan of notify.datakeys (an iterator on
// every partition of the view): the view's prefix filter knows it holds no
// key of theirs. A user whose key another process wrote, after this process
// started, is still found, in this process and in one started afterwards
// (whose filter is filled from the storage it opens).
func TestPrepareSkipsTheScanForUsersWithoutKeys(t *testing.T) {
	b := newBroker(t)
	m1, _ := masterKey(t, "m1")
	keys := masters(t, "m1", m1)
	var counter *scanCounter
	count := func(v crypt.PrefixView) crypt.KeyView { counter = &scanCounter{PrefixView: v}; return counter }
	a := b.newProcessView(t, keys, count)
	other := b.newProcess(t, keys)
	ctx := testCtx(t)

	// Another process seals for a user first: its key is written.
	known := schemas.TenantKey("acme", "known")
	env, err := other.keyring.Seal(ctx, known, "profile", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	e, _ := crypt.ParseEnvelope(env)
	eventually(t, "the view holds the known user's key", func() error {
		if v, err := a.view.Get("subject/" + known + "/" + e.KeyID); err != nil || v == nil {
			return fmt.Errorf("not yet (%v)", err)
		}
		return nil
	})

	const n = 300
	before := counter.scans.Load()
	for i := 0; i < n; i++ {
		written, recs, err := a.keyring.Prepare(ctx, schemas.TenantKey("acme", fmt.Sprintf("new-%d", i)))
		if err != nil || written || len(recs) != 1 {
			t.Fatalf("new user %d: written %v, %d records, %v; want a key to write", i, written, len(recs), err)
		}
	}
	// The filter lets 1 % of absent prefixes through.
	if scans := counter.scans.Load() - before; scans > n/20 {
		t.Fatalf("%d scans of the view for %d users without keys, want at most %d", scans, n, n/20)
	}

	before = counter.scans.Load()
	if written, recs, err := a.keyring.Prepare(ctx, known); err != nil || !written || len(recs) != 0 {
		t.Fatalf("known user: written %v, %d records, %v; want the key another process wrote", written, len(recs), err)
	}
	if counter.scans.Load() == before {
		t.Fatal("the known user's key was found without reading the view")
	}
	later := b.newProcess(t, keys)
	if written, recs, err := later.keyring.Prepare(ctx, known); err != nil || !written || len(recs) != 0 {
		t.Fatalf("known user in a process started later: written %v, %d records, %v", written, len(recs), err)
	}
	if plain, _, err := later.keyring.Open(ctx, "profile", env); err != nil || string(plain) != "x" {
		t.Fatalf("open in a process started later: %q %v", plain, err)
	}
}

// A burst of new users larger than the keyring's cache comes back for its
// second pass after the cache forgot them: each is found written by a lookup
// of the key this process prepared, not by a scan of the view.
func TestSecondPassOfABurstLargerThanTheCacheDoesNotScan(t *testing.T) {
	b := newBroker(t)
	m1, _ := masterKey(t, "m1")
	var counter *scanCounter
	count := func(v crypt.PrefixView) crypt.KeyView { counter = &scanCounter{PrefixView: v}; return counter }
	a := b.newProcessView(t, masters(t, "m1", m1), count, crypt.WithCacheSize(2))
	ctx := testCtx(t)
	producer, err := topology.NewProducer(b.addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	const n = 50
	var last string
	for i := 0; i < n; i++ {
		_, recs, err := a.keyring.Prepare(ctx, schemas.TenantKey("", fmt.Sprintf("burst-%d", i)))
		if err != nil || len(recs) != 1 {
			t.Fatalf("prepare burst-%d: %d records, %v", i, len(recs), err)
		}
		producer.Produce(ctx, &kgo.Record{Topic: crypt.Topic, Key: []byte(recs[0].Key), Value: recs[0].Value}, nil)
		last = recs[0].Key
	}
	if err := producer.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the view holds the burst's keys", func() error {
		if v, err := a.view.Get(last); err != nil || v == nil {
			return fmt.Errorf("not yet (%v)", err)
		}
		return nil
	})
	before := counter.scans.Load()
	for i := 0; i < n; i++ {
		subject := schemas.TenantKey("", fmt.Sprintf("burst-%d", i))
		eventually(t, "burst-"+fmt.Sprint(i)+" written", func() error {
			written, recs, err := a.keyring.Prepare(ctx, subject)
			if err != nil || len(recs) != 0 {
				t.Fatalf("second pass of %s: %d records, %v", subject, len(recs), err)
			}
			if !written {
				return errors.New("not yet")
			}
			return nil
		})
		if _, err := a.keyring.Seal(ctx, subject, "notification", []byte("x")); err != nil {
			t.Fatalf("seal for %s: %v", subject, err)
		}
	}
	if scans := counter.scans.Load() - before; scans != 0 {
		t.Fatalf("%d scans of the view in the second pass of %d users, want none", scans, n)
	}
	if got := crypt.PendingKeys(a.keyring); got != 0 {
		t.Fatalf("%d keys still pending after the second pass", got)
	}
}
