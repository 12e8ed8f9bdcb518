package sinks

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestLedgerClaimRecordRelease(t *testing.T) {
	l := NewLedger(10 * time.Minute)
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	if !l.Claim("n1", "email") {
		t.Fatal("first claim refused")
	}
	if l.Claim("n1", "email") {
		t.Fatal("a delivery in flight was claimed twice")
	}
	if !l.Claim("n1", "sms") {
		t.Fatal("another channel of the same notification refused")
	}
	l.Release("n1", "sms")
	if !l.Claim("n1", "sms") {
		t.Fatal("a released claim cannot be taken again")
	}
	l.Record("n1", "email", now)
	if l.Claim("n1", "email") {
		t.Fatal("a recorded delivery was claimed again")
	}
	l.Expire(now.Add(5 * time.Minute))
	if l.Claim("n1", "email") {
		t.Fatal("expired within the window")
	}
	l.Expire(now.Add(12 * time.Minute))
	if !l.Claim("n1", "email") || l.Len() != 0 {
		t.Fatalf("entry kept past the window (len %d)", l.Len())
	}
}

func TestLedgerClaimIsExclusiveUnderConcurrency(t *testing.T) {
	l := NewLedger(time.Hour)
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if l.Claim("same", "email") {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d goroutines claimed the same delivery", wins.Load())
	}
}
