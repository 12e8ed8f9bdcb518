package processors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/notifyd/notifyd/schemas"
)

// Sealer encrypts personal data for one subject (a tenant-qualified userId)
// and decrypts it again (crypt.Keyring). Records carry only the envelope, so
// erasing the subject's key makes every copy unreadable.
type Sealer interface {
	Seal(ctx context.Context, subject, context string, plaintext []byte) ([]byte, error)
	Open(ctx context.Context, context string, envelope []byte) ([]byte, string, error)
}

// The contexts bind an envelope to the kind of record it was made for: a
// notification's envelope cannot be passed off as a profile's.
const (
	sealNotification = "notification"
	sealProfile      = "profile"
	sealInbox        = "inbox"
	sealCampaign     = "campaign"
)

// CampaignSubject is whose key seals a campaign's data: the campaign's own,
// in its tenant. Storage keys escape '#', so no user id names it.
func CampaignSubject(tenant, id string) string { return schemas.TenantKey(tenant, "#campaign:"+id) }

// SealCampaignData moves c's data into its envelope (c.SealedData).
func SealCampaignData(ctx context.Context, s Sealer, c *schemas.Campaign) error {
	if s == nil || c.Data == "" {
		return nil
	}
	env, err := s.Seal(ctx, CampaignSubject(c.Tenant, c.ID), sealCampaign, []byte(c.Data))
	if err != nil {
		return fmt.Errorf("seal campaign %s: %w", c.ID, err)
	}
	c.SealedData, c.Data = env, ""
	return nil
}

// OpenCampaignData fills c's data from its envelope; a campaign without one
// (created before sealing) is left as it is.
func OpenCampaignData(ctx context.Context, s Sealer, c *schemas.Campaign) error {
	if len(c.SealedData) == 0 {
		return nil
	}
	if s == nil {
		return errors.New("open campaign data: no keyring")
	}
	b, subject, err := s.Open(ctx, sealCampaign, c.SealedData)
	if err != nil {
		return fmt.Errorf("open campaign %s: %w", c.ID, err)
	}
	if subject != CampaignSubject(c.Tenant, c.ID) {
		return fmt.Errorf("open campaign %s: %w", c.ID, ErrSubjectMismatch)
	}
	c.Data = string(b)
	return nil
}

// Subject is whose key seals a notification's personal data.
func Subject(n *schemas.Notification) string { return schemas.TenantKey(n.Tenant, n.UserID) }

// legacyNotificationPII is the JSON plaintext of notification envelopes
// sealed before notification_pii.v1 (schemas.NotificationPII): still opened,
// never written.
type legacyNotificationPII struct {
	Recipient schemas.Recipient `json:"r"`
	Data      string            `json:"d,omitempty"`
	Address   string            `json:"a,omitempty"`
	Content   schemas.Content   `json:"c"`
	Targets   []schemas.Target  `json:"t,omitempty"`
}

// SealNotification returns a copy of n whose personal fields are only in its
// envelope (n itself is unchanged). Routing fields (ids, tenant, template,
// channel, priority, times, retry state) stay readable for every stage.
func SealNotification(ctx context.Context, s Sealer, n *schemas.Notification) (*schemas.Notification, error) {
	if s == nil {
		return n, nil
	}
	b, err := schemas.NotificationPIICodec.Encode(&schemas.NotificationPII{
		Recipient: n.Recipient, Data: n.Data, Address: n.Address, Content: n.Content, Targets: n.Targets})
	if err != nil {
		return nil, fmt.Errorf("seal notification %s: %w", n.ID, err)
	}
	env, err := s.Seal(ctx, Subject(n), sealNotification, b)
	if err != nil {
		return nil, fmt.Errorf("seal notification %s: %w", n.ID, err)
	}
	out := strip(n)
	out.Sealed = env
	return out, nil
}

// Stripped is a copy of n without the personal fields its envelope holds: what
// goes on a topic. A notification without an envelope is returned as is.
func Stripped(n *schemas.Notification) *schemas.Notification {
	if len(n.Sealed) == 0 {
		out := *n
		return &out
	}
	return strip(n)
}

func strip(n *schemas.Notification) *schemas.Notification {
	out := *n
	out.Recipient = schemas.Recipient{UserID: n.Recipient.UserID, Locale: n.Recipient.Locale, Upsert: n.Recipient.Upsert}
	out.Data, out.Address, out.Content, out.Targets, out.SealedData = "", "", schemas.Content{}, nil, nil
	return &out
}

