package processors

import (
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/notifyd/notifyd/schemas"
)

var hookTemplate = &schemas.Template{ID: "hook", UpdatedAt: 1}

func renderHook(t *testing.T, body string, data map[string]any) (string, error) {
	t.Helper()
	out, err := Render(hookTemplate, "webhook", schemas.ChannelContent{Body: body}, data, patient)
	return out.Body, err
}

// decodeObject decodes a JSON object, failing on anything but exactly one.
func decodeObject(t *testing.T, doc string) map[string]any {
	t.Helper()
	d := json.NewDecoder(strings.NewReader(doc))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		t.Fatalf("rendered body %s is not a JSON object: %v", doc, err)
	}
	if _, err := d.Token(); err != io.EOF {
		t.Fatalf("rendered body %s has more than one value", doc)
	}
	return m
}

func TestWebhookBodyDataValuesAreJSONEscaped(t *testing.T) {
	for _, tc := range []struct{ name, value, want string }{
		{"field injection", `","admin":true,"x":"`, `","admin":true,"x":"`},
		{"object injection", `"}, "admin": {"x": "`, `"}, "admin": {"x": "`},
		{"backslashes", `C:\new\table\"`, `C:\new\table\"`},
		{"newlines", "line1\nline2\r\n", "line1\nline2\r\n"},
		{"script end", `</script><script>alert(1)</script>`, `</script><script>alert(1)</script>`},
		{"unicode", "订单 ✓ 😀 \u2028\u2029 é", "订单 ✓ 😀 \u2028\u2029 é"},
		{"control characters", "\x00\x01\x08\x0b\x1f\x7f\t", "\x00\x01\x08\x0b\x1f\x7f\t"},
		{"invalid UTF-8", "a\xffb", "a\ufffdb"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := renderHook(t, `{"orderId": "{{.orderId}}", "note": "note: {{.v}}", "n": 5}`,
				map[string]any{"orderId": "123", "v": tc.value})
			if err != nil {
				t.Fatal(err)
			}
			m := decodeObject(t, doc)
			want := map[string]any{"orderId": "123", "note": "note: " + tc.want, "n": json.Number("5")}
			if !reflect.DeepEqual(m, want) {
				t.Fatalf("body %s decodes to %#v, want %#v", doc, m, want)
			}
			if strings.ContainsAny(doc, "<>\x00\n") {
				t.Fatalf("body %s carries a raw <, >, NUL or newline", doc)
			}
		})
	}
}

func TestWebhookBodyKeepsTheAuthorsDocument(t *testing.T) {
	body := "{\n  \"z\": \"{{.a}}\",\n  \"a\" : [1.50, 1e3, -0, true, false, null, \"\\u00e9\\n\"],\n" +
		"  \"m\": {\"deep\": [{\"x\": \"id-{{.b}}\"}], \"empty\": {}, \"none\": []},\n  \"k~/\\\"\": \"{{.a}}{{.b}}\"\n}"
	doc, err := renderHook(t, body, map[string]any{"a": `q"`, "b": json.Number("7")})
	if err != nil {
		t.Fatal(err)
	}
	want := "{\n  \"z\": \"q\\\"\",\n  \"a\" : [1.50, 1e3, -0, true, false, null, \"\\u00e9\\n\"],\n" +
		"  \"m\": {\"deep\": [{\"x\": \"id-7\"}], \"empty\": {}, \"none\": []},\n  \"k~/\\\"\": \"q\\\"7\"\n}"
	if doc != want {
		t.Fatalf("body\n%s\nwant\n%s", doc, want)
	}
}

func TestWebhookBodyTopLevelValues(t *testing.T) {
	for body, want := range map[string]string{
		`"{{.v}}"`:          `"\"x"`,
		` [ "{{.v}}", 2 ] `: ` [ "\"x", 2 ] `,
		`42`:                `42`,
		`{}`:                `{}`,
	} {
		doc, err := renderHook(t, body, map[string]any{"v": `"x`})
		if err != nil || doc != want {
			t.Errorf("%s renders %q, %v; want %q", body, doc, err, want)
		}
	}
}

func TestWebhookWithoutBodyKeepsTheDefaultPayload(t *testing.T) {
	out, err := Render(hookTemplate, "webhook", schemas.ChannelContent{Endpoint: "orders"}, nil, patient)
	if err != nil || out.Body != "" || out.Endpoint != "orders" {
		t.Fatalf("content %+v, %v: an empty body is what makes the sink send its own payload", out, err)
	}
}

