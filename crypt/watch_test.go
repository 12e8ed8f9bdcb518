package crypt_test

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/notifyd/notifyd/crypt"
	"github.com/notifyd/notifyd/schemas"
)

// watchedPrefixView is the service's view of notify.datakeys as the keyring
// sees it: filtered by owners' prefixes and watched.
type watchedPrefixView interface {
	crypt.WatchedView
	MayHave(prefix string) bool
}

// hookedView counts the keyring's reads of records and lets a test act
// between a read and its use.
type hookedView struct {
	watchedPrefixView
	gets     atomic.Int64
	afterGet func(key string)
	erased   chan string // record keys the watcher heard erased
}

func (v *hookedView) Get(key string) (any, error) {
	val, err := v.watchedPrefixView.Get(key)
	v.gets.Add(1)
	if f := v.afterGet; f != nil {
		f(key)
	}
	return val, err
}

func (v *hookedView) Watch(fn func(string, []byte)) {
	v.watchedPrefixView.Watch(func(key string, value []byte) {
		fn(key, value)
		if d, err := crypt.DataKeyCodec.Decode(value); err == nil && d.Erased() {
			select {
			case v.erased <- key:
			default:
			}
		}
	})
}

// Over a watched view the keyring reads a key's record once, not on every
// Open; an erasure the view shows still takes effect at once, even one that
// lands between the keyring's read of the record and its caching of the key.
func TestWatchedViewReadsARecordOnceAndStillSeesErasures(t *testing.T) {
	b := newBroker(t)
	m1, _ := masterKey(t, "m1")
	keys := masters(t, "m1", m1)
	var hv *hookedView
	a := b.newProcessView(t, keys, func(v crypt.PrefixView) crypt.KeyView {
		hv = &hookedView{watchedPrefixView: v.(watchedPrefixView), erased: make(chan string, 16)}
		return hv
	})
	other := b.newProcess(t, keys)
	ctx := testCtx(t)

	seal := func(user string) ([]byte, string) {
		env, err := other.keyring.Seal(ctx, schemas.TenantKey("acme", user), "profile", []byte(user+"@example.com"))
		if err != nil {
			t.Fatal(err)
		}
		e, _ := crypt.ParseEnvelope(env)
		rk := "subject/" + schemas.TenantKey("acme", user) + "/" + e.KeyID
		eventually(t, "the view holds "+user+"'s key", func() error {
			if v, err := a.view.Get(rk); err != nil || v == nil {
				return fmt.Errorf("not yet (%v)", err)
			}
			return nil
		})
		return env, rk
	}

	env, _ := seal("reader")
	if _, _, err := a.keyring.Open(ctx, "profile", env); err != nil {
		t.Fatal(err)
	}
	before := hv.gets.Load()
	for range 100 {
		if plain, _, err := a.keyring.Open(ctx, "profile", env); err != nil || string(plain) != "reader@example.com" {
			t.Fatalf("open: %q %v", plain, err)
		}
	}
	if reads := hv.gets.Load() - before; reads != 0 {
		t.Fatalf("100 opens of a key the view showed live read its record %d times, want 0", reads)
	}

	// The erasure lands after the keyring read the record live, before it
	// cached the key: the key must not be cached as live.
	victim, rk := seal("victim")
	var once sync.Once
	hv.afterGet = func(key string) {
		if key != rk {
			return
		}
		once.Do(func() {
			if n, err := other.keyring.Erase(ctx, schemas.TenantKey("acme", "victim")); err != nil || n != 1 {
				t.Errorf("erase: %d keys, %v", n, err)
			}
			for got := range hv.erased {
				if got == rk {
					return
				}
			}
		})
	}
	// This open read the record before the erasure: it may still open.
	_, _, _ = a.keyring.Open(ctx, "profile", victim)
	hv.afterGet = nil
	if _, _, err := a.keyring.Open(ctx, "profile", victim); !errors.Is(err, crypt.ErrErased) {
		t.Fatalf("open after the view showed the erasure: %v, want ErrErased", err)
	}
	// And a key cached live is dropped when its erasure arrives.
	if n, err := other.keyring.Erase(ctx, schemas.TenantKey("acme", "reader")); err != nil || n != 1 {
		t.Fatalf("erase: %d keys, %v", n, err)
	}
	eventually(t, "the cached key's erasure", func() error {
		if _, _, err := a.keyring.Open(ctx, "profile", env); !errors.Is(err, crypt.ErrErased) {
			return fmt.Errorf("got %v, want ErrErased", err)
		}
		return nil
	})
}
