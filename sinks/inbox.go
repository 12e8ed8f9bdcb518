package sinks

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/topology"
)

func init() {
	Register("inbox", Type{Channels: []string{"inapp"}, New: newInboxProvider})
}

// inboxProvider delivers the inapp channel into notifyd's own in-app inbox:
// an add command on notify.inbox.commands (key userId), which the inbox group
// applies to the user's feed and announces to the user's open streams. It is
// accepted once the broker has the command.
type inboxProvider struct {
	name     string
	producer *kgo.Client
	deps     Deps
}

// InboxSettings configure the inbox provider: it has none of its own yet
// (capacity and tokens are the inbox section of the configuration).
type InboxSettings struct{}

func newInboxProvider(s Spec) (Provider, error) {
	if _, ok := s.Provider.Settings["inbox"]; ok {
		var st InboxSettings
		if err := s.Settings(&st); err != nil {
			return nil, err
		}
	}
	return &inboxProvider{name: s.Name, producer: s.Producer, deps: s.Deps}, nil
}

func (p *inboxProvider) Name() string { return p.name }

func (p *inboxProvider) Send(ctx context.Context, n *schemas.Notification) (string, error) {
	if p.producer == nil {
		return "", Permanent(errors.New("inbox: no Kafka producer (the provider runs only inside a sink)"))
	}
	body := n.Content.Body
	if body == "" {
		body = n.Content.Text
	}
	now := p.deps.now().UnixMilli()
	cmd := &schemas.InboxCommand{Op: processors.InboxAdd, UserID: n.UserID, Tenant: n.Tenant, At: now,
		Message: schemas.InboxItem{ID: n.ID, Template: n.Template, Category: n.Category, Title: n.Content.Title, Body: body,
			ActionURL: n.Content.ActionURL, Avatar: n.Content.ImageURL, Data: n.Content.Data, CreatedAt: now}}
	if err := processors.SealInboxItem(ctx, p.deps.Keys, processors.Subject(n), &cmd.Message); err != nil {
		return "", fmt.Errorf("inbox: %w", err)
	}
	b, err := schemas.InboxCommandCodec.Encode(cmd)
	if err != nil {
		return "", Permanent(fmt.Errorf("inbox: %w", err))
	}
	if !topology.Fits(n.UserID, b) {
		return "", Permanent(fmt.Errorf("inbox: message of %d bytes is too large for the inbox", len(b)))
	}
	key := schemas.TenantKey(n.Tenant, n.UserID)
	if err := p.producer.ProduceSync(ctx, &kgo.Record{Topic: string(topology.InboxCommands), Key: []byte(key), Value: b}).FirstErr(); err != nil {
		return "", fmt.Errorf("inbox: %w", err)
	}
	return n.ID, nil
}
