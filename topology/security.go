package topology

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/notifyd/notifyd/config"
)

// security is the process-wide TLS and SASL of the broker connections, set
// once at start by SetSecurity; nil means plaintext without authentication.
var security atomic.Pointer[clientSecurity]

// clientSecurity is a validated config.KafkaSecurity, files already read.
type clientSecurity struct {
	tls  *tls.Config // nil: plaintext
	sasl config.KafkaSASL
}

// SetSecurity makes every Kafka client built afterwards by this package
// (ClientOpts, NewProducer, the goka builders of Kafka) use TLS and SASL as
// configured. Call it once at process start, and only for external brokers:
// the embedded broker speaks plaintext. The zero KafkaSecurity resets to
// plaintext (tests use that to clean up).
func SetSecurity(sec config.KafkaSecurity) error {
	if err := sec.Validate(); err != nil {
		return err
	}
	tlsCfg, err := sec.TLS.Load()
	if err != nil {
		return err
	}
	if tlsCfg == nil && sec.SASL.Mechanism == "" {
		security.Store(nil)
		return nil
	}
	security.Store(&clientSecurity{tls: tlsCfg, sasl: sec.SASL})
	return nil
}

// ClientOpts are the options every franz-go client of notifyd starts from:
// the seed brokers plus the configured TLS dialer and SASL mechanism. Append
// the client's own options to them.
func ClientOpts(brokers ...string) []kgo.Opt {
	opts := []kgo.Opt{kgo.SeedBrokers(brokers...)}
	sec := security.Load()
	if sec == nil {
		return opts
	}
	if sec.tls != nil {
		// franz-go sets ServerName per broker host when the config leaves it empty.
		opts = append(opts, kgo.DialTLSConfig(sec.tls.Clone()))
	}
	if m := sec.franzMechanism(); m != nil {
		opts = append(opts, kgo.SASL(m))
	}
	return opts
}

func (s *clientSecurity) franzMechanism() sasl.Mechanism {
	user, pass := s.sasl.Username, s.sasl.Password
	switch s.sasl.Mechanism {
	case config.SASLPlain:
		return plain.Auth{User: user, Pass: pass}.AsMechanism()
	case config.SASLScramSHA256:
		return scram.Auth{User: user, Pass: pass}.AsSha256Mechanism()
	case config.SASLScramSHA512:
		return scram.Auth{User: user, Pass: pass}.AsSha512Mechanism()
	}
	return nil
}

// secureSarama applies the process-wide security to a sarama (goka) config.
func secureSarama(c *sarama.Config) {
	sec := security.Load()
	if sec == nil {
		return
	}
	if sec.tls != nil {
		c.Net.TLS.Enable = true
		c.Net.TLS.Config = sec.tls.Clone()
	}
	if sec.sasl.Mechanism == "" {
		return
	}
	c.Net.SASL.Enable = true
	c.Net.SASL.Handshake = true
	// v1: the SASL exchange travels in SaslAuthenticate requests (Kafka >= 1.0),
	// which carry the broker's error message back on failure.
	c.Net.SASL.Version = sarama.SASLHandshakeV1
	c.Net.SASL.User = sec.sasl.Username
	c.Net.SASL.Password = sec.sasl.Password
	switch sec.sasl.Mechanism {
	case config.SASLPlain:
		c.Net.SASL.Mechanism = sarama.SASLTypePlaintext
	case config.SASLScramSHA256:
		c.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA256
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &saramaSCRAM{sha512: false} }
	case config.SASLScramSHA512:
		c.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA512
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &saramaSCRAM{sha512: true} }
	}
}

// saramaSCRAM drives franz-go's SCRAM implementation through sarama's
// SCRAMClient interface, so both client libraries share one SCRAM code path
// and notifyd needs no second SCRAM library.
type saramaSCRAM struct {
	sha512  bool
	mech    sasl.Mechanism
	session sasl.Session
	done    bool
}

