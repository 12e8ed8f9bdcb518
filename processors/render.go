package processors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	texttemplate "text/template"
	textparse "text/template/parse"

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
	var be *BudgetError
	if errors.As(e.Err, &be) { // the budget is the channel's; name the field it ran out in
		return fmt.Sprintf("render %s/%s %s: %s", e.Template, e.Channel, e.Field, be.what())
	}
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
//
// Templates are hostile input: the render stops, with a *BudgetError, as soon
// as it exceeds lim (see RenderLimits).
func Render(t *schemas.Template, channel string, cc schemas.ChannelContent, data map[string]any, lim RenderLimits) (schemas.Content, error) {
	return RenderContext(context.Background(), t, channel, cc, data, lim)
}

// RenderContext is Render that also stops, with ctx.Err(), when ctx is done.
func RenderContext(ctx context.Context, t *schemas.Template, channel string, cc schemas.ChannelContent, data map[string]any, lim RenderLimits) (schemas.Content, error) {
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
		{"markdown", cc.Markdown, &out.Markdown, false},
		{"actionUrl", cc.ActionURL, &out.ActionURL, false},
		{"imageUrl", cc.ImageURL, &out.ImageURL, false},
		{"sound", cc.Sound, &out.Sound, false},
		{"collapseKey", cc.CollapseKey, &out.CollapseKey, false},
	}
	b, root := startBudget(ctx, t.ID, channel, lim, data)
	defer b.finish(root)
	for _, f := range fields {
		if f.src == "" {
			continue
		}
		var s string
		var err error
		if f.name == "body" && channel == "webhook" {
			s, err = renderWebhookBody(t, channel, f.src, root, b)
		} else {
			s, err = renderOne(t, channel, f.name, f.src, f.html, root, b)
		}
		if err != nil {
			return out, &RenderError{Template: t.ID, Channel: channel, Field: f.name, Err: err}
		}
		*f.dst = s
	}
	var err error
	if out.Data, err = renderMap(t, channel, "data", cc.Data, root, b); err != nil {
		return out, err
	}
	if out.TemplateParams, err = renderMap(t, channel, "templateParams", cc.TemplateParams, root, b); err != nil {
		return out, err
	}
	out.Endpoint, out.Badge, out.TemplateID = cc.Endpoint, cc.Badge, cc.TemplateID
	return out, nil
}

