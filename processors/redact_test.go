package processors

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/notifyd/notifyd/schemas"
)

// What providers and callers write into reasons: every address and phone
// number goes, the rest of the text stays.
func TestRedactRemovesAddressesAndPhoneNumbers(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"550 5.1.1 <alice@example.com>: user unknown", "550 5.1.1 <[redacted]>: user unknown"},
		{"550 5.1.1 <Alice.O+news@mail.Example.co.uk>... User unknown", "550 5.1.1 <[redacted]>... User unknown"},
		{"to=alice@example.com, relay=mx.example.com", "to=[redacted], relay=mx.example.com"},
		{"mailbox root@localhost is full", "mailbox [redacted] is full"},
		{"RCPT TO:<bob@[192.0.2.7]> refused", "RCPT TO:<[redacted]> refused"},
		{"14155550100@sms.example.net bounced", "[redacted] bounced"},
		{"josé.müller@beispiel.de unknown", "[redacted] unknown"},
		// E.164 and the usual written forms.
		{"+14155550100", "[redacted]"},
		{"the 'To' number +14155550100 is not a valid phone number.", "the 'To' number [redacted] is not a valid phone number."},
		{"+86 138 0013 8000 unreachable", "[redacted] unreachable"},
		{"+86-138-0013-8000", "[redacted]"},
		{"+(86) 138 0013 8000", "[redacted]"},
		{"+1 (415) 555-0100", "[redacted]"},
		{"call (415) 555-0100 now", "call ([redacted] now"},
		{"415-555-0100", "[redacted]"},
		{"415.555.0100", "[redacted]"},
		{"415 555 0100", "[redacted]"},
		{"+44 (0)20 7946 0958", "[redacted]"},
		{"06 12 34 56 78", "[redacted]"},
		{"06.12.34.56.78", "[redacted]"},
		{"0086 138 0013 8000", "[redacted]"},
		{"13800138000", "[redacted]"},
		{"手机号13800138000无效", "手机号[redacted]无效"},
		{"tel:+14155550100;phone-context=x", "tel:[redacted];phone-context=x"},
		{"(+14155550100)", "([redacted])"},
		{"+14155550100,+14155550101", "[redacted],[redacted]"},
		{"415-555-0100x123", "[redacted]x123"},
		{"call +1 415 555 0100 24h a day", "call [redacted] 24h a day"},
		{"telegram chat -1001234567890 not found", "telegram chat -[redacted] not found"},
		{"550 5.1.1 4155550100 user unknown", "550 5.1.1 [redacted] user unknown"},
		{"2026-11-20 4155550100", "2026-11-20 [redacted]"},
		{"at 2026-11-20 10:00:00 to +14155550100", "at 2026-11-20 10:00:00 to [redacted]"},
		{"4111 1111 1111 1111", "[redacted]"},
	} {
		if got := Redact(c.in, nil, MaxReason); got != c.want {
			t.Errorf("Redact(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// Numbers that are not phone numbers stay: SMTP codes, provider error codes,
// dates and times, addresses of servers, versions, ids, short numbers.
func TestRedactKeepsWhatIsNotAContact(t *testing.T) {
	for _, in := range []string{
		"550",
		"550 5.1.1 user unknown",
		"550-5.1.1 The email account that you tried to reach does not exist",
		"421 4.7.0 try again later",
		"554 5.7.1 content refused",
		"HTTP 503", "twilio: HTTP 400 error 21612", "whatsapp messages: error 131026/2494010 (HTTP 400)",
		"retries exhausted after 3 retries",
		"retry 2 at 2026-11-22T10:00:00Z",
		"expired at 2026-11-20T10:00:00.123456789Z before a provider took it",
		"2026-11-20 10:00:00", "2026-11-20T10:00:00+08:00", "20261120T100000Z", "20.11.2026", "11-20-2026",
		"Thu, 20 Nov 2026 10:00:00 +0000",
		"dial tcp 192.168.100.200:25: connection refused", "10.0.0.1:587", "[2001:db8::1]:443",
		"Post \"http://127.0.0.1:43567/2010-04-01/Accounts/AC0123/Messages.json\": EOF",
		"v17.0", "go1.26.8", "HTTP/1.1", "SM0123456789abcdef0123456789abcdef",
		"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
		"wamid.HBgLMTQxNTU1NTAxMDAVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA",
		"request F655A8D5-B967-440B-8683-DAD6FF8DE990", "a-12345678", "id_12345678",
		"1,234,567 messages", "555-0100", "+1234567", "C++11", "after 30s", "5.1.1", "1.2.3.4",
		"The 'To' number is not a valid phone number.", "",
	} {
		if got := Redact(in, nil, MaxReason); got != in {
			t.Errorf("Redact(%q) = %q, want it unchanged", in, got)
		}
	}
}

// A notification's own contacts and a one-time code's data go however they
// are written, longest first, whatever order they are given in.
func TestRedactKnownValues(t *testing.T) {
	n := &schemas.Notification{Channel: "telegram", Address: "987654", OTP: true, Data: `{"code":"739184","n":12}`,
		Recipient: schemas.Recipient{Email: "carol@example.org", Phone: "+14155550123"},
		Targets:   []schemas.Target{{Platform: "fcm", Token: "fcm-token-abc"}}}
	known := Sensitive(n)
	if want := []string{"carol@example.org", "fcm-token-abc", "+14155550123", "739184", "987654"}; strings.Join(known, ",") != strings.Join(want, ",") {
		t.Fatalf("Sensitive = %q, want %q", known, want)
	}
	got := Redact("chat 987654: code 739184 for fcm-token-abc (n=12)", known, MaxReason)
	if want := "chat [redacted]: code [redacted] for [redacted] (n=12)"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	// Given shortest first, a value inside a longer one still goes whole.
	if got := Redact("to +14155550123", []string{"5550", "+14155550123"}, MaxReason); got != "to [redacted]" {
		t.Fatalf("unsorted known values: %q", got)
	}
	// Values under 4 characters would erase digits of every reason.
	if got := Redact("error 12 at 1", []string{"1", "12"}, MaxReason); got != "error 12 at 1" {
		t.Fatalf("short known values: %q", got)
	}
}

// The result is at most limit bytes, valid UTF-8, cut on a character with
// the cut marked; redaction happens before the cut, so no address is cut in
// half and kept.
func TestRedactBoundsTheResult(t *testing.T) {
	long := strings.Repeat("错", 1000) // 3 bytes each
	for _, limit := range []int{1, 2, 3, 4, 5, 100, MaxReason} {
		got := Redact(long, nil, limit)
		if len(got) > limit || !utf8.ValidString(got) {
			t.Errorf("limit %d: %d bytes, valid %v", limit, len(got), utf8.ValidString(got))
		}
		if limit >= 6 && !strings.HasSuffix(got, "…") {
			t.Errorf("limit %d: the cut is not marked: %q", limit, got)
		}
	}
	if got := Redact("short", nil, 0); got != "" {
		t.Errorf("limit 0: %q", got)
	}
	if got := Redact("bad \xff\xfe utf-8", nil, 100); got != "bad \uFFFD utf-8" {
		t.Errorf("invalid UTF-8: %q", got)
	}
	// An address across the limit is redacted, not cut.
	got := Redact(strings.Repeat("x", 20)+" alice@example.com", nil, 30)
	if strings.Contains(got, "alice") || got != strings.Repeat("x", 20)+" [redac…" {
		t.Errorf("address across the limit: %q", got)
	}
}

// Status events built by any stage carry the redacted reason.
func TestNotificationEventRedactsTheReason(t *testing.T) {
	n := &schemas.Notification{ID: "n1", Channel: "email", Address: "dora@example.com"}
	ev := NotificationEvent(n, StatusFailed, "email", "550 5.1.1 <DORA@example.com>: no such user; forwarded to +1 415 555 0100", time.Time{})
	if ev.Reason != "550 5.1.1 <[redacted]>: no such user; forwarded to [redacted]" {
		t.Fatalf("reason %q", ev.Reason)
	}
	if ev := NotificationEvent(n, StatusSent, "email", "", time.Time{}); ev.Reason != "" {
		t.Fatalf("empty reason became %q", ev.Reason)
	}
}

// FuzzRedact: Redact never panics, its result is bounded and valid UTF-8, and
// it never carries an email address, a +-prefixed phone number or a known
// value that the text held.
func FuzzRedact(f *testing.F) {
	f.Add("550 5.1.1 <", "alice", "example.com", ">: user unknown", "739184", uint16(2048))
	f.Add("手机号", "bob.o+x", "mail.example.cn", "无效 +86 138 0013 8000", "fcm-token", uint16(40))
	f.Add("\xff5.1.", "a", "b.co", "2026-11-20T10:00:00Z", "", uint16(3))
	f.Fuzz(func(t *testing.T, prefix, local, domain, suffix, secret string, limit uint16) {
		local = keep(local, "abcdefghijklmnopqrstuvwxyz0123456789._+-")
		domain = strings.Trim(keep(domain, "abcdefghijklmnopqrstuvwxyz0123456789."), ".")
		secret = keep(secret, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
		var email string
		if local != "" && domain != "" && !strings.Contains(domain, "..") {
			email = local + "@" + domain + ".com"
		}
		const phone = "+1 415 555 0100"
		text := prefix + email + suffix + " " + phone + " " + secret + " " + prefix
		out := Redact(text, []string{secret}, int(limit))
		if len(out) > int(limit) {
			t.Fatalf("%d bytes, limit %d", len(out), limit)
		}
		if !utf8.ValidString(out) {
			t.Fatalf("invalid UTF-8: %q", out)
		}
		if email != "" && strings.Contains(out, email) {
			t.Fatalf("%q keeps %q", out, email)
		}
		if strings.Contains(out, phone) || strings.Contains(out, "4155550100") {
			t.Fatalf("%q keeps the phone number", out)
		}
		if len(secret) >= minSecretLen && !strings.Contains(Redacted, secret) && strings.Contains(out, secret) {
			t.Fatalf("%q keeps the known value %q", out, secret)
		}
	})
}

// keep is s with only the bytes of allowed.
func keep(s, allowed string) string {
	return strings.Map(func(r rune) rune {
		if strings.ContainsRune(allowed, r) {
			return r
		}
		return -1
	}, s)
}

// Redact runs on every failure reason and receipt, not on every send: a
// typical provider error, one with an address and a number, and a reason
// without either.
func BenchmarkRedact(b *testing.B) {
	known := []string{"carol@example.org", "+14155550123"}
	for _, c := range []struct{ name, text string }{
		{"plain", "twilio: HTTP 503 error 20503: Service unavailable; retry 2 at 2026-11-22T10:00:00Z"},
		{"bounce", "all providers failed, last: 550 5.1.1 <carol@example.org>: Recipient address rejected: User unknown in virtual mailbox table; forwarded to +1 (415) 555-0100"},
		{"address", "sendgrid bounce: 550 5.1.1 <alice@example.com>: Recipient address rejected: User unknown"},
		{"long", strings.Repeat("upstream said: 421 4.7.0 try again later; ", 50)},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(c.text)))
			for b.Loop() {
				Redact(c.text, known, MaxReason)
			}
		})
	}
}
