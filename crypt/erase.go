package crypt

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// Erase destroys every key of subject (crypto-shredding): each key record is
// overwritten with an erasure marker that holds no key material, so every
// copy of the subject's data, wherever it is, fails to open with ErrErased
// in every process as soon as its view has the marker. It returns how many
// keys it destroyed (0 when there were none left). A later Seal for the
// subject creates a new key.
//
// Erase waits for its markers to reach the view, then looks once more, so a
// key another process created a moment before is destroyed too.
func (k *Keyring) Erase(ctx context.Context, subject string) (int, error) {
	if err := checkSubject(subject); err != nil {
		return 0, fmt.Errorf("erase: %w", err)
	}
	if err := k.awaitRecovered(ctx); err != nil {
		return 0, fmt.Errorf("erase: %w", err)
	}
	match := func(d *DataKey) bool { return d.Kind == KindSubject && d.Subject == subject }
	var extra []*DataKey
	if kid, ok := k.subjectKid.get(subject); ok { // created here, maybe not in the view yet
		extra = append(extra, &DataKey{Kind: KindSubject, Subject: subject, ID: kid})
	}
	n, err := k.eraseUnder(ctx, subjectPrefix(subject), match, extra)
	k.subjectKid.remove(subject)
	if err != nil {
		return n, fmt.Errorf("erase: %w", err)
	}
	k.log.Info("erased subject keys", "keys", n)
	return n, nil
}

// EraseTenant destroys every key of tenant: its tenant keys and the keys of
// all its subjects. Do not run it while a Rewrap runs: a rewrap that read a
// tenant key before the marker would write it back.
func (k *Keyring) EraseTenant(ctx context.Context, tenant string) (int, error) {
	tenant = schemas.NormTenant(tenant)
	if err := k.awaitRecovered(ctx); err != nil {
		return 0, fmt.Errorf("erase tenant: %w", err)
	}
	subjects := KindSubject + "/" + schemas.TenantPrefix(tenant)
	n, err := k.eraseUnder(ctx, subjects, func(d *DataKey) bool { return d.Kind == KindSubject && d.Tenant == tenant }, nil)
	if err != nil {
		return n, fmt.Errorf("erase tenant %s: %w", schemas.TenantName(tenant), err)
	}
	m, err := k.eraseUnder(ctx, tenantPrefix(tenant), func(d *DataKey) bool { return d.Kind == KindTenant && d.Tenant == tenant }, nil)
	k.tenantKid.remove(tenant)
	k.subjectKid.removeIf(func(s string) bool {
		t, _ := schemas.SplitTenantKey(s)
		return schemas.NormTenant(t) == tenant
	})
	if err != nil {
		return n + m, fmt.Errorf("erase tenant %s: %w", schemas.TenantName(tenant), err)
	}
	k.log.Info("erased tenant keys", "tenant", schemas.TenantName(tenant), "keys", n+m)
	return n + m, nil
}

