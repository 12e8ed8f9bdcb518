package tracking

import (
	"bytes"
	"errors"
	"fmt"
	"html"
	"io"
	"slices"
	"strings"

	xhtml "golang.org/x/net/html"
)

// MaxHTMLLen bounds the documents RewriteHTML accepts.
const MaxHTMLLen = 1 << 20

// RewriteHTML returns doc with the href of every <a> and <area> that is an
// absolute http or https URL replaced by click(href), and, when pixel != "",
// an <img src="PIXEL" width="1" height="1" alt="" style="display:none">
// inserted just before the first </body> (appended when there is none).
//
// Other hrefs (mailto:, tel:, #anchors, relative) are left as they are, and
// so is an href for which click returns "" or the href itself: that is how
// Signer.ClickFunc leaves the signer's own links (e.g. an unsubscribe link)
// alone. click receives the href unescaped and trimmed of surrounding
// spaces; what it returns is HTML-escaped.
//
// Everything else is copied byte for byte from the raw tokens, so the
// document renders as its author wrote it. doc is at most MaxHTMLLen bytes.
func RewriteHTML(doc string, click func(href string) string, pixel string) (string, error) {
	if len(doc) > MaxHTMLLen {
		return "", fmt.Errorf("rewrite html: document is %d bytes, over %d", len(doc), MaxHTMLLen)
	}
	var out strings.Builder
	out.Grow(len(doc) + len(doc)/4 + len(pixel) + 128)
	pixelDone := pixel == ""
	z := xhtml.NewTokenizer(strings.NewReader(doc))
	off := 0 // bytes of doc consumed by tokens so far
	for {
		tt := z.Next()
		if tt == xhtml.ErrorToken {
			if err := z.Err(); err != io.EOF {
				return "", fmt.Errorf("rewrite html: %w", err)
			}
			break
		}
		raw := z.Raw()
		// Raw tokens partition the input; check it rather than trust it,
		// as the output is built from offsets.
		if !strings.HasPrefix(doc[off:], string(raw)) {
			return "", errors.New("rewrite html: tokenizer lost its place")
		}
		off += len(raw)
		switch tt {
		case xhtml.StartTagToken, xhtml.SelfClosingTagToken:
			out.Write(rewriteTag(z, raw, click))
			continue
		case xhtml.EndTagToken:
			if name, _ := z.TagName(); !pixelDone && string(name) == "body" {
				out.WriteString(pixelTag(pixel))
				pixelDone = true
			}
		}
		out.Write(raw)
	}
	// A tag cut off by the end of the document makes no token: keep its
	// bytes as they were.
	out.WriteString(doc[off:])
	if !pixelDone {
		out.WriteString(pixelTag(pixel))
	}
	return out.String(), nil
}

func pixelTag(src string) string {
	return `<img src="` + html.EscapeString(src) + `" width="1" height="1" alt="" style="display:none">`
}

// rewriteTag returns the raw bytes of a start tag with its href replaced
// when it is an <a> or <area> linking to an http or https URL.
func rewriteTag(z *xhtml.Tokenizer, raw []byte, click func(string) string) []byte {
	name, hasAttr := z.TagName()
	if !hasAttr || (string(name) != "a" && string(name) != "area") {
		return raw
	}
	raw = bytes.Clone(raw) // TagAttr may change the slice Raw returned
	attrs := tagAttrs(z)
	i := slices.IndexFunc(attrs, func(a xhtml.Attribute) bool { return a.Key == "href" })
	if i < 0 {
		return raw
	}
	target := strings.Trim(attrs[i].Val, " \t\n\f\r")
	if !isWebURL(target) {
		return raw
	}
	repl := click(target)
	if repl == "" || repl == target {
		return raw
	}
	span, ok := hrefSpan(raw)
	if !ok {
		return raw
	}
	tag := spliceValue(raw, span, html.EscapeString(repl))
	// Our reading of the tag must agree with the tokenizer's: the new tag
	// has to say exactly what the old one did but for the href. If not,
	// leaving the link untracked beats breaking it.
	attrs[i].Val = repl
	if !sameTag(tag, string(name), attrs) {
		return raw
	}
	return tag
}

// tagAttrs copies the attributes of the tokenizer's current tag.
func tagAttrs(z *xhtml.Tokenizer) []xhtml.Attribute {
	var attrs []xhtml.Attribute
	for more := true; more; {
		var k, v []byte
		k, v, more = z.TagAttr()
		attrs = append(attrs, xhtml.Attribute{Key: string(k), Val: string(v)})
	}
	return attrs
}

