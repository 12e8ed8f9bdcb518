package processors_test

import (
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

func version(n int64, category, subject string) *schemas.Template {
	t := &schemas.Template{ID: "promo", Category: category, Version: n,
		Channels: map[string]schemas.ChannelContent{"email": {Subject: subject, Text: "hi"}}}
	t.Hash = processors.TemplateHash(t)
	return t
}

// The hash is of the content only, does not depend on map order or on
// empty-versus-absent, and changes with any content.
func TestTemplateHashIsTheContent(t *testing.T) {
	a := version(1, "marketing", "Sale")
	b := &schemas.Template{ID: "other", Category: "marketing", Version: 9, SavedBy: "k", UpdatedAt: 5,
		Channels: map[string]schemas.ChannelContent{"email": {Subject: "Sale", Text: "hi", Data: map[string]string{}}},
		Locales:  map[string]map[string]schemas.ChannelContent{}}
	if processors.TemplateHash(a) != processors.TemplateHash(b) {
		t.Fatal("the same content hashes differently")
	}
	for name, change := range map[string]func(*schemas.Template){
		"category": func(t *schemas.Template) { t.Category = "transactional" },
		"subject": func(t *schemas.Template) {
			t.Channels = map[string]schemas.ChannelContent{"email": {Subject: "Sale!", Text: "hi"}}
		},
		"locale": func(t *schemas.Template) {
			t.Locales = map[string]map[string]schemas.ChannelContent{"de": {"email": {Subject: "x"}}}
		},
		"digest":   func(t *schemas.Template) { t.DigestWindowMs = 60000 },
		"priority": func(t *schemas.Template) { t.Priority = "high" },
	} {
		c := *a
		change(&c)
		if processors.TemplateHash(&c) == processors.TemplateHash(a) {
			t.Errorf("a change of %s keeps the hash", name)
		}
	}
	if h := processors.TemplateHash(a); !strings.HasPrefix(h, "sha256:") || len(h) != 7+64 {
		t.Fatalf("hash %q", h)
	}
}

func TestPinnedTemplateRendersTheVersionAcceptedWith(t *testing.T) {
	v1, v2 := version(1, "marketing", "v1"), version(2, "marketing", "v2")
	stored := map[int64]*schemas.Template{1: v1, 2: v2}
	lookup := func(n int64) *schemas.Template { return stored[n] }

	// Unpinned (a producer that does not pin): pinned to the current one now.
	n := &schemas.Notification{Template: "promo"}
	got, err := processors.PinnedTemplate(n, v2, lookup)
	if err != nil || got != v2 || n.TemplateVersion != 2 || n.TemplateHash != v2.Hash {
		t.Fatalf("unpinned: %v %v %+v", got, err, n)
	}
	// Pinned to v1, the template is now v2: v1 renders.
	n = &schemas.Notification{Template: "promo", TemplateVersion: 1, TemplateHash: v1.Hash}
	if got, err := processors.PinnedTemplate(n, v2, lookup); err != nil || got != v1 {
		t.Fatalf("pinned v1: %v %v", got, err)
	}
	// Pinned to the current one: no lookup.
	n = &schemas.Notification{Template: "promo", TemplateVersion: 2, TemplateHash: v2.Hash}
	if got, err := processors.PinnedTemplate(n, v2, func(int64) *schemas.Template { t.Fatal("looked up"); return nil }); err != nil || got != v2 {
		t.Fatalf("pinned current: %v %v", got, err)
	}
	// A version whose content is not the pinned one (a raced save) or that
	// is missing is refused, never rendered.
	n = &schemas.Notification{Template: "promo", TemplateVersion: 1, TemplateHash: v2.Hash}
	if _, err := processors.PinnedTemplate(n, v2, lookup); err == nil || !strings.Contains(err.Error(), "not the content") {
		t.Fatalf("wrong content: %v", err)
	}
	n = &schemas.Notification{Template: "promo", TemplateVersion: 7, TemplateHash: "sha256:x"}
	if _, err := processors.PinnedTemplate(n, v2, lookup); err == nil {
		t.Fatal("a missing version rendered")
	}
	// A version of another template is refused.
	other := version(3, "marketing", "x")
	other.ID = "other"
	stored[3] = other
	n = &schemas.Notification{Template: "promo", TemplateVersion: 3}
	if _, err := processors.PinnedTemplate(n, v2, lookup); err == nil {
		t.Fatal("another template's version rendered")
	}
	// Pinned by hash to content saved before versions (version 0): the
	// current if it is still that content, else version 1, which keeps it.
	legacy := &schemas.Template{ID: "promo", Category: "marketing", Channels: v1.Channels}
	n = &schemas.Notification{Template: "promo", TemplateHash: processors.TemplateHash(legacy)}
	if got, err := processors.PinnedTemplate(n, legacy, lookup); err != nil || got != legacy {
		t.Fatalf("legacy current: %v %v", got, err)
	}
	n = &schemas.Notification{Template: "promo", TemplateHash: processors.TemplateHash(legacy)}
	if got, err := processors.PinnedTemplate(n, v2, lookup); err != nil || got != v1 {
		t.Fatalf("legacy after its first save: %v %v", got, err)
	}
	// Deleted: nothing to render (rejected as an unknown template).
	if got, err := processors.PinnedTemplate(&schemas.Notification{TemplateVersion: 1}, nil, lookup); got != nil || err != nil {
		t.Fatalf("deleted: %v %v", got, err)
	}
}

// The category a notification was authorized for never widens: the narrower
// of the pinned version's and the current template's.
func TestDeliveryCategoryNeverWidens(t *testing.T) {
	mk, tx, sec := version(1, "marketing", "a"), version(2, "transactional", "b"), version(3, "security", "c")
	for _, tc := range []struct {
		requested       string
		pinned, current *schemas.Template
		want            string
	}{
		{"", mk, tx, "marketing"},              // the attack: marketing accepted, made transactional after
		{"marketing", mk, tx, "marketing"},     // the API records the authorized category
		{"", tx, mk, "marketing"},              // transactional accepted, now marketing: narrower
		{"", tx, tx, "transactional"},          // unchanged
		{"security", tx, tx, "security"},       // a request's narrowing holds
		{"transactional", mk, mk, "marketing"}, // a request cannot widen
		{"", mk, sec, "marketing"},             // the pinned content's category
		{"", tx, nil, "transactional"},         // no current (checked elsewhere)
	} {
		n := &schemas.Notification{Category: tc.requested}
		if got := processors.DeliveryCategory(n, tc.pinned, tc.current); got != tc.want {
			t.Errorf("requested %q, pinned %s, current %v: %q, want %q", tc.requested, tc.pinned.Category, tc.current, got, tc.want)
		}
	}
}

func TestValidateCategoryIsExact(t *testing.T) {
	for _, ok := range []string{"", "transactional", "marketing", "order-updates", "a1_b"} {
		if err := processors.ValidateCategory(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for bad, hint := range map[string]string{" transactional": `did you mean "transactional"`, "Transactional": `did you mean "transactional"`,
		"transactional ": "did you mean", "MARKETING": `"marketing"`, "a b": "lower-case", "1st": "starting with a letter",
		"x|y": "lower-case", strings.Repeat("a", 65): "1-64"} {
		err := processors.ValidateCategory(bad)
		if err == nil || !strings.Contains(err.Error(), hint) {
			t.Errorf("%q: %v, want %q", bad, err, hint)
		}
	}
}

// An approval approves the version the campaign sends; pinning another one
// takes the campaign back to pending approval, and an approval of another
// version than the campaign's is refused.
func TestCampaignApprovalIsOfAVersion(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	create := &schemas.CampaignCommand{Op: processors.OpCreate, Campaign: schemas.Campaign{ID: "c", Template: "promo",
		TemplateVersion: 1, TemplateHash: "sha256:one", CreatedBy: "creator", TemplateSetBy: "creator", CreatedAt: now.UnixMilli()}}
	c, err := processors.CampaignTransition(nil, create, now)
	if err != nil || processors.ApprovedVersion(c) {
		t.Fatalf("created: %+v %v", c, err)
	}
	if _, err := processors.CampaignTransition(c, &schemas.CampaignCommand{Op: processors.OpApprove, By: "lead",
		TemplateVersion: 2, TemplateHash: "sha256:two"}, now); err == nil {
		t.Fatal("an approval of another version was taken")
	}
	c, err = processors.CampaignTransition(c, &schemas.CampaignCommand{Op: processors.OpApprove, By: "lead",
		TemplateVersion: 1, TemplateHash: "sha256:one"}, now)
	if err != nil || c.State != processors.CampaignApproved || !processors.ApprovedVersion(c) {
		t.Fatalf("approved: %+v %v", c, err)
	}
	if d := c.Decisions[len(c.Decisions)-1]; d.TemplateVersion != 1 || d.TemplateHash != "sha256:one" {
		t.Fatalf("the decision does not record the version: %+v", d)
	}
	// Another version pinned: pending again, the old approval does not count.
	c, err = processors.CampaignTransition(c, &schemas.CampaignCommand{Op: processors.OpTemplate, By: "editor",
		TemplateVersion: 2, TemplateHash: "sha256:two"}, now)
	if err != nil || c.State != processors.CampaignPending || processors.ApprovedVersion(c) || c.TemplateSetBy != "editor" {
		t.Fatalf("re-pinned: %+v %v", c, err)
	}
	// The key that chose the version cannot approve it.
	if _, err := processors.CampaignTransition(c, &schemas.CampaignCommand{Op: processors.OpApprove, By: "editor"}, now); err == nil {
		t.Fatal("the key that pinned the version approved it")
	}
	c, err = processors.CampaignTransition(c, &schemas.CampaignCommand{Op: processors.OpApprove, By: "lead"}, now)
	if err != nil || !processors.ApprovedVersion(c) || c.Decisions[len(c.Decisions)-1].TemplateVersion != 2 {
		t.Fatalf("approved again: %+v %v", c, err)
	}
	// Running: no re-pinning.
	c.State, c.StartedAt = processors.CampaignRunning, now.UnixMilli()
	if _, err := processors.CampaignTransition(c, &schemas.CampaignCommand{Op: processors.OpTemplate, By: "editor",
		TemplateVersion: 3, TemplateHash: "sha256:three"}, now); err == nil {
		t.Fatal("a running campaign was re-pinned")
	}
}
