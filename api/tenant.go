package api

import (
	"context"

	"github.com/notifyd/notifyd/processors"
)

// tenantFrom is the tenant of the request's API key ("" = the default
// tenant): every resource a request reads or writes is looked up under it.
func tenantFrom(ctx context.Context) string {
	if p := PrincipalFrom(ctx); p != nil {
		return p.Tenant
	}
	return ""
}

// can tells whether the request's key has scope.
func can(ctx context.Context, scope string) bool {
	p := PrincipalFrom(ctx)
	return p != nil && p.Can(scope)
}

// Keyring seals and opens personal data and erases a user's key.
type Keyring interface {
	processors.Sealer
	Erase(ctx context.Context, subject string) (int, error)
}

// sealer is the keyring as a processors.Sealer; nil when none is set (so
// the processors' helpers see a nil interface, not a typed nil).
func (s *Server) sealer() processors.Sealer {
	if s.Crypt == nil {
		return nil
	}
	return s.Crypt
}
