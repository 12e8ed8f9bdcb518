// Package webhooktest runs an HTTP endpoint that receives notifyd webhooks and
// verifies their signature the way a customer would.
package webhooktest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"time"
)

// Delivery is one verified request.
type Delivery struct {
	ID   string
	Body []byte
	At   time.Time
}

// Receiver is a webhook endpoint.
type Receiver struct {
	*httptest.Server
	Secret []byte
	// Hook, when set, runs before a verified request is answered; a non-zero
	// status it returns is the response and the delivery is not kept.
	Hook func(r *http.Request, body []byte) int

	mu         sync.Mutex
	deliveries []Delivery
	rejected   int
}

// Start runs a receiver on loopback.
func Start(secret string) *Receiver {
	rc := &Receiver{Secret: []byte(secret)}
	rc.Server = httptest.NewServer(http.HandlerFunc(rc.serve))
	return rc
}

// Verify checks a signature header as documented: "v1=" + hex(HMAC-SHA256(secret, ts + "." + body)),
// with the timestamp no more than 5 minutes away.
func Verify(secret []byte, tsHeader, sigHeader string, body []byte, now time.Time) bool {
	ts, err := strconv.ParseInt(tsHeader, 10, 64)
	if err != nil || now.Sub(time.Unix(ts, 0)).Abs() > 5*time.Minute {
		return false
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(tsHeader + "."))
	mac.Write(body)
	want := "v1=" + hex.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(want), []byte(sigHeader))
}

func (rc *Receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" ||
		!Verify(rc.Secret, r.Header.Get("X-Notifyd-Timestamp"), r.Header.Get("X-Notifyd-Signature"), body, time.Now()) {
		rc.mu.Lock()
		rc.rejected++
		rc.mu.Unlock()
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	if rc.Hook != nil {
		if code := rc.Hook(r, body); code != 0 {
			w.WriteHeader(code)
			return
		}
	}
	if r.Context().Err() != nil { // the sender gave up: it does not count as delivered
		return
	}
	rc.mu.Lock()
	rc.deliveries = append(rc.deliveries, Delivery{ID: r.Header.Get("X-Notifyd-Notification-Id"), Body: body, At: time.Now()})
	rc.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// Deliveries returns a copy of the verified deliveries so far, in arrival order.
func (rc *Receiver) Deliveries() []Delivery {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]Delivery(nil), rc.deliveries...)
}

// Rejected counts requests whose signature did not verify.
func (rc *Receiver) Rejected() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.rejected
}
