package crypt_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/notifyd/notifyd/crypt"
)

func b64(fill byte) string { return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{fill}, 32)) }

func TestParseMasterKeys(t *testing.T) {
	m, err := crypt.ParseMasterKeys(" m2:" + b64(2) + ", m1:" + strings.TrimRight(base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 32)), "="))
	if err != nil {
		t.Fatal(err)
	}
	if m.Current() != "m2" || fmt.Sprint(m.IDs()) != "[m2 m1]" {
		t.Fatalf("current %s, ids %v", m.Current(), m.IDs())
	}
	bad := map[string]string{
		"":                                   "none configured",
		"m1":                                 "want id:base64",
		"m1:" + b64(1)[:20]:                  "bytes, want 32",
		"m1:%%%":                             "not base64",
		"m1:" + b64(0):                       "all zero",
		"m1:" + b64(1) + ",m1:" + b64(2):     "appears twice",
		"m 1:" + b64(1):                      "want 1-64",
		strings.Repeat("m1:"+b64(1)+",", 17): "at most",
	}
	for in, want := range bad {
		if _, err := crypt.ParseMasterKeys(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.40q: %v, want an error with %q", in, err, want)
		}
	}
}

func TestNewMasterKeysNeedsCurrent(t *testing.T) {
	k, err := crypt.DecodeMasterKey("m1", b64(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := crypt.NewMasterKeys("m2", k); err == nil || !strings.Contains(err.Error(), `current "m2"`) {
		t.Fatalf("got %v", err)
	}
}

// Master keys are secrets: printing or logging them shows ids only.
func TestMasterKeysNeverPrintKeys(t *testing.T) {
	m, err := crypt.ParseMasterKeys("m1:" + b64(0x41))
	if err != nil {
		t.Fatal(err)
	}
	k, _ := crypt.DecodeMasterKey("m1", b64(0x41))
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("config", "masters", m, "key", k)
	out := fmt.Sprintf("%v %s %+v %#v %v %s %+v %#v", m, m, m, m, k, k, k, k) + logged.String()
	if strings.Contains(out, "65 65") || strings.Contains(out, "0x41") || strings.Contains(out, b64(0x41)) || !strings.Contains(out, "m1") {
		t.Fatalf("printed: %s", out)
	}
}

func FuzzParseMasterKeys(f *testing.F) {
	f.Add("m2:" + b64(2) + ",m1:" + b64(1))
	f.Add("m1:" + b64(1))
	f.Add("m1:" + b64(1) + ",m1:" + b64(1))
	f.Add(":,:")
	f.Add("m1:" + b64(0))
	f.Add("a:YQ==")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := crypt.ParseMasterKeys(s)
		if err != nil {
			return
		}
		ids := m.IDs()
		if len(ids) == 0 || ids[0] != m.Current() {
			t.Fatalf("%q: current %q of %v", s, m.Current(), ids)
		}
		seen := map[string]bool{}
		for _, id := range ids {
			if seen[id] || id == "" || strings.ContainsAny(id, ":, ") {
				t.Fatalf("%q: bad ids %v", s, ids)
			}
			seen[id] = true
		}
		if _, err := crypt.NewMasterKeys(m.Current()); err == nil {
			t.Fatal("no keys accepted")
		}
	})
}
