package processors

import (
	"bytes"
	"encoding/json"
	"fmt"
	htmltemplate "html/template"
	"strconv"
	"strings"
	"sync"
	texttemplate "text/template"

	"github.com/notifyd/notifyd/schemas"
)

// SelectContent picks a template's content for a channel and locale: the exact
// locale ("zh-CN"), then its language ("zh"), then the template's default.
func SelectContent(t *schemas.Template, channel, locale string) (schemas.ChannelContent, string, bool) {
	if locale != "" {
		candidates := []string{locale}
		if lang, _, ok := strings.Cut(locale, "-"); ok {
			candidates = append(candidates, lang)
		}
		for _, l := range candidates {
			if c, ok := t.Locales[l][channel]; ok {
				return c, l, true
			}
		}
	}
	c, ok := t.Channels[channel]
	return c, "", ok
}

// RenderError is a template that cannot be rendered with the data given.
type RenderError struct {
	Template, Channel, Field string
	Err                      error
}

func (e *RenderError) Error() string {
	return fmt.Sprintf("render %s/%s %s: %v", e.Template, e.Channel, e.Field, e.Err)
}

func (e *RenderError) Unwrap() error { return e.Err }

// ParseData reads a request's data (a JSON object) for rendering.
func ParseData(data string) (map[string]any, error) {
	m := map[string]any{}
	if data == "" {
		return m, nil
	}
	d := json.NewDecoder(strings.NewReader(data))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		return nil, fmt.Errorf("data is not a JSON object: %w", err)
	}
	if m == nil { // "null"
		m = map[string]any{}
	}
	return m, nil
}

// Render fills a channel's content with data. Email HTML is rendered with
// html/template (contextual escaping), everything else with text/template.
// A variable missing from data is an error, never an empty string.
func Render(t *schemas.Template, channel string, cc schemas.ChannelContent, data map[string]any) (schemas.Content, error) {
	var out schemas.Content
	fields := []struct {
		name string
		src  string
		dst  *string
		html bool
	}{
		{"subject", cc.Subject, &out.Subject, false},
		{"html", cc.HTML, &out.HTML, true},
		{"text", cc.Text, &out.Text, false},
		{"title", cc.Title, &out.Title, false},
		{"body", cc.Body, &out.Body, false},
	}
	for _, f := range fields {
		if f.src == "" {
			continue
		}
		s, err := renderOne(t, channel, f.name, f.src, f.html, data)
		if err != nil {
			return out, &RenderError{Template: t.ID, Channel: channel, Field: f.name, Err: err}
		}
		*f.dst = s
	}
	out.Endpoint = cc.Endpoint
	return out, nil
}

type executor interface {
	Execute(w *bytes.Buffer, data any) error
}

type htmlExec struct{ t *htmltemplate.Template }

func (h htmlExec) Execute(w *bytes.Buffer, data any) error { return h.t.Execute(w, data) }

type textExec struct{ t *texttemplate.Template }

func (x textExec) Execute(w *bytes.Buffer, data any) error { return x.t.Execute(w, data) }

// Parsed templates are cached by template version and source; the cache is
// dropped whole when it grows past its bound.
var (
	parsedMu sync.Mutex
	parsed   = map[string]executor{}
)

const maxParsed = 10000

func renderOne(t *schemas.Template, channel, field, src string, html bool, data map[string]any) (string, error) {
	key := t.ID + "\x00" + strconv.FormatInt(t.UpdatedAt, 10) + "\x00" + strconv.FormatBool(html) + "\x00" + src
	parsedMu.Lock()
	ex, ok := parsed[key]
	parsedMu.Unlock()
	if !ok {
		name := t.ID + "/" + channel + "/" + field
		if html {
			pt, err := htmltemplate.New(name).Option("missingkey=error").Parse(src)
			if err != nil {
				return "", err
			}
			ex = htmlExec{pt}
		} else {
			pt, err := texttemplate.New(name).Option("missingkey=error").Parse(src)
			if err != nil {
				return "", err
			}
			ex = textExec{pt}
		}
		parsedMu.Lock()
		if len(parsed) >= maxParsed {
			parsed = map[string]executor{}
		}
		parsed[key] = ex
		parsedMu.Unlock()
	}
	var buf bytes.Buffer
	if err := ex.Execute(&buf, data); err != nil {
		return "", err
	}
	return buf.String(), nil
}

// ValidateTemplate parses every content field, so a broken template is refused
// when it is written rather than when it is first used.
func ValidateTemplate(t *schemas.Template) error {
	check := func(where string, cc schemas.ChannelContent) error {
		if !KnownChannel(where[strings.LastIndexByte(where, '.')+1:]) {
			return fmt.Errorf("%s: unknown channel", where)
		}
		for field, src := range map[string]string{"subject": cc.Subject, "text": cc.Text, "title": cc.Title, "body": cc.Body} {
			if _, err := texttemplate.New(field).Parse(src); err != nil {
				return fmt.Errorf("%s.%s: %v", where, field, err)
			}
		}
		if _, err := htmltemplate.New("html").Parse(cc.HTML); err != nil {
			return fmt.Errorf("%s.html: %v", where, err)
		}
		return nil
	}
	for ch, cc := range t.Channels {
		if err := check("channels."+ch, cc); err != nil {
			return err
		}
	}
	for loc, chs := range t.Locales {
		for ch, cc := range chs {
			if err := check("locales."+loc+"."+ch, cc); err != nil {
				return err
			}
		}
	}
	if len(t.Channels) == 0 {
		return fmt.Errorf("channels: at least one channel is required")
	}
	if t.Priority != "" && !validPriority(t.Priority) {
		return fmt.Errorf("priority: must be high, normal or low")
	}
	return nil
}
