package sinks

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/smtptest"
)

// smtpChain builds the email channel's provider chain for srv as the service
// does, from configuration.
func smtpChain(t *testing.T, srv *smtptest.Server, s config.SMTP) Provider {
	t.Helper()
	s.Host, s.Port, s.From = srv.Host, srv.Port, "noreply@example.com"
	ps, err := BuildProviders("email", []config.Provider{{Name: "smtp", Type: "smtp", SMTP: s}}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ps[0].(Closer).Close() })
	return ps[0]
}

func email(id, to string) *schemas.Notification {
	return &schemas.Notification{ID: id, Channel: "email", Address: to,
		Content: schemas.Content{Subject: "Your order shipped", Text: "It is on its way."}}
}

// attempts counts the messages the server saw at the end of DATA, accepted or not.
type attempts struct {
	mu sync.Mutex
	n  map[string]int // by recipient
}

func (a *attempts) seen(m smtptest.Message) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n == nil {
		a.n = map[string]int{}
	}
	a.n[m.To[0]]++
}

func (a *attempts) of(to string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n[to]
}

func ids(msgs []smtptest.Message) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, smtptest.Header(m.Data, "X-Notifyd-Notification-Id"))
	}
	return out
}

func TestSMTPSendAfterServerRestartUsesAFreshConnection(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts smtptest.Options
		cfg  config.SMTP
	}{
		{"plain", smtptest.Options{}, config.SMTP{}},
		{"starttls+auth", smtptest.Options{User: "mailer", Pass: "s3cret", STARTTLS: true},
			config.SMTP{TLS: "starttls", InsecureSkipVerify: true, Username: "mailer", Password: "s3cret"}},
		{"implicit tls", smtptest.Options{TLS: true}, config.SMTP{TLS: "tls", InsecureSkipVerify: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := smtptest.Start(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			p := smtpChain(t, srv, tc.cfg)
			ctx := context.Background()
			if _, err := p.Send(ctx, email("n-1", "u1@example.com")); err != nil {
				t.Fatal(err)
			}
			// The connection of n-1 waits in the pool; the restart kills it.
			if err := srv.Restart(); err != nil {
				t.Fatal(err)
			}
			id, err := p.Send(ctx, email("n-2", "u2@example.com"))
			if err != nil || id == "" {
				t.Fatalf("send after restart: %q %v", id, err)
			}
			msgs := srv.WaitFor(2, 5*time.Second)
			if got := ids(msgs); len(got) != 2 || got[0] != "n-1" || got[1] != "n-2" {
				t.Fatalf("server accepted %v, want [n-1 n-2]", got)
			}
		})
	}
}

func TestSMTPSendAfterIdleTimeoutUsesAFreshConnection(t *testing.T) {
	// go-smtp, like Postfix, says "421 4.4.2 Idle timeout" and hangs up.
	srv, err := smtptest.Start(smtptest.Options{IdleTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	p := smtpChain(t, srv, config.SMTP{})
	if _, err := p.Send(context.Background(), email("n-1", "u1@example.com")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if _, err := p.Send(context.Background(), email("n-2", "u2@example.com")); err != nil {
		t.Fatalf("send on a timed-out pooled connection: %v", err)
	}
	if got := ids(srv.WaitFor(2, 5*time.Second)); len(got) != 2 {
		t.Fatalf("server accepted %v", got)
	}
}

func TestSMTPRefusalAfterDataIsNotRetried(t *testing.T) {
	var seen attempts
	srv, err := smtptest.Start(smtptest.Options{OnData: func(m smtptest.Message) error {
		seen.seen(m)
		switch {
		case strings.HasPrefix(m.To[0], "spam@"):
			return errors.New("message looks like spam") // 554
		case strings.HasPrefix(m.To[0], "busy@"):
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	p := smtpChain(t, srv, config.SMTP{})
	ctx := context.Background()

	// Each refused message goes out on a pooled connection, where a
	// connection failure would have been retried.
	if _, err := p.Send(ctx, email("n-1", "ok@example.com")); err != nil {
		t.Fatal(err)
	}
	_, err = p.Send(ctx, email("n-2", "spam@example.com"))
	if err == nil || !IsPermanent(err) {
		t.Fatalf("554 after DATA: want a permanent error, got %v", err)
	}
	if n := seen.of("spam@example.com"); n != 1 {
		t.Fatalf("the server saw the refused message %d times, want 1", n)
	}

	if _, err := p.Send(ctx, email("n-3", "ok@example.com")); err != nil {
		t.Fatal(err)
	}
	_, err = p.Send(ctx, email("n-4", "busy@example.com"))
	if err == nil || IsPermanent(err) {
		t.Fatalf("451 after DATA: want a temporary error, got %v", err)
	}
	if n := seen.of("busy@example.com"); n != 1 {
		t.Fatalf("the server saw the deferred message %d times, want 1 (the sink retries it later)", n)
	}
	if got := ids(srv.Messages()); len(got) != 2 {
		t.Fatalf("server accepted %v, want n-1 and n-3", got)
	}
}

func TestSMTPLostReplyToDataIsNotRetried(t *testing.T) {
	// The server accepts the message and dies before saying so: a retry here
	// would deliver it twice.
	srv, err := smtptest.Start(smtptest.Options{OnData: func(m smtptest.Message) error {
		if strings.HasPrefix(m.To[0], "lost@") {
			return smtptest.ErrHangUp
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	p := smtpChain(t, srv, config.SMTP{})
	ctx := context.Background()
	if _, err := p.Send(ctx, email("n-1", "ok@example.com")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Send(ctx, email("n-2", "lost@example.com")); err == nil {
		t.Fatal("a send without the server's reply to DATA succeeded")
	}
	time.Sleep(100 * time.Millisecond) // a duplicate would arrive now
	if got := ids(srv.Messages()); len(got) != 2 || got[1] != "n-2" {
		t.Fatalf("server accepted %v, want [n-1 n-2] (n-2 once)", got)
	}
}

func TestSMTPFailedResetAfterDeliveryIsASuccess(t *testing.T) {
	// go-mail sends RSET after every delivered message; when that fails the
	// message is delivered all the same, and an error would make the sink
	// send it again.
	srv, err := smtptest.Start(smtptest.Options{OnData: func(m smtptest.Message) error {
		if strings.HasPrefix(m.To[0], "last@") {
			return smtptest.ErrHangUpAfterReply
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	p := smtpChain(t, srv, config.SMTP{})
	ctx := context.Background()
	if id, err := p.Send(ctx, email("n-1", "last@example.com")); err != nil || id == "" {
		t.Fatalf("delivered message reported as %q %v", id, err)
	}
	// Its connection was not pooled: the next send works.
	if _, err := p.Send(ctx, email("n-2", "ok@example.com")); err != nil {
		t.Fatal(err)
	}
	if got := ids(srv.WaitFor(2, 5*time.Second)); len(got) != 2 || got[0] != "n-1" || got[1] != "n-2" {
		t.Fatalf("server accepted %v, want [n-1 n-2]", got)
	}
}
