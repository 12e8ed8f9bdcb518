package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Tracking turns on email open and click tracking and one-click unsubscribe
// (RFC 8058): links in a non-transactional email's HTML go through
// redirects at BaseURL whose tokens are encrypted and authenticated, a pixel
// records the open, and List-Unsubscribe headers point at an unsubscribe
// URL of the same kind.
type Tracking struct {
	// BaseURL is where recipients reach notifyd's /t/ endpoints (the API's
	// public address, e.g. https://t.example.com). Empty: tracking is off.
	BaseURL string `yaml:"baseUrl"`
	// Secret keys the links (the token key is derived from it with HKDF);
	// every API instance and every email sink needs the same. Empty: one is
	// generated once and kept in dataDir/tracking.secret (fine for one
	// instance). NOTIFYD_TRACKING_SECRET.
	Secret string `yaml:"secret"`
	// LegacyUntil is when links minted before tokens were encrypted (signed
	// but readable, in emails already sent, with no expiry of their own)
	// stop working: a date (2027-06-30, midnight UTC) or an RFC 3339 time;
	// they are accepted before it. Empty: LegacyWindow after the first start
	// of a version with encrypted tokens on this data directory, recorded in
	// dataDir/tracking.legacy-until so that restarts do not move it. Set it,
	// to the same value everywhere, when API instances have no persistent
	// data directory. A past date refuses them now.
	// NOTIFYD_TRACKING_LEGACY_UNTIL.
	LegacyUntil string `yaml:"legacyUntil"`
}

// LegacyWindow is how long legacy tracking links keep working after the
// upgrade when LegacyUntil is not set: long past the 30 days the CAN-SPAM
// Act asks an unsubscribe link to work, and past the weeks in which nearly
// every open and click of an email happens.
const LegacyWindow = 180 * 24 * time.Hour

// legacyUntilFile records the default deadline in the data directory.
const legacyUntilFile = "tracking.legacy-until"

func (t *Tracking) merge(f Tracking) {
	if f.BaseURL != "" {
		t.BaseURL = f.BaseURL
	}
	if f.Secret != "" {
		t.Secret = f.Secret
	}
	if f.LegacyUntil != "" {
		t.LegacyUntil = f.LegacyUntil
	}
}

// LegacyDeadline is when legacy tracking links stop being accepted:
// LegacyUntil when set, else the deadline recorded in dataDir, which the
// first call writes as now + LegacyWindow.
func (t Tracking) LegacyDeadline(dataDir string, now time.Time) (time.Time, error) {
	if t.LegacyUntil != "" {
		d, err := parseDeadline(t.LegacyUntil)
		if err != nil {
			return time.Time{}, fmt.Errorf("tracking.legacyUntil: %w", err)
		}
		return d, nil
	}
	path := filepath.Join(dataDir, legacyUntilFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		d, err := parseDeadline(strings.TrimSpace(string(b)))
		if err != nil {
			// Not silently restarted: that would extend the window.
			return time.Time{}, fmt.Errorf("%s: %w (set tracking.legacyUntil or fix the file)", path, err)
		}
		return d, nil
	case !errors.Is(err, os.ErrNotExist):
		return time.Time{}, fmt.Errorf("%s: %w", legacyUntilFile, err)
	}
	d := now.Add(LegacyWindow).UTC().Truncate(time.Second)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return time.Time{}, fmt.Errorf("%s: %w", legacyUntilFile, err)
	}
	if err := os.WriteFile(path, []byte(d.Format(time.RFC3339)+"\n"), 0o644); err != nil {
		return time.Time{}, fmt.Errorf("%s: %w", legacyUntilFile, err)
	}
	return d, nil
}

// parseDeadline reads a date (midnight UTC) or an RFC 3339 time.
func parseDeadline(v string) (time.Time, error) {
	if d, err := time.Parse(time.DateOnly, v); err == nil {
		return d, nil
	}
	d, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a date (2027-06-30) nor an RFC 3339 time", v)
	}
	return d, nil
}
