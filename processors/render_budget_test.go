package processors

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/schemas"
)

// defaultLimits are the shipped configuration's: 1s, 100,000 iterations,
// 256 KiB for email, 1,600 characters for sms.
var defaultLimits = LimitsFromConfig(config.Default().Render)

// patient is defaultLimits with time enough that only output or iterations
// can stop a render, whatever the machine's load (and -race).
var patient = RenderLimits{Timeout: time.Minute, MaxIterations: defaultLimits.MaxIterations, MaxBytes: defaultLimits.MaxBytes}

var orderShipped = &schemas.Template{ID: "order-shipped", UpdatedAt: 1}

func budgetError(t *testing.T, err error, budget string) *BudgetError {
	t.Helper()
	var be *BudgetError
	if !errors.As(err, &be) || be.Budget != budget {
		t.Fatalf("want a %s BudgetError, got %v", budget, err)
	}
	var re *RenderError
	if !errors.As(err, &re) {
		t.Fatalf("a BudgetError comes wrapped in a RenderError naming the field: %v", err)
	}
	return be
}

func TestLimitsFromConfig(t *testing.T) {
	if defaultLimits.MaxBytes("email") != 256<<10 || defaultLimits.MaxBytes("sms") != 1600 ||
		defaultLimits.MaxBytes("fax") != 64<<10 || defaultLimits.Timeout != time.Second || defaultLimits.MaxIterations != 100_000 {
		t.Fatalf("limits %+v", defaultLimits)
	}
}

func TestRenderStopsAtTheOutputBudget(t *testing.T) {
	data := map[string]any{"orderId": strings.Repeat("9", 900_000)}
	_, err := Render(orderShipped, "email", schemas.ChannelContent{Subject: "Order {{.orderId}} has shipped"}, data, patient)
	be := budgetError(t, err, BudgetOutput)
	if be.Limit != 262144 || be.Template != "order-shipped" || be.Channel != "email" ||
		be.Error() != "render order-shipped/email: output exceeds 262144 bytes" {
		t.Fatalf("budget error %+v: %v", be, be)
	}
	if err.Error() != "render order-shipped/email subject: output exceeds 262144 bytes" {
		t.Fatalf("render error %q", err)
	}

	// The budget is the channel's: fields that fit alone do not fit together.
	data = map[string]any{"s": strings.Repeat("a", 100_000)}
	cc := schemas.ChannelContent{Subject: "{{.s}}", HTML: "<p>{{.s}}</p>", Text: "{{.s}}"}
	_, err = Render(orderShipped, "email", cc, data, patient)
	budgetError(t, err, BudgetOutput)
	var re *RenderError
	if errors.As(err, &re); re.Field != "text" {
		t.Fatalf("over budget in %s, want text", re.Field)
	}
	cc.Text = ""
	if _, err := Render(orderShipped, "email", cc, data, patient); err != nil {
		t.Fatalf("200 KB of email: %v", err)
	}
}

func TestRenderStopsARangeOfABillion(t *testing.T) {
	for _, cc := range []schemas.ChannelContent{{Text: "{{range 1000000000}}x{{end}}"}, {HTML: "<b>{{range 1000000000}}x{{end}}</b>"}} {
		start := time.Now()
		_, err := Render(orderShipped, "email", cc, map[string]any{}, patient)
		budgetError(t, err, BudgetIterations)
		if time.Since(start) > 20*time.Second {
			t.Fatalf("took %v", time.Since(start))
		}
		// Without an iteration budget, the output budget stops it.
		_, err = Render(orderShipped, "email", cc, map[string]any{}, RenderLimits{MaxBytes: patient.MaxBytes})
		budgetError(t, err, BudgetOutput)
	}
}

func TestRenderCountsNestedIterations(t *testing.T) {
	nested := "{{range 100000}}{{range 100000}}{{end}}{{end}}"
	for _, cc := range []schemas.ChannelContent{{Text: nested}, {HTML: "<p>" + nested + "</p>"}} {
		_, err := Render(orderShipped, "email", cc, map[string]any{}, patient)
		if be := budgetError(t, err, BudgetIterations); be.Limit != 100_000 {
			t.Fatalf("limit %d", be.Limit)
		}
	}
	// Data-driven ranges count too: 1,000 × 1,000 over a list in data.
	list := make([]any, 1000)
	data := map[string]any{"a": list, "m": map[string]any{"k": list}}
	for _, src := range []string{"{{range .a}}{{range $.a}}{{end}}{{end}}", "{{range .m}}{{range .}}{{range $.a}}{{end}}{{end}}{{end}}"} {
		_, err := Render(orderShipped, "email", schemas.ChannelContent{Text: src}, data, patient)
		budgetError(t, err, BudgetIterations)
	}
	// The iterations of all fields are counted together.
	cc := schemas.ChannelContent{Subject: "{{range 60000}}{{end}}", Text: "{{range 60000}}{{end}}"}
	_, err := Render(orderShipped, "email", cc, map[string]any{}, patient)
	budgetError(t, err, BudgetIterations)
	cc.Subject = ""
	if _, err := Render(orderShipped, "email", cc, map[string]any{}, patient); err != nil {
		t.Fatal(err)
	}
}

