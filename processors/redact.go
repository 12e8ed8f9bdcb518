package processors

import (
	"encoding/json"
	"regexp"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/notifyd/notifyd/schemas"
)

// Redacted replaces what a one-time code's notification must not show.
const Redacted = "[redacted]"

// minSecretLen: data values shorter than this are not scrubbed from text (a
// "1" would erase every digit of a reason); one-time codes are 4+ characters.
const minSecretLen = 4

// Secrets are the values of a one-time code's data (the code among them),
// longest first, that must appear in no log line, status reason, dead letter
// or analytics row. A notification that is not an OTP has none.
func Secrets(otp bool, data string) []string {
	if !otp || data == "" {
		return nil
	}
	var m map[string]any
	d := json.NewDecoder(strings.NewReader(data))
	d.UseNumber()
	if d.Decode(&m) != nil {
		return nil
	}
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case string:
			if len(x) >= minSecretLen {
				out = append(out, x)
			}
		case json.Number:
			if len(x) >= minSecretLen {
				out = append(out, x.String())
			}
		case map[string]any:
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(m)
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// Redact is the one way free text from outside notifyd becomes part of a
// record: a provider's error (status reasons, a retry's LastError, dead-letter
// reasons, alerts, log lines) and a receipt's reason and message id, whether a
// caller posted it or a provider's callback carried it. It is applied where the
// text enters a record, never where a record is shown, so the status history,
// notify.events, the retry topics, notify.dlq and ClickHouse hold only its
// output. It replaces with [redacted]:
//   - each of known (a notification's Sensitive values: its contacts and a
//     one-time code's data), longest first;
//   - every email address;
//   - every phone number: 8 or more digits written as one number, with or
//     without +, in groups separated by a space, -, . or parentheses
//     (+14155550100, +86 138 0013 8000, (415) 555-0100, 415.555.0100). Kept:
//     what only looks numeric — SMTP codes (550 5.1.1), dates and times
//     (2026-11-20T10:00:00Z, 20.11.2026), IPv4 addresses, numbers inside
//     words or ids (SM1234…, v17.0), and anything under 8 digits;
//
// and then bounds the result to limit bytes (on a character boundary, the cut
// marked with "…"). Invalid UTF-8 becomes U+FFFD. It is meant for failure
// reasons and receipts, not for every successful send: empty text costs
// nothing, text without '@' skips the address pattern, and the phone scan is a
// single allocation-free pass when it finds nothing.
func Redact(text string, known []string, limit int) string {
	if text == "" || limit <= 0 {
		return ""
	}
	return bound(redactText(text, known), limit)
}

// Sensitive is what no text about n may carry: a one-time code's data values
// and n's contacts, longest first (the argument Redact takes as known).
func Sensitive(n *schemas.Notification) []string {
	out := append(Secrets(n.OTP, n.Data), Contacts(n)...)
	sort.SliceStable(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// redactText is Redact without the bound: for rendered content (a one-time
// code's dead letter), which is not free text and has its own limits.
func redactText(text string, known []string) string {
	if !utf8.ValidString(text) {
		text = strings.ToValidUTF8(text, "\uFFFD")
	}
	if !sortedLongestFirst(known) {
		known = append([]string(nil), known...)
		sort.SliceStable(known, func(i, j int) bool { return len(known[i]) > len(known[j]) })
	}
	for _, k := range known {
		// Shorter values would erase digits of every reason (see minSecretLen).
		if len(k) >= minSecretLen && strings.Contains(text, k) {
			text = strings.ReplaceAll(text, k, Redacted)
		}
	}
	if strings.IndexByte(text, '@') >= 0 {
		text = emailLike.ReplaceAllString(text, Redacted)
	}
	return redactPhones(text)
}

func sortedLongestFirst(v []string) bool {
	for i := 1; i < len(v); i++ {
		if len(v[i]) > len(v[i-1]) {
			return false
		}
	}
	return true
}

// bound cuts s to at most limit bytes on a character boundary, marking the cut.
func bound(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	const mark = "…"
	if limit < len(mark) {
		return s[:runeStartAtOrBefore(s, limit)]
	}
	return s[:runeStartAtOrBefore(s, limit-len(mark))] + mark
}

func runeStartAtOrBefore(s string, i int) int {
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return i
}

// emailLike finds email addresses in free text: a local part and a domain
// (dotted or not, or a [literal]) of ASCII, Latin, Greek or Cyrillic letters
// and digits. The local part leaves out the rarer RFC 5322 characters (/ = ' …)
// so that "to=alice@example.com" keeps its "to=".
var emailLike = regexp.MustCompile(`[\p{Latin}\p{Greek}\p{Cyrillic}0-9._%+\-]+@` +
	`(?:\[[0-9A-Za-z:.]+\]|[\p{Latin}\p{Greek}\p{Cyrillic}0-9](?:[\p{Latin}\p{Greek}\p{Cyrillic}0-9\-]*[\p{Latin}\p{Greek}\p{Cyrillic}0-9])?` +
	`(?:\.[\p{Latin}\p{Greek}\p{Cyrillic}0-9](?:[\p{Latin}\p{Greek}\p{Cyrillic}0-9\-]*[\p{Latin}\p{Greek}\p{Cyrillic}0-9])?)*)`)

// Contacts are the addresses a notification names (email, phone, device
// tokens, endpoints), which no status reason, log line or analytics row may
// carry; reasons quote provider errors, and those quote addresses.
func Contacts(n *schemas.Notification) []string {
	var out []string
	add := func(v string) {
		if len(v) >= minSecretLen {
			out = append(out, v)
		}
	}
	if n.Channel != "webhook" { // a webhook's address names a configured endpoint
		add(n.Address)
	}
	add(n.Recipient.Email)
	add(n.Recipient.Phone)
	for _, t := range n.Targets {
		add(t.Token)
		add(t.Endpoint)
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// RedactNotification is n as a dead letter or a log may carry it: for a
// one-time code its data and rendered content are replaced (a code is useless
// after its expiry anyway, so nothing is lost that a replay could use).
func RedactNotification(n *schemas.Notification) *schemas.Notification {
	if !n.OTP {
		return n
	}
	c := *n
	if c.Data != "" {
		c.Data = `{"redacted":true}`
	}
	secrets := Secrets(true, n.Data)
	r := func(s string) string {
		if s == "" {
			return s
		}
		return Redacted
	}
	c.Content = schemas.Content{Subject: redactText(n.Content.Subject, secrets), HTML: r(n.Content.HTML), Text: r(n.Content.Text),
		Title: redactText(n.Content.Title, secrets), Body: r(n.Content.Body), Markdown: r(n.Content.Markdown),
		Endpoint: n.Content.Endpoint, TemplateID: n.Content.TemplateID}
	if len(n.Content.TemplateParams) > 0 {
		c.Content.TemplateParams = map[string]string{}
		for k := range n.Content.TemplateParams {
			c.Content.TemplateParams[k] = Redacted
		}
	}
	if len(n.Content.Data) > 0 {
		c.Content.Data = map[string]string{}
		for k, v := range n.Content.Data {
			c.Content.Data[k] = redactText(v, secrets)
		}
	}
	c.LastError = Redact(n.LastError, secrets, MaxReason)
	return &c
}

// RedactRecord redacts a record about to be dead-lettered when it is a one-time
// code's Notification or SendRequest; other records are returned as they are.
func RedactRecord(value []byte) []byte {
	name, err := schemas.RecordName(value)
	if err != nil {
		return value
	}
	switch name {
	case "notifyd.Notification":
		n, err := schemas.NotificationCodec.Decode(value)
		if err != nil || !n.OTP {
			return value
		}
		if b, err := schemas.NotificationCodec.Encode(RedactNotification(n)); err == nil {
			return b
		}
		return nil
	case "notifyd.SendRequest":
		r, err := schemas.SendRequestCodec.Decode(value)
		if err != nil || !r.OTP {
			return value
		}
		c := *r
		c.Data = `{"redacted":true}`
		if b, err := schemas.SendRequestCodec.Encode(&c); err == nil {
			return b
		}
		return nil
	}
	return value
}

// Mask shows enough of an address to recognise it in a log line and not
// enough to use it: "a***@example.com", "+141***00", "abcd***" (tokens).
func Mask(addr string) string {
	if addr == "" {
		return ""
	}
	if local, domain, ok := strings.Cut(addr, "@"); ok {
		return firstRunes(local, 1) + "***@" + domain
	}
	r := []rune(addr)
	if len(r) <= 6 {
		return "***"
	}
	return string(r[:4]) + "***" + string(r[len(r)-2:])
}

func firstRunes(s string, n int) string {
	r := []rune(s)
	if len(r) > n {
		r = r[:n]
	}
	return string(r)
}

// minPhoneDigits: a phone number has at least 8 digits (with its country or
// area code, as providers quote them); shorter numbers are codes, counts,
// ports and years.
const minPhoneDigits = 8

// redactPhones replaces the phone numbers of s (see Redact) with Redacted. It
// scans once, left to right: a number starts at + or a digit that does not
// continue a word, an id or a dotted/hyphenated number (v17.0, 5.1.1, a-12);
// it goes on through groups of digits joined by one separator — a space, -,
// ., "(", ")" or ") " — and ends at the last group's last digit.
func redactPhones(s string) string {
	var b strings.Builder
	last := 0 // s[last:i] not yet copied to b
	for i := 0; i < len(s); {
		c := s[i]
		if !(digitByte(c) || (c == '+' && i+1 < len(s) && (digitByte(s[i+1]) || s[i+1] == '('))) || !phoneMayStart(s, i) {
			i++
			continue
		}
		end, next := phoneAt(s, i)
		if end < 0 {
			i = next
			continue
		}
		if b.Len() == 0 {
			b.Grow(len(s))
		}
		b.WriteString(s[last:i])
		b.WriteString(Redacted)
		last, i = end, end
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

// phoneMayStart: a number does not start inside a word or an id ("SM12…",
// "ab_12"), nor continue a dotted or hyphenated one ("5.1.1", "v1.2", "A-12").
func phoneMayStart(s string, i int) bool {
	if i == 0 {
		return true
	}
	p := s[i-1]
	if alnumByte(p) || p == '_' || p == '+' {
		return false
	}
	return !((p == '.' || p == '-') && i >= 2 && alnumByte(s[i-2]))
}

// phoneAt reads the number starting at s[i]: its end when it is a phone
// number, else -1 and where the scan goes on.
func phoneAt(s string, i int) (end, next int) {
	j := i
	if s[j] == '+' {
		j++
		if s[j] == '(' { // "+(86) 138…"
			j++
		}
	}
	var (
		groups, digits int
		ends           [3]int  // where each of the first groups ends (dates)
		lens           [3]int  // their lengths
		seps           [2]byte // the separators between them when a single - or ., else 0
		sep            string  // the separator before the group being read
		ipv4           = true  // so far: groups of 1-3 digits joined by single dots
		lastEnd        = -1    // where the last group read ends
		prevEnd        int     // where the group before it ends, and the digits to there
		prevDigits     int
	)
	for {
		k := j
		for k < len(s) && digitByte(s[k]) {
			k++
		}
		n := k - j
		if n == 0 || (groups > 0 && n == 1 && strings.IndexByte(sep, '.') >= 0) {
			break // "5.1.1" is an SMTP status code or a version, not a number
		}
		if groups < 3 {
			ends[groups], lens[groups] = k, n
		}
		if groups > 0 && groups < 3 && len(sep) == 1 {
			seps[groups-1] = sep[0]
		}
		ipv4 = ipv4 && n <= 3 && (groups == 0 || sep == ".")
		prevEnd, prevDigits = lastEnd, digits
		groups, digits, lastEnd = groups+1, digits+n, k
		// The separator: ")" and/or one of " -.", then maybe "(".
		j = k
		if j < len(s) && s[j] == ')' {
			j++
		}
		if j < len(s) && (s[j] == ' ' || s[j] == '-' || s[j] == '.') {
			j++
		}
		if j < len(s) && s[j] == '(' {
			j++
		}
		if j == k || j >= len(s) || !digitByte(s[j]) {
			break
		}
		sep = s[k:j]
	}
	switch {
	case groups == 0:
		return -1, i + 1
	case groups >= 3 && isDate(lens, seps):
		// 2026-11-20, 20.11.2026: not a number; what follows the date (a
		// time, a number after a space) is read on its own.
		return -1, ends[2]
	case groups == 4 && ipv4:
		return -1, lastEnd
	}
	if lastEnd < len(s) && (alnumByte(s[lastEnd]) || s[lastEnd] == '_') && !extension(s, lastEnd) {
		// The last group runs into a word ("0100 24h", "20T10"): it is not
		// part of the number.
		if groups == 1 {
			return -1, lastEnd
		}
		next = lastEnd
		lastEnd, digits = prevEnd, prevDigits
		if digits < minPhoneDigits {
			return -1, next
		}
		return lastEnd, lastEnd
	}
	if digits < minPhoneDigits {
		return -1, lastEnd
	}
	return lastEnd, lastEnd
}

// extension: "x123" after a number ("415-555-0100x123").
func extension(s string, i int) bool {
	return (s[i] == 'x' || s[i] == 'X') && i+1 < len(s) && digitByte(s[i+1])
}

// isDate: the first three groups are a date, YYYY-MM-DD or DD.MM.YYYY (or
// with the other separator), the same separator twice.
func isDate(lens [3]int, seps [2]byte) bool {
	if seps[0] != seps[1] || (seps[0] != '-' && seps[0] != '.') {
		return false
	}
	short := func(n int) bool { return n == 1 || n == 2 }
	return (lens[0] == 4 && short(lens[1]) && short(lens[2])) || (short(lens[0]) && short(lens[1]) && lens[2] == 4)
}

func digitByte(c byte) bool { return c >= '0' && c <= '9' }

func alnumByte(c byte) bool {
	return digitByte(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}
