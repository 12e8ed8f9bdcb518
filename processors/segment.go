package processors

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/notifyd/notifyd/schemas"
)

// Bounds of a segment expression. Expressions come from campaign authors and
// run against every profile of a tenant, so careless or hostile input must
// stay cheap to parse and to match.
const (
	maxSegmentLen      = 4096 // bytes of the expression, and of its canonical form
	maxSegmentDepth    = 32   // nested parentheses and NOTs
	maxSegmentCmps     = 256  // comparisons in one expression
	maxSegmentInValues = 1000 // values of one IN list
	maxSegmentAttrName = 64   // bytes of an attribute name
	// segmentInSetMin is the IN list size from which values are looked up in
	// a map instead of compared one by one.
	segmentInSetMin = 8
)

// Segment is a parsed segment expression: the profiles a campaign targets.
//
// Grammar (keywords AND, OR, NOT, IN, EXISTS and the field names are
// case-insensitive; attribute names are not):
//
//	expr   := and ("OR" and)*
//	and    := unary ("AND" unary)*
//	unary  := "NOT" unary | "(" expr ")" | field op
//	op     := ("=" | "!=") value | "^=" string | ("<" | "<=" | ">" | ">=") number
//	        | ["NOT"] "IN" "(" value ("," value)* ")" | "EXISTS"
//	field  := "userId" | "locale" | "timezone" | "attributes." name
//	value  := string | number
//
// A name is 1 to 64 ASCII letters, digits, '_', '-' or '.'. A string is
// double-quoted; \" and \\ are its only escapes. A number is written
// -?digits[.digits][(e|E)[+|-]digits].
//
// Matching is exact and case-sensitive: locale = "de" does not match a
// profile whose locale is "de-AT"; locale ^= "de" (prefix) does. A missing
// attribute is "" for =, !=, ^= and IN. Against a number literal, =, != and IN
// compare numerically, and the ordered operators compare numbers only: they
// are false when the field is not a finite decimal number (missing included).
// EXISTS is true when the attribute key is present, even with an empty value;
// for userId, locale and timezone it is true when the field is not empty.
type Segment struct {
	root *segNode
	text string // canonical form, built once by ParseSegment
}

type segKind uint8

const (
	segOr segKind = iota
	segAnd
	segNot
	segLeaf
)

// segNode is one node of a parsed expression. OR and AND nodes are flattened
// (no OR directly under an OR), so the canonical form re-parses to the same
// tree.
type segNode struct {
	kind segKind
	kids []*segNode // OR, AND: two or more; NOT: one
	cmp  *segCmp    // comparison
}

type segField uint8

const (
	fieldUserID segField = iota
	fieldLocale
	fieldTimezone
	fieldAttr
)

var segFieldNames = [...]string{fieldUserID: "userId", fieldLocale: "locale", fieldTimezone: "timezone"}

type segOp uint8

const (
	opEq segOp = iota
	opNe
	opPrefix
	opLt
	opLe
	opGt
	opGe
	opIn
	opNotIn
	opExists
)

var segOpText = [...]string{
	opEq: "=", opNe: "!=", opPrefix: "^=", opLt: "<", opLe: "<=", opGt: ">", opGe: ">=",
	opIn: "IN", opNotIn: "NOT IN", opExists: "EXISTS",
}

// segValue is a literal of an expression.
type segValue struct {
	str   string
	num   float64
	isNum bool
}

// segCmp is one comparison of a field with literals.
type segCmp struct {
	field segField
	attr  string // attribute name of fieldAttr
	op    segOp
	val   segValue   // =, !=, ^=, <, <=, >, >=
	list  []segValue // IN, NOT IN: the values as written, for String
	// The IN values prepared for matching: slices while short, maps beyond.
	strs   []string
	nums   []float64
	strSet map[string]struct{}
	numSet map[float64]struct{}
}

