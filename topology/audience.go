package topology

import (
	"context"
	"fmt"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

// ViewAudience reads campaigns' audiences from views of notify.audiences
// (topics and lists) and notify.profiles (segments), iterating keys in order
// so that a campaign fans out from a cursor in bounded steps.
type ViewAudience struct {
	Members  *goka.View
	Profiles *goka.View
	Adm      *kadm.Client
}

func (a *ViewAudience) view(c *schemas.Campaign) *goka.View {
	if c.AudienceKind == processors.AudienceSegment {
		return a.Profiles
	}
	return a.Members
}

// Current waits (up to a few seconds) until the audience's view has read
// every record written to its topic before the call.
func (a *ViewAudience) Current(ctx context.Context, c *schemas.Campaign) bool {
	if c.AudienceKind == processors.AudienceUsers {
		return true
	}
	v := a.view(c)
	if v == nil || !v.Recovered() {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ends, err := a.Adm.ListEndOffsets(ctx, v.Topic())
	if err != nil {
		return false
	}
	for {
		behind := false
		st := v.Stats(ctx)
		ends.Each(func(o kadm.ListedOffset) {
			if o.Err == nil && o.Offset > 0 && viewApplied(st, o.Partition) < o.Offset-1 {
				behind = true
			}
		})
		if !behind {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// viewApplied is the offset of the last record a view partition has applied.
func viewApplied(st *goka.ViewStats, p int32) int64 {
	ts := st.Partitions[p]
	if ts == nil {
		return -1
	}
	if ts.Input != nil && ts.Input.Count > 0 {
		return ts.Input.LastOffset
	}
	if ts.Recovery != nil && ts.Status == goka.PartitionRunning {
		return ts.Recovery.Hwm - 1
	}
	return -1
}

// Scan implements AudienceSource.
func (a *ViewAudience) Scan(c *schemas.Campaign, after, through string, max, scanMax int, fn func(string)) (string, bool, int, error) {
	switch c.AudienceKind {
	case processors.AudienceUsers:
		return scanUsers(c.Users, after, through, max, fn)
	case processors.AudienceTopic, processors.AudienceList:
		prefix := processors.AudiencePrefix(c.Tenant, c.AudienceKind, c.AudienceID)
		return scanView(a.Members, prefix, after, through, max, scanMax, func(key string, v any) (string, bool) {
			d, ok := v.(schemas.Decoded[schemas.AudienceMember])
			return processors.AudienceUser(key), ok && d.V != nil
		}, fn)
	case processors.AudienceSegment:
		seg, err := processors.ParseSegment(c.Segment)
		if err != nil {
			return "", false, 0, err
		}
		prefix := schemas.TenantPrefix(c.Tenant)
		return scanView(a.Profiles, prefix, after, through, max, scanMax, func(key string, v any) (string, bool) {
			if !schemas.InTenant(key, c.Tenant) {
				return "", false // another tenant's profile
			}
			d, ok := v.(schemas.Decoded[schemas.Profile])
			if !ok || d.V == nil || d.Err != nil || !seg.Match(d.V) {
				return "", false
			}
			return d.V.UserID, true
		}, fn)
	}
	return "", false, 0, fmt.Errorf("unknown audience kind %q", c.AudienceKind)
}

// scanView walks the keys of v under prefix after the cursor (through
// bounds it when set), calling fn with the user of each key pick accepts.
func scanView(v *goka.View, prefix, after, through string, max, scanMax int, pick func(string, any) (string, bool), fn func(string)) (last string, done bool, scanned int, err error) {
	if v == nil {
		return "", false, 0, fmt.Errorf("no view of the audience")
	}
	start := prefix
	if after != "" {
		start = after + "\x00" // the first key after the cursor
	}
	// Every storage goka has reads an empty limit as "the keys starting
	// with start": the limit is always given.
	limit := processors.PrefixEnd(prefix)
	if prefix == "" {
		limit = "\xff\xff\xff\xff"
	}
	it, err := v.IteratorWithRange(start, limit)
	if err != nil {
		return "", false, 0, err
	}
	defer it.Release()
	last, picked := after, 0
	for picked < max && scanned < scanMax {
		if !it.Next() {
			return last, through == "", scanned, nil
		}
		key := it.Key()
		if through != "" && key > through {
			return last, false, scanned, nil
		}
		scanned++
		last = key
		val, err := it.Value()
		if err != nil {
			continue
		}
		if user, ok := pick(key, val); ok {
			fn(user)
			picked++
		}
	}
	return last, false, scanned, nil
}

// scanUsers walks an inline list of users; the cursor is the index of the
// last one, zero-padded so that cursors compare like keys.
func scanUsers(users []string, after, through string, max int, fn func(string)) (string, bool, int, error) {
	i := 0
	if after != "" {
		fmt.Sscanf(after, "%d", &i)
		i++
	}
	end := len(users) - 1
	if through != "" {
		fmt.Sscanf(through, "%d", &end)
	}
	last, n := after, 0
	for ; i <= end && i < len(users) && n < max; i++ {
		fn(users[i])
		last = fmt.Sprintf("%08d", i)
		n++
	}
	return last, i >= len(users), n, nil
}
