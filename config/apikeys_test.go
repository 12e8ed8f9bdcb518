package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Each configured key is the principal config:<name>, the root of its own
// lineage: a second key with the same name (ignoring case and spaces, in
// any tenant) or the same secret would be the same approver, so the
// configuration is refused, from a file or from NOTIFYD_API_KEYS, without
// quoting a secret.
func TestConfiguredKeyNamesAndSecretsAreUnique(t *testing.T) {
	files := map[string]string{
		"same name":      "apiKeys: [{name: ops, key: first-secret-1}, {name: ops, key: second-secret-2}]",
		"trailing space": "apiKeys: [{name: ops, key: first-secret-1}, {name: 'ops ', key: second-secret-2}]",
		"case, tenant":   "apiKeys: [{name: ops, key: first-secret-1}, {name: OPS, key: second-secret-2, tenant: acme}]",
		"same secret":    "apiKeys: [{name: ops, key: first-secret-1}, {name: dev, key: first-secret-1}]",
		"blank name":     "apiKeys: [{name: '  ', key: first-secret-1}]",
	}
	for name, body := range files {
		path := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path, env(nil))
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "secret-") {
			t.Errorf("%s: the error quotes a secret: %v", name, err)
		}
	}
	_, err := Load("", env(map[string]string{"NOTIFYD_API_KEYS": "ops:first-secret-1, ops :second-secret-2"}))
	if err == nil || !strings.Contains(err.Error(), "same name") || strings.Contains(err.Error(), "secret-") {
		t.Errorf("NOTIFYD_API_KEYS with one name twice: %v", err)
	}
	if _, err := Load("", env(map[string]string{"NOTIFYD_API_KEYS": "ops:first-secret-1,ops-2:second-secret-2"})); err != nil {
		t.Errorf("distinct keys: %v", err)
	}
	if !SameKeyName(" Lead  Team", "lead team") || SameKeyName("lead", "lead2") || SameKeyName("leadteam", "lead team") {
		t.Error("SameKeyName")
	}
}