// ParseSegment parses a segment expression (see Segment for the grammar).
// Errors name the 1-based column, counted in characters from the start of
// the expression, and what was expected there.
func ParseSegment(expr string) (*Segment, error) {
	if len(expr) > maxSegmentLen {
		return nil, fmt.Errorf("segment: expression is %d bytes, at most %d", len(expr), maxSegmentLen)
	}
	p := &segParser{src: expr}
	if err := p.advance(); err != nil {
		return nil, err
	}
	if p.tok.kind == segTokEOF {
		return nil, fmt.Errorf(`segment: column 1: empty expression, expected a comparison such as locale = "de"`)
	}
	root, err := p.parseOr(0)
	if err != nil {
		return nil, err
	}
	if p.tok.kind != segTokEOF {
		return nil, p.errAt(p.tok.off, `expected "AND", "OR" or the end of the expression, found %s`, p.describe())
	}
	var b strings.Builder
	root.format(&b)
	s := &Segment{root: root, text: b.String()}
	// Spacing and number formatting can make the canonical form longer than
	// a tersely written expression; it must still parse.
	if len(s.text) > maxSegmentLen {
		return nil, fmt.Errorf("segment: expression is %d bytes in canonical form, at most %d", len(s.text), maxSegmentLen)
	}
	return s, nil
}

// Match tells whether the profile belongs to the segment. A nil profile or
// segment matches nothing. Match does not allocate, except when a field holds
// a decimal number too large for a float64.
func (s *Segment) Match(p *schemas.Profile) bool {
	if s == nil || s.root == nil || p == nil {
		return false
	}
	return s.root.match(p)
}

// String returns the canonical form of the expression: upper-case keywords,
// canonical field names and numbers, single spaces, and parentheses only
// where precedence needs them. It re-parses to the same Segment.
func (s *Segment) String() string {
	if s == nil {
		return ""
	}
	return s.text
}

func (n *segNode) match(p *schemas.Profile) bool {
	switch n.kind {
	case segOr:
		for _, k := range n.kids {
			if k.match(p) {
				return true
			}
		}
		return false
	case segAnd:
		for _, k := range n.kids {
			if !k.match(p) {
				return false
			}
		}
		return true
	case segNot:
		return !n.kids[0].match(p)
	default:
		return n.cmp.match(p)
	}
}

func (c *segCmp) match(p *schemas.Profile) bool {
	var v string
	var present bool
	switch c.field {
	case fieldUserID:
		v = p.UserID
		present = v != ""
	case fieldLocale:
		v = p.Locale
		present = v != ""
	case fieldTimezone:
		v = p.Timezone
		present = v != ""
	default:
		v, present = p.Attributes[c.attr]
	}
	switch c.op {
	case opEq:
		return c.val.equals(v)
	case opNe:
		return !c.val.equals(v)
	case opPrefix:
		return strings.HasPrefix(v, c.val.str)
	case opLt, opLe, opGt, opGe:
		f, ok := segNumber(v)
		if !ok {
			return false
		}
		switch c.op {
		case opLt:
			return f < c.val.num
		case opLe:
			return f <= c.val.num
		case opGt:
			return f > c.val.num
		default:
			return f >= c.val.num
		}
	case opIn:
		return c.in(v)
	case opNotIn:
		return !c.in(v)
	default:
		return present
	}
}

func (v *segValue) equals(s string) bool {
	if !v.isNum {
		return s == v.str
	}
	f, ok := segNumber(s)
	return ok && f == v.num
}

func (c *segCmp) in(v string) bool {
	if c.strSet != nil {
		if _, ok := c.strSet[v]; ok {
			return true
		}
	} else {
		for _, s := range c.strs {
			if s == v {
				return true
			}
		}
	}
	if len(c.nums) == 0 && c.numSet == nil {
		return false
	}
	f, ok := segNumber(v)
	if !ok {
		return false
	}
	if c.numSet != nil {
		_, ok = c.numSet[f]
		return ok
	}
	for _, n := range c.nums {
		if n == f {
			return true
		}
	}
	return false
}