func TestValidateTemplateLimitsProvesLiteralRanges(t *testing.T) {
	tmpl := func(text string) *schemas.Template {
		return &schemas.Template{ID: "t", Channels: map[string]schemas.ChannelContent{"email": {Subject: "s", Text: text}}}
	}
	cases := []struct{ text, err string }{
		{"{{range 100000}}{{range 100000}}{{end}}{{end}}", "channels.email.text: nested range of 10000000000 iterations exceeds 100000"},
		{"{{range 100001}}x{{end}}", "channels.email.text: range of 100001 iterations exceeds 100000"},
		{"{{range .items}}{{range $i := (200000)}}{{end}}{{end}}", "channels.email.text: range of 200000 iterations exceeds 100000"},
		{"{{if .x}}{{range 1000}}{{with .y}}{{range 1000}}{{end}}{{end}}{{end}}{{end}}", "channels.email.text: nested range of 1000000 iterations exceeds 100000"},
		{"{{range 100000}}{{range 9223372036854775807}}{{end}}{{end}}",
			"channels.email.text: nested range of 922337203685477580700000 iterations exceeds 100000"},
		{"{{range 100000}}x{{end}}", ""},
		{"{{range 300}}{{range 300}}{{end}}{{end}}", ""},
		{"{{range -5}}{{range 1000000}}{{end}}{{end}}", ""},    // never runs
		{"{{range .items}}{{range .items}}{{end}}{{end}}", ""}, // data: bounded when rendered
	}
	for _, c := range cases {
		got := ""
		if err := ValidateTemplateLimits(tmpl(c.text), defaultLimits); err != nil {
			got = err.Error()
		}
		if got != c.err {
			t.Errorf("%s: %q, want %q", c.text, got, c.err)
		}
		if err := ValidateTemplate(tmpl(c.text)); err != nil {
			t.Errorf("%s: without limits: %v", c.text, err)
		}
	}
	loc := tmpl("x")
	loc.Locales = map[string]map[string]schemas.ChannelContent{"de": {"email": {HTML: "{{range 1000}}{{range 1000}}{{end}}{{end}}"}}}
	if err := ValidateTemplateLimits(loc, defaultLimits); err == nil || !strings.HasPrefix(err.Error(), "locales.de.email.html: nested range") {
		t.Errorf("locale html: %v", err)
	}
}

func TestRenderStopsAtTheDeadline(t *testing.T) {
	// 10^12 iterations over data, with no iteration budget: only time stops it.
	data := map[string]any{"a": make([]any, 10_000)}
	src := "{{range .a}}{{range $.a}}{{range $.a}}{{end}}{{end}}{{end}}"
	for _, cc := range []schemas.ChannelContent{{Text: src}, {HTML: src}} {
		start := time.Now()
		_, err := Render(orderShipped, "email", cc, data, RenderLimits{Timeout: 100 * time.Millisecond})
		if be := budgetError(t, err, BudgetTime); be.Error() != "render order-shipped/email: render time exceeds 100ms" {
			t.Fatalf("%v", be)
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Fatalf("took %v", d)
		}
	}
}

