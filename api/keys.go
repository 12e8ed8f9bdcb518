package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

// Scopes a key may hold. Each route needs one (Server.Handler).
const (
	ScopeSend              = "send"
	ScopeSendTransactional = "send:transactional" // implies send
	ScopeNotificationsRead = "notifications:read"
	ScopeProfilesRead      = "profiles:read"
	ScopeProfilesWrite     = "profiles:write"
	ScopeTemplatesRead     = "templates:read"
	ScopeTemplatesWrite    = "templates:write"
	ScopeAnalyticsRead     = "analytics:read"
	ScopeReceiptsWrite     = "receipts:write"
	ScopeInboxToken        = "inbox:token"
	// ScopeAdmin implies every scope of the key's own tenant and manages its keys.
	ScopeAdmin = "admin"
	// ScopeTenants may create and manage keys of other tenants.
	ScopeTenants = "tenants"
)

var allScopes = []string{ScopeSend, ScopeSendTransactional, ScopeNotificationsRead, ScopeProfilesRead,
	ScopeProfilesWrite, ScopeTemplatesRead, ScopeTemplatesWrite, ScopeAnalyticsRead, ScopeReceiptsWrite,
	ScopeInboxToken, ScopeApprove, ScopeAdmin, ScopeTenants}

// Scopes lists every scope name.
func Scopes() []string { return slices.Clone(allScopes) }

// KnownScope tells whether s names a scope.
func KnownScope(s string) bool { return slices.Contains(allScopes, s) }

// KeysTopic holds the managed keys (compacted, key: key id, value: schemas.APIKey).
const KeysTopic = string(topology.APIKeys)

// Managed keys read "ndk_<keyId>_<secret>": 16 and 64 lower-case hex digits.
const (
	keyPrefix    = "ndk_"
	keyIDLen     = 16
	keySecretLen = 64
)

// MaxKeyRotationOverlap bounds how long a rotated key keeps working.
const MaxKeyRotationOverlap = 30 * 24 * time.Hour

// DefaultKeyRotationOverlap is the overlap of a rotation that names none.
const DefaultKeyRotationOverlap = 24 * time.Hour

const maxKeyBody = 16 << 10

// ParseManagedKey splits a managed key "ndk_<keyId>_<secret>"; ok is false
// for anything else (a configured key, garbage).
func ParseManagedKey(s string) (id, secret string, ok bool) {
	rest, ok := strings.CutPrefix(s, keyPrefix)
	if !ok || len(rest) != keyIDLen+1+keySecretLen || rest[keyIDLen] != '_' {
		return "", "", false
	}
	id, secret = rest[:keyIDLen], rest[keyIDLen+1:]
	if !lowerHex(id) || !lowerHex(secret) {
		return "", "", false
	}
	return id, secret, true
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// newManagedKey makes a fresh key: its id, the string shown once, and the
// hash that is stored.
func newManagedKey() (id, key string, hash []byte) {
	id = randomHex(keyIDLen / 2)
	secret := randomHex(keySecretLen / 2)
	h := sha256.Sum256([]byte(secret))
	return id, keyPrefix + id + "_" + secret, h[:]
}

// lookupKey reads a managed key record from the view; nil if there is none
// or it does not decode.
func (s *Server) lookupKey(id string) *schemas.APIKey {
	if s.ManagedKeys == nil {
		return nil
	}
	v, err := s.ManagedKeys.Get(id)
	if err != nil {
		return nil
	}
	return keyRecord(v)
}

func keyRecord(v any) *schemas.APIKey {
	switch k := v.(type) {
	case schemas.Decoded[schemas.APIKey]:
		if k.Err == nil {
			return k.V
		}
	case *schemas.APIKey:
		return k
	}
	return nil
}

// managedPrincipal resolves a managed key: by id, then a constant-time
// comparison of the secret's hash; expired and revoked keys are refused.
func (s *Server) managedPrincipal(token string) *Principal {
	id, secret, ok := ParseManagedKey(token)
	if !ok {
		return nil
	}
	k := s.lookupKey(id)
	if k == nil || k.ID != id {
		return nil
	}
	h := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(h[:], k.Hash) != 1 || keyStatus(k, s.now()) != "active" {
		return nil
	}
	p := &Principal{KeyID: k.ID, Name: k.Name, Tenant: k.Tenant, Scopes: k.Scopes, RateLimit: k.RateLimit, Burst: int(k.Burst)}
	if k.ExpiresAt > 0 {
		p.ExpiresAt = time.UnixMilli(k.ExpiresAt)
	}
	return p
}

func keyStatus(k *schemas.APIKey, now time.Time) string {
	switch {
	case k.RevokedAt > 0:
		return "revoked"
	case k.ExpiresAt > 0 && now.UnixMilli() >= k.ExpiresAt:
		return "expired"
	}
	return "active"
}

// allKeys reads every managed key of every tenant from the view, revoked and
// expired ones included.
func (s *Server) allKeys() ([]*schemas.APIKey, *Error) {
	it, err := s.ManagedKeys.Iterator()
	if err != nil {
		return nil, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: err.Error()}
	}
	defer it.Release()
	var out []*schemas.APIKey
	for it.Next() {
		v, err := it.Value()
		if k := keyRecord(v); err == nil && k != nil && k.ID != "" {
			out = append(out, k)
		}
	}
	return out, nil
}

