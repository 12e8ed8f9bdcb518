package processors

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	"github.com/notifyd/notifyd/schemas"
)

// templateContent is what a template version is: everything that decides
// what a recipient gets and under which category, nothing about who saved
// it or when. Empty and absent are the same (omitempty), so a template read
// back from Avro hashes as it did from JSON.
type templateContent struct {
	Category       string                                       `json:"category,omitempty"`
	Priority       string                                       `json:"priority,omitempty"`
	Channels       map[string]schemas.ChannelContent            `json:"channels,omitempty"`
	Locales        map[string]map[string]schemas.ChannelContent `json:"locales,omitempty"`
	DigestWindowMs int64                                        `json:"digestWindowMs,omitempty"`
	DigestMax      int32                                        `json:"digestMax,omitempty"`
}

// TemplateHash is the content hash of t, "sha256:<hex>": a version is
// pinned and approved by it, and delivery renders only a version whose hash
// is the pinned one. encoding/json writes map keys sorted, so the hash does
// not depend on the order content was written in.
func TemplateHash(t *schemas.Template) string {
	b, _ := json.Marshal(templateContent{Category: t.Category, Priority: t.Priority, Channels: t.Channels,
		Locales: t.Locales, DigestWindowMs: t.DigestWindowMs, DigestMax: t.DigestMax})
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

// VersionHash is t's recorded hash, or its computed one for a template
// saved before versions.
func VersionHash(t *schemas.Template) string {
	if t.Hash != "" {
		return t.Hash
	}
	return TemplateHash(t)
}

// Pinned tells whether n names the template version it was accepted with.
func Pinned(n *schemas.Notification) bool { return n.TemplateVersion != 0 || n.TemplateHash != "" }

// PinTemplate records on n the version of t it is accepted with, unless it
// names one already. A template saved before versions is pinned by its hash
// alone (version 0).
func PinTemplate(n *schemas.Notification, t *schemas.Template) {
	if Pinned(n) || t == nil {
		return
	}
	n.TemplateVersion, n.TemplateHash = t.Version, VersionHash(t)
}

// PinnedTemplate is the template n renders: the version it was accepted
// with. current is the template as it is now (nil: deleted, or never
// existed — the caller rejects the notification as it always has); version
// looks up a stored version (nil when there is none). A notification that
// names no version is pinned to current here (records of producers that do
// not pin, or written before versions). A version whose stored content is
// not the pinned hash — two saves that raced for one number — is an error:
// the notification is rejected rather than sent with other content.
func PinnedTemplate(n *schemas.Notification, current *schemas.Template, version func(int64) *schemas.Template) (*schemas.Template, error) {
	if current == nil {
		return nil, nil
	}
	if !Pinned(n) {
		PinTemplate(n, current)
		return current, nil
	}
	if n.TemplateVersion == current.Version && (n.TemplateHash == "" || n.TemplateHash == VersionHash(current)) {
		return current, nil
	}
	v := n.TemplateVersion
	if v == 0 {
		// Pinned by hash to content saved before versions: its first save
		// since kept that content as version 1.
		v = 1
	}
	t := version(v)
	if t == nil {
		return nil, fmt.Errorf("template %s version %d (accepted with it) is not stored", n.Template, v)
	}
	if t.ID != n.Template || schemas.NormTenant(t.Tenant) != schemas.NormTenant(n.Tenant) {
		return nil, fmt.Errorf("template %s version %d: the stored version is of another template", n.Template, v)
	}
	if n.TemplateHash != "" && VersionHash(t) != n.TemplateHash {
		return nil, fmt.Errorf("template %s version %d is not the content the notification was accepted with (%s, stored %s)",
			n.Template, v, n.TemplateHash, VersionHash(t))
	}
	return t, nil
}

// DeliveryCategory is the category a pinned notification is delivered under:
// what its request may claim of the pinned version (only a narrowing, see
// NarrowCategory), and never wider than the template's current category —
// a version accepted as transactional whose template has since become
// marketing is delivered as marketing; one accepted as marketing whose
// template has since become transactional stays marketing.
func DeliveryCategory(n *schemas.Notification, pinned, current *schemas.Template) string {
	c := Category(n, pinned)
	if c != CategoryTransactional || current == nil {
		return c
	}
	if now := Category(&schemas.Notification{}, current); now != CategoryTransactional {
		return now
	}
	return c
}

// A category is lower-case letters, digits, '_' and '-', starting with a
// letter: written exactly, so " transactional" or "Transactional" is not
// mistaken for (or taken as) a category it resembles.
var categoryPattern = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,63}$`)

// ValidateCategory checks a category as a template or a request names it
// ("" is none: the template's, or general).
func ValidateCategory(c string) error {
	if c == "" || categoryPattern.MatchString(c) {
		return nil
	}
	if norm := strings.ToLower(strings.TrimSpace(c)); categoryPattern.MatchString(norm) {
		return fmt.Errorf("category %q is not written exactly: did you mean %q? (lower-case letters, digits, _ and -, starting with a letter)", Clip(c, 64), norm)
	}
	return fmt.Errorf("category %q: a category is 1-64 lower-case letters, digits, _ and -, starting with a letter", Clip(c, 64))
}
