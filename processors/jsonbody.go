package processors

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/notifyd/notifyd/schemas"
)

// A webhook's body is a JSON document written by the template's author whose
// string values are templates; its structure (keys, numbers, booleans, null,
// arrays, objects) is not. Each templated string is rendered and written back
// JSON-encoded by encoding/json, so no data value can end a string and add a
// field. Everything else is sent byte for byte as the author wrote it: key
// order and whitespace included, for receivers that sign or compare bodies.

// maxBodyDepth bounds the nesting of a webhook body: deeper is no payload
// anyone needs, and the check keeps hostile documents cheap.
const maxBodyDepth = 100

// webhookBody is a parsed webhook body template.
type webhookBody struct {
	src    string     // the document as the author wrote it
	leaves []bodyLeaf // templated string values, in document order
}

// bodyLeaf is a string value of the document that holds a template action.
// String values without "{{" are literal and stay as written.
type bodyLeaf struct {
	start, end int    // the JSON string in src, quotes included
	pointer    string // RFC 6901 pointer to the value, for errors
	tmpl       string // the decoded string: the template's source
}

// BodyError is a webhook body that is not a document notifyd can render:
// not JSON, too deep, duplicate or templated keys, or a string value that is
// not a valid template. Pointer names the value (RFC 6901) when there is one.
type BodyError struct {
	Pointer string
	Err     error
}

func (e *BodyError) Error() string {
	if e.Pointer == "" {
		return e.Err.Error()
	}
	return fmt.Sprintf("at %s: %v", e.Pointer, e.Err)
}

func (e *BodyError) Unwrap() error { return e.Err }

// bodyFrame is an open object or array while parsing.
type bodyFrame struct {
	object    bool
	expectKey bool            // object: the next string is a key
	key       string          // object: the key of the value being read
	index     int             // array: the index of the value being read
	keys      map[string]bool // object: keys seen, to refuse duplicates
	pointer   string          // the container's own pointer
}

// parseWebhookBody reads src as a webhook body template. It refuses what is
// not exactly one JSON value, nesting deeper than maxBodyDepth, duplicate
// keys (receivers disagree on which one wins) and keys holding "{{" (keys are
// not templates; a key that looks like one would be sent as written).
func parseWebhookBody(src string) (*webhookBody, error) {
	if !utf8.ValidString(src) {
		return nil, &BodyError{Err: errors.New("not valid UTF-8")}
	}
	p := bodyParser{dec: json.NewDecoder(strings.NewReader(src)), body: &webhookBody{src: src}}
	p.dec.UseNumber()
	if err := p.run(); err != nil {
		return nil, err
	}
	return p.body, nil
}

type bodyParser struct {
	dec   *json.Decoder
	body  *webhookBody
	stack []*bodyFrame
	done  bool // the top-level value is complete
}

func (p *bodyParser) run() error {
	for {
		before := int(p.dec.InputOffset())
		tok, err := p.dec.Token()
		if err == io.EOF {
			return p.end()
		}
		if err != nil {
			return &BodyError{Err: syntaxError(err)}
		}
		if p.done {
			return &BodyError{Err: fmt.Errorf("not a JSON document: more data after the top-level value, which ends at offset %d", before)}
		}
		if err := p.token(tok, before); err != nil {
			return err
		}
	}
}

func (p *bodyParser) end() error {
	switch {
	case len(p.stack) > 0:
		return &BodyError{Err: errors.New("not a JSON document: unexpected end of input")}
	case !p.done:
		return &BodyError{Err: errors.New("not a JSON document: empty")}
	}
	return nil
}

func syntaxError(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		err = fmt.Errorf("%v (near offset %d)", se, se.Offset)
	}
	return fmt.Errorf("not a JSON document (a webhook body is JSON whose string values are templates): %w", err)
}

// token takes one token that began after byte before of the source.
func (p *bodyParser) token(tok json.Token, before int) error {
	top := p.top()
	if s, ok := tok.(string); ok && top != nil && top.object && top.expectKey {
		return p.key(top, s)
	}
	switch tok {
	case json.Delim('{'), json.Delim('['):
		if len(p.stack) >= maxBodyDepth {
			return &BodyError{Pointer: p.pointer(), Err: fmt.Errorf("nested deeper than %d levels", maxBodyDepth)}
		}
		f := &bodyFrame{object: tok == json.Delim('{'), pointer: p.pointer()}
		if f.object {
			f.expectKey, f.keys = true, map[string]bool{}
		}
		p.stack = append(p.stack, f)
		return nil
	case json.Delim('}'), json.Delim(']'):
		p.stack = p.stack[:len(p.stack)-1]
	default:
		if s, ok := tok.(string); ok && strings.Contains(s, "{{") {
			end := int(p.dec.InputOffset())
			start := before + strings.IndexByte(p.body.src[before:end], '"')
			p.body.leaves = append(p.body.leaves, bodyLeaf{start: start, end: end, pointer: p.pointer(), tmpl: s})
		}
	}
	p.valueDone()
	return nil
}