// keyWrites makes the check and the write of a key's name, and of a
// rotation's predecessor, one step on this process: two requests here
// cannot both take a name or both rotate one key. Two API instances still
// can, within the lag of their views.
var keyWrites sync.Mutex

// checkNameFree refuses (409) a new key's name that another key of tenant
// holds: a configured key, or a managed key that is not revoked (a revoked
// key's name may be used again; an expired key keeps its name until it is
// revoked). Names compare as config.SameKeyName does.
func (s *Server) checkNameFree(tenant, name string) *Error {
	taken := func(id string) *Error {
		return &Error{Status: http.StatusConflict, Code: "conflict", Field: "name", Message: fmt.Sprintf(
			"tenant %q has a key named %q (key %s; names compare ignoring case and spaces): choose another name, or revoke that key first",
			schemas.TenantName(tenant), name, id)}
	}
	if p := s.Keys.named(tenant, name); p != nil {
		return taken(p.KeyID)
	}
	keys, err := s.allKeys()
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k.Tenant == tenant && k.RevokedAt == 0 && config.SameKeyName(k.Name, name) {
			return taken(k.ID)
		}
	}
	return nil
}

// ---- HTTP

type keyBody struct {
	Name      string   `json:"name"`
	Scopes    []string `json:"scopes"`
	Tenant    string   `json:"tenant"`
	ExpiresAt string   `json:"expiresAt"`
	RateLimit *float64 `json:"rateLimit"`
	Burst     *int     `json:"burst"`
}

type keyJSON struct {
	ID        string   `json:"id"`
	Key       string   `json:"key,omitempty"`
	Name      string   `json:"name"`
	Tenant    string   `json:"tenant"`
	Scopes    []string `json:"scopes"`
	Status    string   `json:"status"`
	CreatedAt string   `json:"createdAt"`
	CreatedBy string   `json:"createdBy,omitempty"`
	ExpiresAt string   `json:"expiresAt,omitempty"`
	RevokedAt string   `json:"revokedAt,omitempty"`
	RotatedTo string   `json:"rotatedTo,omitempty"`
	RateLimit float64  `json:"rateLimit,omitempty"`
	Burst     int32    `json:"burst,omitempty"`
	// Replaces and ReplacedExpiresAt answer a rotation: the old key's id and
	// when it stops working.
	Replaces          string `json:"replaces,omitempty"`
	ReplacedExpiresAt string `json:"replacedExpiresAt,omitempty"`
}

func (s *Server) fromKey(k *schemas.APIKey) keyJSON {
	out := keyJSON{ID: k.ID, Name: k.Name, Tenant: schemas.TenantName(k.Tenant), Scopes: k.Scopes,
		Status: keyStatus(k, s.now()), CreatedAt: millis(k.CreatedAt), CreatedBy: k.CreatedBy,
		RotatedTo: k.RotatedTo, Replaces: k.Replaces, RateLimit: k.RateLimit, Burst: k.Burst}
	if out.Scopes == nil {
		out.Scopes = []string{}
	}
	if k.ExpiresAt > 0 {
		out.ExpiresAt = millis(k.ExpiresAt)
	}
	if k.RevokedAt > 0 {
		out.RevokedAt = millis(k.RevokedAt)
	}
	return out
}