func TestOtherChannelsBodiesAreText(t *testing.T) {
	out, err := Render(hookTemplate, "push", schemas.ChannelContent{Body: `He said "{{.v}}"`}, map[string]any{"v": "hi"}, patient)
	if err != nil || out.Body != `He said "hi"` {
		t.Fatalf("push body %q, %v", out.Body, err)
	}
}

func TestValidateWebhookBodyRefuses(t *testing.T) {
	deep := strings.Repeat("[", maxBodyDepth+1) + strings.Repeat("]", maxBodyDepth+1)
	for _, tc := range []struct{ body, want string }{
		{`{"orderId": {{.orderId}}}`, "not a JSON document (a webhook body is JSON whose string values are templates): invalid character '{' (near offset 13)"},
		{`{"items": [{{range .items}}"{{.}}",{{end}}]}`, "not a JSON document"},
		{`{"a": 1,}`, "invalid character '}' looking for beginning of object key string (near offset 8)"},
		{`{"a": 1} {"b": 2}`, "not a JSON document: more data after the top-level value, which ends at offset 8"},
		{`{"a": `, "not a JSON document: unexpected end of input"},
		{"  ", "not a JSON document: empty"},
		{`{"a": 1, "a": "{{.x}}"}`, `at /a: duplicate key "a"`},
		{`{"m": {"{{.k}}": 1}}`, "at /m/{{.k}}: object keys are not templates"},
		{deep, "nested deeper than 100 levels"},
		{`{"a": [1, {"b/c": "{{.x"}]}`, "at /a/1/b~1c: template: body:1: unclosed action"},
		{`{"a": "{{define \"x\"}}y{{end}}"}`, "at /a: {{define}}, {{template}} and {{block}} are not allowed"},
		{`{"a": "{{range 1000000000}}x{{end}}"}`, "at /a: range of 1000000000 iterations exceeds 100000"},
		{"\"\xff\"", "not valid UTF-8"},
	} {
		err := ValidateWebhookBody(tc.body, defaultLimits)
		var be *BodyError
		if !errors.As(err, &be) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%.60s: error %v, want a BodyError with %q", tc.body, err, tc.want)
		}
	}
	if err := ValidateWebhookBody(`{"a": "{{.x}}", "b": [1, "c", {"d": null}]}`, defaultLimits); err != nil {
		t.Fatalf("a JSON body is refused: %v", err)
	}
}

func TestValidateTemplateNamesTheWebhookBody(t *testing.T) {
	bad := schemas.ChannelContent{Body: `{"orderId": {{.orderId}}}`}
	good := schemas.ChannelContent{Body: `{"orderId": "{{.orderId}}"}`}
	for _, tc := range []struct {
		tmpl *schemas.Template
		want string
	}{
		{&schemas.Template{Channels: map[string]schemas.ChannelContent{"webhook": bad}},
			"channels.webhook.body: not a JSON document"},
		{&schemas.Template{Channels: map[string]schemas.ChannelContent{"webhook": good},
			Locales: map[string]map[string]schemas.ChannelContent{"zh-CN": {"webhook": bad}}},
			"locales.zh-CN.webhook.body: not a JSON document"},
		{&schemas.Template{Channels: map[string]schemas.ChannelContent{"webhook": {Body: `{"a": ["{{.x"]}`}}},
			"channels.webhook.body: at /a/0: template: body:1: unclosed action"},
	} {
		if err := ValidateTemplateLimits(tc.tmpl, defaultLimits); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("error %v, want it to start with %q", err, tc.want)
		}
	}
	// Other channels' bodies are text, not JSON.
	push := &schemas.Template{Channels: map[string]schemas.ChannelContent{"push": {Title: "t", Body: `{"not": json`}}}
	if err := ValidateTemplateLimits(push, defaultLimits); err != nil {
		t.Fatalf("push body refused: %v", err)
	}
}

// A template stored before bodies were checked (or written around the API)
// is rejected when rendered, with the reason; nothing else is affected.
func TestLegacyWebhookBodyIsRejectedWhenRendered(t *testing.T) {
	legacy := &schemas.Template{ID: "legacy", UpdatedAt: 1}
	_, err := Render(legacy, "webhook", schemas.ChannelContent{Body: `{"count": {{.n}}}`}, map[string]any{"n": 1}, patient)
	var re *RenderError
	if !errors.As(err, &re) || re.Field != "body" || !strings.HasPrefix(err.Error(),
		"render legacy/webhook body: not a JSON document (a webhook body is JSON whose string values are templates): invalid character '{'") {
		t.Fatalf("error %v", err)
	}
	_, err = renderHook(t, `{"a": {"b": "{{.missing}}"}}`, map[string]any{})
	if !errors.As(err, &re) || !strings.Contains(err.Error(), `render hook/webhook body: at /a/b: `) ||
		!strings.Contains(err.Error(), `map has no entry for key "missing"`) {
		t.Fatalf("error %v", err)
	}
}

