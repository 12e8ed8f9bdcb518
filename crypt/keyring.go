// Package crypt seals personal data with AES-256-GCM envelope encryption and
// shreds it by destroying keys.
//
// Three levels of keys: master keys come from configuration and wrap one
// random key per tenant; each tenant key wraps one random key per subject (a
// tenant-qualified userId); subject keys seal the data. Wrapped keys live on
// the compacted topic notify.datakeys, read through a goka view, so every
// process finds every key. Erasing a subject overwrites its key records with
// markers that hold no key material: every copy of its data, on any topic, in
// the DLQ or in local state, no longer opens.
package crypt

import (
	"cmp"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/singleflight"

	"github.com/notifyd/notifyd/schemas"
)

var (
	// ErrErased means the key was destroyed by an erasure: permanent.
	ErrErased = errors.New("crypt: data key erased")
	// ErrNoKey means the key is not in the view, even after waiting for it.
	ErrNoKey = errors.New("crypt: data key not found")
	// ErrAuth means a ciphertext did not authenticate: it was altered, or
	// belongs to another subject or context.
	ErrAuth = errors.New("crypt: ciphertext does not authenticate")
)

// KeyView is the read side of Topic: a *goka.View built with TableCodec.
type KeyView interface {
	Get(key string) (any, error)
	IteratorWithRange(start, limit string) (goka.Iterator, error)
}

// PrefixView is a KeyView that can tell, without a scan, that it holds no
// record under an owner's prefix (RecordPrefix of the owner's record keys).
// The keyring then skips the scan for a user it has never seen, which opens
// an iterator on every partition of the view.
type PrefixView interface {
	KeyView
	MayHave(prefix string) bool
}

// WatchedView is a KeyView that tells of every record it sets (value) or
// deletes (nil), once the change is readable. Over such a view the keyring
// keeps a key it read as live until the view changes its record, instead of
// reading the record on every use (that read was 4 % of the pipeline's CPU).
type WatchedView interface {
	KeyView
	Watch(fn func(recordKey string, value []byte))
}

// Option tunes a Keyring.
type Option func(*Keyring)

// WithWait bounds how long Open waits for a key the view has not seen yet
// (10s by default), and how long Erase and Rewrap wait for the view to show
// what they wrote.
func WithWait(d time.Duration) Option { return func(k *Keyring) { k.wait = d } }

// WithCacheSize bounds the unwrapped keys kept in memory (10000 by default).
func WithCacheSize(n int) Option { return func(k *Keyring) { k.cacheSize = n } }

// Keyring seals and opens envelopes, creates keys on first use and destroys
// them on erasure. It is safe for concurrent use.
type Keyring struct {
	masters   map[string]cipher.AEAD
	current   string
	masterIDs []string
	initErr   error

	view     KeyView
	producer *kgo.Client
	log      *slog.Logger

	wait, poll time.Duration
	cacheSize  int
	keys       *lru[string, cipher.AEAD] // record key → unwrapped key
	erased     *lru[string, struct{}]    // record keys this process erased
	// live holds keys whose records the view showed live, over a
	// WatchedView only: lookup trusts them without a read until the view
	// changes their record (changed). invalidated counts such changes, so
	// a read that raced one is not cached.
	live        *lru[string, cipher.AEAD]
	invalidated atomic.Uint64
	subjectKid  *lru[string, string] // subject → key id Seal uses
	tenantKid   *lru[string, string] // tenant → key id new subject keys are wrapped by
	// pending holds record keys of subject keys Prepare made whose records
	// the view has not shown yet: Seal does not use them until it does.
	pending pendingKeys
	create  singleflight.Group
}

// New returns a Keyring over view (of Topic) that writes new keys and
// erasure markers with producer, which must partition like goka (DESIGN rule 1).
func New(master MasterKeys, view KeyView, producer *kgo.Client, log *slog.Logger, opts ...Option) *Keyring {
	if log == nil {
		log = slog.Default()
	}
	k := &Keyring{view: view, producer: producer, log: log, wait: 10 * time.Second, poll: 10 * time.Millisecond, cacheSize: 10000}
	for _, o := range opts {
		o(k)
	}
	k.current, k.masterIDs = master.Current(), master.IDs()
	k.masters, k.initErr = master.aeads()
	if k.initErr == nil && len(k.masters) == 0 {
		k.initErr = errors.New("crypt: no master keys configured")
	}
	k.keys = newLRU[string, cipher.AEAD](k.cacheSize)
	if w, ok := view.(WatchedView); ok {
		k.live = newLRU[string, cipher.AEAD](k.cacheSize)
		w.Watch(k.changed)
	}
	k.erased = newLRU[string, struct{}](k.cacheSize)
	k.subjectKid = newLRU[string, string](k.cacheSize)
	k.tenantKid = newLRU[string, string](1024)
	return k
}

