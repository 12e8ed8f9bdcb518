package schemas

import (
	"fmt"
	"regexp"
	"strings"
)

// DefaultTenant is how the API names the tenant "" that records written
// before tenants existed, and keys configured without a tenant, belong to.
const DefaultTenant = "default"

// TenantSep separates the tenant from an id in a storage key (TenantKey).
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

// Storage keys.
//
// TenantKey is the one constructor of the key under which a tenant's record
// is stored: its Kafka key (ingest, accepted, profiles, templates, template
// versions, campaigns, schedules, inbox, feedback), its key in every goka
// table and view, and the subject of a user's data key. Every route, group
// and view makes keys with it (or with TenantMemberKey and TenantPrefix,
// built on it), so whatever a caller, a record or a producer names as an id,
// the key stays inside the caller's tenant:
//
//   - the parts are escaped ('%' → "%25", '|' → "%7C", '#' → "%23"), so no
//     part holds the separator (nor '#', which ends a template's key in its
//     version keys): a default-tenant key has none, a tenant t's key starts with
//     t and one separator, and no id can name another tenant's key ("acme|ub"
//     in the default tenant is stored under "acme%7Cub", not acme's "ub");
//   - the escaping is the identity on every id notifyd has ever accepted
//     (ValidID allows neither character), so the keys of existing records do
//     not change: nothing is migrated, and no data key's subject — which
//     every sealed value authenticates — is renamed.
//
// The API also refuses such ids outright (400 naming the field); the
// escaping is what makes a missed check harmless rather than a hole.
func TenantKey(t, id string) string {
	t = NormTenant(t)
	if t == "" {
		return escapeKeyPart(id)
	}
	return escapeKeyPart(t) + TenantSep + escapeKeyPart(id)
}

// TenantPrefix starts every key TenantKey makes in tenant t (a non-default
// tenant) and no key of another tenant. The default tenant's keys have no
// prefix: they are the keys without a separator (see InTenant).
func TenantPrefix(t string) string {
	t = NormTenant(t)
	if t == "" {
		return ""
	}
	return escapeKeyPart(t) + TenantSep
}

// InTenant tells whether key, made by TenantKey, belongs to tenant t.
func InTenant(key, t string) bool {
	if t = NormTenant(t); t == "" {
		return !strings.Contains(key, TenantSep)
	}
	return strings.HasPrefix(key, TenantPrefix(t))
}

// SplitTenantKey undoes TenantKey.
func SplitTenantKey(key string) (tenant, id string) {
	if t, rest, ok := strings.Cut(key, TenantSep); ok {
		return unescapeKeyPart(t), unescapeKeyPart(rest)
	}
	return "", unescapeKeyPart(key)
}

// TenantMemberKey is the key of member in set (a topic's subscriber, a
// list's member): TenantKey(t, set), a separator and the escaped member, so
// every member of a set sorts under TenantMemberPrefix(t, set).
func TenantMemberKey(t, set, member string) string {
	return TenantMemberPrefix(t, set) + escapeKeyPart(member)
}

// TenantMemberPrefix starts the key of every member of set in tenant t.
func TenantMemberPrefix(t, set string) string { return TenantKey(t, set) + TenantSep }

// MemberOfKey is the member a TenantMemberKey names.
func MemberOfKey(key string) string {
	if i := strings.LastIndex(key, TenantSep); i >= 0 {
		key = key[i+1:]
	}
	return unescapeKeyPart(key)
}

// TemplateVersionKey is the key of version n of template id on
// notify.template.versions: the template's key, '#' and n in ten digits, so
// a template's versions sort together, in order, under
// TemplateVersionPrefix.
func TemplateVersionKey(t, id string, n int64) string {
	return TemplateVersionPrefix(t, id) + fmt.Sprintf("%010d", n)
}

// TemplateVersionPrefix starts the key of every version of template id.
func TemplateVersionPrefix(t, id string) string { return TenantKey(t, id) + "#" }

var (
	keyEscaper   = strings.NewReplacer("%", "%25", TenantSep, "%7C", "#", "%23")
	keyUnescaper = strings.NewReplacer("%25", "%", "%7C", TenantSep, "%23", "#")
)

// escapeKeyPart escapes the separators and the escape character; the fast
// path is the identity, for every valid id.
func escapeKeyPart(s string) string {
	if !strings.ContainsAny(s, "%#"+TenantSep) {
		return s
	}
	return keyEscaper.Replace(s)
}

func unescapeKeyPart(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	return keyUnescaper.Replace(s)
}
