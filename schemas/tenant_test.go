package schemas_test

import (
	"strings"
	"testing"

	"github.com/notifyd/notifyd/schemas"
)

// The attack of the review: a default-tenant caller names "acme|ub". Its key
// must not be acme's "ub", whatever route or record the id came through.
func TestTenantKeyAnIdCannotNameAnotherTenantsRecord(t *testing.T) {
	acme := schemas.TenantKey("acme", "ub")
	for _, id := range []string{"acme|ub", "acme%7Cub", "acme%7cub", "acme||ub", "|acme|ub"} {
		k := schemas.TenantKey("", id)
		if k == acme || strings.Contains(k, schemas.TenantSep) {
			t.Fatalf("default-tenant id %q has key %q (acme's ub is %q)", id, k, acme)
		}
		if tenant, got := schemas.SplitTenantKey(k); tenant != "" || got != id {
			t.Fatalf("SplitTenantKey(%q) = %q, %q; want the default tenant's %q", k, tenant, got, id)
		}
	}
	// A tenant's id cannot name a third tenant's record either.
	if schemas.TenantKey("globex", "x|acme|ub") == acme || schemas.TenantKey("globex", "acme|ub") == acme {
		t.Fatal("a tenant's id named another tenant's key")
	}
}

// Every id notifyd accepts keeps the key it had before the escaping: no
// stored record, and no data key's subject, changes.
func TestTenantKeyOfValidIdsIsUnchanged(t *testing.T) {
	for _, tc := range []struct{ tenant, id, want string }{
		{"", "u1", "u1"},
		{"default", "u1", "u1"},
		{"acme", "u1", "acme|u1"},
		{"acme", "ann@example.com", "acme|ann@example.com"},
		{"acme", "a/b:c=d+e.f-g", "acme|a/b:c=d+e.f-g"},
		{"acme", "campaign:spring", "acme|campaign:spring"},
	} {
		if got := schemas.TenantKey(tc.tenant, tc.id); got != tc.want {
			t.Errorf("TenantKey(%q, %q) = %q, want %q", tc.tenant, tc.id, got, tc.want)
		}
	}
	if got := schemas.TenantMemberKey("acme", "topic:news", "u1"); got != "acme|topic:news|u1" {
		t.Errorf("member key %q", got)
	}
	if got := schemas.TenantMemberKey("", "list:vip", "u1"); got != "list:vip|u1" {
		t.Errorf("default member key %q", got)
	}
}

func TestTenantPrefixAndInTenant(t *testing.T) {
	keys := map[string]string{
		schemas.TenantKey("", "u1"):        "",
		schemas.TenantKey("", "acme|u1"):   "",
		schemas.TenantKey("acme", "u1"):    "acme",
		schemas.TenantKey("acme", "x|y"):   "acme",
		schemas.TenantKey("acme-2", "u1"):  "acme-2",
		schemas.TenantKey("acm", "e|u1"):   "acm",
		schemas.TenantKey("default", "u2"): "",
	}
	for key, owner := range keys {
		for _, tenant := range []string{"", "acme", "acme-2", "acm"} {
			if got := schemas.InTenant(key, tenant); got != (owner == tenant) {
				t.Errorf("InTenant(%q, %q) = %v, owner is %q", key, tenant, got, owner)
			}
			if p := schemas.TenantPrefix(tenant); tenant != "" && strings.HasPrefix(key, p) != (owner == tenant) {
				t.Errorf("prefix %q of %q matches %q (owner %q)", p, tenant, key, owner)
			}
		}
	}
}

func TestMemberKeys(t *testing.T) {
	for _, tc := range []struct{ tenant, set, member string }{
		{"", "topic:news", "u1"}, {"acme", "topic:news", "u1"}, {"acme", "list:l", "a|b"}, {"", "list:l", "%7C"},
	} {
		k := schemas.TenantMemberKey(tc.tenant, tc.set, tc.member)
		if !strings.HasPrefix(k, schemas.TenantMemberPrefix(tc.tenant, tc.set)) {
			t.Errorf("%q is not under its set's prefix", k)
		}
		if got := schemas.MemberOfKey(k); got != tc.member {
			t.Errorf("MemberOfKey(%q) = %q, want %q", k, got, tc.member)
		}
	}
}

// FuzzTenantKey: no two (tenant, id) pairs map to the same key, and no id
// round-trips into another tenant.
func FuzzTenantKey(f *testing.F) {
	for _, s := range [][4]string{
		{"", "acme|ub", "acme", "ub"}, {"", "acme%7Cub", "acme", "ub"}, {"default", "x", "", "x"}, {"", "a#0000000001", "", "a"},
		{"a|b", "c", "a", "b|c"}, {"", "%", "", "%25"}, {"acme", "", "", "acme|"}, {"x", "%7C", "x", "|"},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, t1, id1, t2, id2 string) {
		k1, k2 := schemas.TenantKey(t1, id1), schemas.TenantKey(t2, id2)
		same := schemas.NormTenant(t1) == schemas.NormTenant(t2) && id1 == id2
		if (k1 == k2) != same {
			t.Fatalf("TenantKey(%q, %q) = %q and TenantKey(%q, %q) = %q", t1, id1, k1, t2, id2, k2)
		}
		for _, c := range []struct{ tenant, id, key string }{{t1, id1, k1}, {t2, id2, k2}} {
			tenant, id := schemas.SplitTenantKey(c.key)
			if tenant != schemas.NormTenant(c.tenant) || id != c.id {
				t.Fatalf("SplitTenantKey(%q) = %q, %q; made from %q, %q", c.key, tenant, id, c.tenant, c.id)
			}
			if !schemas.InTenant(c.key, c.tenant) {
				t.Fatalf("%q is not in its own tenant %q", c.key, c.tenant)
			}
		}
		if schemas.NormTenant(t1) != schemas.NormTenant(t2) && schemas.InTenant(k1, t2) {
			t.Fatalf("%q of tenant %q is in tenant %q", k1, t1, t2)
		}
		m1, m2 := schemas.TenantMemberKey(t1, id1, id2), schemas.TenantMemberKey(t2, id2, id1)
		if m1 == m2 && !(schemas.NormTenant(t1) == schemas.NormTenant(t2) && id1 == id2) {
			t.Fatalf("member keys collide: %q", m1)
		}
		if got := schemas.MemberOfKey(m1); got != id2 {
			t.Fatalf("MemberOfKey(%q) = %q, want %q", m1, got, id2)
		}
		// A template's versions sort under its prefix and under no other's.
		v1 := schemas.TemplateVersionKey(t1, id1, int64(len(id2)))
		if !strings.HasPrefix(v1, schemas.TemplateVersionPrefix(t1, id1)) {
			t.Fatalf("%q is not under its template's prefix", v1)
		}
		if !same && strings.HasPrefix(v1, schemas.TemplateVersionPrefix(t2, id2)) {
			t.Fatalf("version key %q of (%q, %q) is under the prefix of (%q, %q)", v1, t1, id1, t2, id2)
		}
	})
}
