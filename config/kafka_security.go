package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
)

// SASL mechanisms notifyd speaks to external brokers.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
)

// KafkaSecurity is how notifyd authenticates to external brokers and protects
// the connection (kafka.security). Every Kafka client of the process uses it;
// the embedded broker (no kafka.brokers) ignores it.
type KafkaSecurity struct {
	TLS  KafkaTLS  `yaml:"tls"`
	SASL KafkaSASL `yaml:"sasl"`
}

// KafkaTLS is the TLS of the broker connections.
type KafkaTLS struct {
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM bundle of the CAs that sign the brokers' certificates;
	// empty trusts the system roots.
	CAFile string `yaml:"caFile"`
	// CertFile and KeyFile are the client certificate (mutual TLS), both or neither.
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
	// ServerName overrides the name checked in the brokers' certificates
	// (default: the host of each broker address).
	ServerName string `yaml:"serverName"`
	// InsecureSkipVerify accepts any broker certificate: for tests only.
	InsecureSkipVerify bool `yaml:"insecureSkipVerify"`
}

// KafkaSASL is the SASL authentication to the brokers. Password is a secret:
// prefer NOTIFYD_KAFKA_SASL_PASSWORD or a ${VAR} reference in the file.
type KafkaSASL struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty = no SASL.
	Mechanism string `yaml:"mechanism"`
	Username  string `yaml:"username"`
	Password  string `yaml:"password"`
}

// String keeps the password out of anything that prints the configuration.
func (s KafkaSASL) String() string {
	return fmt.Sprintf("{Mechanism:%s Username:%s Password:%s}", s.Mechanism, s.Username, redact(s.Password))
}

// GoString is String: %#v must not print the password either.
func (s KafkaSASL) GoString() string { return s.String() }

// LogValue keeps the password out of structured logs.
func (s KafkaSASL) LogValue() slog.Value {
	return slog.GroupValue(slog.String("mechanism", s.Mechanism), slog.String("username", s.Username),
		slog.String("password", redact(s.Password)))
}

func redact(secret string) string {
	if secret == "" {
		return ""
	}
	return "[redacted]"
}

// Validate reports the first problem of the security section, reading the
// files it names. Errors name the setting and the path, never the password.
func (s KafkaSecurity) Validate() error {
	if err := s.SASL.validate(); err != nil {
		return err
	}
	_, err := s.TLS.Load()
	return err
}

func (s KafkaSASL) validate() error {
	switch s.Mechanism {
	case "":
		if s.Username != "" || s.Password != "" {
			return errors.New("config: kafka.security.sasl: username/password are set but mechanism is empty (want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")
		}
		return nil
	case SASLPlain, SASLScramSHA256, SASLScramSHA512:
	default:
		return fmt.Errorf("config: kafka.security.sasl.mechanism: unknown mechanism %q (want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)", s.Mechanism)
	}
	if s.Username == "" || s.Password == "" {
		return fmt.Errorf("config: kafka.security.sasl: %s needs username and password (password also from NOTIFYD_KAFKA_SASL_PASSWORD)", s.Mechanism)
	}
	return nil
}

// Load builds the client TLS configuration: nil when TLS is off. It reads the
// CA and key pair files, so it fails on a missing or malformed file.
func (t KafkaTLS) Load() (*tls.Config, error) {
	if !t.Enabled {
		if t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "" || t.InsecureSkipVerify {
			return nil, errors.New("config: kafka.security.tls: files or options are set but tls.enabled is false")
		}
		return nil, nil
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec // opt-in, documented as test-only
	}
	if t.CAFile != "" {
		pool, err := loadCAs(t.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, errors.New("config: kafka.security.tls: certFile and keyFile go together (client certificate), set both or neither")
	}
	if t.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("config: kafka.security.tls: client certificate %s / key %s: %w", t.CertFile, t.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func loadCAs(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: kafka.security.tls.caFile: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("config: kafka.security.tls.caFile %s: no PEM certificate in it", path)
	}
	return pool, nil
}