func TestRenderContextStopsWhenCancelled(t *testing.T) {
	data := map[string]any{"a": make([]any, 10_000)}
	cc := schemas.ChannelContent{Text: "{{range .a}}{{range $.a}}{{range $.a}}{{end}}{{end}}{{end}}"}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err := RenderContext(ctx, orderShipped, "email", cc, data, RenderLimits{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	// Already cancelled: nothing runs.
	_, err = RenderContext(ctx, orderShipped, "email", schemas.ChannelContent{Subject: "x"}, data, RenderLimits{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled before: %v", err)
	}
}

func TestSMSBudgetCountsCharacters(t *testing.T) {
	cc := schemas.ChannelContent{Text: "{{.s}}"}
	c, err := Render(orderShipped, "sms", cc, map[string]any{"s": strings.Repeat("中", 1600)}, defaultLimits)
	if err != nil || utf8.RuneCountInString(c.Text) != 1600 {
		t.Fatalf("1,600 characters (4,800 bytes): %v", err)
	}
	_, err = Render(orderShipped, "sms", cc, map[string]any{"s": strings.Repeat("中", 1601)}, defaultLimits)
	if be := budgetError(t, err, BudgetOutput); be.Error() != "render order-shipped/sms: output exceeds 1600 characters" {
		t.Fatalf("%v", be)
	}
	// Characters written by the template count as well as data.
	cc.Text = "{{range 1600}}中{{end}}{{.s}}"
	if _, err := Render(orderShipped, "sms", cc, map[string]any{"s": ""}, defaultLimits); err != nil {
		t.Fatal(err)
	}
	_, err = Render(orderShipped, "sms", cc, map[string]any{"s": "!"}, defaultLimits)
	budgetError(t, err, BudgetOutput)
}

func TestComputedValuesAreBounded(t *testing.T) {
	// Doubling a value needs no loop and prints nothing: 1 MB × 2^30.
	src := `{{$x := printf "%01000000d" 0}}` + strings.Repeat(`{{$x = print $x $x}}`, 30) + `{{len $x}}`
	for _, cc := range []schemas.ChannelContent{{Text: src}, {HTML: src}} {
		_, err := Render(orderShipped, "email", cc, map[string]any{}, patient)
		budgetError(t, err, BudgetOutput)
	}
	// Each string builder is bounded: 40,000 "<" fit in 256 KiB escaped
	// (js writes \u003C), 100,000 do not.
	small := map[string]any{"lt": strings.Repeat("<", 40_000)}
	big := map[string]any{"lt": strings.Repeat("<", 100_000)}
	for _, f := range []string{`{{$y := js .lt}}`, `{{$y := html .lt}}`, `{{$y := urlquery .lt}}`, `{{$y := println .lt .lt .lt}}`, `{{if (html .lt)}}{{end}}`} {
		cc := schemas.ChannelContent{Text: f, HTML: f}
		if _, err := Render(orderShipped, "email", cc, small, patient); err != nil {
			t.Fatalf("%s within budget: %v", f, err)
		}
		_, err := Render(orderShipped, "email", cc, big, patient)
		budgetError(t, err, BudgetOutput)
	}
}

func TestSubTemplatesAndReassignedRootAreRefused(t *testing.T) {
	cases := []string{
		`{{define "x"}}{{template "x"}}{{end}}{{template "x"}}`,
		`{{block "x" .}}y{{end}}`,
		`{{template "order-shipped/email/text"}}`,
		`{{define "order-shipped/email/text"}}{{range 5}}{{end}}{{end}}`, // its own name
		`{{define "v/text"}}x{{end}}`,
		`{{$ := 1}}{{range 5}}{{end}}`,
		`{{$ = .x}}`,
		`{{range $ := .x}}{{end}}`,
		`{{print ($ := 1)}}`,
	}
	for _, src := range cases {
		for _, cc := range []schemas.ChannelContent{{Text: src}, {HTML: src}} {
			_, err := Render(orderShipped, "email", cc, map[string]any{"x": []any{1}}, patient)
			if err == nil || !(strings.Contains(err.Error(), "{{define}}") || strings.Contains(err.Error(), "$ cannot")) {
				t.Errorf("render %q: %v", src, err)
			}
		}
		v := &schemas.Template{ID: "v", Channels: map[string]schemas.ChannelContent{"email": {Text: src}}}
		if err := ValidateTemplate(v); err == nil || !strings.HasPrefix(err.Error(), "channels.email.text: ") {
			t.Errorf("validate %q: %v", src, err)
		}
	}
	// The messages say what is refused.
	v := &schemas.Template{ID: "v", Channels: map[string]schemas.ChannelContent{"email": {HTML: `{{block "x" .}}{{end}}`}}}
	if err := ValidateTemplate(v); err == nil || err.Error() != "channels.email.html: {{define}}, {{template}} and {{block}} are not allowed: a notifyd template is one self-contained text" {
		t.Errorf("%v", err)
	}
}

func TestHiddenFunctionsFailClosed(t *testing.T) {
	ex, err := compile("t/email/text", "{{range 3}}x{{end}}", false)
	if err != nil {
		t.Fatal(err)
	}
	// Executed outside Render, there is no budget: it must not run unbounded.
	if err := ex.Execute(io.Discard, map[string]any{}); !errors.Is(err, errNoBudget) {
		t.Fatalf("unbudgeted execution: %v", err)
	}
	// Nor can a template call them itself: they are not defined for validation.
	v := &schemas.Template{ID: "v", Channels: map[string]schemas.ChannelContent{"email": {Text: "{{_notifyd_tick $}}"}}}
	if err := ValidateTemplate(v); err == nil {
		t.Fatal("hidden function accepted")
	}
}

// The template of TestRender's fields and more, rendered before budgets were
// added; the budgeted render must produce exactly the same.
func TestBudgetedRenderIsUnchanged(t *testing.T) {
	data, err := ParseData(`{"name": "Ann & <Bob>", "q": "a b&c", "n": 12345678901234567, "s": "héllo",
		"items": [{"title": "Kettle", "qty": 2}, {"title": "Mug \"big\"", "qty": 1}], "m": {"b": 2, "a": 1}, "empty": []}`)
	if err != nil {
		t.Fatal(err)
	}
	cc := schemas.ChannelContent{
		Subject: `{{printf "%s ordered %d items" .name (len .items)}}`,
		HTML: `<p title={{.name}}>{{.name | html}} {{html .name .q}}</p><a href="/s?q={{.q | urlquery}}&n={{.n}}">{{urlquery .q}}</a>` +
			`<script>var n = {{.name}}; var s = "{{js .name}}";</script>` +
			`<ul>{{range $i, $e := .items}}<li data-i="{{$i}}">{{$e.title}} × {{$e.qty}}</li>{{else}}none{{end}}</ul>` +
			`{{range .empty}}x{{else}}<i>empty</i>{{end}}{{range 3}}{{.}}{{end}}{{$p := printf "%q" .name}}<b>{{$p}}</b>{{if html .name}}y{{end}}`,
		Text: `{{range $k, $v := .m}}{{$k}}={{$v}};{{end}} {{range 5}}{{if eq . 3}}{{break}}{{end}}{{.}}{{end}} ` +
			`{{range .items}}{{range 2}}{{.}}{{end}}{{.title | printf "%-8s|"}}{{end}} {{slice .s 1 3}} {{index .items 1 "title"}} ` +
			`{{print .n 1 "x"}} {{println .q}}{{html .name}} {{js .name}} {{urlquery .q}} {{$x := print .name}}{{$x = printf "%s!" $x}}{{$x}}`,
		Endpoint: "hook",
	}
	c, err := Render(&schemas.Template{ID: "golden", UpdatedAt: 1}, "email", cc, data, defaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	want := schemas.Content{
		Subject: "Ann & <Bob> ordered 2 items",
		HTML: "<p title=Ann&#32;&amp;&#32;&lt;Bob&gt;>Ann &amp; &lt;Bob&gt; Ann &amp; &lt;Bob&gt;a b&amp;c</p>" +
			"<a href=\"/s?q=a&#43;b%26c&n=12345678901234567\">a&#43;b%26c</a>" +
			"<script>var n = \"Ann \\u0026 \\u003cBob\\u003e\"; var s = \"Ann \\\\u0026 \\\\u003CBob\\\\u003E\";</script>" +
			"<ul><li data-i=\"0\">Kettle × 2</li><li data-i=\"1\">Mug &#34;big&#34; × 1</li></ul><i>empty</i>012" +
			"<b>&#34;Ann &amp; &lt;Bob&gt;&#34;</b>y",
		Text: "a=1;b=2; 012 01Kettle  |01Mug \"big\"| é Mug \"big\" 123456789012345671x a b&c\n" +
			"Ann &amp; &lt;Bob&gt; Ann \\u0026 \\u003CBob\\u003E a+b%26c Ann & <Bob>!",
		Endpoint: "hook",
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("got\n%+v\nwant\n%+v", c, want)
	}

	// Ranges in every html/template context: the tick prints nothing, so
	// the escaper sees the same template.
	for _, html := range []string{
		`<a title={{range .items}}{{.title}}{{end}}>x</a>`,
		`<a title="{{range .items}}{{.title}} {{end}}" href="/x?{{range .items}}q={{.title}}&{{end}}">x</a>`,
		`<a href="{{range .items}}{{end}}/x">x</a>`,
		`<script>var a = [{{range .items}}{{.qty}},{{end}}]; var s = "{{range .items}}{{.title}}{{end}}";</script>`,
		`<style>p { color: {{range .items}}{{end}}red }</style>`,
		`<!-- {{range .items}}{{.title}}{{end}} --><textarea>{{range .items}}{{.title}}{{end}}</textarea>`,
		`<p onclick="f({{range .items}}{{.title}}{{end}})">{{range .items}}{{break}}{{end}}</p>`,
	} {
		cc := schemas.ChannelContent{HTML: html}
		got, err := Render(&schemas.Template{ID: "ctx", UpdatedAt: 1}, "email", cc, data, defaultLimits)
		old, oldErr := renderUnbounded(&schemas.Template{ID: "ctx", UpdatedAt: 1}, "email", cc, data)
		if (err == nil) != (oldErr == nil) || got.HTML != old.HTML {
			t.Errorf("%s:\n got %q (%v)\nwant %q (%v)", html, got.HTML, err, old.HTML, oldErr)
		}
	}
}

func TestConcurrentRendersOfTheSameData(t *testing.T) {
	data, _ := ParseData(benchData)
	want, err := renderUnbounded(benchTemplate, "email", benchContent, data)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				got, err := Render(benchTemplate, "email", benchContent, data, defaultLimits)
				if err != nil || !reflect.DeepEqual(got, want) {
					t.Errorf("concurrent render: %v\n%+v", err, got)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestDelivererRejectsOverBudget(t *testing.T) {
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	d := Deliverer{Limiter: Limiter{PerDay: func(string) int { return 0 }}, Render: defaultLimits}
	tmpl := &schemas.Template{ID: "order-shipped", Channels: map[string]schemas.ChannelContent{
		"email": {Subject: "Order {{.orderId}}"}}}
	big, _ := json.Marshal(map[string]string{"orderId": strings.Repeat("9", 900_000)})
	n := &schemas.Notification{ID: "n", UserID: "u", Template: "order-shipped", Data: string(big),
		Recipient: schemas.Recipient{Email: "u@example.com"}}
	o := d.Deliver(n, nil, tmpl, &schemas.UserState{}, now)
	if len(o) != 1 || o[0].Status != StatusRejected || o[0].Reason != "render order-shipped/email subject: output exceeds 262144 bytes" {
		t.Fatalf("outcome %+v", o)
	}
}

// FuzzRender: whatever the template and data, a budgeted render never panics,
// never returns more than the budget, and returns in about its time.
func FuzzRender(f *testing.F) {
	f.Add("Hi {{.name}}", `{"name": "Ann"}`, uint8(0))
	f.Add("<p>{{range .items}}<b>{{.}}</b>{{end}}</p>", `{"items": [1, "<x>", {"a": 2}]}`, uint8(1))
	f.Add("{{range 1000000000}}x{{end}}", `{}`, uint8(2))
	f.Add("{{range 100000}}{{range 100000}}{{end}}{{end}}", `{}`, uint8(1))
	f.Add("{{range .a}}{{range $.a}}{{range $.a}}{{end}}{{end}}{{end}}", `{"a": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]}`, uint8(0))
	f.Add(`{{$x := printf "%0100d" 0}}{{$x = print $x $x}}{{$x = print $x $x}}{{$x = print $x $x}}{{$x}}`, `{}`, uint8(2))
	f.Add(`{{define "x"}}{{template "x"}}{{end}}{{template "x"}}`, `{}`, uint8(0))
	f.Add(`{{range $k, $v := .}}{{$k}}={{$v | html | js | urlquery}}{{break}}{{end}}{{with .a}}{{.}}{{else}}-{{end}}`, `{"a": "中文"}`, uint8(2))
	f.Add(`<a href="{{.u}}" onclick="{{range .a}}{{.}}{{end}}">{{.u | html}}</a>`, `{"u": "javascript:x", "a": [1]}`, uint8(1))
	lim := RenderLimits{Timeout: 50 * time.Millisecond, MaxIterations: 1000, MaxBytes: func(string) int { return 2000 }}
	f.Fuzz(func(t *testing.T, src, dataJSON string, mode uint8) {
		data, err := ParseData(dataJSON)
		if err != nil {
			return
		}
		channel, cc := "email", schemas.ChannelContent{Subject: src, Text: src}
		switch mode % 3 {
		case 1:
			cc = schemas.ChannelContent{HTML: src, Text: src}
		case 2:
			channel, cc = "sms", schemas.ChannelContent{Text: src}
		}
		start := time.Now()
		c, err := Render(&schemas.Template{ID: "fuzz"}, channel, cc, data, lim)
		if d := time.Since(start); d > lim.Timeout+2*time.Second {
			t.Fatalf("render took %v, budget %v", d, lim.Timeout)
		}
		if err != nil {
			return
		}
		size := len(c.Subject) + len(c.HTML) + len(c.Text)
		if channel == "sms" {
			size = utf8.RuneCountInString(c.Text)
		}
		if size > lim.MaxBytes(channel) {
			t.Fatalf("rendered %d, budget %d", size, lim.MaxBytes(channel))
		}
	})
}