// eraseUnder writes a marker for every live record under prefix that
// matches, and for extra; then, once the view shows the markers, once more
// for records that appeared meanwhile.
func (k *Keyring) eraseUnder(ctx context.Context, prefix string, match func(*DataKey) bool, extra []*DataKey) (int, error) {
	done := map[string]bool{}
	n := 0
	for round := 0; round < 2; round++ {
		pending := extra
		extra = nil
		err := k.scan(prefix, func(rk string, d *DataKey) error {
			if !d.Erased() && match(d) {
				pending = append(pending, d)
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		var written []string
		for _, d := range pending {
			rk := d.recordKey()
			if done[rk] {
				continue
			}
			done[rk] = true
			if err := k.eraseRecord(ctx, d); err != nil {
				return n, err
			}
			written = append(written, rk)
			n++
		}
		if len(written) == 0 {
			break
		}
		if err := k.awaitVisible(ctx, written, (*DataKey).Erased); err != nil {
			// The markers are written: the erasure holds. Only the second look is lost.
			k.log.Warn("erasure markers not visible yet", "err", err)
			break
		}
	}
	return n, nil
}

// eraseRecord overwrites d's record with a marker and forgets its key here at once.
func (k *Keyring) eraseRecord(ctx context.Context, d *DataKey) error {
	marker := &DataKey{Kind: d.Kind, Tenant: d.Tenant, Subject: d.Subject, ID: d.ID, ErasedAt: time.Now().UnixMilli()}
	if d.Kind == KindSubject {
		t, _ := schemas.SplitTenantKey(d.Subject)
		marker.Tenant = schemas.NormTenant(t)
	}
	rk := marker.recordKey()
	if err := k.produce(ctx, rk, marker); err != nil {
		return err
	}
	k.erased.put(rk, struct{}{})
	k.keys.remove(rk)
	if k.live != nil {
		k.live.remove(rk)
	}
	return nil
}

// Rewrap moves every tenant key wrapped by another master key under the
// current one and returns how many it rewrapped. Rotation: configure the new
// master key as current in every process (keeping the old one), run Rewrap,
// and once it returns 0 the old master key may be removed. Tenant keys keep
// their material, so no subject key or ciphertext changes.
func (k *Keyring) Rewrap(ctx context.Context) (int, error) {
	if k.initErr != nil {
		return 0, k.initErr
	}
	if err := k.awaitRecovered(ctx); err != nil {
		return 0, fmt.Errorf("rewrap: %w", err)
	}
	var stale []*DataKey
	err := k.scan(KindTenant+"/", func(rk string, d *DataKey) error {
		if _, gone := k.erased.get(rk); !gone && d.Kind == KindTenant && !d.Erased() && d.WrappedBy != k.current {
			stale = append(stale, d)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("rewrap: %w", err)
	}
	var errs []error
	var written []string
	for _, d := range stale {
		rk, err := k.rewrap(ctx, d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		written = append(written, rk)
	}
	current := func(d *DataKey) bool { return d.Erased() || d.WrappedBy == k.current }
	if err := k.awaitVisible(ctx, written, current); err != nil {
		errs = append(errs, err)
	}
	k.log.Info("rewrapped tenant keys", "keys", len(written), "masterKeyId", k.current, "failed", len(stale)-len(written))
	if err := errors.Join(errs...); err != nil {
		return len(written), fmt.Errorf("rewrap: %w", err)
	}
	return len(written), nil
}

func (k *Keyring) rewrap(ctx context.Context, d *DataKey) (string, error) {
	rk := d.recordKey()
	old, ok := k.masters[d.WrappedBy]
	if !ok {
		return "", fmt.Errorf("%s wrapped by master key %q, configured are %v: %w", rk, d.WrappedBy, k.masterIDs, ErrUnknownMaster)
	}
	key, err := unwrapRaw(old, rk, d)
	if err != nil {
		return "", err
	}
	defer clear(key)
	next := *d
	next.WrappedBy = k.current
	if next.Wrapped, err = wrapKey(k.masters[k.current], rk, k.current, key); err != nil {
		return "", err
	}
	if err := k.produce(ctx, rk, &next); err != nil {
		return "", err
	}
	return rk, nil
}

// awaitVisible waits, up to the configured wait, until the view holds a
// record satisfying ok at every key.
func (k *Keyring) awaitVisible(ctx context.Context, rks []string, ok func(*DataKey) bool) error {
	deadline := time.Now().Add(k.wait)
	for _, rk := range rks {
		for {
			d, err := k.record(rk)
			if err != nil {
				return err
			}
			if d != nil && ok(d) {
				break
			}
			if !time.Now().Before(deadline) {
				return fmt.Errorf("%s not updated in the view after %s", rk, k.wait)
			}
			if err := sleep(ctx, k.poll); err != nil {
				return err
			}
		}
	}
	return nil
}

// awaitRecovered waits until a view that can tell (a *goka.View) has read
// the whole topic: an erasure or rewrap over a partial view would miss keys.
func (k *Keyring) awaitRecovered(ctx context.Context) error {
	r, ok := k.view.(interface{ Recovered() bool })
	if !ok {
		return nil
	}
	deadline := time.Now().Add(k.wait)
	for !r.Recovered() {
		if !time.Now().Before(deadline) {
			return fmt.Errorf("view of %s not recovered after %s", Topic, k.wait)
		}
		if err := sleep(ctx, k.poll); err != nil {
			return err
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