// segNumber reads a profile field as a finite decimal number. The syntax is
// checked first because strconv.ParseFloat allocates its error, and most
// fields that are not numbers (a missing attribute is "") should cost nothing.
// Hexadecimal, "Inf" and "NaN" are not numbers here.
func segNumber(s string) (float64, bool) {
	if !isDecimal(s) {
		return 0, false
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil { // out of range
		return 0, false
	}
	return f, true
}

// isDecimal reports whether s is [+-]digits[.digits][(e|E)[+-]digits], where
// either side of the point may be empty but not both.
func isDecimal(s string) bool {
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	digits := 0
	for i < len(s) && isDigit(s[i]) {
		i++
		digits++
	}
	if i < len(s) && s[i] == '.' {
		i++
		for i < len(s) && isDigit(s[i]) {
			i++
			digits++
		}
	}
	if digits == 0 {
		return false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		exp := i
		for i < len(s) && isDigit(s[i]) {
			i++
		}
		if i == exp {
			return false
		}
	}
	return i == len(s)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isASCIILetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// isWordByte: the bytes of keywords, field and attribute names.
func isWordByte(c byte) bool {
	return isASCIILetter(c) || isDigit(c) || c == '_' || c == '-' || c == '.'
}

// format writes the canonical form of n.
func (n *segNode) format(b *strings.Builder) {
	switch n.kind {
	case segOr, segAnd:
		sep := " OR "
		if n.kind == segAnd {
			sep = " AND "
		}
		for i, k := range n.kids {
			if i > 0 {
				b.WriteString(sep)
			}
			// Under an AND only an OR needs parentheses; OR has no OR kids.
			k.formatIn(b, k.kind == segOr)
		}
	case segNot:
		b.WriteString("NOT ")
		k := n.kids[0]
		k.formatIn(b, k.kind == segOr || k.kind == segAnd)
	default:
		n.cmp.format(b)
	}
}

func (n *segNode) formatIn(b *strings.Builder, parens bool) {
	if parens {
		b.WriteByte('(')
	}
	n.format(b)
	if parens {
		b.WriteByte(')')
	}
}

func (c *segCmp) format(b *strings.Builder) {
	if c.field == fieldAttr {
		b.WriteString("attributes.")
		b.WriteString(c.attr)
	} else {
		b.WriteString(segFieldNames[c.field])
	}
	b.WriteByte(' ')
	b.WriteString(segOpText[c.op])
	switch c.op {
	case opExists:
	case opIn, opNotIn:
		b.WriteString(" (")
		for i, v := range c.list {
			if i > 0 {
				b.WriteString(", ")
			}
			v.format(b)
		}
		b.WriteByte(')')
	default:
		b.WriteByte(' ')
		c.val.format(b)
	}
}

func (v segValue) format(b *strings.Builder) {
	if v.isNum {
		// The shortest form that parses back to the same float64; its
		// exponent form (1e+21) is within the grammar.
		b.WriteString(strconv.FormatFloat(v.num, 'g', -1, 64))
		return
	}
	b.WriteByte('"')
	for i := 0; i < len(v.str); i++ {
		if c := v.str[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(v.str[i])
	}
	b.WriteByte('"')
}

type segTokKind uint8

const (
	segTokEOF segTokKind = iota
	segTokWord
	segTokString
	segTokNumber
	segTokOp
	segTokLParen
	segTokRParen
	segTokComma
)

type segToken struct {
	kind segTokKind
	off  int    // byte offset in the expression
	text string // as written
	str  string // segTokString: the decoded value
	num  float64
}

// segParser is a recursive-descent parser with one token of lookahead; every
// byte is scanned once, so parsing is linear in the expression's length.
type segParser struct {
	src  string
	pos  int      // next byte to scan
	tok  segToken // current token
	cmps int
}

func (p *segParser) errAt(off int, format string, args ...any) error {
	col := utf8.RuneCountInString(p.src[:off]) + 1
	return fmt.Errorf("segment: column %d: %s", col, fmt.Sprintf(format, args...))
}

// describe names the current token in an error.
func (p *segParser) describe() string {
	switch p.tok.kind {
	case segTokEOF:
		return "the end of the expression"
	case segTokString:
		return "a string"
	case segTokNumber:
		return "the number " + p.tok.text
	default:
		t := p.tok.text
		if len(t) > 40 {
			t = t[:40] + "..."
		}
		return strconv.Quote(t)
	}
}

func (p *segParser) advance() error {
	src := p.src
	i := p.pos
	for i < len(src) && (src[i] == ' ' || src[i] == '\t' || src[i] == '\n' || src[i] == '\r') {
		i++
	}
	start := i
	if i == len(src) {
		p.tok = segToken{kind: segTokEOF, off: i}
		return nil
	}
	c := src[i]
	switch {
	case isASCIILetter(c):
		i++
		for i < len(src) && isWordByte(src[i]) {
			i++
		}
		p.tok = segToken{kind: segTokWord, off: start, text: src[start:i]}
	case isDigit(c) || c == '-' && i+1 < len(src) && isDigit(src[i+1]):
		end := scanSegNumber(src, i)
		if end < len(src) && isWordByte(src[end]) {
			bad := end
			for bad < len(src) && isWordByte(src[bad]) {
				bad++
			}
			return p.errAt(start, "malformed number %q", src[start:bad])
		}
		f, err := strconv.ParseFloat(src[start:end], 64)
		if err != nil {
			return p.errAt(start, "number %s is out of range", src[start:end])
		}
		i = end
		p.tok = segToken{kind: segTokNumber, off: start, text: src[start:end], num: f}
	case c == '"':
		str, end, err := p.scanString(start)
		if err != nil {
			return err
		}
		i = end
		p.tok = segToken{kind: segTokString, off: start, text: src[start:end], str: str}
	case c == '(' || c == ')' || c == ',':
		i++
		kind := segTokComma
		switch c {
		case '(':
			kind = segTokLParen
		case ')':
			kind = segTokRParen
		}
		p.tok = segToken{kind: kind, off: start, text: src[start:i]}
	case c == '=':
		i++
		p.tok = segToken{kind: segTokOp, off: start, text: "="}
	case c == '!' || c == '^':
		if i+1 == len(src) || src[i+1] != '=' {
			return p.errAt(start, `expected "=" after %q`, string(c))
		}
		i += 2
		p.tok = segToken{kind: segTokOp, off: start, text: src[start:i]}
	case c == '<' || c == '>':
		i++
		if i < len(src) && src[i] == '=' {
			i++
		}
		p.tok = segToken{kind: segTokOp, off: start, text: src[start:i]}
	default:
		r, _ := utf8.DecodeRuneInString(src[i:])
		if r == utf8.RuneError {
			return p.errAt(start, "unexpected byte %#x", c)
		}
		return p.errAt(start, "unexpected character %q", r)
	}
	p.pos = i
	return nil
}

// scanSegNumber returns the end of the number literal at i:
// -?digits[.digits][(e|E)[+|-]digits]. A dangling point or exponent is left
// for the caller to report as malformed.
func scanSegNumber(src string, i int) int {
	if src[i] == '-' {
		i++
	}
	for i < len(src) && isDigit(src[i]) {
		i++
	}
	if i+1 < len(src) && src[i] == '.' && isDigit(src[i+1]) {
		i += 2
		for i < len(src) && isDigit(src[i]) {
			i++
		}
	}
	if i < len(src) && (src[i] == 'e' || src[i] == 'E') {
		j := i + 1
		if j < len(src) && (src[j] == '+' || src[j] == '-') {
			j++
		}
		if j < len(src) && isDigit(src[j]) {
			for j < len(src) && isDigit(src[j]) {
				j++
			}
			i = j
		}
	}
	return i
}

// scanString decodes the string literal whose opening quote is at start and
// returns its value and the offset after its closing quote.
func (p *segParser) scanString(start int) (string, int, error) {
	src := p.src
	var b strings.Builder
	escaped := false
	run := start + 1 // start of the bytes not yet copied to b
	for i := start + 1; ; {
		if i == len(src) {
			return "", 0, p.errAt(start, "unterminated string")
		}
		switch src[i] {
		case '"':
			if !escaped {
				return src[run:i], i + 1, nil
			}
			b.WriteString(src[run:i])
			return b.String(), i + 1, nil
		case '\\':
			if i+1 == len(src) {
				return "", 0, p.errAt(start, "unterminated string")
			}
			if e := src[i+1]; e != '"' && e != '\\' {
				r, n := utf8.DecodeRuneInString(src[i+1:])
				if r == utf8.RuneError && n <= 1 {
					return "", 0, p.errAt(i, `unknown escape "\\" followed by byte %#x in string (only \" and \\ are escapes)`, e)
				}
				return "", 0, p.errAt(i, `unknown escape %s in string (only \" and \\ are escapes)`, strconv.Quote(src[i:i+1+n]))
			}
			b.WriteString(src[run:i])
			b.WriteByte(src[i+1])
			escaped = true
			i += 2
			run = i
		default:
			i++
		}
	}
}

func (p *segParser) atKeyword(kw string) bool {
	return p.tok.kind == segTokWord && strings.EqualFold(p.tok.text, kw)
}

func isSegKeyword(w string) bool {
	for _, kw := range [...]string{"AND", "OR", "NOT", "IN", "EXISTS"} {
		if strings.EqualFold(w, kw) {
			return true
		}
	}
	return false
}

// add appends kid to an OR or AND node, flattening a kid of the same kind.
func (n *segNode) add(kid *segNode) {
	if kid.kind == n.kind {
		n.kids = append(n.kids, kid.kids...)
		return
	}
	n.kids = append(n.kids, kid)
}

func (p *segParser) parseOr(depth int) (*segNode, error) {
	return p.parseList(depth, segOr, "OR", p.parseAnd)
}

func (p *segParser) parseAnd(depth int) (*segNode, error) {
	return p.parseList(depth, segAnd, "AND", p.parseUnary)
}

// parseList parses operand (keyword operand)* into an OR or AND node.
func (p *segParser) parseList(depth int, kind segKind, kw string, operand func(int) (*segNode, error)) (*segNode, error) {
	first, err := operand(depth)
	if err != nil || !p.atKeyword(kw) {
		return first, err
	}
	n := &segNode{kind: kind}
	n.add(first)
	for p.atKeyword(kw) {
		if err := p.advance(); err != nil {
			return nil, err
		}
		k, err := operand(depth)
		if err != nil {
			return nil, err
		}
		n.add(k)
	}
	return n, nil
}

func (p *segParser) parseUnary(depth int) (*segNode, error) {
	isNot := p.atKeyword("NOT")
	if !isNot && p.tok.kind != segTokLParen {
		return p.parseCmp()
	}
	open := p.tok.off
	if depth+1 > maxSegmentDepth {
		return nil, p.errAt(open, "nesting deeper than %d (parentheses and NOTs)", maxSegmentDepth)
	}
	if err := p.advance(); err != nil {
		return nil, err
	}
	if isNot {
		k, err := p.parseUnary(depth + 1)
		if err != nil {
			return nil, err
		}
		return &segNode{kind: segNot, kids: []*segNode{k}}, nil
	}
	n, err := p.parseOr(depth + 1)
	if err != nil {
		return nil, err
	}
	if p.tok.kind != segTokRParen {
		return nil, p.errAt(p.tok.off, `expected ")" to close the "(" at column %d, found %s`,
			utf8.RuneCountInString(p.src[:open])+1, p.describe())
	}
	return n, p.advance()
}

func (p *segParser) parseCmp() (*segNode, error) {
	ftok := p.tok
	if ftok.kind != segTokWord || isSegKeyword(ftok.text) {
		return nil, p.errAt(ftok.off, `expected a field, "NOT" or "(", found %s`, p.describe())
	}
	c := &segCmp{}
	if err := p.field(c); err != nil {
		return nil, err
	}
	if p.cmps++; p.cmps > maxSegmentCmps {
		return nil, p.errAt(ftok.off, "more than %d comparisons", maxSegmentCmps)
	}
	if err := p.advance(); err != nil {
		return nil, err
	}
	optok := p.tok
	switch {
	case optok.kind == segTokOp:
		if err := p.advance(); err != nil {
			return nil, err
		}
		switch optok.text {
		case "=", "!=":
			c.op = opEq
			if optok.text == "!=" {
				c.op = opNe
			}
			if p.tok.kind != segTokString && p.tok.kind != segTokNumber {
				return nil, p.errAt(p.tok.off, "expected a value after %q, found %s", optok.text, p.describe())
			}
		case "^=":
			c.op = opPrefix
			if p.tok.kind != segTokString {
				return nil, p.errAt(p.tok.off, `expected a string after "^=", found %s`, p.describe())
			}
		default:
			switch optok.text {
			case "<":
				c.op = opLt
			case "<=":
				c.op = opLe
			case ">":
				c.op = opGt
			default:
				c.op = opGe
			}
			if p.tok.kind != segTokNumber {
				return nil, p.errAt(p.tok.off, "expected a number after %q, found %s", optok.text, p.describe())
			}
		}
		c.val = p.value()
		if err := p.advance(); err != nil {
			return nil, err
		}
	case p.atKeyword("EXISTS"):
		c.op = opExists
		if err := p.advance(); err != nil {
			return nil, err
		}
	case p.atKeyword("IN"), p.atKeyword("NOT"):
		c.op = opIn
		if p.atKeyword("NOT") {
			c.op = opNotIn
			if err := p.advance(); err != nil {
				return nil, err
			}
			if !p.atKeyword("IN") {
				return nil, p.errAt(p.tok.off, `expected "IN" after "NOT", found %s`, p.describe())
			}
		}
		if err := p.advance(); err != nil {
			return nil, err
		}
		if err := p.inList(c); err != nil {
			return nil, err
		}
	default:
		return nil, p.errAt(optok.off, "expected an operator (=, !=, ^=, <, <=, >, >=, IN, NOT IN or EXISTS) after %s, found %s",
			strconv.Quote(ftok.text), p.describe())
	}
	return &segNode{kind: segLeaf, cmp: c}, nil
}

// field reads the current word as a field name into c.
func (p *segParser) field(c *segCmp) error {
	w := p.tok.text
	for f, name := range segFieldNames {
		if strings.EqualFold(w, name) {
			c.field = segField(f)
			return nil
		}
	}
	const prefix = "attributes."
	switch {
	case len(w) >= len(prefix) && strings.EqualFold(w[:len(prefix)], prefix):
		name := w[len(prefix):]
		if name == "" {
			return p.errAt(p.tok.off, `expected an attribute name after "attributes."`)
		}
		if len(name) > maxSegmentAttrName {
			return p.errAt(p.tok.off, "attribute name is %d bytes, at most %d", len(name), maxSegmentAttrName)
		}
		c.field, c.attr = fieldAttr, name
		return nil
	case strings.EqualFold(w, "attributes"):
		return p.errAt(p.tok.off, `expected an attribute name: attributes.<name>`)
	default:
		return p.errAt(p.tok.off, "unknown field %s (fields: userId, locale, timezone, attributes.<name>)", p.describe())
	}
}

// value returns the current string or number token as a literal.
func (p *segParser) value() segValue {
	if p.tok.kind == segTokNumber {
		return segValue{num: p.tok.num, isNum: true}
	}
	return segValue{str: p.tok.str}
}

// inList parses "(" value ("," value)* ")" into c.
func (p *segParser) inList(c *segCmp) error {
	if p.tok.kind != segTokLParen {
		return p.errAt(p.tok.off, `expected "(" after "IN", found %s`, p.describe())
	}
	for {
		if err := p.advance(); err != nil {
			return err
		}
		if p.tok.kind != segTokString && p.tok.kind != segTokNumber {
			return p.errAt(p.tok.off, "expected a value in the IN list, found %s", p.describe())
		}
		if len(c.list) == maxSegmentInValues {
			return p.errAt(p.tok.off, "IN list has more than %d values", maxSegmentInValues)
		}
		c.list = append(c.list, p.value())
		if err := p.advance(); err != nil {
			return err
		}
		if p.tok.kind == segTokRParen {
			break
		}
		if p.tok.kind != segTokComma {
			return p.errAt(p.tok.off, `expected "," or ")" in the IN list, found %s`, p.describe())
		}
	}
	for _, v := range c.list {
		if v.isNum {
			c.nums = append(c.nums, v.num)
		} else {
			c.strs = append(c.strs, v.str)
		}
	}
	if len(c.strs) >= segmentInSetMin {
		c.strSet = make(map[string]struct{}, len(c.strs))
		for _, s := range c.strs {
			c.strSet[s] = struct{}{}
		}
		c.strs = nil
	}
	if len(c.nums) >= segmentInSetMin {
		c.numSet = make(map[float64]struct{}, len(c.nums))
		for _, f := range c.nums {
			c.numSet[f] = struct{}{}
		}
		c.nums = nil
	}
	return p.advance()
}
