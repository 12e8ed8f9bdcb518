package service_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/notifyd/notifyd/service"
	"github.com/notifyd/notifyd/sinks/smtptest"
)

func masterKey(id string, b byte) string {
	return id + ":" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{b}, 32))
}

// A master key rotation without downtime, as docs/SECURITY.md describes it:
// data sealed under m1; an instance configured with m2 (current) and m1 keeps
// reading it and sealing new data; the rewrap moves every tenant key under m2;
// then an instance with m2 alone reads everything, old and new. Before the
// rewrap, m2 alone cannot: the test would pass vacuously otherwise.
func TestMasterKeyRotationWithoutDowntime(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	smtpSrv, err := smtptest.Start(smtptest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(smtpSrv.Close)
	m1, m2 := masterKey("m1", 1), masterKey("m2", 2)
	instance := func(keys string) *harness {
		h := &harness{t: t, smtp: smtpSrv, cfg: testConfig(t, smtpSrv, nil)}
		h.cfg.Kafka.Brokers = cluster.ListenAddrs()
		h.cfg.Encryption.MasterKeys = keys
		h.start()
		return h
	}
	profile := func(h *harness, user string) (int, map[string]any) {
		return h.call("GET", "/v1/profiles/"+user, nil)
	}

	a := instance(m1)
	a.mustCall(http.StatusOK, "PUT", "/v1/profiles/old-user", map[string]any{"email": "old@example.com"})
	a.stop()

	b := instance(m2 + "," + m1) // step 1: the new key current, the old one still readable
	if code, p := profile(b, "old-user"); code != http.StatusOK || p["email"] != "old@example.com" {
		t.Fatalf("m2,m1 reading m1's data: %d %v", code, p)
	}
	b.mustCall(http.StatusOK, "PUT", "/v1/profiles/new-user", map[string]any{"email": "new@example.com"})
	b.stop()

	// m2 alone before the rewrap: the tenant key is still wrapped by m1.
	c := instance(m2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if code, _ := profile(c, "old-user"); code == http.StatusOK {
		t.Fatal("m2 alone read data whose tenant key m1 wraps, before any rewrap")
	}
	c.stop()

	cfg := testConfig(t, smtpSrv, nil)
	cfg.Encryption.MasterKeys = m2 + "," + m1
	n, err := service.RewrapKeys(ctx, cfg, cluster.ListenAddrs()) // step 2
	if err != nil || n != 1 {
		t.Fatalf("rewrap: %d tenant keys, %v; want 1 (the default tenant's)", n, err)
	}
	if n, err := service.RewrapKeys(ctx, cfg, cluster.ListenAddrs()); err != nil || n != 0 {
		t.Fatalf("second rewrap: %d, %v; want 0", n, err)
	}

	d := instance(m2) // step 3: the old key gone
	for user, email := range map[string]string{"old-user": "old@example.com", "new-user": "new@example.com"} {
		if code, p := profile(d, user); code != http.StatusOK || p["email"] != email {
			t.Fatalf("m2 alone after the rewrap, %s: %d %v", user, code, p)
		}
	}
	cfg.Encryption.MasterKeys = ""
	if _, err := service.RewrapKeys(ctx, cfg, cluster.ListenAddrs()); err == nil || !strings.Contains(err.Error(), "masterKeys") {
		t.Fatalf("rewrap without master keys: %v", err)
	}
}