func TestWebhookBodyBudgetCountsEscapes(t *testing.T) {
	// 60,000 NULs render within 256 KiB but are 360,000 bytes escaped.
	_, err := renderHook(t, `{"v": "{{.v}}"}`, map[string]any{"v": strings.Repeat("\x00", 60_000)})
	be := budgetError(t, err, BudgetOutput)
	if be.Limit != 256<<10 || err.Error() != "render hook/webhook body: output exceeds 262144 bytes" {
		t.Fatalf("error %v", err)
	}
	doc, err := renderHook(t, `{"v": "{{.v}}"}`, map[string]any{"v": strings.Repeat("\x00", 40_000)})
	if err != nil || len(doc) != 240_009 {
		t.Fatalf("%d bytes, %v", len(doc), err)
	}
}

// bodyReference is what a body whose only action is {{.v}} must decode to:
// the author's document with v put into its strings.
func bodyReference(src, v string) (any, bool) {
	var doc any
	d := json.NewDecoder(strings.NewReader(src))
	d.UseNumber()
	if d.Decode(&doc) != nil {
		return nil, false
	}
	ok := true
	var walk func(x any) any
	walk = func(x any) any {
		switch x := x.(type) {
		case string:
			if strings.Contains(strings.ReplaceAll(x, "{{.v}}", ""), "{{") {
				ok = false
			}
			if strings.Contains(x, "{{") {
				// encoding/json writes U+FFFD for each invalid byte, as Map does
				return strings.Map(func(r rune) rune { return r }, strings.ReplaceAll(x, "{{.v}}", v))
			}
			return x
		case []any:
			for i := range x {
				x[i] = walk(x[i])
			}
		case map[string]any:
			for k := range x {
				x[k] = walk(x[k])
			}
		}
		return x
	}
	return walk(doc), ok
}

func FuzzWebhookBody(f *testing.F) {
	for _, seed := range [][2]string{
		{`{"orderId": "{{.v}}", "n": 5}`, `","admin":true,"x":"`},
		{`[1, "a{{.v}}b", {"c": ["{{.v}}"]}, null, true]`, `\"}]`},
		{`"{{.v}}"`, "\x00\n</script>"},
		{`{"a": "{{range .v}}{{end}}"}`, "x"},
		{`{"a":1,}`, ""},
		{`{"{{.v}}": 1}`, "k"},
		{`{"a": "{{printf \"%q\" .v}}"}`, `"`},
		{"{\"a\" :\n \"\\u00e9{{.v}}\\\"\"}", "\u2028"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, src, v string) {
		if src == "" { // no body: the sink sends its own payload
			if out, err := Render(hookTemplate, "webhook", schemas.ChannelContent{Body: src}, nil, defaultLimits); err != nil || out.Body != "" {
				t.Fatalf("no body rendered %q, %v", out.Body, err)
			}
			return
		}
		validErr := ValidateWebhookBody(src, defaultLimits)
		if validErr == nil && !json.Valid([]byte(src)) {
			t.Fatalf("accepted a body that is not JSON: %q", src)
		}
		out, err := Render(hookTemplate, "webhook", schemas.ChannelContent{Body: src}, map[string]any{"v": v}, defaultLimits)
		if err != nil {
			return
		}
		if validErr != nil {
			var be *BodyError
			if errors.As(validErr, &be) && be.Pointer == "" {
				t.Fatalf("rendered a body validation refuses as a document (%v): %q", validErr, src)
			}
		}
		if !json.Valid([]byte(out.Body)) || !utf8.ValidString(out.Body) {
			t.Fatalf("rendered %q from %q: not valid JSON", out.Body, src)
		}
		want, ok := bodyReference(src, v)
		if !ok {
			return // other actions than {{.v}}: validity is what can be checked
		}
		var got any
		d := json.NewDecoder(strings.NewReader(out.Body))
		d.UseNumber()
		if err := d.Decode(&got); err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("%q with v=%q rendered %q: decodes to %#v, want %#v", src, v, out.Body, got, want)
		}
	})
}
