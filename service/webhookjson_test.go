package service_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/notifyd/notifyd/schemas"
	"github.com/notifyd/notifyd/sinks/webhooktest"
	"github.com/notifyd/notifyd/topology"
)

// injection is a data value that, pasted into a JSON string by a text
// template, would close the string and add an "admin" field.
const injection = `","admin":true,"x":"`

// A webhook body is JSON whose string values are templates: a data value
// arrives as the string it is, never as structure, and the rest of the
// author's document arrives as written.
func TestWebhookBodyDataValueArrivesAsAString(t *testing.T) {
	h := newHarness(t)
	h.start()
	body := `{"event": "order.shipped", "orderId": "{{.orderId}}", "note": "{{.note}}", "count": 2}`
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/hook-json", map[string]any{"category": "transactional",
		"channels": map[string]any{"webhook": map[string]any{"body": body}}})
	ids := h.send(map[string]any{"template": "hook-json", "data": map[string]any{"orderId": "o1", "note": injection},
		"recipients": []any{map[string]any{"userId": "u1"}}})
	h.waitStatus(ids["u1"], "sent")

	d := deliveryOf(t, h.hook, ids["u1"])
	got := decodeStrict(t, d.Body)
	want := map[string]any{"event": "order.shipped", "orderId": "o1", "note": injection, "count": json.Number("2")}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("receiver got %s, decoding to %#v; want %#v", d.Body, got, want)
	}
	if _, ok := got["admin"]; ok {
		t.Fatalf("the data value added a field: %s", d.Body)
	}
	if wantRaw := `{"event": "order.shipped", "orderId": "o1", "note": "\",\"admin\":true,\"x\":\"", "count": 2}`; string(d.Body) != wantRaw {
		t.Fatalf("body %s, want the author's document %s", d.Body, wantRaw)
	}
}

// A body that is not JSON is refused when the template is written, with the
// field, the locale's path and the JSON error.
func TestWebhookBodyNotJSONIsRefusedAtPut(t *testing.T) {
	h := newHarness(t)
	h.start()
	bad := map[string]any{"body": `{"orderId": {{.orderId}}}`}
	good := map[string]any{"body": `{"orderId": "{{.orderId}}"}`}
	for _, tc := range []struct {
		tmpl  map[string]any
		field string
	}{
		{map[string]any{"channels": map[string]any{"webhook": bad}}, "channels.webhook.body"},
		{map[string]any{"channels": map[string]any{"webhook": good}, "locales": map[string]any{"zh-CN": map[string]any{"webhook": bad}}},
			"locales.zh-CN.webhook.body"},
	} {
		code, out := h.call("PUT", "/v1/templates/bad-hook", tc.tmpl)
		e, _ := out["error"].(map[string]any)
		if code != http.StatusBadRequest || e["field"] != tc.field ||
			!strings.Contains(e["message"].(string), "not a JSON document") || !strings.Contains(e["message"].(string), "near offset 13") {
			t.Errorf("status %d, error %v; want 400 naming %s and the JSON error", code, out, tc.field)
		}
	}
	code, out := h.call("PUT", "/v1/templates/bad-hook", map[string]any{"channels": map[string]any{
		"webhook": map[string]any{"body": `{"a": 1, "a": "{{.x}}"}`}}})
	if e, _ := out["error"].(map[string]any); code != http.StatusBadRequest || e["field"] != "channels.webhook.body" ||
		e["message"] != `at /a: duplicate key "a"` {
		t.Errorf("duplicate key: status %d, %v", code, out)
	}
	if code, _ := h.call("GET", "/v1/templates/bad-hook", nil); code != http.StatusNotFound {
		t.Errorf("a refused template was stored: GET answers %d", code)
	}
}

// A template stored before bodies were checked (here written around the API)
// rejects its notifications with the reason; the pipeline goes on.
func TestLegacyWebhookBodyRejectsTheNotification(t *testing.T) {
	h := newHarness(t)
	h.start()
	legacy := &schemas.Template{ID: "legacy-hook", Category: "transactional", UpdatedAt: time.Now().UnixMilli(),
		Channels: map[string]schemas.ChannelContent{"webhook": {Body: `{"orderId": {{.orderId}}}`}}}
	v, err := schemas.TemplateCodec.Encode(legacy)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rec := &kgo.Record{Topic: string(topology.Templates), Key: []byte(schemas.TenantKey("", legacy.ID)), Value: v}
	if err := h.producer().ProduceSync(ctx, rec).FirstErr(); err != nil {
		t.Fatal(err)
	}
	rejected := h.send(map[string]any{"template": "legacy-hook", "data": map[string]any{"orderId": "1"},
		"recipients": []any{map[string]any{"userId": "u1"}}})
	st := h.waitStatus(rejected["u1"], "rejected")
	hist := st["history"].([]any)
	reason, _ := hist[len(hist)-1].(map[string]any)["reason"].(string)
	if !strings.HasPrefix(reason, "render legacy-hook/webhook body: not a JSON document") {
		t.Fatalf("reason %q", reason)
	}

	h.mustCall(http.StatusOK, "PUT", "/v1/templates/hook", webhookTemplate())
	ok := h.send(map[string]any{"template": "hook", "data": map[string]any{"orderId": "2"},
		"recipients": []any{map[string]any{"userId": "u2"}}})
	h.waitStatus(ok["u2"], "sent")
	if d := deliveryOf(t, h.hook, ok["u2"]); string(d.Body) != `{"orderId": "2"}` {
		t.Fatalf("body %s", d.Body)
	}
	for _, d := range h.hook.Deliveries() {
		if d.ID == rejected["u1"] {
			t.Fatalf("the rejected notification was delivered: %s", d.Body)
		}
	}
}

// deliveryOf is the receiver's one delivery of notification id.
func deliveryOf(t *testing.T, rc *webhooktest.Receiver, id string) webhooktest.Delivery {
	t.Helper()
	var found []webhooktest.Delivery
	for _, d := range rc.Deliveries() {
		if d.ID == id {
			found = append(found, d)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d deliveries of %s, want 1", len(found), id)
	}
	return found[0]
}

// decodeStrict decodes exactly one JSON object, numbers as written.
func decodeStrict(t *testing.T, body []byte) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("body %s: %v", body, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("body %s: more than one JSON value", body)
	}
	return m
}
