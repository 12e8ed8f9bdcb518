package tracking

import (
	"errors"
	"html"
	"strings"
	"testing"
	"time"
)

var testSecret = []byte("0123456789abcdef-test-secret")

func newTestSigner(t testing.TB, opts ...Option) *Signer {
	t.Helper()
	s, err := NewSigner("https://t.example.com/", testSecret, opts...)
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	return s
}

func sampleLink(kind string) Link {
	l := Link{
		Kind: kind, NotificationID: "n-123", Tenant: "acme", UserID: "user-7",
		Template: "welcome", Category: "marketing", Channel: "email", Campaign: "spring",
	}
	if kind == Click {
		l.URL = "https://shop.example.org/sale?x=1&y=%2F#top"
	}
	return l
}

func TestRoundTripEveryKind(t *testing.T) {
	s := newTestSigner(t)
	for _, kind := range []string{Open, Click, Unsubscribe} {
		l := sampleLink(kind)
		u := s.URL(l)
		prefix := "https://t.example.com/t/" + kind + "/"
		if !strings.HasPrefix(u, prefix) {
			t.Fatalf("URL %q does not start with %q", u, prefix)
		}
		tok := strings.TrimPrefix(u, prefix)
		if strings.ContainsAny(tok, "/?#%") {
			t.Fatalf("token %q is not path safe", tok)
		}
		got, err := s.Parse(kind, tok)
		if err != nil {
			t.Fatalf("Parse %s: %v", kind, err)
		}
		if got != l {
			t.Fatalf("Parse %s = %+v, want %+v", kind, got, l)
		}
	}
}

func TestDefaultTenantAndEmptyCampaignRoundTrip(t *testing.T) {
	s := newTestSigner(t)
	l := Link{Kind: Open, NotificationID: "n", Channel: "email"}
	got, err := s.Parse(Open, s.Token(l))
	if err != nil || got != l {
		t.Fatalf("Parse = %+v, %v; want %+v", got, err, l)
	}
}

func TestTamperingAnyByteIsRefused(t *testing.T) {
	s := newTestSigner(t)
	tok := s.Token(sampleLink(Click))
	for i := range len(tok) {
		for _, c := range []byte{'A', 'z', '_', '-', '.', '0'} {
			if tok[i] == c {
				continue
			}
			bad := tok[:i] + string(c) + tok[i+1:]
			if _, err := s.Parse(Click, bad); !errors.Is(err, ErrBadToken) {
				t.Fatalf("byte %d set to %q: err = %v, want ErrBadToken", i, c, err)
			}
		}
	}
	for n := range len(tok) {
		if _, err := s.Parse(Click, tok[:n]); !errors.Is(err, ErrBadToken) {
			t.Fatalf("truncated to %d bytes: err = %v, want ErrBadToken", n, err)
		}
	}
	if _, err := s.Parse(Click, tok+"A"); !errors.Is(err, ErrBadToken) {
		t.Fatalf("extended token: err = %v, want ErrBadToken", err)
	}
}

func TestWrongKindIsRefused(t *testing.T) {
	s := newTestSigner(t)
	tok := s.Token(sampleLink(Open))
	for _, kind := range []string{Click, Unsubscribe, "x", ""} {
		if _, err := s.Parse(kind, tok); !errors.Is(err, ErrBadToken) {
			t.Fatalf("open token parsed as %q: err = %v, want ErrBadToken", kind, err)
		}
	}
}

func TestWrongSecretIsRefused(t *testing.T) {
	s := newTestSigner(t)
	other, err := NewSigner("https://t.example.com", []byte("another-secret-of-16+"))
	if err != nil {
		t.Fatal(err)
	}
	l := sampleLink(Unsubscribe)
	if s.Token(l) == other.Token(l) {
		t.Fatal("different secrets made the same token")
	}
	if _, err := other.Parse(Unsubscribe, s.Token(l)); !errors.Is(err, ErrBadToken) {
		t.Fatalf("err = %v, want ErrBadToken", err)
	}
}

func TestBadClickURLsAreRefusedAtParse(t *testing.T) {
	s := newTestSigner(t)
	for name, u := range map[string]string{
		"javascript": "javascript:alert(1)",
		"data":       "data:text/html,<script>alert(1)</script>",
		"relative":   "/account",
		"scheme-rel": "//evil.example.com/",
		"no host":    "https:///path",
		"empty":      "",
		"control":    "https://example.com/\x00",
		"over-long":  "https://example.com/" + strings.Repeat("a", maxURLLen),
	} {
		l := sampleLink(Click)
		l.URL = u
		// A token signed with the right secret is still refused: the
		// signature is not the only guard against an open redirect.
		if _, err := s.Parse(Click, s.Token(l)); !errors.Is(err, ErrBadToken) {
			t.Errorf("%s url %q: err = %v, want ErrBadToken", name, u, err)
		}
	}
	l := sampleLink(Open)
	l.URL = "https://example.com/"
	if _, err := s.Parse(Open, s.Token(l)); !errors.Is(err, ErrBadToken) {
		t.Errorf("open link with a url: err = %v, want ErrBadToken", err)
	}
}

