package crypt_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/notifyd/notifyd/crypt"
	"github.com/notifyd/notifyd/schemas"
)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// What one process seals, another opens: it waits for the key to reach its
// view instead of failing.
func TestSealOpenAcrossProcesses(t *testing.T) {
	b := newBroker(t)
	m1, _ := masterKey(t, "m1")
	keys := masters(t, "m1", m1)
	a, c := b.newProcess(t, keys), b.newProcess(t, keys)
	ctx := testCtx(t)

	subject := schemas.TenantKey("acme", "u1")
	env, err := a.keyring.Seal(ctx, subject, "profile", []byte("ada@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if !crypt.IsSealed(env) || bytes.Contains(env, []byte("ada@example.com")) {
		t.Fatalf("envelope not sealed: %q", env)
	}
	plain, got, err := c.keyring.Open(ctx, "profile", env)
	if err != nil || string(plain) != "ada@example.com" || got != subject {
		t.Fatalf("open in the other process: %q %q %v", plain, got, err)
	}
	env2, err := c.keyring.Seal(ctx, subject, "notification", []byte("your code is 123456"))
	if err != nil {
		t.Fatal(err)
	}
	if plain, _, err := a.keyring.Open(ctx, "notification", env2); err != nil || string(plain) != "your code is 123456" {
		t.Fatalf("open back: %q %v", plain, err)
	}
	e1, _ := crypt.ParseEnvelope(env)
	e2, _ := crypt.ParseEnvelope(env2)
	if e1.KeyID != e2.KeyID {
		t.Fatalf("the second process created another key (%s, %s) although the first was in its view", e1.KeyID, e2.KeyID)
	}
	// The default tenant's subjects are bare userIds.
	env3, err := a.keyring.Seal(ctx, schemas.TenantKey("default", "u1"), "profile", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, got, err := c.keyring.Open(ctx, "profile", env3); err != nil || got != "u1" {
		t.Fatalf("default tenant: %q %v", got, err)
	}
}

// Two processes that seal for a new subject at the same moment may create
// two keys; each ciphertext names its key, so all of them open everywhere.
func TestConcurrentFirstSealOpensEverywhere(t *testing.T) {
	b := newBroker(t)
	m1, _ := masterKey(t, "m1")
	keys := masters(t, "m1", m1)
	procs := []*process{b.newProcess(t, keys), b.newProcess(t, keys)}
	ctx := testCtx(t)

	for round := 0; round < 5; round++ {
		subject := schemas.TenantKey(fmt.Sprintf("t%d", round), "u")
		start := make(chan struct{})
		var wg sync.WaitGroup
		envs := make([][]byte, 8)
		errs := make([]error, len(envs))
		for i := range envs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				envs[i], errs[i] = procs[i%2].keyring.Seal(ctx, subject, "profile", fmt.Appendf(nil, "v%d", i))
			}()
		}
		close(start)
		wg.Wait()
		for i, env := range envs {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			for _, p := range procs {
				plain, got, err := p.keyring.Open(ctx, "profile", env)
				if err != nil || string(plain) != fmt.Sprintf("v%d", i) || got != subject {
					t.Fatalf("round %d envelope %d: %q %q %v", round, i, plain, got, err)
				}
			}
		}
	}
}