// Begin prepares the exchange for user.
func (s *saramaSCRAM) Begin(user, pass, authzID string) error {
	auth := scram.Auth{User: user, Pass: pass, Zid: authzID}
	if s.sha512 {
		s.mech = auth.AsSha512Mechanism()
	} else {
		s.mech = auth.AsSha256Mechanism()
	}
	return nil
}

// Step answers the broker's challenge; the first call (challenge "") returns
// the client-first message.
func (s *saramaSCRAM) Step(challenge string) (string, error) {
	if s.mech == nil {
		return "", errors.New("scram: Step before Begin")
	}
	if s.session == nil {
		session, first, err := s.mech.Authenticate(context.Background(), "")
		if err != nil {
			return "", fmt.Errorf("scram: start: %w", err)
		}
		s.session = session
		return string(first), nil
	}
	done, resp, err := s.session.Challenge([]byte(challenge))
	if err != nil {
		return "", fmt.Errorf("scram: %w", err)
	}
	s.done = done
	return string(resp), nil
}

// Done tells whether the broker's final message was verified.
func (s *saramaSCRAM) Done() bool { return s.done }

// NewClient is kgo.NewClient over ClientOpts: a franz-go client of brokers
// with the process-wide security, plus the caller's options.
func NewClient(brokers []string, opts ...kgo.Opt) (*kgo.Client, error) {
	return kgo.NewClient(append(ClientOpts(brokers...), opts...)...)
}

// CheckBrokers connects to brokers once with the process-wide security and
// turns a failure into an error that names the setting to look at. Roles call
// it at start, so wrong credentials or an untrusted certificate stop the
// process with one clear message instead of clients retrying in the background.
func CheckBrokers(ctx context.Context, brokers []string) error {
	cl, err := NewClient(brokers)
	if err != nil {
		return fmt.Errorf("kafka %s: %w", strings.Join(brokers, ","), err)
	}
	defer cl.Close()
	if err := cl.Ping(ctx); err != nil {
		return explainConnectError(brokers, err)
	}
	return nil
}

// explainConnectError says which part of kafka.security a connection failure
// points at. It never includes the password.
func explainConnectError(brokers []string, err error) error {
	where := "kafka " + strings.Join(brokers, ",")
	var certErr *tls.CertificateVerificationError
	var firstRead *kgo.ErrFirstReadEOF
	sec := security.Load()
	saslOn := sec != nil && sec.sasl.Mechanism != ""
	switch {
	case errors.As(err, &certErr):
		return fmt.Errorf("%s: TLS: broker certificate not trusted (check kafka.security.tls.caFile and serverName): %w", where, err)
	case errors.As(err, &firstRead):
		// franz-go's message already says whether TLS or SASL looks missing.
		return fmt.Errorf("%s: %w (check kafka.security)", where, err)
	case saslOn && errors.Is(err, kerr.SaslAuthenticationFailed):
		return fmt.Errorf("%s: SASL %s authentication of user %q failed (check kafka.security.sasl): %w",
			where, sec.sasl.Mechanism, sec.sasl.Username, err)
	case saslOn && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
		// Some brokers close the connection instead of answering with an error code.
		return fmt.Errorf("%s: broker closed the connection during SASL %s authentication of user %q: wrong password, unknown user, or mechanism not enabled on the broker (check kafka.security.sasl): %w",
			where, sec.sasl.Mechanism, sec.sasl.Username, err)
	}
	return fmt.Errorf("%s: %w", where, err)
}

// saramaConnectError recovers the typed cause of a failed goka topic manager:
// goka flattens its sarama client's error into text, so one direct sarama
// connection repeats the attempt. gokaErr stands if that one succeeds.
func saramaConnectError(brokers []string, c *sarama.Config, gokaErr error) error {
	cl, err := sarama.NewClient(brokers, c)
	if err != nil {
		return fmt.Errorf("goka topic manager: %w", err)
	}
	_ = cl.Close()
	return gokaErr
}
