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
)

// smtpProvider sends email through an SMTP server with go-mail, keeping a small
// pool of open connections so each message does not pay for a handshake.
type smtpProvider struct {
	name   string
	from   string
	client *mail.Client
	idle   chan *smtp.Client
	slots  chan struct{}
}

func newSMTPProvider(c config.Provider, _ Deps) (Provider, error) {
	s := c.SMTP
	opts := []mail.Option{mail.WithPort(s.Port), mail.WithoutNoop()}
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
	return &smtpProvider{name: c.Name, from: s.From, client: client,
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
	switch {
	case n.Content.Text != "" && n.Content.HTML != "":
		m.SetBodyString(mail.TypeTextPlain, n.Content.Text)
		m.AddAlternativeString(mail.TypeTextHTML, n.Content.HTML)
	case n.Content.HTML != "":
		m.SetBodyString(mail.TypeTextHTML, n.Content.HTML)
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
	select {
	case conn = <-p.idle:
	default:
		conn, err = p.client.DialToSMTPClientWithContext(ctx)
		if err != nil {
			return "", fmt.Errorf("smtp dial: %w", err)
		}
	}
	// A connection must not outlive a cancelled send: close it when ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	err = p.client.SendWithSMTPClient(conn, m)
	if !stop() || err != nil {
		_ = p.client.CloseWithSMTPClient(conn)
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		var se *mail.SendError
		if errors.As(err, &se) && !se.IsTemp() && se.ErrorCode() >= 500 {
			return "", Permanent(fmt.Errorf("smtp: %w", err))
		}
		return "", fmt.Errorf("smtp: %w", err)
	}
	select {
	case p.idle <- conn:
	default:
		_ = p.client.CloseWithSMTPClient(conn)
	}
	return m.GetMessageID(), nil
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