// Seal encrypts plaintext for subject (schemas.TenantKey(tenant, userId)).
// field is the context the ciphertext belongs to ("profile", "notification"),
// bound into the AAD: Open must give the same one, so a ciphertext cannot be
// moved to another field or subject. The subject's key is created on first use.
func (k *Keyring) Seal(ctx context.Context, subject, field string, plaintext []byte) ([]byte, error) {
	if k.initErr != nil {
		return nil, k.initErr
	}
	if err := checkSubject(subject); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	size := 4 + 2 + len(subject) + 1 + 16 + nonceSize + len(plaintext) + tagSize
	if size > MaxEnvelopeBytes {
		return nil, fmt.Errorf("seal: envelope of %d bytes, at most %d", size, MaxEnvelopeBytes)
	}
	kid, a, err := k.subjectKey(ctx, subject)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	out := appendHeader(make([]byte, 0, size), subject, kid)
	header := out
	var nonce [nonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("seal: nonce: %w", err)
	}
	out = append(out, nonce[:]...)
	return a.Seal(out, nonce[:], plaintext, aad(header, field)), nil
}

// Open decrypts an envelope sealed for the same field and returns its
// plaintext and subject. A key the view has not seen yet is waited for (see
// WithWait), then ErrNoKey; an erased key is ErrErased at once. The subject
// is returned with every error after the envelope parsed.
func (k *Keyring) Open(ctx context.Context, field string, envelope []byte) ([]byte, string, error) {
	if k.initErr != nil {
		return nil, "", k.initErr
	}
	env, err := ParseEnvelope(envelope)
	if err != nil {
		return nil, "", fmt.Errorf("open: %w", err)
	}
	a, err := k.await(ctx, subjectRecordKey(env.Subject, env.KeyID), k.unwrapSubject)
	if err != nil {
		return nil, env.Subject, fmt.Errorf("open: %w", err)
	}
	plain, err := a.Open(nil, env.Nonce, env.Ciphertext, aad(env.header, field))
	if err != nil {
		return nil, env.Subject, fmt.Errorf("open %s as %q: %w", env.KeyID, field, ErrAuth)
	}
	return plain, env.Subject, nil
}

// subjectKey returns the key Seal uses for subject, finding or creating it.
func (k *Keyring) subjectKey(ctx context.Context, subject string) (string, cipher.AEAD, error) {
	if kid, ok := k.subjectKid.get(subject); ok {
		if err := k.awaitWritten(ctx, subjectRecordKey(subject, kid)); err != nil {
			return "", nil, err
		}
		a, err := k.lookup(ctx, subjectRecordKey(subject, kid), k.unwrapSubject)
		if a != nil || err != nil && !errors.Is(err, ErrErased) {
			return kid, a, err
		}
		k.subjectKid.remove(subject)
	}
	v, err, _ := k.create.Do("subject\x00"+subject, func() (any, error) {
		match := func(d *DataKey) bool { return d.Kind == KindSubject && d.Subject == subject }
		kid, a, err := k.findLive(ctx, subjectPrefix(subject), match, k.unwrapSubject)
		if err == nil && a == nil {
			kid, a, err = k.createSubjectKey(ctx, subject)
		}
		if err != nil {
			return nil, err
		}
		k.subjectKid.put(subject, kid)
		return liveKey{kid, a}, nil
	})
	if err != nil {
		return "", nil, err
	}
	lk := v.(liveKey)
	return lk.id, lk.aead, nil
}

