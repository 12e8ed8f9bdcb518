package api

import (
	"context"
	"time"
)

// Syncer is a table that can catch up with everything written to a key's
// partition before the call, so a write made through another API instance
// is read back here (read-after-write across instances).
type Syncer interface {
	Sync(ctx context.Context, key string) error
}

// syncAll catches t up with every partition (before a scan), bounded by
// WriteWait; a table that cannot, or a sync that fails, is read as it is.
func (s *Server) syncAll(ctx context.Context, t Table) {
	if sy, ok := t.(interface{ SyncAll(context.Context) error }); ok {
		ctx, cancel := s.syncBound(ctx)
		defer cancel()
		_ = sy.SyncAll(ctx)
	}
}

// sync catches t up for key, bounded by WriteWait; a table that cannot sync,
// or a sync that fails, leaves the read as it is.
func (s *Server) sync(ctx context.Context, t Table, key string) {
	if sy, ok := t.(Syncer); ok {
		ctx, cancel := s.syncBound(ctx)
		defer cancel()
		_ = sy.Sync(ctx, key)
	}
}

// syncBound bounds a catch-up by WriteWait (a second when unset).
func (s *Server) syncBound(ctx context.Context) (context.Context, context.CancelFunc) {
	wait := s.WriteWait
	if wait <= 0 {
		wait = time.Second
	}
	return context.WithTimeout(ctx, wait)
}
