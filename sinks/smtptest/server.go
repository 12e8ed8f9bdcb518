// Package smtptest runs a real SMTP server (go-smtp) on loopback for tests,
// keeping every message it accepts.
package smtptest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Message is one accepted message.
type Message struct {
	From string
	To   []string
	Data []byte
	At   time.Time
}

// Server is a running SMTP server.
type Server struct {
	Addr string
	Host string
	Port int

	opts   Options
	tlsCfg *tls.Config
	lmu    sync.Mutex // guards srv and ln across Restart
	srv    *smtp.Server
	ln     net.Listener

	mu   sync.Mutex
	msgs []Message
	cond *sync.Cond
	// stopping refuses new transactions; inTx counts those in progress.
	stopping atomic.Bool
	inTx     atomic.Int32
	// RejectRcpt, when set, refuses recipients for which it returns an error.
	RejectRcpt func(to string) error
	user, pass string
}

// Options configure a server.
type Options struct {
	User, Pass string // require AUTH PLAIN with these
	STARTTLS   bool   // offer STARTTLS with a self-signed certificate
	TLS        bool   // implicit TLS (as on port 465) with a self-signed certificate
	// IdleTimeout closes a connection idle that long, after a "421 4.4.2 Idle
	// timeout" as go-smtp says it (default 30s).
	IdleTimeout time.Duration
	// OnData, when set, sees every complete message before the server accepts
	// it. An error refuses the message (an *smtp.SMTPError keeps its code,
	// anything else becomes a 554); ErrHangUp and ErrHangUpAfterReply accept
	// it and then drop the connection.
	OnData func(Message) error
}

var (
	// ErrHangUp, returned by Options.OnData, keeps the message and closes the
	// connection instead of replying, as a server that crashed right after
	// accepting it would: the client cannot know the message was accepted.
	ErrHangUp = errors.New("smtptest: hang up before replying")
	// ErrHangUpAfterReply keeps the message, replies 250, then closes the
	// connection: the client's next command (its RSET) fails.
	ErrHangUpAfterReply = errors.New("smtptest: hang up after replying")
)

// Start runs a server on 127.0.0.1 with a free port.
func Start(o Options) (*Server, error) {
	s := &Server{user: o.User, pass: o.Pass, opts: o}
	s.cond = sync.NewCond(&s.mu)
	if o.STARTTLS || o.TLS {
		cert, err := selfSigned()
		if err != nil {
			return nil, err
		}
		s.tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if err := s.listen("127.0.0.1:0"); err != nil {
		return nil, err
	}
	s.Addr = s.ln.Addr().String()
	s.Host = "127.0.0.1"
	s.Port = s.ln.Addr().(*net.TCPAddr).Port
	return s, nil
}

// listen serves a new go-smtp server on addr; the caller holds lmu or owns s.
func (s *Server) listen(addr string) error {
	o := s.opts
	srv := smtp.NewServer(&backend{s: s})
	srv.Domain = "localhost"
	srv.ReadTimeout = 30 * time.Second
	if o.IdleTimeout > 0 {
		srv.ReadTimeout = o.IdleTimeout
	}
	srv.WriteTimeout = 30 * time.Second
	srv.MaxMessageBytes = 10 << 20
	srv.AllowInsecureAuth = !o.STARTTLS && !o.TLS
	if o.STARTTLS {
		srv.TLSConfig = s.tlsCfg
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	if o.TLS {
		ln = tls.NewListener(ln, s.tlsCfg)
	}
	s.srv, s.ln = srv, ln
	go func() { _ = srv.Serve(ln) }()
	return nil
}

// Close stops the server.
func (s *Server) Close() {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	_ = s.srv.Close()
	_ = s.ln.Close() // Serve may not have registered it yet
}

// Restart stops the server, dropping every open connection without a word
// (as a crash or a restart does), and starts it again on the same address.
// Accepted messages are kept.
func (s *Server) Restart() error {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	_ = s.srv.Close()
	_ = s.ln.Close()
	return s.listen(s.Addr)
}

// Stop takes the server down the way an MTA shuts down: it stops accepting
// connections and transactions (MAIL answers 421), lets the transactions in
// progress finish and be answered, then drops every connection. Until Resume,
// clients are refused. Accepted messages are kept. (Restart is the crash.)
func (s *Server) Stop() {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	s.stopping.Store(true)
	_ = s.ln.Close()
	deadline := time.Now().Add(10 * time.Second)
	for s.inTx.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	_ = s.srv.Close()
}

// Resume serves again on the address Stop closed.
func (s *Server) Resume() error {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	s.stopping.Store(false)
	return s.listen(s.Addr)
}

// Messages returns a copy of what was accepted so far.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// WaitFor blocks until n messages were accepted or d passed, and returns them.
func (s *Server) WaitFor(n int, d time.Duration) []Message {
	deadline := time.Now().Add(d)
	timer := time.AfterFunc(d, func() { s.mu.Lock(); s.cond.Broadcast(); s.mu.Unlock() })
	defer timer.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.msgs) < n && time.Now().Before(deadline) {
		s.cond.Wait()
	}
	return append([]Message(nil), s.msgs...)
}

type backend struct{ s *Server }

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &session{s: b.s, conn: c}, nil
}