func forbidden(format string, args ...any) *Error {
	return &Error{Status: http.StatusForbidden, Code: "forbidden", Message: fmt.Sprintf(format, args...)}
}

func keysUnavailable() *Error {
	return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: "key management is not enabled on this instance"}
}

// createKey: POST /v1/keys. The key is in the answer only; the topic holds its hash.
func (s *Server) createKey(w http.ResponseWriter, r *http.Request) {
	if s.ManagedKeys == nil {
		writeError(w, keysUnavailable())
		return
	}
	var b keyBody
	if err := decode(r, maxKeyBody, &b); err != nil {
		writeError(w, err)
		return
	}
	p := PrincipalFrom(r.Context())
	keyWrites.Lock()
	defer keyWrites.Unlock()
	rec, err := s.newKeyRecord(p, b)
	if err != nil {
		writeError(w, err)
		return
	}
	id, key, hash := newManagedKey()
	rec.ID, rec.Hash = id, hash
	if err := s.putKey(r.Context(), rec); err != nil {
		writeError(w, err)
		return
	}
	noteResource(r.Context(), "keyId", id)
	out := s.fromKey(rec)
	out.Key = key
	writeJSON(w, http.StatusCreated, out)
}

// newKeyRecord checks a key request against its creator: a key is never
// more powerful than the key that creates it (scopes, tenant, expiry, rate),
// and its name, trimmed, is its tenant's only one.
func (s *Server) newKeyRecord(p *Principal, b keyBody) (*schemas.APIKey, *Error) {
	now := s.now()
	rec := &schemas.APIKey{CreatedAt: now.UnixMilli(), CreatedBy: p.KeyID}
	rec.Name = strings.TrimSpace(b.Name)
	if err := checkKeyName(rec.Name); err != nil {
		return nil, err
	}
	scopes, err := grantable(p, b.Scopes)
	if err != nil {
		return nil, err
	}
	rec.Scopes = scopes
	if rec.Tenant, err = keyTenant(p, b.Tenant, "tenant"); err != nil {
		return nil, err
	}
	if rec.ExpiresAt, err = keyExpiry(p, b.ExpiresAt, now); err != nil {
		return nil, err
	}
	rl, burst, err := keyRate(p, b.RateLimit, b.Burst)
	if err != nil {
		return nil, err
	}
	rec.RateLimit, rec.Burst = rl, int32(burst)
	if err := s.checkNameFree(rec.Tenant, rec.Name); err != nil {
		return nil, err
	}
	return rec, nil
}

func checkKeyName(name string) *Error {
	if name == "" || len(name) > 100 {
		return invalid("name", "name is required (spaces around it do not count), at most 100 bytes")
	}
	for _, c := range name {
		if !unicode.IsPrint(c) {
			return invalid("name", "name may not hold control characters")
		}
	}
	return nil
}

// grantable checks that every requested scope is known and held by p.
func grantable(p *Principal, scopes []string) ([]string, *Error) {
	if len(scopes) == 0 {
		return nil, invalid("scopes", "at least one scope is required (known: %s)", strings.Join(allScopes, ", "))
	}
	var out []string
	for i, sc := range scopes {
		if !KnownScope(sc) {
			return nil, invalid(fmt.Sprintf("scopes[%d]", i), "unknown scope %q (known: %s)", sc, strings.Join(allScopes, ", "))
		}
		if !p.Can(sc) {
			return nil, forbidden("this key cannot grant scope %q: it lacks it", sc)
		}
		if !slices.Contains(out, sc) {
			out = append(out, sc)
		}
	}
	sort.Strings(out)
	return out, nil
}

// keyTenant is the stored tenant a request names (p's own when empty);
// another tenant needs the tenants scope.
func keyTenant(p *Principal, name, field string) (string, *Error) {
	if name == "" {
		return p.Tenant, nil
	}
	if !schemas.ValidTenant(name) {
		return "", invalid(field, "tenant %q: want lower-case letters, digits, '_' or '-', at most 63", name)
	}
	t := schemas.NormTenant(name)
	if t != p.Tenant && !p.Can(ScopeTenants) {
		return "", forbidden("this key lacks scope %q: it may only manage keys of tenant %q", ScopeTenants, schemas.TenantName(p.Tenant))
	}
	return t, nil
}

