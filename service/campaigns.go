package service

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/lovoo/goka"
	"github.com/twmb/franz-go/pkg/kadm"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// startCancels runs this process's view of notify.cancels, shared by the
// API (which waits for its own cancellations to be readable) and the sinks
// (which ask it before each provider call).
func (s *Service) startCancels(ctx context.Context, g *errgroup.Group, kafka topology.Kafka) (*goka.View, error) {
	return s.startView(ctx, g, kafka, "cancels", topology.Cancels, topology.CancellationCodec())
}

// canceledBy tells why a notification may no longer go out, from a view of
// notify.cancels ("" when it may).
func canceledBy(v *goka.View) func(n *schemas.Notification) string {
	return func(n *schemas.Notification) string {
		for _, key := range processors.CancelKeys(n) {
			got, err := v.Get(key)
			if d, ok := got.(schemas.Decoded[schemas.Cancellation]); ok && err == nil && d.V != nil {
				return topology.CancelReason(d.V)
			}
		}
		return ""
	}
}

// startAudience runs the views a campaign fans out from: audiences
// (topics, lists) and profiles (segments).
func (s *Service) startAudience(ctx context.Context, g *errgroup.Group, kafka topology.Kafka, adm *kadm.Client) (*topology.ViewAudience, []*goka.View, error) {
	members, err := s.startView(ctx, g, kafka, "proc-audiences", topology.Audiences, schemas.Lenient[schemas.AudienceMember]{C: schemas.AudienceMemberCodec})
	if err != nil {
		return nil, nil, err
	}
	profiles, err := s.startView(ctx, g, kafka, "proc-profiles", topology.Profiles, topology.ProfileTableCodec())
	if err != nil {
		return nil, nil, err
	}
	return &topology.ViewAudience{Members: members, Profiles: profiles, Adm: adm}, []*goka.View{members, profiles}, nil
}

// progress counts a campaign's notifications (ids starting with prefix) by
// where each stands, from the status table: the partitions this process's
// status group owns when it owns them all, else a view of the table.
func (s *Service) progress(status *statusTable) func(ctx context.Context, prefix string) (processors.Progress, error) {
	return func(ctx context.Context, prefix string) (processors.Progress, error) {
		var p processors.Progress
		count := func(v []byte) {
			if lc, err := schemas.LifecycleCodec.Decode(v); err == nil {
				p.Count(lc)
			}
		}
		table := string(goka.GroupTable(topology.StatusGroup))
		if s.tables != nil && len(s.tables.Partitions(table)) == s.Cfg.Kafka.Partitions {
			err := s.tables.Each(table, prefix, processors.PrefixEnd(prefix), func(_ int32, _ string, v []byte) bool {
				count(v)
				return ctx.Err() == nil
			})
			return p, err
		}
		v, err := status.ensureView()
		if err != nil {
			return p, err
		}
		if !v.Recovered() {
			return p, ErrRecovering
		}
		it, err := v.IteratorWithRange(prefix, processors.PrefixEnd(prefix))
		if err != nil {
			return p, err
		}
		defer it.Release()
		for it.Next() && ctx.Err() == nil {
			if lc, err := it.Value(); err == nil {
				if l, ok := lc.(*schemas.Lifecycle); ok {
					p.Count(l)
				}
			}
		}
		if ctx.Err() != nil {
			return p, fmt.Errorf("progress: %w", ctx.Err())
		}
		return p, nil
	}
}

// progressCache shares a campaign's progress count among its readers: one
// scan at a time per campaign (concurrent readers wait for it), and a
// result is reused for twice as long as its scan took. A campaign of
// millions, whose scan takes seconds, costs at most a third of a core
// however many dashboards poll it; a small one is always current.
type progressCache struct {
	count func(ctx context.Context, prefix string) (processors.Progress, error)
	now   func() time.Time
	group singleflight.Group
	mu    sync.Mutex
	last  map[string]cachedProgress
}

type cachedProgress struct {
	p     processors.Progress
	until time.Time
}

// maxCachedProgress bounds the campaigns whose last count is kept.
const maxCachedProgress = 1000

func newProgressCache(count func(ctx context.Context, prefix string) (processors.Progress, error), now func() time.Time) *progressCache {
	return &progressCache{count: count, now: now, last: map[string]cachedProgress{}}
}

func (c *progressCache) get(ctx context.Context, prefix string) (processors.Progress, error) {
	c.mu.Lock()
	hit, ok := c.last[prefix]
	c.mu.Unlock()
	if ok && c.now().Before(hit.until) {
		return hit.p, nil
	}
	v, err, _ := c.group.Do(prefix, func() (any, error) {
		start := c.now()
		// The scan outlives a reader who leaves: others may be waiting on it.
		p, err := c.count(context.WithoutCancel(ctx), prefix)
		if err != nil {
			return p, err
		}
		end := c.now()
		c.mu.Lock()
		if len(c.last) >= maxCachedProgress {
			clear(c.last)
		}
		c.last[prefix] = cachedProgress{p: p, until: end.Add(2 * end.Sub(start))}
		c.mu.Unlock()
		return p, nil
	})
	return v.(processors.Progress), err
}