// tenantKey returns the key new subject keys of tenant are wrapped by.
func (k *Keyring) tenantKey(ctx context.Context, tenant string) (string, cipher.AEAD, error) {
	if kid, ok := k.tenantKid.get(tenant); ok {
		a, err := k.lookup(ctx, tenantRecordKey(tenant, kid), k.unwrapTenant)
		if a != nil || err != nil && !errors.Is(err, ErrErased) {
			return kid, a, err
		}
		k.tenantKid.remove(tenant)
	}
	v, err, _ := k.create.Do("tenant\x00"+tenant, func() (any, error) {
		match := func(d *DataKey) bool { return d.Kind == KindTenant && d.Tenant == tenant }
		kid, a, err := k.findLive(ctx, tenantPrefix(tenant), match, k.unwrapTenant)
		if err == nil && a == nil {
			kid, a, err = k.createTenantKey(ctx, tenant)
		}
		if err != nil {
			return nil, err
		}
		k.tenantKid.put(tenant, kid)
		return liveKey{kid, a}, nil
	})
	if err != nil {
		return "", nil, err
	}
	lk := v.(liveKey)
	return lk.id, lk.aead, nil
}

type liveKey struct {
	id   string
	aead cipher.AEAD
}

type unwrapFunc func(ctx context.Context, recordKey string, d *DataKey) (cipher.AEAD, error)

// lookup returns the unwrapped key of a record, ErrErased, or (nil, nil)
// when neither the view nor this process knows it yet. An erasure the view
// shows takes effect at once: over a WatchedView a key the view showed live
// is trusted until its record changes (changed drops it); over any other
// view the record is read every time, even for a cached key.
func (k *Keyring) lookup(ctx context.Context, rk string, unwrap unwrapFunc) (cipher.AEAD, error) {
	var gen uint64
	if k.live != nil {
		if a, ok := k.live.get(rk); ok {
			if _, gone := k.erased.get(rk); !gone {
				return a, nil
			}
		}
		gen = k.invalidated.Load() // before the read: a change after it is seen below
	}
	d, err := k.record(rk)
	if err != nil {
		return nil, err
	}
	if _, gone := k.erased.get(rk); gone || d != nil && d.Erased() {
		k.keys.remove(rk)
		return nil, fmt.Errorf("%s: %w", rk, ErrErased)
	}
	a, ok := k.keys.get(rk)
	if !ok {
		if d == nil {
			return nil, nil
		}
		if a, err = unwrap(ctx, rk, d); err != nil {
			return nil, err
		}
		k.keys.put(rk, a)
	}
	if d != nil && k.live != nil && k.invalidated.Load() == gen {
		k.live.put(rk, a)
	}
	return a, nil
}

// changed hears of every change the WatchedView makes: a record that is no
// longer a live key (an erasure marker, a tombstone, something unreadable)
// drops what live holds of it. A live key's own record arriving changes
// nothing.
func (k *Keyring) changed(rk string, value []byte) {
	if value != nil {
		if d, err := DataKeyCodec.Decode(value); err == nil && !d.Erased() && d.recordKey() == rk {
			return
		}
	}
	k.invalidated.Add(1)
	k.live.remove(rk)
}

// await is lookup that polls the view, up to the configured wait, for a
// key it has not seen yet (created by another process a moment ago).
func (k *Keyring) await(ctx context.Context, rk string, unwrap unwrapFunc) (cipher.AEAD, error) {
	deadline := time.Now().Add(k.wait)
	for {
		a, err := k.lookup(ctx, rk, unwrap)
		if err != nil || a != nil {
			return a, err
		}
		if !time.Now().Before(deadline) {
			return nil, fmt.Errorf("%s not in %s after %s: %w", rk, Topic, k.wait, ErrNoKey)
		}
		if err := sleep(ctx, k.poll); err != nil {
			return nil, fmt.Errorf("waiting for %s: %w", rk, err)
		}
	}
}