// keyExpiry is a requested expiry in Unix ms; no later than p's own.
func keyExpiry(p *Principal, v string, now time.Time) (int64, *Error) {
	var ms int64
	if v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return 0, invalid("expiresAt", "expiresAt must be an RFC 3339 time: %v", err)
		}
		if !t.After(now) {
			return 0, invalid("expiresAt", "expiresAt must be in the future")
		}
		ms = t.UnixMilli()
	}
	if !p.ExpiresAt.IsZero() {
		limit := p.ExpiresAt.UnixMilli()
		if ms == 0 {
			return limit, nil
		}
		if ms > limit {
			return 0, forbidden("this key expires at %s: it cannot create a key that outlives it", millis(limit))
		}
	}
	return ms, nil
}

// keyRate is a requested rate limit; a limited creator passes on its limit
// and cannot create a key with a higher one.
func keyRate(p *Principal, rl *float64, burst *int) (float64, int, *Error) {
	r, b := p.RateLimit, 0
	if rl != nil {
		r = *rl
		if r < 0 || math.IsNaN(r) || r > 1e6 {
			return 0, 0, invalid("rateLimit", "rateLimit must be between 0 (unlimited) and 1000000 requests per second")
		}
	}
	if burst != nil {
		b = *burst
		if b < 0 || b > 1e6 {
			return 0, 0, invalid("burst", "burst must be between 0 and 1000000")
		}
	} else if rl == nil {
		b = p.Burst
	}
	if p.RateLimit > 0 {
		if r == 0 || r > p.RateLimit || effectiveBurst(r, b) > effectiveBurst(p.RateLimit, p.Burst) {
			return 0, 0, forbidden("this key is limited to %g requests per second (burst %d): it cannot create a key with a higher limit",
				p.RateLimit, effectiveBurst(p.RateLimit, p.Burst))
		}
	}
	return r, b, nil
}

func effectiveBurst(r float64, b int) int {
	if b > 0 {
		return b
	}
	return max(int(math.Ceil(r)), 1)
}

// putKey writes a key record and waits, bounded by WriteWait, until this
// instance's view reads it back, so the key works here at once.
func (s *Server) putKey(ctx context.Context, k *schemas.APIKey) *Error {
	b, err := schemas.APIKeyCodec.Encode(k)
	if err != nil {
		return &Error{Status: http.StatusInternalServerError, Code: "internal", Message: err.Error()}
	}
	err = s.write(ctx, KeysTopic, k.ID, b, func() bool {
		got := s.lookupKey(k.ID)
		return got != nil && bytes.Equal(got.Hash, k.Hash) && got.RevokedAt == k.RevokedAt &&
			got.ExpiresAt == k.ExpiresAt && got.RotatedTo == k.RotatedTo
	})
	if e, ok := err.(*Error); ok {
		return e
	}
	if err != nil {
		return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: err.Error()}
	}
	return nil
}

// listKeys: GET /v1/keys[?tenant=t]; never secrets or hashes.
func (s *Server) listKeys(w http.ResponseWriter, r *http.Request) {
	if s.ManagedKeys == nil {
		writeError(w, keysUnavailable())
		return
	}
	tenant, err := keyTenant(PrincipalFrom(r.Context()), r.URL.Query().Get("tenant"), "tenant")
	if err != nil {
		writeError(w, err)
		return
	}
	it, ierr := s.ManagedKeys.Iterator()
	if ierr != nil {
		writeError(w, &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: ierr.Error()})
		return
	}
	defer it.Release()
	out := []keyJSON{}
	for it.Next() {
		v, err := it.Value()
		if k := keyRecord(v); err == nil && k != nil && k.Tenant == tenant {
			out = append(out, s.fromKey(k))
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].CreatedAt != out[j].CreatedAt {
			return out[i].CreatedAt < out[j].CreatedAt
		}
		return out[i].ID < out[j].ID
	})
	writeJSON(w, http.StatusOK, map[string]any{"keys": out})
}

// visibleKey is the key named by the path, if the caller may see it: its
// own tenant's, or any with the tenants scope. Others are "not found".
func (s *Server) visibleKey(r *http.Request) (*schemas.APIKey, *Error) {
	if s.ManagedKeys == nil {
		return nil, keysUnavailable()
	}
	id := r.PathValue("id")
	p := PrincipalFrom(r.Context())
	k := s.lookupKey(id)
	if k == nil || (k.Tenant != p.Tenant && !p.Can(ScopeTenants)) {
		return nil, notFound("key", id)
	}
	return k, nil
}