type session struct {
	s      *Server
	conn   *smtp.Conn
	authed bool
	// hangUp closes the connection at the reset go-smtp does after replying to DATA.
	hangUp bool
	from   string
	to     []string
	inTx   bool
}

func (ss *session) AuthMechanisms() []string {
	if ss.s.user == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *session) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != ss.s.user || pass != ss.s.pass {
			return errors.New("invalid credentials")
		}
		ss.authed = true
		return nil
	}), nil
}

func (ss *session) Mail(from string, _ *smtp.MailOptions) error {
	if ss.s.user != "" && !ss.authed {
		return smtp.ErrAuthRequired
	}
	if ss.s.stopping.Load() {
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "shutting down"}
	}
	if !ss.inTx {
		ss.inTx = true
		ss.s.inTx.Add(1)
	}
	ss.from = from
	return nil
}

// endTx ends the session's transaction (answered, reset or disconnected).
func (ss *session) endTx() {
	if ss.inTx {
		ss.inTx = false
		ss.s.inTx.Add(-1)
	}
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if ss.s.RejectRcpt != nil {
		if err := ss.s.RejectRcpt(to); err != nil {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: err.Error()}
		}
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, r); err != nil {
		return err
	}
	m := Message{From: ss.from, To: ss.to, Data: buf.Bytes(), At: time.Now()}
	hangUp := false
	if ss.s.opts.OnData != nil {
		err := ss.s.opts.OnData(m)
		var se *smtp.SMTPError
		switch {
		case errors.Is(err, ErrHangUp):
			hangUp = true
		case errors.Is(err, ErrHangUpAfterReply):
			ss.hangUp = true
		case errors.As(err, &se):
			return se
		case err != nil:
			return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: err.Error()}
		}
	}
	ss.s.mu.Lock()
	ss.s.msgs = append(ss.s.msgs, m)
	ss.s.cond.Broadcast()
	ss.s.mu.Unlock()
	if hangUp {
		// Closed before go-smtp writes the 250: the client never learns.
		_ = ss.conn.Conn().Close()
	}
	return nil
}

func (ss *session) Reset() {
	ss.endTx()
	ss.from, ss.to = "", nil
	if ss.hangUp {
		ss.hangUp = false
		_ = ss.conn.Conn().Close()
	}
}

func (ss *session) Logout() error { ss.endTx(); return nil }

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// Header returns a header of a raw message (for quick assertions).
func Header(data []byte, name string) string {
	for _, line := range strings.Split(string(data), "\r\n") {
		if line == "" {
			break
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