func TestInvalidFieldsAreRefused(t *testing.T) {
	s := newTestSigner(t)
	for name, mod := range map[string]func(*Link){
		"no notification":     func(l *Link) { l.NotificationID = "" },
		"unsubscribe no user": func(l *Link) { l.UserID = "" },
		"default tenant name": func(l *Link) { l.Tenant = "default" },
		"bad tenant":          func(l *Link) { l.Tenant = "Acme|x" },
		"long template":       func(l *Link) { l.Template = strings.Repeat("t", maxFieldLen+1) },
		"newline":             func(l *Link) { l.Campaign = "a\nb" },
	} {
		l := sampleLink(Unsubscribe)
		mod(&l)
		if _, err := s.Parse(Unsubscribe, s.Token(l)); !errors.Is(err, ErrBadToken) {
			t.Errorf("%s: err = %v, want ErrBadToken", name, err)
		}
	}
}

func TestOversizedTokenIsRefused(t *testing.T) {
	s := newTestSigner(t)
	if _, err := s.Parse(Open, strings.Repeat("A", maxTokenLen+1)); !errors.Is(err, ErrBadToken) {
		t.Fatalf("err = %v, want ErrBadToken", err)
	}
}

func TestLargestValidLinkFitsTheTokenBound(t *testing.T) {
	s := newTestSigner(t)
	f := strings.Repeat("\u00e9", maxFieldLen/2)
	l := Link{Kind: Click, NotificationID: f, Tenant: "t" + strings.Repeat("x", 62), UserID: f,
		Template: f, Category: f, Channel: f, Campaign: f,
		URL: "https://e.com/" + strings.Repeat("p", maxURLLen-len("https://e.com/"))}
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Parse(Click, s.Token(l)); err != nil {
		t.Fatalf("largest valid link refused: %v", err)
	}
}

func TestNewSignerRefusesBadConfig(t *testing.T) {
	for _, base := range []string{
		"", "t.example.com", "/t", "ftp://t.example.com", "javascript:alert(1)",
		"https://", "https://t.example.com?x=1", "https://t.example.com/?", "https://t.example.com#f",
		"https://user:pw@t.example.com", "https:t.example.com", "http://[::1",
	} {
		if _, err := NewSigner(base, testSecret); err == nil {
			t.Errorf("NewSigner(%q) accepted", base)
		}
	}
	if _, err := NewSigner("https://t.example.com", []byte("short-secret")); err == nil {
		t.Error("NewSigner accepted a 12-byte secret")
	}
	s, err := NewSigner("http://127.0.0.1:8080/track/", testSecret)
	if err != nil {
		t.Fatalf("NewSigner with a path: %v", err)
	}
	if u := s.URL(sampleLink(Open)); !strings.HasPrefix(u, "http://127.0.0.1:8080/track/t/o/") {
		t.Fatalf("URL = %q", u)
	}
}

func TestClickFuncSignsLinksAndSkipsOwnURLs(t *testing.T) {
	s := newTestSigner(t)
	base := sampleLink(Open)
	click := s.ClickFunc(base)
	u := click("https://shop.example.org/a")
	tok, ok := strings.CutPrefix(u, "https://t.example.com/t/c/")
	if !ok {
		t.Fatalf("click url = %q", u)
	}
	got, err := s.Parse(Click, tok)
	if err != nil {
		t.Fatal(err)
	}
	want := base
	want.Kind, want.URL = Click, "https://shop.example.org/a"
	if got != want {
		t.Fatalf("parsed %+v, want %+v", got, want)
	}
	if own := s.URL(sampleLink(Unsubscribe)); click(own) != "" {
		t.Fatal("ClickFunc wrapped the signer's own unsubscribe url")
	}
	if click("https://e.com/"+strings.Repeat("a", maxURLLen)) != "" {
		t.Fatal("ClickFunc signed an over-long url")
	}
}

// fakeClick marks rewritten links so tests can see what was passed.
func fakeClick(href string) string { return "https://r.example/c?u=" + href }

func rewrite(t *testing.T, doc, pixel string) string {
	t.Helper()
	out, err := RewriteHTML(doc, fakeClick, pixel)
	if err != nil {
		t.Fatalf("RewriteHTML: %v", err)
	}
	return out
}

