package api

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/notifyd/notifyd/topology"
)

// A high-priority request tells the process's priority gate before it is
// produced, so the process's lower lanes make room for it at once; normal
// and low ones do not, and a request refused as invalid does not either.
func TestHighPriorityRequestHoldsTheProcessLowerLanes(t *testing.T) {
	srv := newTestServer(t)
	srv.Priority = topology.NewPriorityGate(time.Minute, time.Minute)
	h := srv.Handler()
	send := func(path, body string, want int) {
		req := httptest.NewRequest("POST", path, bytes.NewBufferString(body))
		req.Header.Set("Authorization", "Bearer k")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Fatalf("%s %s: %d %s, want %d", path, body, rec.Code, rec.Body, want)
		}
	}
	const to = `"recipients":[{"userId":"u","email":"a@example.com"}]`
	send("/v1/notifications", `{"template":"t","priority":"low",`+to+`}`, http.StatusAccepted)
	send("/v1/notifications", `{"template":"t",`+to+`}`, http.StatusAccepted)
	send("/v1/notifications", `{"template":"t","priority":"high","recipients":[{"userId":"u","email":"nope"}]}`, http.StatusBadRequest)
	if srv.Priority.Held() {
		t.Fatal("the gate holds without a high-priority request")
	}
	send("/v1/notifications", `{"template":"t","priority":"high",`+to+`}`, http.StatusAccepted)
	if !srv.Priority.Held() || srv.Priority.Holds() != 1 {
		t.Fatalf("after a high-priority request: held %v, holds %d", srv.Priority.Held(), srv.Priority.Holds())
	}
	srv.Priority = topology.NewPriorityGate(time.Minute, time.Minute)
	send("/v1/notifications/batch", `{"requests":[{"template":"t",`+to+`},{"template":"t","priority":"high",`+to+`}]}`, http.StatusOK)
	if srv.Priority.Holds() != 1 {
		t.Fatal("a batch with a high-priority request did not hold the gate")
	}
}