// ErrSubjectMismatch means an envelope was made for another user than the
// record that carries it: a record moved between users is refused.
var ErrSubjectMismatch = errors.New("sealed for another subject")

// sealJSON seals v, as JSON, for subject in field.
func sealJSON(ctx context.Context, s Sealer, subject, field string, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return s.Seal(ctx, subject, field, b)
}

// openJSON opens an envelope of field, which must have been sealed for
// subject, into out.
func openJSON(ctx context.Context, s Sealer, subject, field string, env []byte, out any) error {
	b, err := open(ctx, s, subject, field, env)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// open opens an envelope of field, which must have been sealed for subject.
func open(ctx context.Context, s Sealer, subject, field string, env []byte) ([]byte, error) {
	if s == nil {
		return nil, errors.New("no keyring")
	}
	b, got, err := s.Open(ctx, field, env)
	if err != nil {
		return nil, err
	}
	if got != subject {
		return nil, ErrSubjectMismatch
	}
	return b, nil
}

// OpenNotification fills n's personal fields from its envelope. A
// notification without one (written before encryption, or by a producer that
// does not seal) is left as it is.
func OpenNotification(ctx context.Context, s Sealer, n *schemas.Notification) error {
	if len(n.SealedData) > 0 {
		// A campaign's notification: its data is the campaign's, sealed
		// under the campaign's key (it holds nothing else of the user's).
		c := schemas.Campaign{ID: n.Campaign, Tenant: n.Tenant, SealedData: n.SealedData}
		if err := OpenCampaignData(ctx, s, &c); err != nil {
			return fmt.Errorf("open notification %s: %w", n.ID, err)
		}
		n.Data, n.SealedData = c.Data, nil
	}
	if len(n.Sealed) == 0 {
		return nil
	}
	b, err := open(ctx, s, Subject(n), sealNotification, n.Sealed)
	if err != nil {
		return fmt.Errorf("open notification %s: %w", n.ID, err)
	}
	pii, err := decodeNotificationPII(b)
	if err != nil {
		return fmt.Errorf("open notification %s: %w", n.ID, err)
	}
	n.Recipient, n.Data, n.Address, n.Content, n.Targets = pii.Recipient, pii.Data, pii.Address, pii.Content, pii.Targets
	return nil
}

// decodeNotificationPII reads an envelope's plaintext: Avro
// (notification_pii.v1 and later), or the JSON of envelopes sealed before it.
func decodeNotificationPII(b []byte) (*schemas.NotificationPII, error) {
	if len(b) > 0 && b[0] == '{' {
		var old legacyNotificationPII
		if err := json.Unmarshal(b, &old); err != nil {
			return nil, err
		}
		return &schemas.NotificationPII{Recipient: old.Recipient, Data: old.Data, Address: old.Address,
			Content: old.Content, Targets: old.Targets}, nil
	}
	return schemas.NotificationPIICodec.Decode(b)
}

type profilePII struct {
	Email   string                       `json:"e,omitempty"`
	Phone   string                       `json:"p,omitempty"`
	Devices []schemas.Device             `json:"d,omitempty"`
	Chat    map[string]map[string]string `json:"c,omitempty"`
}

// SealProfile returns a copy of p whose contacts, devices and chat ids are
// only in its envelope; locale, time zone and preferences stay readable.
func SealProfile(ctx context.Context, s Sealer, p *schemas.Profile) (*schemas.Profile, error) {
	if s == nil {
		return p, nil
	}
	env, err := sealJSON(ctx, s, schemas.TenantKey(p.Tenant, p.UserID), sealProfile,
		profilePII{Email: p.Email, Phone: p.Phone, Devices: p.Devices, Chat: p.Chat})
	if err != nil {
		return nil, fmt.Errorf("seal profile: %w", err)
	}
	out := *p
	out.Email, out.Phone, out.Devices, out.Chat, out.Sealed = "", "", nil, nil, env
	return &out, nil
}

// OpenProfile returns p with its contacts read from its envelope (p itself is
// unchanged). A profile without an envelope is returned as it is.
func OpenProfile(ctx context.Context, s Sealer, p *schemas.Profile) (*schemas.Profile, error) {
	if p == nil || len(p.Sealed) == 0 {
		return p, nil
	}
	var pii profilePII
	if err := openJSON(ctx, s, schemas.TenantKey(p.Tenant, p.UserID), sealProfile, p.Sealed, &pii); err != nil {
		return nil, fmt.Errorf("open profile: %w", err)
	}
	out := *p
	out.Email, out.Phone, out.Devices, out.Chat, out.Sealed = pii.Email, pii.Phone, pii.Devices, pii.Chat, nil
	return &out, nil
}

type inboxPII struct {
	Title     string            `json:"t,omitempty"`
	Body      string            `json:"b,omitempty"`
	ActionURL string            `json:"u,omitempty"`
	Avatar    string            `json:"a,omitempty"`
	Data      map[string]string `json:"d,omitempty"`
}

// SealInboxItem seals an inbox message's content for its user (subject).
func SealInboxItem(ctx context.Context, s Sealer, subject string, it *schemas.InboxItem) error {
	if s == nil {
		return nil
	}
	env, err := sealJSON(ctx, s, subject, sealInbox,
		inboxPII{Title: it.Title, Body: it.Body, ActionURL: it.ActionURL, Avatar: it.Avatar, Data: it.Data})
	if err != nil {
		return fmt.Errorf("seal inbox message %s: %w", it.ID, err)
	}
	it.Title, it.Body, it.ActionURL, it.Avatar, it.Data, it.Sealed = "", "", "", "", nil, env
	return nil
}

// OpenInboxItem fills an inbox message's content from its envelope.
func OpenInboxItem(ctx context.Context, s Sealer, subject string, it *schemas.InboxItem) error {
	if len(it.Sealed) == 0 {
		return nil
	}
	var pii inboxPII
	if err := openJSON(ctx, s, subject, sealInbox, it.Sealed, &pii); err != nil {
		return fmt.Errorf("open inbox message %s: %w", it.ID, err)
	}
	it.Title, it.Body, it.ActionURL, it.Avatar, it.Data, it.Sealed = pii.Title, pii.Body, pii.ActionURL, pii.Avatar, pii.Data, nil
	return nil
}

const sealFeedback = "feedback"

// sealDigest binds a digest's envelope to its kind of record.
const sealDigest = "digest"

type feedbackPII struct {
	Invalid []schemas.InvalidTarget `json:"i,omitempty"`
	Moved   []schemas.MovedTarget   `json:"m,omitempty"`
	Reason  string                  `json:"r,omitempty"`
}

// SealFeedback seals the targets and reason of a sink's feedback for the
// user (subject) it is about; the deliver group opens it to correct the profile.
func SealFeedback(ctx context.Context, s Sealer, subject string, fb *schemas.DeliveryFeedback) error {
	if s == nil || (len(fb.Invalid) == 0 && len(fb.Moved) == 0 && fb.Reason == "") {
		return nil
	}
	env, err := sealJSON(ctx, s, subject, sealFeedback, feedbackPII{Invalid: fb.Invalid, Moved: fb.Moved, Reason: fb.Reason})
	if err != nil {
		return fmt.Errorf("seal feedback: %w", err)
	}
	fb.Invalid, fb.Moved, fb.Reason, fb.Sealed = nil, nil, "", env
	return nil
}

// OpenFeedback fills a feedback's targets and reason from its envelope,
// which must be the subject's.
func OpenFeedback(ctx context.Context, s Sealer, subject string, fb *schemas.DeliveryFeedback) error {
	if len(fb.Sealed) == 0 {
		return nil
	}
	var pii feedbackPII
	if err := openJSON(ctx, s, subject, sealFeedback, fb.Sealed, &pii); err != nil {
		return fmt.Errorf("open feedback: %w", err)
	}
	fb.Invalid, fb.Moved, fb.Reason, fb.Sealed = pii.Invalid, pii.Moved, pii.Reason, nil
	return nil
}

// SealDigest seals the items of a digest (events' data) with the user's key;
// the deliver group keeps them so in its table.
func SealDigest(ctx context.Context, s Sealer, subject string, d *schemas.Digest) error {
	if s == nil || len(d.Items) == 0 {
		return nil
	}
	env, err := sealJSON(ctx, s, subject, sealDigest, d.Items)
	if err != nil {
		return fmt.Errorf("seal digest: %w", err)
	}
	d.Items, d.Sealed = nil, env
	return nil
}

// OpenDigest opens what SealDigest sealed.
func OpenDigest(ctx context.Context, s Sealer, subject string, d *schemas.Digest) error {
	if len(d.Sealed) == 0 {
		return nil
	}
	var items []string
	if err := openJSON(ctx, s, subject, sealDigest, d.Sealed, &items); err != nil {
		return fmt.Errorf("open digest: %w", err)
	}
	d.Items, d.Sealed = items, nil
	return nil
}