func TestRewriteHTMLLinks(t *testing.T) {
	doc := `<html><body><p>Hi <b>there</b></p>` +
		`<a href="https://shop.example.org/x" class="btn">Shop</a>` +
		`<a href='http://b.example/'>B</a>` +
		`<a href=https://c.example/z>C</a>` +
		`<a href="mailto:x@example.com">mail</a><a href="tel:+1">tel</a>` +
		`<a href="#top">top</a><a href="/relative">rel</a><a href="page.html">p</a>` +
		`<map><area shape="rect" href="https://area.example/"></map>` +
		`<a href="https://t.example.com/t/u/already">unsub</a>` +
		`</body></html>`
	click := func(href string) string {
		if strings.HasPrefix(href, "https://t.example.com/") {
			return ""
		}
		return fakeClick(href)
	}
	out, err := RewriteHTML(doc, click, "")
	if err != nil {
		t.Fatal(err)
	}
	want := `<html><body><p>Hi <b>there</b></p>` +
		`<a href="https://r.example/c?u=https://shop.example.org/x" class="btn">Shop</a>` +
		`<a href='https://r.example/c?u=http://b.example/'>B</a>` +
		`<a href="https://r.example/c?u=https://c.example/z">C</a>` +
		`<a href="mailto:x@example.com">mail</a><a href="tel:+1">tel</a>` +
		`<a href="#top">top</a><a href="/relative">rel</a><a href="page.html">p</a>` +
		`<map><area shape="rect" href="https://r.example/c?u=https://area.example/"></map>` +
		`<a href="https://t.example.com/t/u/already">unsub</a>` +
		`</body></html>`
	if out != want {
		t.Fatalf("got\n%s\nwant\n%s", out, want)
	}
}

