package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
)

// Principal is who a request acts as: the API key that authenticated it.
type Principal struct {
	// KeyID is the managed key's id, or "config:<name>" for a configured key.
	KeyID string
	Name  string
	// Tenant is the stored form of the key's tenant ("" = default).
	Tenant string
	Scopes []string
	// ExpiresAt bounds the keys this principal may create (0 = never).
	ExpiresAt time.Time
	// RateLimit and Burst are the key's per-instance limit (0 = none).
	RateLimit float64
	Burst     int
}

// Can tells whether the principal holds scope: admin implies every scope of
// its own tenant (all but tenants), send:transactional implies send.
func (p *Principal) Can(scope string) bool {
	if p == nil {
		return false
	}
	for _, s := range p.Scopes {
		switch {
		case s == scope,
			s == ScopeAdmin && scope != ScopeTenants,
			s == ScopeSendTransactional && scope == ScopeSend:
			return true
		}
	}
	return false
}

type principalKey struct{}

// PrincipalFrom is the principal of an authenticated request's context, or nil.
func PrincipalFrom(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// WithPrincipal returns ctx acting as p (for callers outside HTTP, and tests).
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// Keys are the configured API keys, held by their SHA-256 only.
type Keys struct {
	keys []configKey
}

type configKey struct {
	hash [32]byte
	p    *Principal
}

// LoadKeys checks and hashes the configured keys; the plaintext is not kept.
// A key without scopes holds every scope (admin and tenants) in its tenant,
// as keys did before scopes existed. Each configured key is its own
// principal, config:<name>, the root of its lineage: two keys with one name
// (ignoring case and spaces) or one secret are refused, since they would be
// one approver to the two-person rule.
func LoadKeys(keys []config.APIKey) (*Keys, error) {
	k := &Keys{}
	for i, c := range keys {
		if c.Key == "" {
			continue
		}
		p, err := configPrincipal(c)
		if err != nil {
			return nil, fmt.Errorf("apiKeys[%d] (%q): %w", i, c.Name, err)
		}
		h := sha256.Sum256([]byte(c.Key))
		for _, o := range k.keys {
			if config.SameKeyName(o.p.Name, c.Name) {
				return nil, fmt.Errorf("apiKeys[%d] (%q): another configured key is named %q; names are unique, ignoring case and spaces", i, c.Name, o.p.Name)
			}
			if o.hash == h {
				return nil, fmt.Errorf("apiKeys[%d] (%q): the same key as the configured key %q", i, c.Name, o.p.Name)
			}
		}
		k.keys = append(k.keys, configKey{hash: h, p: p})
	}
	return k, nil
}

// named is the configured key of tenant (stored form) whose name reads as
// name (config.SameKeyName), or nil.
func (k *Keys) named(tenant, name string) *Principal {
	if k == nil {
		return nil
	}
	for _, c := range k.keys {
		if c.p.Tenant == tenant && config.SameKeyName(c.p.Name, name) {
			return c.p
		}
	}
	return nil
}

// NewKeys is LoadKeys for keys known to be valid; it panics on an invalid one.
func NewKeys(keys []config.APIKey) *Keys {
	k, err := LoadKeys(keys)
	if err != nil {
		panic("api: " + err.Error())
	}
	return k
}

func configPrincipal(c config.APIKey) (*Principal, error) {
	if strings.TrimSpace(c.Name) == "" {
		return nil, fmt.Errorf("a configured key needs a name")
	}
	if c.Tenant != "" && !schemas.ValidTenant(c.Tenant) {
		return nil, fmt.Errorf("tenant %q: want lower-case letters, digits, '_' or '-', at most 63", c.Tenant)
	}
	scopes := c.Scopes
	if len(scopes) == 0 {
		scopes = []string{ScopeAdmin, ScopeTenants}
	}
	for _, s := range scopes {
		if !KnownScope(s) {
			return nil, fmt.Errorf("unknown scope %q (known: %s)", s, strings.Join(Scopes(), ", "))
		}
	}
	if c.RateLimit < 0 || math.IsNaN(c.RateLimit) || math.IsInf(c.RateLimit, 0) || c.Burst < 0 {
		return nil, fmt.Errorf("rateLimit and burst must be >= 0")
	}
	return &Principal{KeyID: "config:" + c.Name, Name: c.Name, Tenant: schemas.NormTenant(c.Tenant),
		Scopes: slices.Clone(scopes), RateLimit: c.RateLimit, Burst: c.Burst}, nil
}

// Check returns the key's name, or "" if the key is not a configured one.
func (k *Keys) Check(presented string) string {
	if p := k.principal(presented); p != nil {
		return p.Name
	}
	return ""
}

// principal finds a configured key, comparing every hash in constant time.
func (k *Keys) principal(presented string) *Principal {
	if k == nil || presented == "" {
		return nil
	}
	h := sha256.Sum256([]byte(presented))
	var found *Principal
	for _, c := range k.keys {
		if subtle.ConstantTimeCompare(h[:], c.hash[:]) == 1 {
			found = c.p
		}
	}
	return found
}

var errUnauthenticated = &Error{Status: http.StatusUnauthorized, Code: "unauthenticated",
	Message: "missing, unknown, expired or revoked API key: send Authorization: Bearer <key>"}

// authenticate admits a request whose API key is valid (else 401), within
// the key's rate limit (else 429) and holding scope (else 403). Every
// admitted request that is not a read is audited once answered, a 403
// included: a 429 is not, so a key over its limit cannot flood the trail.
func (s *Server) authenticate(scope string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		p := (*Principal)(nil)
		if ok {
			p = s.principal(strings.TrimSpace(token))
		}
		if p == nil {
			writeError(w, errUnauthenticated)
			return
		}
		if wait, ok := s.limiters.allow(p, s.now()); !ok {
			w.Header().Set("Retry-After", strconv.Itoa(wait))
			writeError(w, &Error{Status: http.StatusTooManyRequests, Code: "rate_limited",
				Message: fmt.Sprintf("this key is limited to %g requests per second; retry after %d s", p.RateLimit, wait)})
			return
		}
		if s.audits(r) {
			rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
			r = r.WithContext(withAuditNotes(r.Context()))
			defer func() { s.audit(r, p, rec.code) }()
			w = rec
		}
		if !p.Can(scope) {
			writeError(w, &Error{Status: http.StatusForbidden, Code: "forbidden",
				Message: fmt.Sprintf("this key lacks scope %q", scope)})
			return
		}
		next.ServeHTTP(w, r.WithContext(WithPrincipal(r.Context(), p)))
	})
}

