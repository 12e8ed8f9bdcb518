package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/analytics"
)

func TestReportCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ch, err := analytics.StartLocal(ctx, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Stop()
	var out bytes.Buffer
	// migrate through the command, as an operator would.
	t.Setenv("NOTIFYD_ANALYTICS_ADDR", ch.Addr)
	if err := runMigrate(ctx, nil); err != nil {
		t.Fatal(err)
	}
	conn, err := analytics.Open(ch.Addr, "default", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	b, err := conn.PrepareBatch(ctx, "INSERT INTO notifyd.events (tenant, id, notification_id, channel, provider, status, at, at_ms)")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	// The default tenant's a, b and c; acme's x, sent by another provider.
	for _, r := range [][3]string{{"", "a", "sent"}, {"", "b", "sent"}, {"", "c", "failed"}, {"acme", "x", "sent"}} {
		provider := map[string]string{"": "smtp", "acme": "smtp-acme"}[r[0]]
		if err := b.Append(r[0], r[1]+r[2], r[1], "email", provider, r[2], now, uint64(now.UnixMilli())); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	if err := runReport(ctx, []string{"summary", "--group-by", "channel,status"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "channel  status  notifications") || !strings.Contains(out.String(), "email    sent    2") {
		t.Fatalf("table:\n%s", out.String())
	}
	out.Reset()
	if err := runReport(ctx, []string{"summary", "--group-by", "status", "--format", "csv"}, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "status,notifications\nfailed,1\nsent,2\n" {
		t.Fatalf("csv:\n%q", out.String())
	}
	out.Reset()
	err = runReport(ctx, []string{"reconciliation", "--day", now.UTC().Format("2006-01-02"), "--grace", "0s", "--format", "csv"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "smtp,email,2,0,2,0") || strings.Contains(out.String(), "smtp-acme") {
		t.Fatalf("reconciliation:\n%s", out.String())
	}
	// --tenant reports that tenant's rows only, by any of the default tenant's names.
	for tenant, want := range map[string]string{"acme": "status,notifications\nsent,1\n", "default": "status,notifications\nfailed,1\nsent,2\n"} {
		out.Reset()
		if err := runReport(ctx, []string{"summary", "--tenant", tenant, "--group-by", "status", "--format", "csv"}, &out); err != nil {
			t.Fatal(err)
		}
		if out.String() != want {
			t.Fatalf("summary of %s:\n%q", tenant, out.String())
		}
	}
	out.Reset()
	err = runReport(ctx, []string{"reconciliation", "--tenant", "acme", "--day", now.UTC().Format("2006-01-02"), "--grace", "0s", "--format", "csv"}, &out)
	if err != nil || !strings.Contains(out.String(), "smtp-acme,email,1,0,1,0") || strings.Contains(out.String(), "smtp,") {
		t.Fatalf("reconciliation of acme (%v):\n%s", err, out.String())
	}
	out.Reset()
	if err := runReport(ctx, []string{"latency", "--tenant", "acme", "--group-by", "provider", "--format", "csv"}, &out); err != nil ||
		!strings.Contains(out.String(), "\nsmtp-acme,1,") || strings.Contains(out.String(), "\nsmtp,") {
		t.Fatalf("latency of acme (%v):\n%s", err, out.String())
	}
	for _, bad := range [][]string{
		{"summary", "--group-by", "colour"},
		{"summary", "--format", "xml"},
		{"weather"},
		{"reconciliation", "--day", "yesterday"},
		{"summary", "--from", "last week"},
		{"reconciliation", "--day", "2026-11-22", "--grace", "a while"},
		{"summary", "--tenant", "Acme' OR 1=1"},
		{"summary", "--tenant", ""},
		{},
	} {
		if err := runReport(ctx, bad, &out); err == nil {
			t.Errorf("report %v: no error", bad)
		}
	}
	t.Setenv("NOTIFYD_ANALYTICS_ADDR", "")
	if err := runReport(ctx, []string{"summary"}, &out); err == nil || !strings.Contains(err.Error(), "--addr") {
		t.Errorf("no address: %v", err)
	}
}