// sameTag tells whether the tokenizer reads tag as one start tag named name
// with exactly attrs.
func sameTag(tag []byte, name string, attrs []xhtml.Attribute) bool {
	z := xhtml.NewTokenizer(bytes.NewReader(tag))
	if tt := z.Next(); tt != xhtml.StartTagToken && tt != xhtml.SelfClosingTagToken {
		return false
	}
	if len(z.Raw()) != len(tag) {
		return false
	}
	if got, hasAttr := z.TagName(); string(got) != name || !hasAttr {
		return false
	}
	return slices.Equal(tagAttrs(z), attrs)
}

// valueSpan locates an attribute value in a raw tag: [start,end) without
// quotes; quoted tells whether quotes surround it.
type valueSpan struct {
	start, end int
	quoted     bool
}

// spliceValue replaces the value at span with the escaped value v, quoting
// it with double quotes when it was unquoted.
func spliceValue(raw []byte, span valueSpan, v string) []byte {
	var b bytes.Buffer
	b.Grow(len(raw) + len(v) + 2)
	b.Write(raw[:span.start])
	if span.quoted {
		b.WriteString(v)
	} else {
		b.WriteString(`"` + v + `"`)
	}
	b.Write(raw[span.end:])
	return b.Bytes()
}

// hrefSpan finds the value of the first href attribute in a raw start tag,
// reading attributes the way golang.org/x/net/html's tokenizer does (which
// follows the WHATWG tokenizer states), since the tokenizer does not expose
// offsets. The first occurrence of a name wins, as in browsers.
func hrefSpan(raw []byte) (valueSpan, bool) {
	t := tagScanner{b: raw, i: 1} // past '<'
	t.skipName()
	t.skipSpace()
	for t.i < len(t.b) && t.b[t.i] != '>' {
		key := t.readKey()
		val, hasVal := t.readValue()
		if asciiLower(key) == "href" {
			if !hasVal {
				return valueSpan{}, false
			}
			return val, true
		}
		t.skipSpace()
	}
	return valueSpan{}, false
}

// asciiLower lowercases ASCII letters only, as the tokenizer does with
// attribute names.
func asciiLower(b []byte) string {
	out := []byte(string(b))
	for i, c := range out {
		if 'A' <= c && c <= 'Z' {
			out[i] = c + 'a' - 'A'
		}
	}
	return string(out)
}

type tagScanner struct {
	b []byte
	i int
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '\f'
}

func (t *tagScanner) skipSpace() {
	for t.i < len(t.b) && isSpace(t.b[t.i]) {
		t.i++
	}
}

// skipName passes the tag name and, like the tokenizer, one space after it.
func (t *tagScanner) skipName() {
	for t.i < len(t.b) {
		c := t.b[t.i]
		if c == '/' || c == '>' {
			return
		}
		t.i++
		if isSpace(c) {
			return
		}
	}
}

func (t *tagScanner) readKey() []byte {
	start := t.i
	for t.i < len(t.b) {
		c := t.b[t.i]
		if c == '=' && t.i == start {
			t.i++ // a leading '=' is part of the name
			continue
		}
		if c == '=' || c == '/' || c == '>' || isSpace(c) {
			break
		}
		t.i++
	}
	return t.b[start:t.i]
}

func (t *tagScanner) readValue() (valueSpan, bool) {
	t.skipSpace()
	if t.i >= len(t.b) {
		return valueSpan{}, false
	}
	switch t.b[t.i] {
	case '/':
		t.i++
		return valueSpan{}, false
	case '=':
		t.i++
	default:
		return valueSpan{}, false
	}
	t.skipSpace()
	if t.i >= len(t.b) || t.b[t.i] == '>' {
		return valueSpan{start: t.i, end: t.i, quoted: false}, false
	}
	if q := t.b[t.i]; q == '"' || q == '\'' {
		start := t.i + 1
		end := bytes.IndexByte(t.b[start:], q)
		if end < 0 {
			return valueSpan{}, false
		}
		t.i = start + end + 1
		return valueSpan{start: start, end: start + end, quoted: true}, true
	}
	start := t.i
	for t.i < len(t.b) && !isSpace(t.b[t.i]) && t.b[t.i] != '>' {
		t.i++
	}
	return valueSpan{start: start, end: t.i}, true
}