// findLive returns the oldest live key under prefix that unwraps, or no key.
func (k *Keyring) findLive(ctx context.Context, prefix string, match func(*DataKey) bool, unwrap unwrapFunc) (string, cipher.AEAD, error) {
	if pv, ok := k.view.(PrefixView); ok && !pv.MayHave(prefix) {
		return "", nil, nil
	}
	var live []*DataKey
	err := k.scan(prefix, func(rk string, d *DataKey) error {
		if _, gone := k.erased.get(rk); !gone && !d.Erased() && match(d) {
			live = append(live, d)
		}
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	// Every process picks the same one, so they converge on one key.
	slices.SortFunc(live, func(a, b *DataKey) int {
		return cmp.Or(cmp.Compare(a.CreatedAt, b.CreatedAt), strings.Compare(a.ID, b.ID))
	})
	for _, d := range live {
		a, err := k.lookup(ctx, d.recordKey(), unwrap)
		switch {
		case errors.Is(err, ErrErased): // its tenant key was erased: skip it
		case err != nil:
			return "", nil, err
		case a != nil:
			return d.ID, a, nil
		}
	}
	return "", nil, nil
}

func (k *Keyring) createSubjectKey(ctx context.Context, subject string) (string, cipher.AEAD, error) {
	d, a, err := k.newSubjectKey(ctx, subject)
	if err != nil {
		return "", nil, err
	}
	if err := k.produce(ctx, d.recordKey(), d); err != nil {
		return "", nil, err
	}
	k.keys.put(d.recordKey(), a)
	k.log.Debug("created subject key", "keyId", d.ID, "tenantKeyId", d.WrappedBy)
	return d.ID, a, nil
}

// newSubjectKey makes a key for subject, wrapped by its tenant's key (which
// it creates, written, if the tenant has none yet); nothing of the subject's
// key is written or cached.
func (k *Keyring) newSubjectKey(ctx context.Context, subject string) (*DataKey, cipher.AEAD, error) {
	tenant, _ := schemas.SplitTenantKey(subject)
	tenant = schemas.NormTenant(tenant)
	kekID, kek, err := k.tenantKey(ctx, tenant)
	if err != nil {
		return nil, nil, fmt.Errorf("tenant key of %s: %w", schemas.TenantName(tenant), err)
	}
	d := &DataKey{Kind: KindSubject, Tenant: tenant, Subject: subject, WrappedBy: kekID}
	a, err := newWrappedKey(d, kek)
	if err != nil {
		return nil, nil, err
	}
	return d, a, nil
}

func (k *Keyring) createTenantKey(ctx context.Context, tenant string) (string, cipher.AEAD, error) {
	d := &DataKey{Kind: KindTenant, Tenant: tenant, WrappedBy: k.current}
	a, err := k.createKey(ctx, d, k.masters[k.current])
	if err != nil {
		return "", nil, err
	}
	k.log.Info("created tenant key", "tenant", schemas.TenantName(tenant), "keyId", d.ID, "masterKeyId", k.current)
	return d.ID, a, nil
}

// createKey fills d with a fresh key id and a random key wrapped by wrapper,
// produces it, and caches the key: usable at once, before the view has it.
func (k *Keyring) createKey(ctx context.Context, d *DataKey, wrapper cipher.AEAD) (cipher.AEAD, error) {
	a, err := newWrappedKey(d, wrapper)
	if err != nil {
		return nil, err
	}
	if err := k.produce(ctx, d.recordKey(), d); err != nil {
		return nil, err
	}
	k.keys.put(d.recordKey(), a)
	return a, nil
}

// newWrappedKey fills d with a fresh key id and a random key wrapped by
// wrapper, and returns the key.
func newWrappedKey(d *DataKey, wrapper cipher.AEAD) (cipher.AEAD, error) {
	kid, err := newKeyID()
	if err != nil {
		return nil, fmt.Errorf("new key id: %w", err)
	}
	key := make([]byte, KeySize)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("new key: %w", err)
	}
	a, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	d.ID, d.CreatedAt = kid, time.Now().UnixMilli()
	if d.Wrapped, err = wrapKey(wrapper, d.recordKey(), d.WrappedBy, key); err != nil {
		return nil, err
	}
	return a, nil
}

func (k *Keyring) unwrapSubject(ctx context.Context, rk string, d *DataKey) (cipher.AEAD, error) {
	if d.Kind != KindSubject || d.recordKey() != rk {
		return nil, fmt.Errorf("%s: record names %s %q key %q", rk, d.Kind, d.Subject, d.ID)
	}
	tenant, _ := schemas.SplitTenantKey(d.Subject)
	kek, err := k.await(ctx, tenantRecordKey(schemas.NormTenant(tenant), d.WrappedBy), k.unwrapTenant)
	if err != nil {
		return nil, fmt.Errorf("tenant key of %s: %w", rk, err)
	}
	return unwrapKey(kek, rk, d)
}

func (k *Keyring) unwrapTenant(_ context.Context, rk string, d *DataKey) (cipher.AEAD, error) {
	if d.Kind != KindTenant || d.recordKey() != rk {
		return nil, fmt.Errorf("%s: record names %s %q key %q", rk, d.Kind, d.Tenant, d.ID)
	}
	m, ok := k.masters[d.WrappedBy]
	if !ok {
		return nil, fmt.Errorf("%s wrapped by master key %q, configured are %v: %w", rk, d.WrappedBy, k.masterIDs, ErrUnknownMaster)
	}
	return unwrapKey(m, rk, d)
}

// record reads rk from the view: nil when the view does not hold it.
func (k *Keyring) record(rk string) (*DataKey, error) {
	v, err := k.view.Get(rk)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", rk, err)
	}
	if v == nil {
		return nil, nil
	}
	d, ok := v.(*DataKey)
	if !ok {
		return nil, fmt.Errorf("read %s: view holds %T, want *crypt.DataKey", rk, v)
	}
	return d, nil
}

