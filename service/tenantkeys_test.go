package service_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/topology"
)

const (
	defaultReaderKey = "key-default-profiles-read"
	defaultWriterKey = "key-default-profiles-write"
	defaultTmplKey   = "key-default-templates"
)

// rawCall sends a request whose target is written as it is, unencoded: the
// way a hostile client sends "acme|ub", which Go's client would escape.
func (h *harness) rawCall(key, method, target, body string) (int, map[string]any, string) {
	h.t.Helper()
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(h.base, "http://"), 5*time.Second)
	if err != nil {
		h.t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: notifyd\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		method, target, key, len(body), body)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out, string(raw)
}

// errorField is the field an error answer names.
func errorField(out map[string]any) string {
	e, _ := out["error"].(map[string]any)
	f, _ := e["field"].(string)
	return f
}

// The review's reproduction of finding 1: a default-tenant key reached
// another tenant's records by naming "acme|ub" ("acme%7Cub"). Each attack
// now answers 400 naming the id, reads and changes nothing of acme's, and
// acme's user is neither shown nor crypto-shredded.
func TestDefaultTenantCannotReachAnotherTenantThroughTheSeparator(t *testing.T) {
	h := newHarness(t)
	h.cfg.APIKeys = append(h.cfg.APIKeys,
		config.APIKey{Name: "acme", Key: acmeKey, Tenant: "acme", Scopes: []string{"admin"}},
		config.APIKey{Name: "reader", Key: defaultReaderKey, Scopes: []string{"profiles:read"}},
		config.APIKey{Name: "writer", Key: defaultWriterKey, Scopes: []string{"profiles:write"}},
		config.APIKey{Name: "templates", Key: defaultTmplKey, Scopes: []string{"templates:read", "templates:write"}})
	h.start()
	h.as(acmeKey, http.StatusOK, "PUT", "/v1/profiles/ub", map[string]any{"email": "ub@acme.example", "phone": "+14155550100"})
	h.as(acmeKey, http.StatusOK, "PUT", "/v1/templates/welcome", map[string]any{"category": "account",
		"channels": map[string]any{"email": map[string]any{"subject": "acme welcome", "text": "hi"}}})

	attacks := []struct{ key, method, id, path, body string }{
		{defaultReaderKey, "GET", "userId", "/v1/profiles/%s", ""},
		{defaultWriterKey, "DELETE", "userId", "/v1/profiles/%s", ""},
		{defaultWriterKey, "PUT", "userId", "/v1/profiles/%s", `{"email": "attacker@example.com"}`},
		{defaultTmplKey, "GET", "id", "/v1/templates/%s", ""},
		{defaultTmplKey, "POST", "id", "/v1/templates/%s/preview", `{"channel": "email"}`},
		{defaultTmplKey, "DELETE", "id", "/v1/templates/%s", ""},
		{defaultTmplKey, "PUT", "id", "/v1/templates/%s", `{"channels": {"email": {"subject": "x", "text": "x"}}}`},
	}
	for _, a := range attacks {
		victim := "ub"
		if strings.Contains(a.path, "templates") {
			victim = "welcome"
		}
		for _, id := range []string{"acme%7C" + victim, "acme%7c" + victim, "acme|" + victim} {
			code, out, raw := h.rawCall(a.key, a.method, fmt.Sprintf(a.path, id), a.body)
			if code != http.StatusBadRequest || errorField(out) != a.id {
				t.Fatalf("%s %s: %d %s, want 400 naming %s", a.method, fmt.Sprintf(a.path, id), code, raw, a.id)
			}
			if strings.Contains(raw, "ub@acme.example") || strings.Contains(raw, "acme welcome") {
				t.Fatalf("%s %s answered acme's data: %s", a.method, id, raw)
			}
		}
	}
	// acme's records are as they were: readable (not erased), unchanged.
	if p := h.as(acmeKey, http.StatusOK, "GET", "/v1/profiles/ub", nil); p["email"] != "ub@acme.example" || p["phone"] != "+14155550100" {
		t.Fatalf("acme's profile after the attacks: %v", p)
	}
	if tm := h.as(acmeKey, http.StatusOK, "GET", "/v1/templates/welcome", nil); tm["channels"].(map[string]any)["email"].(map[string]any)["subject"] != "acme welcome" {
		t.Fatalf("acme's template after the attacks: %v", tm)
	}
	// The default tenant's own namespace holds nothing under those names.
	h.as(defaultReaderKey, http.StatusNotFound, "GET", "/v1/profiles/ub", nil)
}

// hostileIDs are path segments, written raw into the request target, that
// hold a separator or a character no id may hold, and the tenant they aim at.
func hostileIDs(other string) []string {
	return []string{
		other + "%7Cub", other + "|ub", other + "%7cub", "%7C", other + "%7C", "%7Cub",
		other + "%257Cub", // "%7C" once decoded: an escaped separator
		other + "%00ub", other + "%0Aub", other + "%0D%0Aub", other + "%FFub", other + "%20ub",
		other + "%5Cub", other + "%23ub", other + "%3Fub", other + "%25",
	}
}