// renderMap renders every value of a map field (push data, vendor template
// parameters), in key order so budgets and errors are deterministic.
func renderMap(t *schemas.Template, channel, field string, src map[string]string, data map[string]any, b *renderBudget) (map[string]string, error) {
	if len(src) == 0 {
		return nil, nil
	}
	keys := make([]string, 0, len(src))
	for k := range src {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make(map[string]string, len(src))
	for _, k := range keys {
		s, err := renderOne(t, channel, field+"."+k, src[k], false, data, b)
		if err != nil {
			return out, &RenderError{Template: t.ID, Channel: channel, Field: field + "." + k, Err: err}
		}
		out[k] = s
	}
	return out, nil
}

type executor interface {
	Execute(w io.Writer, data any) error
}

// Parsed templates are cached by template version and source, checked and
// rewritten for budgets (render_tree.go); the cache is dropped whole when it
// grows past its bound.
var (
	parsedMu sync.Mutex
	parsed   = map[string]executor{}
)

const maxParsed = 10000

func renderOne(t *schemas.Template, channel, field, src string, html bool, data map[string]any, b *renderBudget) (string, error) {
	key := t.ID + "\x00" + strconv.FormatInt(t.UpdatedAt, 10) + "\x00" + strconv.FormatBool(html) + "\x00" + src
	parsedMu.Lock()
	ex, ok := parsed[key]
	parsedMu.Unlock()
	if !ok {
		var err error
		if ex, err = compile(t.ID+"/"+channel+"/"+field, src, html); err != nil {
			return "", err
		}
		parsedMu.Lock()
		if len(parsed) >= maxParsed {
			parsed = map[string]executor{}
		}
		parsed[key] = ex
		parsedMu.Unlock()
	}
	if err := b.checkClock(); err != nil {
		return "", err
	}
	b.out.Reset()
	if err := ex.Execute(b, data); err != nil {
		if b.err != nil {
			return "", b.err
		}
		return "", err
	}
	return b.out.String(), nil
}

// compile makes an executable template of src, rewritten so that its execution
// is bounded. html/template escapes the tree at its first execution, after the
// rewrite, which leaves nothing for it to escape (render_tree.go).
func compile(name, src string, html bool) (executor, error) {
	var tr *textparse.Tree
	var ex executor
	if html {
		pt, err := htmltemplate.New(name).Option("missingkey=error").Funcs(budgetFuncs).Parse(src)
		if err != nil {
			return nil, err
		}
		tr, ex = pt.Tree, pt
	} else {
		pt, err := texttemplate.New(name).Option("missingkey=error").Funcs(budgetFuncs).Parse(src)
		if err != nil {
			return nil, err
		}
		tr, ex = pt.Tree, pt
	}
	// Validation refuses these at PUT; a template stored before it did, or
	// written around the API, is refused here.
	if _, err := inspectSource(name, src); err != nil {
		return nil, err
	}
	budgetTree(tr, html)
	return ex, nil
}

// ValidateTemplate parses every content field, so a broken template is refused
// when it is written rather than when it is first used. It refuses what
// Render refuses whatever the data ({{define}}, {{template}}, {{block}}, a
// reassigned $); ValidateTemplateLimits also refuses what exceeds a budget.
func ValidateTemplate(t *schemas.Template) error {
	return ValidateTemplateLimits(t, RenderLimits{})
}

// templateSource is one templated field of a channel's content.
type templateSource struct{ field, src string }

// sourceFields lists every templated field of a channel's content, map
// values included (data.<key>, templateParams.<key>).
func sourceFields(cc schemas.ChannelContent) []templateSource {
	out := []templateSource{{"subject", cc.Subject}, {"html", cc.HTML}, {"text", cc.Text}, {"title", cc.Title},
		{"body", cc.Body}, {"markdown", cc.Markdown}, {"actionUrl", cc.ActionURL}, {"imageUrl", cc.ImageURL},
		{"sound", cc.Sound}, {"collapseKey", cc.CollapseKey}}
	for name, m := range map[string]map[string]string{"data": cc.Data, "templateParams": cc.TemplateParams} {
		for k, v := range m {
			out = append(out, templateSource{name + "." + k, v})
		}
	}
	return out
}

// checkSource refuses a template field's source that does not parse, that
// Render refuses whatever the data, or whose integer ranges exceed
// lim.MaxIterations.
func checkSource(field, src string, html bool, lim RenderLimits) error {
	var err error
	if html {
		_, err = htmltemplate.New(field).Parse(src)
	} else {
		_, err = texttemplate.New(field).Parse(src)
	}
	if err != nil {
		return err
	}
	tr, err := inspectSource(field, src)
	if err != nil {
		return err
	}
	return rangeProduct(tr, lim.MaxIterations)
}

// ValidateTemplateLimits is ValidateTemplate that also proves, cheaply, what
// would exceed lim.MaxIterations with any data: integer ranges, nested ones
// multiplied. Data-driven ranges are bounded when rendered.
func ValidateTemplateLimits(t *schemas.Template, lim RenderLimits) error {
	check := func(where string, cc schemas.ChannelContent) error {
		channel := where[strings.LastIndexByte(where, '.')+1:]
		if !KnownChannel(channel) {
			return fmt.Errorf("%s: unknown channel", where)
		}
		for _, f := range sourceFields(cc) {
			var err error
			if f.field == "body" && channel == "webhook" && f.src != "" {
				err = ValidateWebhookBody(f.src, lim)
			} else {
				err = checkSource(f.field, f.src, f.field == "html", lim)
			}
			if err != nil {
				return fmt.Errorf("%s.%s: %v", where, f.field, err)
			}
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
