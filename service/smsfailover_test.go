package service_test

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/notifyd/notifyd/analytics"
	"github.com/notifyd/notifyd/config"
	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/sinks/aliyunsmstest"
	"github.com/notifyd/notifyd/sinks/tencentsmstest"
)

// SMS through two vendors in failover order: while Alibaba Cloud works it
// sends everything; when it goes down, its breaker opens and Tencent Cloud
// sends the rest, none lost, none failed. ClickHouse prices each vendor's
// messages at its own price. The time from acceptance to sent after the
// outage began is logged (a figure, not an assertion).
func TestSMSVendorDownFailsOverWithCostPerVendor(t *testing.T) {
	ali := aliyunsmstest.Start("LTAI5tTestKeyId", "aliyun-test-secret")
	t.Cleanup(ali.Close)
	ali.Approve("通知宝", "SMS_DEFAULT")
	tc := tencentsmstest.Start("AKIDtencentTestSecretId", "tencent-test-secret-key", "1400006666")
	t.Cleanup(tc.Close)
	tc.Approve("腾讯云")
	tc.Template("7654321", 1)

	h := newHarness(t)
	on := true
	h.cfg.Analytics.Enabled = &on
	h.cfg.Analytics.FlushEvery = 200 * time.Millisecond
	h.cfg.Analytics.Prices = []config.Price{{Provider: "aliyun", Channel: "sms", Price: 0.045, Currency: "CNY"},
		{Provider: "tencent", Channel: "sms", Price: 0.055, Currency: "CNY"}}
	h.cfg.Sink.Breaker = config.Breaker{Failures: 5, OpenFor: time.Minute, Probes: 1}
	h.cfg.Limits.DefaultPerDay = 0
	h.cfg.Channels["sms"] = []config.Provider{
		providerYAML(t, "aliyun", "aliyunsms", fmt.Sprintf("accessKeyId: LTAI5tTestKeyId\naccessKeySecret: aliyun-test-secret\n"+
			"signName: 通知宝\ntemplateCode: SMS_DEFAULT\nbaseUrl: %s\ntimeout: 2s", ali.BaseURL())),
		providerYAML(t, "tencent", "tencentsms", fmt.Sprintf("secretId: AKIDtencentTestSecretId\nsecretKey: tencent-test-secret-key\n"+
			"smsSdkAppId: \"1400006666\"\nsignName: 腾讯云\ntemplateId: \"7654321\"\nbaseUrl: %s\ntimeout: 2s", tc.BaseURL())),
	}
	h.start()
	for deadline := time.Now().Add(90 * time.Second); h.svc.AnalyticsAddr() == ""; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("all-in-one started no ClickHouse")
		}
	}
	h.mustCall(http.StatusOK, "PUT", "/v1/templates/sms-code", map[string]any{"category": "security",
		"channels": map[string]any{"sms": map[string]any{"text": "Code {{.code}}", "templateParams": map[string]any{"1": "{{.code}}"}}}})
	send := func(from, to int) []string {
		var ids []string
		for i := from; i < to; i++ {
			user := fmt.Sprintf("sms-%d", i)
			ids = append(ids, h.send(map[string]any{"template": "sms-code", "data": map[string]any{"code": fmt.Sprint(100000 + i)},
				"recipients": []any{map[string]any{"userId": user, "phone": fmt.Sprintf("+86138%08d", i)}}})[user])
		}
		return ids
	}
	const half = 40
	for _, id := range send(0, half) {
		h.waitStatus(id, processors.StatusSent)
	}
	if n := len(ali.Messages()); n != half {
		t.Fatalf("alibaba sent %d of the first %d", n, half)
	}
	ali.FailAlways(&aliyunsmstest.SystemError)
	after := send(half, 2*half)
	var lat []time.Duration
	for _, id := range after {
		st := h.waitStatus(id, processors.StatusSent)
		var accepted, sent time.Time
		for _, e := range st["history"].([]any) {
			m := e.(map[string]any)
			at, _ := time.Parse(time.RFC3339Nano, m["at"].(string))
			switch m["status"] {
			case processors.StatusAccepted:
				accepted = at
			case processors.StatusSent:
				sent = at
				if m["provider"] != "tencent" {
					t.Fatalf("%s sent by %v after alibaba went down", id, m["provider"])
				}
			case processors.StatusFailed:
				t.Fatalf("%s failed: %v", id, m)
			}
		}
		lat = append(lat, sent.Sub(accepted))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("accepted→sent after the outage began: p50 %s, max %s (%d notifications)", lat[len(lat)/2], lat[len(lat)-1], len(lat))
	if n := len(tc.Messages()); n != half {
		t.Fatalf("tencent sent %d, want %d", n, half)
	}
	if n := ali.Requests(); n >= 2*half {
		t.Fatalf("alibaba was asked %d times: the breaker never opened", n)
	}

	conn, err := analytics.Open(h.svc.AnalyticsAddr(), "default", "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	want := map[string]float64{"aliyun": half * 0.045, "tencent": half * 0.055}
	var got map[string]float64
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		got = map[string]float64{}
		rows, err := conn.Query(context.Background(), "SELECT provider, sum(cost) FROM notifyd.cost_per_day WHERE channel = 'sms' GROUP BY provider")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var p string
			var c float64
			if err := rows.Scan(&p, &c); err != nil {
				t.Fatal(err)
			}
			got[p] = c
		}
		rows.Close()
		if len(got) == 2 && near(got["aliyun"], want["aliyun"]) && near(got["tencent"], want["tencent"]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cost per vendor %v, want %v", got, want)
		}
	}
}

func near(a, b float64) bool { return a-b < 1e-6 && b-a < 1e-6 }