func (p *bodyParser) key(f *bodyFrame, k string) error {
	at := f.pointer + "/" + escapePointer(k)
	if strings.Contains(k, "{{") {
		return &BodyError{Pointer: at, Err: errors.New("object keys are not templates: only string values are rendered")}
	}
	if f.keys[k] {
		return &BodyError{Pointer: at, Err: fmt.Errorf("duplicate key %q", k)}
	}
	f.keys[k], f.key, f.expectKey = true, k, false
	return nil
}

// valueDone moves past a complete value in the innermost container.
func (p *bodyParser) valueDone() {
	top := p.top()
	switch {
	case top == nil:
		p.done = true
	case top.object:
		top.expectKey = true
	default:
		top.index++
	}
}

func (p *bodyParser) top() *bodyFrame {
	if len(p.stack) == 0 {
		return nil
	}
	return p.stack[len(p.stack)-1]
}

// pointer is the RFC 6901 pointer of the value being read.
func (p *bodyParser) pointer() string {
	top := p.top()
	switch {
	case top == nil:
		return ""
	case top.object:
		return top.pointer + "/" + escapePointer(top.key)
	default:
		return top.pointer + "/" + strconv.Itoa(top.index)
	}
}

var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

func escapePointer(k string) string { return pointerEscaper.Replace(k) }

// ValidateWebhookBody checks a webhook body template as a PUT does: one JSON
// document (see parseWebhookBody) whose templated string values each pass
// the checks every template field passes, with lim's iteration budget. The
// error names the value's pointer inside the body.
func ValidateWebhookBody(src string, lim RenderLimits) error {
	body, err := parseWebhookBody(src)
	if err != nil {
		return err
	}
	for _, l := range body.leaves {
		if err := checkSource("body", l.tmpl, false, lim); err != nil {
			return &BodyError{Pointer: l.pointer, Err: err}
		}
	}
	return nil
}

// Parsed bodies are cached like parsed templates, by template version and
// source, and dropped whole past maxParsed.
var (
	bodiesMu sync.Mutex
	bodies   = map[string]*webhookBody{}
)

func cachedWebhookBody(t *schemas.Template, src string) (*webhookBody, error) {
	key := t.ID + "\x00" + strconv.FormatInt(t.UpdatedAt, 10) + "\x00" + src
	bodiesMu.Lock()
	body, ok := bodies[key]
	bodiesMu.Unlock()
	if ok {
		return body, nil
	}
	body, err := parseWebhookBody(src)
	if err != nil {
		return nil, err
	}
	bodiesMu.Lock()
	if len(bodies) >= maxParsed {
		bodies = map[string]*webhookBody{}
	}
	bodies[key] = body
	bodiesMu.Unlock()
	return body, nil
}

// renderWebhookBody renders each templated string value of src and writes it
// back with encoding/json; the rest of the document is copied as written.
// The whole document counts against the channel's output budget, escapes
// included. A stored body that is not a JSON document (a template written
// before bodies were checked, or around the API) is a *BodyError: the
// notification is rejected with it.
func renderWebhookBody(t *schemas.Template, channel, src string, data map[string]any, b *renderBudget) (string, error) {
	body, err := cachedWebhookBody(t, src)
	if err != nil {
		return "", err
	}
	usedBefore := b.used
	var doc bytes.Buffer
	doc.Grow(len(src))
	last := 0
	for _, l := range body.leaves {
		s, err := renderOne(t, channel, "body"+l.pointer, l.tmpl, false, data, b)
		if err != nil {
			var be *BudgetError
			if errors.As(err, &be) {
				return "", err
			}
			return "", &BodyError{Pointer: l.pointer, Err: err}
		}
		enc, err := json.Marshal(s)
		if err != nil { // a string always marshals; kept for the contract
			return "", &BodyError{Pointer: l.pointer, Err: err}
		}
		doc.WriteString(src[last:l.start])
		doc.Write(enc)
		last = l.end
	}
	doc.WriteString(src[last:])
	if err := b.recount(usedBefore, doc.Bytes()); err != nil {
		return "", err
	}
	return doc.String(), nil
}
