package tracking_test

import (
	"testing"
	"time"

	"github.com/notifyd/notifyd/tracking"
	"github.com/notifyd/notifyd/tracking/trackingtest"
)

// Tracking links are minted for every tracked email (a pixel, an
// unsubscribe link and one per link of its HTML) and verified on every open
// and click. The typical click: a UUID notification id, an email address as
// user id, a campaign and a destination with a query.
//
//	go test -run '^$' -bench . -benchmem ./tracking/

func BenchmarkMintClick(b *testing.B) {
	s := signer(b)
	l := marketingLinks()[1]
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Token(l)
	}
	b.ReportMetric(float64(len(s.Token(l))), "token-chars")
}

func BenchmarkVerifyClick(b *testing.B) {
	s := signer(b)
	l := marketingLinks()[1]
	tok := s.Token(l)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Parse(tracking.Click, tok); err != nil {
			b.Fatal(err)
		}
	}
}

// The legacy format, as the old code minted it (trackingtest.LegacyToken is
// that code), for comparison.
func BenchmarkLegacyMintClick(b *testing.B) {
	l := marketingLinks()[1]
	b.ReportAllocs()
	for b.Loop() {
		_ = trackingtest.LegacyToken(secret, l)
	}
	b.ReportMetric(float64(len(trackingtest.LegacyToken(secret, l))), "token-chars")
}

func BenchmarkLegacyVerifyClick(b *testing.B) {
	s := signer(b, tracking.AcceptLegacyUntil(time.Now().Add(time.Hour)))
	tok := trackingtest.LegacyToken(secret, marketingLinks()[1])
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Parse(tracking.Click, tok); err != nil {
			b.Fatal(err)
		}
	}
}
