package sinks

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"time"
)

// Alert is a notification that failed for good after its retry horizon.
type Alert struct {
	NotificationID string    `json:"notificationId"`
	EventID        string    `json:"eventId"`
	UserID         string    `json:"userId"`
	Template       string    `json:"template"`
	Channel        string    `json:"channel"`
	Priority       string    `json:"priority"`
	Provider       string    `json:"provider"`
	Attempts       int32     `json:"attempts"`
	Reason         string    `json:"reason"`
	At             time.Time `json:"at"`
}

// Alerter tells operators about exhausted notifications.
type Alerter interface{ Alert(Alert) }

// WebhookAlerter POSTs each alert as JSON to an operations endpoint, best
// effort: alerts queue (bounded) and are dropped, counted in the log, when the
// endpoint cannot keep up. notifyd_sink_exhausted_total counts every one.
type WebhookAlerter struct {
	URL     string
	Timeout time.Duration
	Log     *slog.Logger

	queue  chan Alert
	client *http.Client
}

// NewWebhookAlerter returns an alerter posting to url; Run sends.
func NewWebhookAlerter(url string, timeout time.Duration, log *slog.Logger) *WebhookAlerter {
	return &WebhookAlerter{URL: url, Timeout: timeout, Log: log, queue: make(chan Alert, 1000),
		client: &http.Client{Timeout: timeout}}
}

// Alert queues an alert; it never blocks.
func (w *WebhookAlerter) Alert(a Alert) {
	select {
	case w.queue <- a:
	default:
		w.Log.Warn("ops alert dropped: the alert webhook is not keeping up", "id", a.NotificationID)
	}
}

// Run posts queued alerts until ctx ends.
func (w *WebhookAlerter) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case a := <-w.queue:
			if err := w.post(ctx, a); err != nil {
				w.Log.Warn("ops alert not delivered", "id", a.NotificationID, "err", err)
			}
		}
	}
}

func (w *WebhookAlerter) post(ctx context.Context, a Alert) error {
	body, _ := json.Marshal(map[string]any{"type": "notification.exhausted", "alert": a})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}
