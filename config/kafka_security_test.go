package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned writes a self-signed certificate and its key as PEM files.
func selfSigned(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for path, block := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "EC PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

func TestKafkaSecurityFromFileAndEnv(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t, dir)
	path := filepath.Join(dir, "notifyd.yaml")
	body := fmt.Sprintf(`
kafka:
  brokers: [kafka-1:9093]
  security:
    tls: {enabled: true, caFile: %q, certFile: %q, keyFile: %q, serverName: kafka.internal}
    sasl: {mechanism: SCRAM-SHA-512, username: notifyd}
`, cert, cert, key)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path, env(map[string]string{"NOTIFYD_KAFKA_SASL_PASSWORD": "from-env-secret"}))
	if err != nil {
		t.Fatal(err)
	}
	sec := cfg.Kafka.Security
	if sec.SASL != (KafkaSASL{Mechanism: SASLScramSHA512, Username: "notifyd", Password: "from-env-secret"}) {
		t.Fatalf("sasl = %v", sec.SASL)
	}
	tlsCfg, err := sec.TLS.Load()
	if err != nil {
		t.Fatal(err)
	}
	if tlsCfg.ServerName != "kafka.internal" || tlsCfg.RootCAs == nil || len(tlsCfg.Certificates) != 1 {
		t.Fatalf("tls config not built from the file: %+v", tlsCfg)
	}
	// Without the env password the SCRAM section is incomplete.
	if _, err := Load(path, env(nil)); err == nil || !strings.Contains(err.Error(), "NOTIFYD_KAFKA_SASL_PASSWORD") {
		t.Fatalf("want an error pointing at the password env var, got %v", err)
	}
}

func TestKafkaSecurityValidation(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t, dir)
	missing := filepath.Join(dir, "missing-ca.pem")
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	const secret = "hunter2-secret"
	for _, tc := range []struct {
		name string
		sec  KafkaSecurity
		want string // in the error; "" = valid
	}{
		{"none", KafkaSecurity{}, ""},
		{"scram", KafkaSecurity{SASL: KafkaSASL{Mechanism: SASLScramSHA256, Username: "u", Password: secret}}, ""},
		{"plain over tls", KafkaSecurity{TLS: KafkaTLS{Enabled: true, CAFile: cert},
			SASL: KafkaSASL{Mechanism: SASLPlain, Username: "u", Password: secret}}, ""},
		{"mutual tls", KafkaSecurity{TLS: KafkaTLS{Enabled: true, CertFile: cert, KeyFile: key}}, ""},
		{"unknown mechanism", KafkaSecurity{SASL: KafkaSASL{Mechanism: "GSSAPI", Username: "u", Password: secret}},
			`unknown mechanism "GSSAPI" (want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)`},
		{"lower-case mechanism", KafkaSecurity{SASL: KafkaSASL{Mechanism: "scram-sha-256", Username: "u", Password: secret}},
			"unknown mechanism"},
		{"mechanism without password", KafkaSecurity{SASL: KafkaSASL{Mechanism: SASLPlain, Username: "u"}},
			"PLAIN needs username and password"},
		{"credentials without mechanism", KafkaSecurity{SASL: KafkaSASL{Username: "u", Password: secret}},
			"mechanism is empty"},
		{"missing ca", KafkaSecurity{TLS: KafkaTLS{Enabled: true, CAFile: missing}}, missing},
		{"ca without pem", KafkaSecurity{TLS: KafkaTLS{Enabled: true, CAFile: garbage}}, garbage + ": no PEM certificate"},
		{"cert without key", KafkaSecurity{TLS: KafkaTLS{Enabled: true, CertFile: cert}}, "certFile and keyFile go together"},
		{"key without cert", KafkaSecurity{TLS: KafkaTLS{Enabled: true, KeyFile: key}}, "certFile and keyFile go together"},
		{"missing cert file", KafkaSecurity{TLS: KafkaTLS{Enabled: true, CertFile: missing, KeyFile: key}}, missing},
		{"files but tls off", KafkaSecurity{TLS: KafkaTLS{CAFile: cert}}, "tls.enabled is false"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.sec.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error containing %q, got %v", tc.want, err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error reveals the password: %v", err)
			}
			// Load refuses it the same way.
			c := Default()
			c.Kafka.Security = tc.sec
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Config.Validate: want %q, got %v", tc.want, err)
			}
		})
	}
}

func TestKafkaSASLNeverPrintsThePassword(t *testing.T) {
	const secret = "do-not-print-me"
	c := Default()
	c.Kafka.Security.SASL = KafkaSASL{Mechanism: SASLPlain, Username: "u", Password: secret}
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("config", "sasl", c.Kafka.Security.SASL)
	for _, out := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c.Kafka), logged.String()} {
		if strings.Contains(out, secret) {
			t.Fatalf("password printed: %s", out)
		}
		if !strings.Contains(out, "redacted") {
			t.Fatalf("sasl section not shown redacted: %s", out)
		}
	}
}

// The CA file is read from operator-supplied bytes: any content is an error or
// a pool, never a panic.
func FuzzKafkaTLSCAFile(f *testing.F) {
	cert, _ := selfSigned(f, f.TempDir())
	good, err := os.ReadFile(cert)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, pemBytes []byte) {
		path := filepath.Join(t.TempDir(), "ca.pem")
		if err := os.WriteFile(path, pemBytes, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := KafkaTLS{Enabled: true, CAFile: path}.Load()
		if err == nil && cfg.RootCAs == nil {
			t.Fatal("accepted a CA file without building a pool")
		}
		if err != nil && !strings.Contains(err.Error(), path) {
			t.Fatalf("error does not name the file: %v", err)
		}
	})
}