// scan calls fn for every well-formed record under prefix.
func (k *Keyring) scan(prefix string, fn func(rk string, d *DataKey) error) error {
	it, err := k.view.IteratorWithRange(prefix, prefixLimit(prefix))
	if err != nil {
		return fmt.Errorf("scan %s: %w", prefix, err)
	}
	defer it.Release()
	for it.Next() {
		rk := it.Key()
		if !strings.HasPrefix(rk, prefix) {
			continue
		}
		v, err := it.Value()
		if err != nil {
			k.log.Warn("undecodable data key record", "key", rk, "err", err)
			continue
		}
		// A prefix also matches longer owners ("subject/a/" and "subject/a/b/…"):
		// only a record at its own canonical key counts.
		if d, ok := v.(*DataKey); ok && d != nil && keyIDPattern.MatchString(d.ID) && d.recordKey() == rk {
			if err := fn(rk, d); err != nil {
				return err
			}
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("scan %s: %w", prefix, err)
	}
	return nil
}

func (k *Keyring) produce(ctx context.Context, rk string, d *DataKey) error {
	b, err := DataKeyCodec.Encode(d)
	if err != nil {
		return err
	}
	if err := k.producer.ProduceSync(ctx, &kgo.Record{Topic: Topic, Key: []byte(rk), Value: b}).FirstErr(); err != nil {
		return fmt.Errorf("produce %s: %w", rk, err)
	}
	return nil
}

// recordKey is where d belongs on Topic.
func (d *DataKey) recordKey() string {
	if d.Kind == KindTenant {
		return tenantRecordKey(d.Tenant, d.ID)
	}
	return subjectRecordKey(d.Subject, d.ID)
}

func wrapKey(wrapper cipher.AEAD, rk, wrappedBy string, key []byte) ([]byte, error) {
	out := make([]byte, nonceSize, nonceSize+len(key)+tagSize)
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("wrap %s: nonce: %w", rk, err)
	}
	return wrapper.Seal(out, out[:nonceSize], key, wrapAAD(rk, wrappedBy)), nil
}

// unwrapRaw returns the key material of d; the caller clears it.
func unwrapRaw(wrapper cipher.AEAD, rk string, d *DataKey) ([]byte, error) {
	if len(d.Wrapped) != nonceSize+KeySize+tagSize {
		return nil, fmt.Errorf("unwrap %s: %d wrapped bytes, want %d", rk, len(d.Wrapped), nonceSize+KeySize+tagSize)
	}
	key, err := wrapper.Open(nil, d.Wrapped[:nonceSize], d.Wrapped[nonceSize:], wrapAAD(rk, d.WrappedBy))
	if err != nil {
		return nil, fmt.Errorf("unwrap %s with %s: %w", rk, d.WrappedBy, ErrAuth)
	}
	return key, nil
}

func unwrapKey(wrapper cipher.AEAD, rk string, d *DataKey) (cipher.AEAD, error) {
	key, err := unwrapRaw(wrapper, rk, d)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	return newAEAD(key)
}
