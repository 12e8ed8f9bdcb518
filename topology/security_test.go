package topology

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lovoo/goka"
	"github.com/lovoo/goka/codec"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/config"
)

// testPKI is a CA with a broker certificate for 127.0.0.1 and a client
// certificate, all written as PEM files under dir.
type testPKI struct {
	dir                       string
	caFile, certFile, keyFile string // CA bundle and client pair, for KafkaTLS
	pool                      *x509.CertPool
	server                    tls.Certificate
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir()}
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "notifyd test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	p.pool = x509.NewCertPool()
	p.pool.AddCert(ca)
	p.caFile = p.write(t, "ca.pem", "CERTIFICATE", caDER)

	serverDER, serverKey := issue(t, ca, caKey, 2, &x509.Certificate{
		Subject: pkix.Name{CommonName: "broker"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames: []string{"localhost"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	p.server = tls.Certificate{Certificate: [][]byte{serverDER}, PrivateKey: serverKey}

	clientDER, clientKey := issue(t, ca, caKey, 3, &x509.Certificate{
		Subject: pkix.Name{CommonName: "notifyd"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	p.certFile = p.write(t, "client.pem", "CERTIFICATE", clientDER)
	keyDER, err := x509.MarshalECPrivateKey(clientKey)
	if err != nil {
		t.Fatal(err)
	}
	p.keyFile = p.write(t, "client-key.pem", "EC PRIVATE KEY", keyDER)
	return p
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func issue(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, serial int64, tmpl *x509.Certificate) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key := newKey(t)
	tmpl.SerialNumber = big.NewInt(serial)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func (p *testPKI) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// secureBroker starts kfake on loopback requiring TLS and SASL with one
// superuser; mutualTLS also requires a client certificate signed by the CA.
func secureBroker(t *testing.T, pki *testPKI, mechanism, user, pass string, mutualTLS bool) []string {
	t.Helper()
	srv := &tls.Config{Certificates: []tls.Certificate{pki.server}, MinVersion: tls.VersionTLS12}
	if mutualTLS {
		srv.ClientAuth, srv.ClientCAs = tls.RequireAndVerifyClientCert, pki.pool
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(0),
		kfake.EnableSASL(), kfake.Superuser(mechanism, user, pass), kfake.TLS(srv))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// useSecurity sets the process-wide security for one test and resets it after.
func useSecurity(t *testing.T, sec config.KafkaSecurity) {
	t.Helper()
	if err := SetSecurity(sec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := SetSecurity(config.KafkaSecurity{}); err != nil {
			t.Error(err)
		}
	})
}

func tlsWith(pki *testPKI) config.KafkaTLS {
	return config.KafkaTLS{Enabled: true, CAFile: pki.caFile}
}

// produceAndConsume creates notifyd's topics, produces one record with the
// notifyd producer and reads it back with a client from ClientOpts.
func produceAndConsume(t *testing.T, brokers []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := CreateTopics(ctx, brokers, 2, 1); err != nil {
		t.Fatalf("create topics: %v", err)
	}
	producer, err := NewProducer(brokers)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	rec := &kgo.Record{Topic: string(Ingest), Key: []byte("evt-1"), Value: []byte("secured")}
	if err := producer.ProduceSync(ctx, rec).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	consumer, err := kgo.NewClient(append(ClientOpts(brokers...), kgo.ConsumeTopics(string(Ingest)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	for {
		fetches := consumer.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("record not consumed: %v", err)
		}
		for _, fe := range fetches.Errors() {
			t.Fatalf("fetch %s/%d: %v", fe.Topic, fe.Partition, fe.Err)
		}
		for _, r := range fetches.Records() {
			if string(r.Key) == "evt-1" && string(r.Value) == "secured" {
				return
			}
		}
	}
}

func TestClientOptsProduceAndConsumeOverTLSAndSCRAM(t *testing.T) {
	pki := newTestPKI(t)
	brokers := secureBroker(t, pki, config.SASLScramSHA256, "notifyd", "s3cret-256", false)
	useSecurity(t, config.KafkaSecurity{TLS: tlsWith(pki),
		SASL: config.KafkaSASL{Mechanism: config.SASLScramSHA256, Username: "notifyd", Password: "s3cret-256"}})
	produceAndConsume(t, brokers)
}

func TestClientOptsPLAINWithClientCertificate(t *testing.T) {
	pki := newTestPKI(t)
	brokers := secureBroker(t, pki, config.SASLPlain, "notifyd", "plain-pass", true)
	tlsCfg := tlsWith(pki)
	tlsCfg.CertFile, tlsCfg.KeyFile = pki.certFile, pki.keyFile
	useSecurity(t, config.KafkaSecurity{TLS: tlsCfg,
		SASL: config.KafkaSASL{Mechanism: config.SASLPlain, Username: "notifyd", Password: "plain-pass"}})
	produceAndConsume(t, brokers)
}

func TestClientOptsSCRAMSHA512(t *testing.T) {
	pki := newTestPKI(t)
	brokers := secureBroker(t, pki, config.SASLScramSHA512, "notifyd", "s3cret-512", false)
	useSecurity(t, config.KafkaSecurity{TLS: tlsWith(pki),
		SASL: config.KafkaSASL{Mechanism: config.SASLScramSHA512, Username: "notifyd", Password: "s3cret-512"}})
	produceAndConsume(t, brokers)
}

// goka runs on sarama: its topic manager, consumer group, consumer and
// producer must all authenticate. A processor counts what an emitter sends,
// and a view reads the count from the group table.
func TestGokaOverTLSAndSCRAM(t *testing.T) {
	for _, mech := range []string{config.SASLScramSHA256, config.SASLScramSHA512, config.SASLPlain} {
		t.Run(mech, func(t *testing.T) {
			pki := newTestPKI(t)
			brokers := secureBroker(t, pki, mech, "goka", "goka-pass", false)
			useSecurity(t, config.KafkaSecurity{TLS: tlsWith(pki),
				SASL: config.KafkaSASL{Mechanism: mech, Username: "goka", Password: "goka-pass"}})
			runGokaRoundTrip(t, brokers)
		})
	}
}

func runGokaRoundTrip(t *testing.T, brokers []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	const group goka.Group = "secure-count"
	const input goka.Stream = "secure-count-in"
	k := Kafka{Brokers: brokers, Replication: 1}
	ensureGroupTopics(t, k, group, 2, input)
	g := goka.DefineGroup(group, goka.Input(input, new(codec.String), func(ctx goka.Context, _ any) {
		n, _ := ctx.Value().(int64)
		ctx.SetValue(n + 1)
	}), goka.Persist(new(codec.Int64)))
	p, err := goka.NewProcessor(brokers, g, k.ProcessorOptions(group)...)
	if err != nil {
		t.Fatal(err)
	}
	view, err := goka.NewView(brokers, goka.GroupTable(group), new(codec.Int64), k.ViewOptions("secure-count")...)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 2)
	go func() { done <- p.Run(runCtx) }()
	go func() { done <- view.Run(runCtx) }()
	if err := p.WaitForReadyContext(ctx); err != nil {
		t.Fatal(err)
	}
	em, err := goka.NewEmitter(brokers, input, new(codec.String), k.EmitterOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := em.EmitSync("user-1", "x"); err != nil {
			t.Fatalf("emit: %v", err)
		}
	}
	if err := em.Finish(); err != nil {
		t.Fatal(err)
	}
	for {
		v, err := view.Get("user-1")
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := v.(int64); n == 3 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("view holds %v for user-1, want 3", v)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// A wrong password fails fast with the broker's authentication error, from
// franz-go and from goka's sarama clients alike, and the error does not echo it.
func TestWrongPasswordFailsClearly(t *testing.T) {
	pki := newTestPKI(t)
	brokers := secureBroker(t, pki, config.SASLScramSHA256, "notifyd", "right-pass", false)
	const wrong = "wrong-pass-9f3a"
	useSecurity(t, config.KafkaSecurity{TLS: tlsWith(pki),
		SASL: config.KafkaSASL{Mechanism: config.SASLScramSHA256, Username: "notifyd", Password: wrong}})

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err := CheckBrokers(ctx, brokers)
	if err == nil || !strings.Contains(err.Error(), "SASL SCRAM-SHA-256 authentication of user \"notifyd\"") {
		t.Fatalf("franz-go: want an error naming the SASL authentication, got %v", err)
	}
	if ctx.Err() != nil || time.Since(start) > 10*time.Second {
		t.Fatalf("franz-go: authentication failure took %v", time.Since(start))
	}
	if strings.Contains(err.Error(), wrong) {
		t.Fatalf("error echoes the password: %v", err)
	}
	t.Logf("franz-go: %v", err)

	start = time.Now()
	k := Kafka{Brokers: brokers, Replication: 1}
	_, err = k.topicManager()(brokers)
	if err == nil || !strings.Contains(err.Error(), "SASL SCRAM-SHA-256 authentication of user \"notifyd\"") {
		t.Fatalf("goka/sarama: want an error naming the SASL authentication, got %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("goka/sarama: authentication failure took %v", time.Since(start))
	}
	t.Logf("goka/sarama: %v", err)
	if strings.Contains(err.Error(), wrong) {
		t.Fatalf("error echoes the password: %v", err)
	}
}

// Without SetSecurity the clients speak plaintext; the secured broker refuses
// them, which is what makes the tests above prove the options are applied.
func TestPlaintextClientCannotReachSecuredBroker(t *testing.T) {
	pki := newTestPKI(t)
	brokers := secureBroker(t, pki, config.SASLScramSHA256, "notifyd", "pass-1234", false)
	useSecurity(t, config.KafkaSecurity{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	cl, err := NewClient(brokers, kgo.RequestRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Ping(ctx); err == nil {
		t.Fatal("a plaintext client reached the TLS+SASL broker")
	}
}

// A broker whose certificate another CA signed is refused, and the error
// points at the CA setting.
func TestUntrustedBrokerCertificateNamesCAFile(t *testing.T) {
	brokerPKI, otherPKI := newTestPKI(t), newTestPKI(t)
	brokers := secureBroker(t, brokerPKI, config.SASLPlain, "notifyd", "pass-1234", false)
	useSecurity(t, config.KafkaSecurity{TLS: tlsWith(otherPKI),
		SASL: config.KafkaSASL{Mechanism: config.SASLPlain, Username: "notifyd", Password: "pass-1234"}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := CheckBrokers(ctx, brokers)
	if err == nil || !strings.Contains(err.Error(), "kafka.security.tls.caFile") {
		t.Fatalf("want an error pointing at kafka.security.tls.caFile, got %v", err)
	}
	k := Kafka{Brokers: brokers, Replication: 1}
	if _, err := k.topicManager()(brokers); err == nil || !strings.Contains(err.Error(), "kafka.security.tls.caFile") {
		t.Fatalf("goka: want an error pointing at kafka.security.tls.caFile, got %v", err)
	}
}

// Real Kafka answers bad credentials with SASL_AUTHENTICATION_FAILED rather
// than closing the connection as kfake does; both read the same.
func TestExplainBrokerAuthenticationFailure(t *testing.T) {
	useSecurity(t, config.KafkaSecurity{SASL: config.KafkaSASL{Mechanism: config.SASLScramSHA512, Username: "svc", Password: "pw-secret"}})
	err := explainConnectError([]string{"k1:9093"}, fmt.Errorf("ping: %w", kerr.SaslAuthenticationFailed))
	want := `kafka k1:9093: SASL SCRAM-SHA-512 authentication of user "svc" failed (check kafka.security.sasl)`
	if err == nil || !strings.HasPrefix(err.Error(), want) || !errors.Is(err, kerr.SaslAuthenticationFailed) {
		t.Fatalf("got %v, want prefix %q wrapping the broker error", err, want)
	}
	if strings.Contains(err.Error(), "pw-secret") {
		t.Fatalf("error reveals the password: %v", err)
	}
}

func TestSetSecurityRejectsBadConfig(t *testing.T) {
	t.Cleanup(func() { _ = SetSecurity(config.KafkaSecurity{}) })
	missing := filepath.Join(t.TempDir(), "nope.pem")
	err := SetSecurity(config.KafkaSecurity{TLS: config.KafkaTLS{Enabled: true, CAFile: missing}})
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("want an error naming %s, got %v", missing, err)
	}
	err = SetSecurity(config.KafkaSecurity{SASL: config.KafkaSASL{Mechanism: "GSSAPI", Username: "u", Password: "p"}})
	if err == nil || !strings.Contains(err.Error(), `"GSSAPI"`) {
		t.Fatalf("want an unknown mechanism error, got %v", err)
	}
	if len(ClientOpts("127.0.0.1:1")) != 1 {
		t.Fatal("a rejected configuration must leave the clients plaintext")
	}
}

// The SCRAM adapter parses what the broker sends. Whatever arrives, it errors
// or goes on, never panics, and finishes only on a verified server signature.
func FuzzSaramaSCRAM(f *testing.F) {
	f.Add("r=x,s=c2FsdA==,i=4096", "srv", []byte("salt"), uint8(0), "v=c2lnbmF0dXJl")
	f.Add("", "", []byte{}, uint8(3), "e=invalid-proof")
	f.Add("r=,s=,i=", ",s=,i=", []byte("x"), uint8(255), "")
	f.Fuzz(func(t *testing.T, raw, nonceTail string, salt []byte, extraIters uint8, final string) {
		// A first challenge as any broker may send it.
		rawSession := &saramaSCRAM{sha512: len(salt)%2 == 1}
		_ = rawSession.Begin("user", "pass", "")
		if _, err := rawSession.Step(""); err != nil {
			t.Fatal(err)
		}
		if _, err := rawSession.Step(raw); err == nil && rawSession.Done() {
			t.Fatal("done after the server's first message")
		}

		// A well-formed first challenge, then any final message.
		s := &saramaSCRAM{}
		_ = s.Begin("user", "pass", "")
		first, err := s.Step("")
		if err != nil {
			t.Fatal(err)
		}
		_, nonce, ok := strings.Cut(first, ",r=")
		if !ok {
			t.Fatalf("client-first message without nonce: %q", first)
		}
		serverFirst := fmt.Sprintf("r=%s%s,s=%s,i=%d", nonce, nonceTail,
			base64.StdEncoding.EncodeToString(salt), 4096+int(extraIters))
		clientFinal, err := s.Step(serverFirst)
		if err != nil {
			return
		}
		if s.Done() || !strings.Contains(clientFinal, ",p=") {
			t.Fatalf("after the first challenge: done=%v final=%q", s.Done(), clientFinal)
		}
		_, err = s.Step(final)
		if s.Done() != (err == nil) {
			t.Fatalf("done=%v with err=%v", s.Done(), err)
		}
	})
}
