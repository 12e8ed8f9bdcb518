package crypt

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Record is a data key record for the caller to write to Topic.
type Record struct {
	Key   string
	Value []byte
}

// Prepare makes sure subject has a key whose record is written, without
// waiting for a write. It tells whether the subject's key is written (the
// view holds it): then Seal uses it at once. Otherwise it returns the record
// of a new key, for the caller to write, or none when a key is already on its
// way; the caller asks again later.
//
// This is how a goka group creates keys for users it has never seen without a
// round trip to the broker in its callback: it emits the records through its
// context and comes back to the request once the view holds them. Seal never
// uses a prepared key before the view shows its record, so no sealed record
// can outlive a key that a crash lost.
func (k *Keyring) Prepare(ctx context.Context, subject string) (written bool, recs []Record, err error) {
	if k.initErr != nil {
		return false, nil, k.initErr
	}
	if err := checkSubject(subject); err != nil {
		return false, nil, fmt.Errorf("prepare: %w", err)
	}
	if kid, ok := k.subjectKid.get(subject); ok {
		rk := subjectRecordKey(subject, kid)
		if !k.pending.has(rk) {
			// Written (Seal writes before it caches; a prepared key leaves
			// pending once the view shows it). Whether it was erased since
			// is Seal's to find, as for any cached key.
			return true, nil, nil
		}
		d, err := k.record(rk)
		switch {
		case err != nil:
			return false, nil, fmt.Errorf("prepare: %w", err)
		case d != nil && !d.Erased():
			k.pending.remove(rk)
			return true, nil, nil
		case d == nil:
			return false, nil, nil // on its way
		}
		k.subjectKid.remove(subject)
	} else if rk, ok := k.pending.ofSubject(subject); ok {
		// Prepared here, the subject since forgotten by the cache: look up
		// that record instead of scanning for the subject's keys.
		d, err := k.record(rk)
		switch {
		case err != nil:
			return false, nil, fmt.Errorf("prepare: %w", err)
		case d == nil:
			k.subjectKid.put(subject, rk[strings.LastIndexByte(rk, '/')+1:])
			return false, nil, nil // on its way
		case !d.Erased():
			k.pending.remove(rk)
			k.subjectKid.put(subject, d.ID)
			return true, nil, nil
		}
		k.pending.remove(rk) // erased since: the subject needs a new key
	}
	v, err, _ := k.create.Do("subject\x00"+subject, func() (any, error) {
		match := func(d *DataKey) bool { return d.Kind == KindSubject && d.Subject == subject }
		kid, a, err := k.findLive(ctx, subjectPrefix(subject), match, k.unwrapSubject)
		if err != nil {
			return nil, err
		}
		if a != nil {
			// Written: if this process prepared it and has since forgotten
			// the subject (a bounded cache), it is no longer pending either.
			k.pending.remove(subjectRecordKey(subject, kid))
			k.subjectKid.put(subject, kid)
			return []Record(nil), nil
		}
		rec, err := k.prepareSubjectKey(ctx, subject)
		if err != nil {
			return nil, err
		}
		return []Record{rec}, nil
	})
	if err != nil {
		return false, nil, fmt.Errorf("prepare: %w", err)
	}
	recs = v.([]Record)
	return len(recs) == 0, recs, nil
}

// prepareSubjectKey makes subject's key as createSubjectKey does, but leaves
// the record to the caller and marks the key pending.
func (k *Keyring) prepareSubjectKey(ctx context.Context, subject string) (Record, error) {
	d, a, err := k.newSubjectKey(ctx, subject)
	if err != nil {
		return Record{}, err
	}
	b, err := DataKeyCodec.Encode(d)
	if err != nil {
		return Record{}, err
	}
	rk := d.recordKey()
	k.pending.add(rk, subject, k.record)
	k.keys.put(rk, a)
	k.subjectKid.put(subject, d.ID)
	k.log.Debug("prepared subject key", "keyId", d.ID, "tenantKeyId", d.WrappedBy)
	return Record{Key: rk, Value: b}, nil
}

// awaitWritten waits, up to the configured wait, until the view holds the
// record of a key Prepare made; other keys return at once.
func (k *Keyring) awaitWritten(ctx context.Context, rk string) error {
	if !k.pending.has(rk) {
		return nil
	}
	deadline := time.Now().Add(k.wait)
	for {
		d, err := k.record(rk)
		if err != nil {
			return err
		}
		if d != nil {
			k.pending.remove(rk)
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%s prepared but not in %s after %s: %w", rk, Topic, k.wait, errors.Join(ErrNoKey, ErrNotWritten))
		}
		if err := sleep(ctx, k.poll); err != nil {
			return fmt.Errorf("waiting for %s: %w", rk, err)
		}
	}
}

// ErrNotWritten means a prepared key's record never showed in the view: its
// writer did not write it (or failed to), so nothing may be sealed with it.
var ErrNotWritten = errors.New("crypt: prepared key not written")

// pendingKeys are the record keys of prepared keys not yet seen written. An
// entry leaves when the view shows its record; it is never evicted otherwise
// (a key forgotten as pending would count as written). Only a writer that
// failed leaves entries behind, and its process stops; past maxPending the
// set drops what the view holds by now.
//
// It also answers "which key did this process prepare for subject?" when the
// bounded cache has forgotten: a burst of new users larger than the cache
// (a campaign, a bulk send) comes back for its second pass after their
// subjects were evicted, and one lookup of the prepared record is cheaper
// than a scan of every partition of the view.
type pendingKeys struct {
	mu        sync.Mutex
	m         map[string]string // record key → subject
	bySubject map[string]string // subject → its latest prepared record key
	nextSweep int
}

const maxPending = 100_000

func (p *pendingKeys) add(rk, subject string, record func(string) (*DataKey, error)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m, p.bySubject, p.nextSweep = map[string]string{}, map[string]string{}, maxPending
	}
	if len(p.m) >= p.nextSweep {
		for k := range p.m {
			if d, err := record(k); err == nil && d != nil {
				p.removeLocked(k)
			}
		}
		// What is still pending is in flight: sweep again only once as
		// many more were added, so a sweep costs O(1) per add.
		p.nextSweep = max(maxPending, 2*len(p.m))
	}
	p.m[rk] = subject
	p.bySubject[subject] = rk
}

// ofSubject is the record key of the latest key prepared for subject, while
// it is pending.
func (p *pendingKeys) ofSubject(subject string) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rk, ok := p.bySubject[subject]
	return rk, ok
}

func (p *pendingKeys) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.m)
}

func (p *pendingKeys) has(rk string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.m[rk]
	return ok
}

func (p *pendingKeys) remove(rk string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.removeLocked(rk)
}

func (p *pendingKeys) removeLocked(rk string) {
	subject, ok := p.m[rk]
	if !ok {
		return
	}
	delete(p.m, rk)
	if p.bySubject[subject] == rk {
		delete(p.bySubject, subject)
	}
}