func TestRewriteHTMLEscapesAttributes(t *testing.T) {
	doc := `<a href="https://e.com/?a=1&amp;b=&quot;q&quot;&copy=2" title='it"s'>x</a>`
	var seen string
	out, err := RewriteHTML(doc, func(href string) string {
		seen = href
		return "https://r.example/?u=" + href + "&'\"<"
	}, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := `https://e.com/?a=1&b="q"&copy=2`; seen != want {
		t.Fatalf("click got %q, want %q", seen, want)
	}
	want := `<a href="` + html.EscapeString(`https://r.example/?u=https://e.com/?a=1&b="q"&copy=2&'"<`) + `" title='it"s'>x</a>`
	if out != want {
		t.Fatalf("got\n%s\nwant\n%s", out, want)
	}
}

func TestRewriteHTMLPixelBeforeBody(t *testing.T) {
	pixel := "https://t.example.com/t/o/tok?a=1&b=2"
	img := `<img src="https://t.example.com/t/o/tok?a=1&amp;b=2" width="1" height="1" alt="" style="display:none">`
	out := rewrite(t, "<html><body><p>Hello</p>\n</body>\n</html>\n", pixel)
	if want := "<html><body><p>Hello</p>\n" + img + "</body>\n</html>\n"; out != want {
		t.Fatalf("got\n%s\nwant\n%s", out, want)
	}
	// A </body> in a script is text, not the end of the body.
	out = rewrite(t, "<body><script>var s='</body>';</script></BODY >", pixel)
	if want := "<body><script>var s='</body>';</script>" + img + "</BODY >"; out != want {
		t.Fatalf("got\n%s\nwant\n%s", out, want)
	}
}

func TestRewriteHTMLPixelWithoutBody(t *testing.T) {
	out := rewrite(t, "<p>Hello</p>", "https://t.example.com/t/o/x")
	want := `<p>Hello</p><img src="https://t.example.com/t/o/x" width="1" height="1" alt="" style="display:none">`
	if out != want {
		t.Fatalf("got %s", out)
	}
	if out := rewrite(t, "<p>Hello</p></body>", ""); out != "<p>Hello</p></body>" {
		t.Fatalf("no pixel asked, got %s", out)
	}
}

func TestRewriteHTMLUppercaseAndOddTags(t *testing.T) {
	doc := `<A HREF="HTTPS://E.COM/X">up</A><a name="anchor">no href</a><a>bare</a>` +
		`<a href>empty</a><a href="">empty2</a><a href="  https://sp.example/  ">spaced</a>` +
		`<a HREF="https://first.example/" href="https://second.example/">dup</a>` +
		`<a/href="https://slash.example/">slash</a><a href=https://u.example/a/>unq</a>`
	out := rewrite(t, doc, "")
	want := `<A HREF="https://r.example/c?u=HTTPS://E.COM/X">up</A><a name="anchor">no href</a><a>bare</a>` +
		`<a href>empty</a><a href="">empty2</a><a href="https://r.example/c?u=https://sp.example/">spaced</a>` +
		`<a HREF="https://r.example/c?u=https://first.example/" href="https://second.example/">dup</a>` +
		`<a/href="https://r.example/c?u=https://slash.example/">slash</a><a href="https://r.example/c?u=https://u.example/a/">unq</a>`
	if out != want {
		t.Fatalf("got\n%s\nwant\n%s", out, want)
	}
}

func TestRewriteHTMLMalformedKeepsText(t *testing.T) {
	for _, doc := range []string{
		`<p>keep me <a href="https://e.com/`,
		`<p>keep me</p><a href='https://e.com/x'`,
		`keep me <`,
		`<!-- keep me`,
		`<div><<<>>> keep me </p></b></i>`,
		"keep me \x00 <a href=\"https://e.com/\">\x00</a>",
		`<script>keep me <a href="https://e.com/">`,
	} {
		out := rewrite(t, doc, "")
		if !strings.Contains(out, "keep me") {
			t.Errorf("RewriteHTML(%q) = %q lost the text", doc, out)
		}
	}
	// An unterminated tag is kept as it is, not half rewritten.
	doc := `<p>x</p><a href="https://e.com/`
	if out := rewrite(t, doc, ""); out != doc {
		t.Fatalf("got %q, want %q", out, doc)
	}
}

func TestRewriteHTMLSizeBound(t *testing.T) {
	if _, err := RewriteHTML(strings.Repeat("a", MaxHTMLLen+1), fakeClick, ""); err == nil {
		t.Fatal("over-long document accepted")
	}
	if _, err := RewriteHTML(strings.Repeat("a", MaxHTMLLen), fakeClick, ""); err != nil {
		t.Fatalf("document at the bound refused: %v", err)
	}
}

// FuzzParse: Parse never panics, every refusal wraps ErrBadToken, and what
// it accepts was minted with the key: one of the tokens this test made
// (current or legacy), read back as the Link it was made of. A fuzzer
// cannot make a new token that authenticates, so acceptance of anything
// else is a bug. (The current tokens have fixed nonces, so that every fuzz
// worker process knows the same ones.)
func FuzzParse(f *testing.F) {
	s := newTestSigner(f, AcceptLegacyUntil(time.Now().Add(time.Hour)))
	minted := map[string]Link{}
	for _, kind := range []string{Open, Click, Unsubscribe} {
		l := sampleLink(kind)
		fields := l.fields()
		for n := range byte(2) {
			tok := s.sealRaw(kind, appendFields(nil, &fields), n)
			minted[tok] = l
			f.Add(kind, tok)
		}
		if _, err := s.Parse(kind, s.Token(l)); err != nil {
			f.Fatal(err)
		}
	}
	for _, g := range LegacyGolden(f) {
		minted[g.Token] = g.Link
		f.Add(g.Link.Kind, g.Token)
	}
	f.Add(Open, "")
	f.Add(Open, "2")
	f.Add(Click, "AQ.AAAAAAAAAAAAAAAAAAAAAA")
	f.Add("x", "..")
	f.Fuzz(func(t *testing.T, kind, token string) {
		l, err := s.Parse(kind, token)
		if err != nil {
			if !errors.Is(err, ErrBadToken) {
				t.Fatalf("error %v does not wrap ErrBadToken", err)
			}
			return
		}
		want, ok := minted[token]
		if !ok {
			t.Fatalf("accepted %q (%s), which this test never minted", token, kind)
		}
		if want.Kind != kind || l != want {
			t.Fatalf("%s token parsed as %+v, minted from %+v", kind, l, want)
		}
	})
}

func FuzzRewriteHTML(f *testing.F) {
	for _, doc := range []string{
		"", "<html><body><a href=\"https://e.com/\">x</a></body></html>",
		"<A HREF=https://e.com/a/>x</A></BODY>", "<a href='http://e.com/?a=1&amp;b=2' href=x>",
		"<area/href=\"https://e.com\"/>", "<p>unterminated <a href=\"https://e",
		"<script></body></script><body>", "<a =href=\"https://e.com\">", "<a href=\"&#104;ttps://e.com\">",
	} {
		f.Add(doc)
	}
	const pixel = "https://t.example.com/t/o/tok?a=1&b=2"
	escaped := html.EscapeString(pixel)
	f.Fuzz(func(t *testing.T, doc string) {
		out, err := RewriteHTML(doc, fakeClick, pixel)
		if err != nil {
			if len(doc) > MaxHTMLLen {
				return
			}
			t.Fatalf("RewriteHTML: %v", err)
		}
		if strings.Contains(doc, "t.example.com") {
			return // the document may hold the pixel's text already
		}
		if n := strings.Count(out, escaped); n != 1 {
			t.Fatalf("pixel appears %d times in %q", n, out)
		}
		plain, err := RewriteHTML(doc, func(string) string { return "" }, "")
		if err != nil || plain != doc {
			t.Fatalf("with nothing to rewrite, output %q differs from input (err %v)", plain, err)
		}
	})
}
