package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Without tracking.legacyUntil, the first start records now + LegacyWindow
// in the data directory and every later start reads it back, so restarts do
// not push the end of legacy links further.
func TestLegacyDeadlineIsRecordedOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	first := time.Date(2026, 12, 7, 10, 30, 0, 0, time.UTC)
	d, err := Tracking{}.LegacyDeadline(dir, first)
	if err != nil || !d.Equal(first.Add(LegacyWindow)) {
		t.Fatalf("first start: %v, %v; want %v", d, err, first.Add(LegacyWindow))
	}
	again, err := Tracking{}.LegacyDeadline(dir, first.Add(90*24*time.Hour))
	if err != nil || !again.Equal(d) {
		t.Fatalf("a restart 90 days later: %v, %v; want %v", again, err, d)
	}
	// A damaged record is an error, never a fresh window.
	if err := os.WriteFile(filepath.Join(dir, legacyUntilFile), []byte("soon\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := (Tracking{}).LegacyDeadline(dir, first); err == nil || !strings.Contains(err.Error(), "legacyUntil") {
		t.Fatalf("damaged record: err = %v", err)
	}
}

func TestLegacyUntilConfigured(t *testing.T) {
	dir := t.TempDir()
	for v, want := range map[string]time.Time{
		"2027-06-30":                time.Date(2027, 6, 30, 0, 0, 0, 0, time.UTC),
		"2027-06-30T12:00:00+02:00": time.Date(2027, 6, 30, 10, 0, 0, 0, time.UTC),
	} {
		d, err := Tracking{LegacyUntil: v}.LegacyDeadline(dir, time.Now())
		if err != nil || !d.Equal(want) {
			t.Fatalf("%q: %v, %v; want %v", v, d, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, legacyUntilFile)); !os.IsNotExist(err) {
		t.Fatalf("a configured deadline was recorded: %v", err)
	}
	for _, bad := range []string{"30/06/2027", "2027-06-31", "tomorrow"} {
		if _, err := (Tracking{LegacyUntil: bad}).LegacyDeadline(dir, time.Now()); err == nil || !strings.Contains(err.Error(), "tracking.legacyUntil") {
			t.Fatalf("%q: err = %v", bad, err)
		}
	}
}

func TestLegacyUntilFromFileAndEnv(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notifyd.yaml")
	if err := os.WriteFile(path, []byte("tracking: {baseUrl: \"https://t.example.com\", legacyUntil: 2027-06-30}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path, env(nil))
	if err != nil || cfg.Tracking.LegacyUntil != "2027-06-30" || cfg.Tracking.BaseURL != "https://t.example.com" {
		t.Fatalf("file: %+v, %v", cfg.Tracking, err)
	}
	cfg, err = Load(path, env(map[string]string{"NOTIFYD_TRACKING_LEGACY_UNTIL": "2000-01-01"}))
	if err != nil || cfg.Tracking.LegacyUntil != "2000-01-01" {
		t.Fatalf("env: %+v, %v", cfg.Tracking, err)
	}
}