// manageable refuses acting on a key more powerful than the caller.
func manageable(p *Principal, k *schemas.APIKey) *Error {
	for _, sc := range k.Scopes {
		if !p.Can(sc) {
			return forbidden("key %s holds scope %q, which this key lacks", k.ID, sc)
		}
	}
	return nil
}

// getKey: GET /v1/keys/{id}.
func (s *Server) getKey(w http.ResponseWriter, r *http.Request) {
	k, err := s.visibleKey(r)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.fromKey(k))
}

// revokeKey: DELETE /v1/keys/{id} writes the key revoked (not a tombstone),
// so every instance refuses it once its view has read the record.
func (s *Server) revokeKey(w http.ResponseWriter, r *http.Request) {
	k, err := s.visibleKey(r)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := manageable(PrincipalFrom(r.Context()), k); err != nil {
		writeError(w, err)
		return
	}
	if k.RevokedAt == 0 {
		revoked := *k
		revoked.RevokedAt = s.now().UnixMilli()
		if err := s.putKey(r.Context(), &revoked); err != nil {
			writeError(w, err)
			return
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

type rotateBody struct {
	Overlap string `json:"overlap"`
}

// rotateKey: POST /v1/keys/{id}/rotate makes a new key with the old one's
// name, scopes, tenant, expiry and limits; the old one expires after the overlap.
func (s *Server) rotateKey(w http.ResponseWriter, r *http.Request) {
	old, err := s.visibleKey(r)
	if err != nil {
		writeError(w, err)
		return
	}
	var b rotateBody
	if r.ContentLength != 0 {
		if err := decode(r, maxKeyBody, &b); err != nil {
			writeError(w, err)
			return
		}
	}
	overlap, err := rotationOverlap(b.Overlap)
	if err != nil {
		writeError(w, err)
		return
	}
	keyWrites.Lock()
	defer keyWrites.Unlock()
	if old, err = s.visibleKey(r); err != nil { // again: another rotation may have just retired it
		writeError(w, err)
		return
	}
	p := PrincipalFrom(r.Context())
	if err := manageable(p, old); err != nil {
		writeError(w, err)
		return
	}
	now := s.now()
	if st := keyStatus(old, now); st != "active" {
		writeError(w, &Error{Status: http.StatusConflict, Code: "conflict", Message: fmt.Sprintf("key %s is %s: only an active key can be rotated", old.ID, st)})
		return
	}
	if old.RotatedTo != "" {
		// In its overlap: a second successor would be a second live key.
		writeError(w, &Error{Status: http.StatusConflict, Code: "conflict", Message: fmt.Sprintf(
			"key %s was already rotated to key %s and works only until %s: rotate key %s instead", old.ID, old.RotatedTo, millis(old.ExpiresAt), old.RotatedTo)})
		return
	}
	next := *old
	id, key, hash := newManagedKey()
	next.ID, next.Hash, next.CreatedAt, next.CreatedBy, next.RotatedTo = id, hash, now.UnixMilli(), p.KeyID, ""
	next.Replaces = old.ID // in the record that creates it: one principal from the start
	if err := s.putKey(r.Context(), &next); err != nil {
		writeError(w, err)
		return
	}
	retired := *old
	retired.RotatedTo = id
	if until := now.Add(overlap).UnixMilli(); retired.ExpiresAt == 0 || until < retired.ExpiresAt {
		retired.ExpiresAt = until
	}
	if err := s.putKey(r.Context(), &retired); err != nil {
		writeError(w, err)
		return
	}
	noteResource(r.Context(), "newKeyId", id)
	out := s.fromKey(&next)
	out.Key, out.Replaces, out.ReplacedExpiresAt = key, old.ID, millis(retired.ExpiresAt)
	writeJSON(w, http.StatusCreated, out)
}

func rotationOverlap(v string) (time.Duration, *Error) {
	if v == "" {
		return DefaultKeyRotationOverlap, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > MaxKeyRotationOverlap {
		return 0, invalid("overlap", "overlap must be a duration from 0s to 720h (30 days), e.g. \"24h\"")
	}
	return d, nil
}
