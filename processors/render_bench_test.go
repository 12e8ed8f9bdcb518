package processors

import (
	"bytes"
	htmltemplate "html/template"
	"io"
	"strconv"
	"sync"
	"testing"
	texttemplate "text/template"
	"time"

	"github.com/notifyd/notifyd/schemas"
)

// A typical order email: subject, html and text, the last two listing five items.
var benchTemplate = &schemas.Template{ID: "order-shipped", UpdatedAt: 1}

var benchContent = schemas.ChannelContent{
	Subject: "Your order {{.orderId}} has shipped",
	HTML: `<h1>Hi {{.name}}</h1><p>Order <a href="https://shop.example.com/o/{{.orderId}}">{{.orderId}}</a> is on its way.</p>` +
		`<ul>{{range .items}}<li>{{.qty}} × {{.title}} — {{.price}}</li>{{end}}</ul><p>Total {{.total}}</p>`,
	Text: "Hi {{.name}},\n\nOrder {{.orderId}} is on its way.\n{{range .items}}- {{.qty}} x {{.title}} {{.price}}\n{{end}}Total {{.total}}\n",
}

const benchData = `{"name": "Ann <ann@example.com>", "orderId": "A-10023", "total": "129.95",
 "items": [{"qty": 1, "title": "Kettle", "price": "39.99"}, {"qty": 2, "title": "Mug", "price": "9.99"},
  {"qty": 1, "title": "Tea, green", "price": "12.50"}, {"qty": 3, "title": "Spoon", "price": "3.00"},
  {"qty": 1, "title": "Tray & stand", "price": "48.48"}]}`

// benchLimits are config.Default()'s.
var benchLimits = RenderLimits{Timeout: time.Second, MaxIterations: 100_000,
	MaxBytes: func(ch string) int { return map[string]int{"email": 256 << 10, "sms": 1600}[ch] }}

func BenchmarkRender(b *testing.B) {
	data, err := ParseData(benchData)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Render(benchTemplate, "email", benchContent, data, benchLimits); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRenderUnbounded is the render as it was before budgets, kept to
// measure their overhead side by side on the same machine and load.
func BenchmarkRenderUnbounded(b *testing.B) {
	data, err := ParseData(benchData)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := renderUnbounded(benchTemplate, "email", benchContent, data); err != nil {
			b.Fatal(err)
		}
	}
}

var (
	unboundedMu     sync.Mutex
	unboundedParsed = map[string]interface {
		Execute(io.Writer, any) error
	}{}
)

func renderUnbounded(t *schemas.Template, channel string, cc schemas.ChannelContent, data map[string]any) (schemas.Content, error) {
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
		key := t.ID + "\x00" + strconv.FormatInt(t.UpdatedAt, 10) + "\x00" + strconv.FormatBool(f.html) + "\x00" + f.src
		unboundedMu.Lock()
		ex, ok := unboundedParsed[key]
		unboundedMu.Unlock()
		if !ok {
			name := t.ID + "/" + channel + "/" + f.name
			var err error
			if f.html {
				ex, err = htmltemplate.New(name).Option("missingkey=error").Parse(f.src)
			} else {
				ex, err = texttemplate.New(name).Option("missingkey=error").Parse(f.src)
			}
			if err != nil {
				return out, &RenderError{Template: t.ID, Channel: channel, Field: f.name, Err: err}
			}
			unboundedMu.Lock()
			unboundedParsed[key] = ex
			unboundedMu.Unlock()
		}
		var buf bytes.Buffer
		if err := ex.Execute(&buf, data); err != nil {
			return out, &RenderError{Template: t.ID, Channel: channel, Field: f.name, Err: err}
		}
		*f.dst = buf.String()
	}
	out.Endpoint = cc.Endpoint
	return out, nil
}
