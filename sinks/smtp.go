package sinks

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/wneessen/go-mail"
	"github.com/wneessen/go-mail/smtp"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/tracking"
)

// smtpProvider sends email through an SMTP server with go-mail, keeping a small
// pool of open connections so each message does not pay for a handshake.
type smtpProvider struct {
	name   string
	from   string
	client *mail.Client
	idle   chan *smtp.Client
	slots  chan struct{}
	// tracker rewrites links and adds List-Unsubscribe (nil: no tracking).
	tracker *tracking.Signer
}

func init() {
	Register("smtp", Type{Channels: []string{"email"}, New: func(s Spec) (Provider, error) { return newSMTPProvider(s.Provider, s.Deps) }})
}

func newSMTPProvider(c config.Provider, d Deps) (Provider, error) {
	s := c.SMTP
	// Without WithoutNoop, go-mail sends a NOOP before every message and again
	// before the RSET after it: two round trips per message to learn that a
	// pooled connection is alive, and it can still die right after. Send
	// detects a dead pooled connection by its failure instead and retries
	// once on a fresh one. Without WithoutRset it sends RSET after every
	// accepted message: a round trip between the server accepting a message
	// and notifyd recording that (the window where a crash sends it twice),
	// and one RFC 5321 does not need (a completed transaction ends there).
	opts := []mail.Option{mail.WithPort(s.Port), mail.WithoutNoop(), mail.WithoutRset()}
	tlsCfg := &tls.Config{ServerName: s.Host, InsecureSkipVerify: s.InsecureSkipVerify, MinVersion: tls.VersionTLS12} //nolint:gosec // opt-in for test servers
	switch s.TLS {
	case "tls":
		opts = append(opts, mail.WithSSL(), mail.WithTLSConfig(tlsCfg))
	case "starttls":
		opts = append(opts, mail.WithTLSPolicy(mail.TLSMandatory), mail.WithTLSConfig(tlsCfg))
	default:
		opts = append(opts, mail.WithTLSPolicy(mail.NoTLS))
	}
	if s.Username != "" {
		opts = append(opts, mail.WithSMTPAuth(mail.SMTPAuthPlain), mail.WithUsername(s.Username), mail.WithPassword(s.Password))
	}
	client, err := mail.NewClient(s.Host, opts...)
	if err != nil {
		return nil, fmt.Errorf("smtp client: %w", err)
	}
	n := s.Connections
	if n <= 0 {
		n = 4
	}
	return &smtpProvider{name: c.Name, from: s.From, client: client, tracker: d.Tracker,
		idle: make(chan *smtp.Client, n), slots: make(chan struct{}, n)}, nil
}

func (p *smtpProvider) Name() string { return p.name }

func (p *smtpProvider) message(n *schemas.Notification) (*mail.Msg, error) {
	m := mail.NewMsg()
	if err := m.From(p.from); err != nil {
		return nil, Permanent(fmt.Errorf("from %q: %w", p.from, err))
	}
	if err := m.To(n.Address); err != nil {
		return nil, Permanent(fmt.Errorf("to %q: %w", n.Address, err))
	}
	m.Subject(n.Content.Subject)
	m.SetMessageID()
	m.SetGenHeader("X-Notifyd-Notification-Id", n.ID)
	html, unsubscribe, err := trackedEmail(p.tracker, n)
	if err != nil {
		return nil, err
	}
	if unsubscribe != "" { // RFC 8058 one-click unsubscribe
		m.SetGenHeader("List-Unsubscribe", "<"+unsubscribe+">")
		m.SetGenHeader("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
	}
	switch {
	case n.Content.Text != "" && html != "":
		m.SetBodyString(mail.TypeTextPlain, n.Content.Text)
		m.AddAlternativeString(mail.TypeTextHTML, html)
	case html != "":
		m.SetBodyString(mail.TypeTextHTML, html)
	default:
		m.SetBodyString(mail.TypeTextPlain, n.Content.Text)
	}
	return m, nil
}

func (p *smtpProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	m, err := p.message(n)
	if err != nil {
		return "", err
	}
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	defer func() { <-p.slots }()
	var conn *smtp.Client
	pooled := true
	select {
	case conn = <-p.idle:
	default:
		pooled = false
		if conn, err = p.dial(ctx); err != nil {
			return "", err
		}
	}
	err = p.sendOn(ctx, conn, m)
	if err != nil && pooled && ctx.Err() == nil && deadBeforeMessage(err) {
		// An idle connection dies unseen when the server restarts or times it
		// out; the server never got this message, so a fresh connection
		// cannot deliver it twice.
		if conn, err = p.dial(ctx); err != nil {
			return "", err
		}
		err = p.sendOn(ctx, conn, m)
	}
	if err != nil {
		return "", err
	}
	return m.GetMessageID(), nil
}

func (p *smtpProvider) dial(ctx context.Context) (*smtp.Client, error) {
	conn, err := p.client.DialToSMTPClientWithContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("smtp dial: %w", err)
	}
	return conn, nil
}

// sendOn sends m on conn, then returns conn to the pool or closes it.
func (p *smtpProvider) sendOn(ctx context.Context, conn *smtp.Client, m *mail.Msg) error {
	// A connection must not outlive a cancelled send: close it when ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	err := p.client.SendWithSMTPClient(conn, m)
	open := stop()
	if m.IsDelivered() {
		// The server accepted the message (250 to the end of DATA); only the
		// RSET after it can have failed. Reporting an error would send it again.
		if err != nil || !open {
			_ = conn.Close()
			return nil
		}
		select {
		case p.idle <- conn:
		default:
			_ = p.client.CloseWithSMTPClient(conn)
		}
		return nil
	}
	if !open || ctx.Err() != nil {
		_ = conn.Close()
		return ctx.Err()
	}
	var se *mail.SendError
	if !errors.As(err, &se) || se.ErrorCode() == 0 {
		// No SMTP reply: the connection is broken, QUIT would only wait.
		_ = conn.Close()
		return fmt.Errorf("smtp: %w", err)
	}
	_ = p.client.CloseWithSMTPClient(conn)
	if !se.IsTemp() && se.ErrorCode() >= 500 {
		return Permanent(fmt.Errorf("smtp: %w", err))
	}
	return fmt.Errorf("smtp: %w", err)
}

// deadBeforeMessage tells whether err, from a send on a reused connection,
// shows a dead connection at a stage before the message was complete: the
// connection check, MAIL, RCPT, DATA, or while writing the content (the
// server never saw the final "."). Dead means no SMTP reply at all (EOF,
// reset, broken pipe, closed connection) or 421, which a server sends to an
// idle connection it is closing (go-smtp and Postfix on idle timeout). A
// failure at the end of DATA is never retried: the server may have accepted
// the message and only its reply was lost. A send whose only failure is the
// RSET after delivery is a success (see sendOn), never a retry.
func deadBeforeMessage(err error) bool {
	var se *mail.SendError
	if !errors.As(err, &se) {
		return false
	}
	if code := se.ErrorCode(); code != 0 && code != 421 {
		return false // the server is there and answered this message
	}
	switch se.Reason {
	case mail.ErrConnCheck, mail.ErrSMTPMailFrom, mail.ErrSMTPRcptTo, mail.ErrSMTPData, mail.ErrWriteContent:
		return true
	}
	return false
}

func (p *smtpProvider) Close() error {
	for {
		select {
		case c := <-p.idle:
			_ = p.client.CloseWithSMTPClient(c)
		default:
			return nil
		}
	}
}
