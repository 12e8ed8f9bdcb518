package main

import (
	"context"
	"testing"
	"time"
)

// `notifyd bench -campaign` at a small size: the bench itself fails unless
// every eligible user got exactly one message, no one else any, and the
// campaign's progress agrees — so this runs the whole campaign path
// (profiles → segment → approval → fan-out → deliver → sink → progress).
func TestBenchCampaignSendsExactlyOncePerEligibleUser(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := runBench(ctx, []string{"-campaign", "3000", "-campaign-rate", "2000", "-partitions", "2", "-ceiling=false"}); err != nil {
		t.Fatal(err)
	}
}

func TestBenchCampaignUserIndex(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want int
	}{{campaignUser(0), 0}, {campaignUser(123456), 123456}, {"cu", -1}, {"user-1", -1}, {"cuX", -1}} {
		if got := campaignUserIndex(tc.id); got != tc.want {
			t.Errorf("campaignUserIndex(%q) = %d, want %d", tc.id, got, tc.want)
		}
	}
}
