package schemas

import (
	"regexp"
	"strings"
)

// DefaultTenant is how the API names the tenant "" that records written
// before tenants existed, and keys configured without a tenant, belong to.
const DefaultTenant = "default"

// TenantSep separates the tenant from an id in a tenant-qualified key. Ids
// (userId, template, eventId) may not contain it, so a qualified key cannot
// be forged by choosing an id.
const TenantSep = "|"

var tenantPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ValidTenant tells whether t may name a tenant ("default" included).
func ValidTenant(t string) bool { return tenantPattern.MatchString(t) }

// NormTenant maps the API's name of the default tenant to its stored form "".
func NormTenant(t string) string {
	if t == DefaultTenant {
		return ""
	}
	return t
}

// TenantName is how the API shows a stored tenant ("" is "default").
func TenantName(t string) string {
	if t == "" {
		return DefaultTenant
	}
	return t
}

// TenantKey is the Kafka key and table key of id (a userId, template id or
// eventId) in tenant t: id itself in the default tenant, so records written
// before tenants existed keep their keys, and "t|id" in any other.
func TenantKey(t, id string) string {
	t = NormTenant(t)
	if t == "" {
		return id
	}
	return t + TenantSep + id
}

// SplitTenantKey undoes TenantKey.
func SplitTenantKey(key string) (tenant, id string) {
	if t, rest, ok := strings.Cut(key, TenantSep); ok {
		return t, rest
	}
	return "", key
}