// Erasure destroys the subject's keys: its ciphertexts fail with ErrErased
// in every process, including one that had the key cached, and the topic
// keeps no usable key material for it once compacted.
func TestEraseShredsEverywhere(t *testing.T) {
	b := newBroker(t)
	m1, raw := masterKey(t, "m1")
	keys := masters(t, "m1", m1)
	a, c := b.newProcess(t, keys), b.newProcess(t, keys)
	ctx := testCtx(t)

	victim, other := schemas.TenantKey("acme", "u1"), schemas.TenantKey("acme", "u2")
	env, err := a.keyring.Seal(ctx, victim, "profile", []byte("ada@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	keep, err := a.keyring.Seal(ctx, other, "profile", []byte("bob@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.keyring.Open(ctx, "profile", env); err != nil { // c now caches the key
		t.Fatal(err)
	}
	if _, err := c.keyring.Seal(ctx, victim, "inbox", []byte("hi")); err != nil { // and seals with it
		t.Fatal(err)
	}
	dek := subjectKeyMaterial(t, b, raw, victim)

	n, err := a.keyring.Erase(ctx, victim)
	if err != nil || n != 1 {
		t.Fatalf("erase: %d keys, %v", n, err)
	}
	start := time.Now()
	if _, _, err := a.keyring.Open(ctx, "profile", env); !errors.Is(err, crypt.ErrErased) {
		t.Fatalf("open in the erasing process: %v, want ErrErased", err)
	}
	if time.Since(start) > time.Second {
		t.Fatal("ErrErased must not wait: it is permanent")
	}
	eventually(t, "open in the process that cached the key", func() error {
		if _, _, err := c.keyring.Open(ctx, "profile", env); !errors.Is(err, crypt.ErrErased) {
			return fmt.Errorf("got %v, want ErrErased", err)
		}
		return nil
	})
	if plain, _, err := c.keyring.Open(ctx, "profile", keep); err != nil || string(plain) != "bob@example.com" {
		t.Fatalf("another subject of the tenant must stay readable: %q %v", plain, err)
	}
	if n, err := a.keyring.Erase(ctx, victim); err != nil || n != 0 {
		t.Fatalf("second erase: %d, %v; want 0", n, err)
	}

	// No record carries the key in clear, and after compaction none carries it at all.
	for _, r := range b.rawRecords(t) {
		if contains(r.Value, dek) {
			t.Fatalf("record %s holds the subject key in clear", r.Key)
		}
	}
	// The broker never compacts its active segment; a later record on the
	// partition stands in for the segment roll segment.ms forces.
	b.rollPartitionOf(t, victim)
	b.cluster.Compact()
	for _, r := range b.rawRecords(t) {
		d, err := crypt.DataKeyCodec.Decode(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		if d.Subject == victim && (!d.Erased() || len(d.Wrapped) != 0) {
			t.Fatalf("after compaction %s still holds a live key record: %+v", r.Key, d)
		}
	}

	// The subject may come back; it gets a new key, the old data stays shredded.
	env2, err := c.keyring.Seal(ctx, victim, "profile", []byte("new@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if plain, _, err := a.keyring.Open(ctx, "profile", env2); err != nil || string(plain) != "new@example.com" {
		t.Fatalf("new key after erasure: %q %v", plain, err)
	}
	if _, _, err := a.keyring.Open(ctx, "profile", env); !errors.Is(err, crypt.ErrErased) {
		t.Fatalf("old envelope after re-creation: %v", err)
	}
	if e, _ := crypt.ParseEnvelope(env2); e.KeyID == dekID(t, env) {
		t.Fatal("a process that had the erased key cached sealed with it again")
	}
}

func dekID(t *testing.T, env []byte) string {
	t.Helper()
	e, err := crypt.ParseEnvelope(env)
	if err != nil {
		t.Fatal(err)
	}
	return e.KeyID
}

// Erasing a tenant shreds all its subjects and leaves other tenants alone.
func TestEraseTenant(t *testing.T) {
	b := newBroker(t)
	m1, _ := masterKey(t, "m1")
	keys := masters(t, "m1", m1)
	a, c := b.newProcess(t, keys), b.newProcess(t, keys)
	ctx := testCtx(t)
	var gone [][]byte
	for _, u := range []string{"u1", "u2", "u3"} {
		env, err := a.keyring.Seal(ctx, schemas.TenantKey("acme", u), "profile", []byte(u))
		if err != nil {
			t.Fatal(err)
		}
		gone = append(gone, env)
	}
	keep, err := a.keyring.Seal(ctx, "u1", "profile", []byte("default tenant"))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "keys in the eraser's view", func() error {
		_, _, err := c.keyring.Open(ctx, "profile", gone[2])
		return err
	})
	n, err := c.keyring.EraseTenant(ctx, "acme")
	if err != nil || n != 4 {
		t.Fatalf("erase tenant: %d, %v; want 3 subject keys and 1 tenant key", n, err)
	}
	for i, env := range gone {
		eventually(t, fmt.Sprintf("envelope %d", i), func() error {
			if _, _, err := a.keyring.Open(ctx, "profile", env); !errors.Is(err, crypt.ErrErased) {
				return fmt.Errorf("got %v, want ErrErased", err)
			}
			return nil
		})
	}
	if plain, _, err := a.keyring.Open(ctx, "profile", keep); err != nil || string(plain) != "default tenant" {
		t.Fatalf("other tenant: %q %v", plain, err)
	}
}

// subjectKeyMaterial unwraps the subject's key from the raw topic, as an
// attacker holding the master key and the log could before erasure.
func subjectKeyMaterial(t *testing.T, b *broker, master []byte, subject string) []byte {
	t.Helper()
	var subj, tenant *crypt.DataKey
	deadline := time.Now().Add(10 * time.Second)
	for subj == nil || tenant == nil {
		if time.Now().After(deadline) {
			t.Fatal("key records not on the topic")
		}
		for _, r := range b.rawRecords(t) {
			d, err := crypt.DataKeyCodec.Decode(r.Value)
			if err != nil {
				t.Fatal(err)
			}
			if d.Kind == crypt.KindSubject && d.Subject == subject {
				subj = d
			}
			if d.Kind == crypt.KindTenant {
				tenant = d
			}
		}
	}
	kek, err := crypt.UnwrapRaw(master, tenant)
	if err != nil {
		t.Fatal(err)
	}
	dek, err := crypt.UnwrapRaw(kek, subj)
	if err != nil {
		t.Fatal(err)
	}
	return dek
}

// Rotation without downtime: add m2 as current beside m1, rewrap, drop m1;
// everything sealed before still opens. Without the rewrap it would not.
func TestMasterKeyRotation(t *testing.T) {
	b := newBroker(t)
	m1, _ := masterKey(t, "m1")
	m2, _ := masterKey(t, "m2")
	ctx := testCtx(t)

	old := b.newProcess(t, masters(t, "m1", m1))
	var envs [][]byte
	for _, tenant := range []string{"acme", "globex", "default"} {
		env, err := old.keyring.Seal(ctx, schemas.TenantKey(tenant, "u1"), "profile", []byte("secret of "+tenant))
		if err != nil {
			t.Fatal(err)
		}
		envs = append(envs, env)
	}

	onlyNew := b.newProcess(t, masters(t, "m2", m2), crypt.WithWait(5*time.Second))
	if _, _, err := onlyNew.keyring.Open(ctx, "profile", envs[0]); !errors.Is(err, crypt.ErrUnknownMaster) {
		t.Fatalf("before rewrap, a process without m1: %v, want ErrUnknownMaster", err)
	}

	rotating := b.newProcess(t, masters(t, "m2", m2, m1))
	n, err := rotating.keyring.Rewrap(ctx)
	if err != nil || n != 3 {
		t.Fatalf("rewrap: %d, %v; want 3 tenant keys", n, err)
	}
	if n, err := rotating.keyring.Rewrap(ctx); err != nil || n != 0 {
		t.Fatalf("second rewrap: %d, %v; want 0", n, err)
	}

	after := b.newProcess(t, masters(t, "m2", m2))
	for i, env := range envs {
		if _, _, err := after.keyring.Open(ctx, "profile", env); err != nil {
			t.Fatalf("envelope %d after m1 was removed: %v", i, err)
		}
	}
	// New tenants get keys under m2 straight away.
	env, err := after.keyring.Seal(ctx, schemas.TenantKey("initech", "u"), "profile", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := rotating.keyring.Open(ctx, "profile", env); err != nil {
		t.Fatal(err)
	}
}

// A ciphertext opens only unaltered, for its own subject and context.
func TestOpenRefusesTamperedOrMoved(t *testing.T) {
	b := newBroker(t)
	m1, _ := masterKey(t, "m1")
	p := b.newProcess(t, masters(t, "m1", m1), crypt.WithWait(300*time.Millisecond))
	ctx := testCtx(t)
	s1, s2 := schemas.TenantKey("acme", "u1"), schemas.TenantKey("acme", "u2")
	env1, err := p.keyring.Seal(ctx, s1, "profile", []byte("ada@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	env2, err := p.keyring.Seal(ctx, s2, "profile", []byte("bob@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	e1, _ := crypt.ParseEnvelope(env1)
	e2, _ := crypt.ParseEnvelope(env2)

	flipped := bytes.Clone(env1)
	flipped[len(flipped)-20] ^= 1
	// s1's ciphertext relabelled as s2's, under s2's existing key.
	moved := append(crypt.AppendHeader(nil, s2, e2.KeyID), append(bytes.Clone(e1.Nonce), e1.Ciphertext...)...)
	unknownKey := append(crypt.AppendHeader(nil, s1, "0123456789abcdef"), append(bytes.Clone(e1.Nonce), e1.Ciphertext...)...)

	cases := []struct {
		name, context string
		env           []byte
		want          error
	}{
		{"flipped ciphertext bit", "profile", flipped, crypt.ErrAuth},
		{"other subject", "profile", moved, crypt.ErrAuth},
		{"other context", "notification", env1, crypt.ErrAuth},
		{"unknown key id", "profile", unknownKey, crypt.ErrNoKey},
		{"plaintext", "profile", []byte("ada@example.com"), crypt.ErrNotSealed},
	}
	for _, c := range cases {
		if plain, _, err := p.keyring.Open(ctx, c.context, c.env); !errors.Is(err, c.want) {
			t.Errorf("%s: %q, %v; want %v", c.name, plain, err, c.want)
		}
	}
	if _, _, err := p.keyring.Open(ctx, "profile", env1[:len(env1)-20]); err == nil {
		t.Error("truncated envelope opened")
	}
}

// notify.datakeys is created with the configs that keep erasure prompt.
func TestSpecCompactsTopic(t *testing.T) {
	s := crypt.Spec()
	if s.Name != crypt.Topic || s.Configs["cleanup.policy"] != "compact" || s.KafkaConfigs["max.compaction.lag.ms"] == "" {
		t.Fatalf("spec %+v", s)
	}
}

// BenchmarkSealOpen seals and opens 256 bytes with a cached subject key,
// over the service's watched view and over a view that is read on every use
// (what the keyring did before WatchedView).
func BenchmarkSealOpen(b *testing.B) {
	for _, c := range []struct {
		name string
		wrap func(crypt.PrefixView) crypt.KeyView
	}{
		{"watched", func(v crypt.PrefixView) crypt.KeyView { return v }},
		{"read-every-use", func(v crypt.PrefixView) crypt.KeyView { return struct{ crypt.PrefixView }{v} }},
	} {
		b.Run(c.name, func(b *testing.B) {
			br := newBroker(b)
			m1, _ := masterKey(b, "m1")
			p := br.newProcessView(b, masters(b, "m1", m1), c.wrap)
			ctx := context.Background()
			plain := bytes.Repeat([]byte("x"), 256)
			env, err := p.keyring.Seal(ctx, "acme|u1", "profile", plain)
			if err != nil {
				b.Fatal(err)
			}
			if _, _, err := p.keyring.Open(ctx, "profile", env); err != nil { // the view shows the key
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(plain)))
			for b.Loop() {
				env, err := p.keyring.Seal(ctx, "acme|u1", "profile", plain)
				if err != nil {
					b.Fatal(err)
				}
				if _, _, err := p.keyring.Open(ctx, "profile", env); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