// principal resolves a presented key: a configured one, else a managed one.
func (s *Server) principal(token string) *Principal {
	if p := s.Keys.principal(token); p != nil {
		return p
	}
	return s.managedPrincipal(token)
}

// keyLimiters are the per-key token buckets of one API instance: a key's
// limit applies on each instance separately, so n instances behind a load
// balancer admit up to n times the rate.
type keyLimiters struct {
	mu sync.Mutex
	by map[string]*rate.Limiter
}

// allow takes a token from p's bucket; when there is none it returns the
// whole seconds (at least 1) until there is.
func (l *keyLimiters) allow(p *Principal, now time.Time) (retryAfter int, ok bool) {
	if p.RateLimit <= 0 {
		return 0, true
	}
	lim := l.limiter(p)
	if lim.AllowN(now, 1) {
		return 0, true
	}
	missing := 1 - lim.TokensAt(now)
	secs := int(math.Ceil(missing / p.RateLimit))
	return max(secs, 1), false
}

func (l *keyLimiters) limiter(p *Principal) *rate.Limiter {
	burst := p.Burst
	if burst <= 0 {
		burst = max(int(math.Ceil(p.RateLimit)), 1)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.by == nil {
		l.by = map[string]*rate.Limiter{}
	}
	lim, ok := l.by[p.KeyID]
	if !ok {
		lim = rate.NewLimiter(rate.Limit(p.RateLimit), burst)
		l.by[p.KeyID] = lim
	}
	return lim
}