// Every route of the API, from every tenant (the default included), refuses
// an id holding '|', "%7C" or another separator in any of its path
// wildcards: 400 naming the wildcard (tokens, which are not ids: 404). The
// walk takes the routes from the API itself, so a route added later is
// walked too. Nothing is written to any data topic, and the other tenants'
// records stay as they were.
func TestEveryRouteRefusesSeparatorsInIdsFromEveryTenant(t *testing.T) {
	h := newHarness(t)
	h.cfg.APIKeys = append(h.cfg.APIKeys,
		config.APIKey{Name: "acme", Key: acmeKey, Tenant: "acme", Scopes: []string{"admin"}},
		config.APIKey{Name: "globex", Key: globexKey, Tenant: "globex", Scopes: []string{"admin"}})
	withInbox(&h.cfg)
	h.cfg.Tracking.BaseURL = "http://t.example.test"
	h.cfg.Campaigns.Step = 200 * time.Millisecond
	h.start()
	tenants := []struct{ name, key, other string }{{"default", testKey, "acme"}, {"acme", acmeKey, "globex"}, {"globex", globexKey, "acme"}}
	for _, tn := range tenants {
		h.as(tn.key, http.StatusOK, "PUT", "/v1/profiles/ub", map[string]any{"email": "ub@" + tn.name + ".example"})
		h.as(tn.key, http.StatusOK, "PUT", "/v1/templates/ub", map[string]any{"category": "account",
			"channels": map[string]any{"email": map[string]any{"subject": tn.name + " subject", "text": "hi"}}})
	}
	routes := h.svc.APIRoutes()
	if len(routes) < 50 {
		t.Fatalf("the API registered %d routes: %v", len(routes), routes)
	}
	ends := func() map[string]int64 {
		t.Helper()
		adm := kadm.NewClient(h.producer())
		out := map[string]int64{}
		for _, topic := range []string{string(topology.Ingest), string(topology.Accepted), string(topology.Profiles),
			string(topology.Templates), string(topology.Audiences), string(topology.Campaigns), string(topology.Cancels),
			string(topology.Schedules), string(topology.InboxCommands), string(topology.DataKeys), string(topology.APIKeys)} {
			o, err := adm.ListEndOffsets(context.Background(), topic)
			if err != nil {
				t.Fatal(err)
			}
			o.Each(func(l kadm.ListedOffset) { out[fmt.Sprintf("%s/%d", l.Topic, l.Partition)] = l.Offset })
		}
		return out
	}
	before := ends()

	walked := 0
	for _, tn := range tenants {
		inboxToken := h.as(tn.key, http.StatusOK, "GET", "/v1/inbox/u1/token", nil)["token"].(string)
		for _, route := range routes {
			method, path, _ := strings.Cut(route, " ")
			wildcards := wildcardsOf(path)
			for _, target := range wildcards {
				for _, bad := range hostileIDs(tn.other) {
					target := target
					url := path
					for _, w := range wildcards {
						v := map[string]string{"op": "read", "provider": "smtp-main"}[w]
						if v == "" {
							v = "u1"
						}
						if w == target {
							v = bad
						}
						url = strings.Replace(url, "{"+w+"}", v, 1)
					}
					key := tn.key
					if strings.HasPrefix(path, "/v1/inbox/") && !strings.HasSuffix(path, "/token") {
						key = inboxToken
					}
					code, out, raw := h.rawCall(key, method, url, "{}")
					walked++
					if target == "token" {
						if code != http.StatusNotFound {
							t.Errorf("%s: %s %s: %d %s, want 404", tn.name, method, url, code, raw)
						}
						continue
					}
					if code != http.StatusBadRequest || errorField(out) != target {
						t.Errorf("%s: %s %s: %d %s, want 400 naming %q", tn.name, method, url, code, raw, target)
					}
				}
			}
		}
	}
	if walked < 500 {
		t.Fatalf("walked %d requests", walked)
	}
	if after := ends(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a refused request wrote to a data topic:\nbefore %v\nafter  %v", before, after)
	}
	for _, tn := range tenants {
		if p := h.as(tn.key, http.StatusOK, "GET", "/v1/profiles/ub", nil); p["email"] != "ub@"+tn.name+".example" {
			t.Fatalf("%s's profile: %v", tn.name, p)
		}
		if tm := h.as(tn.key, http.StatusOK, "GET", "/v1/templates/ub", nil); tm["channels"].(map[string]any)["email"].(map[string]any)["subject"] != tn.name+" subject" {
			t.Fatalf("%s's template: %v", tn.name, tm)
		}
	}
}

// wildcardsOf lists the {names} of a route's path, in order.
func wildcardsOf(path string) []string {
	var out []string
	for _, seg := range strings.Split(path, "/") {
		if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") {
			out = append(out, strings.TrimSuffix(strings.Trim(seg, "{}"), "..."))
		}
	}
	return out
}
