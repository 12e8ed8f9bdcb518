package sendgridtest

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

func post(t *testing.T, s *Server, key, body string) (*http.Response, map[string][]Error) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, s.URL+"/v3/mail/send", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e map[string][]Error
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp, e
}

func TestServerValidatesAsSendGrid(t *testing.T) {
	s := Start("k")
	defer s.Close()
	const ok = `{"personalizations":[{"to":[{"email":"a@example.com"}]}],"from":{"email":"f@example.com"},"subject":"s",` +
		`"content":[{"type":"text/plain","value":"t"},{"type":"text/html","value":"h"}]}`
	if resp, _ := post(t, s, "wrong", ok); resp.StatusCode != 401 || s.Rejected() != 1 {
		t.Fatalf("bad key: %d", resp.StatusCode)
	}
	resp, _ := post(t, s, "k", ok)
	if resp.StatusCode != 202 || resp.Header.Get("X-Message-Id") == "" || len(s.Messages()) != 1 {
		t.Fatalf("good request: %d", resp.StatusCode)
	}
	htmlFirst := strings.Replace(ok, `{"type":"text/plain","value":"t"},{"type":"text/html","value":"h"}`,
		`{"type":"text/html","value":"h"},{"type":"text/plain","value":"t"}`, 1)
	if resp, e := post(t, s, "k", htmlFirst); resp.StatusCode != 400 || len(e["errors"]) != 1 || *e["errors"][0].Field != "content.1.type" {
		t.Fatalf("html before text: %d %+v", resp.StatusCode, e)
	}
	s.InvalidAddress("A@example.com")
	if resp, e := post(t, s, "k", ok); resp.StatusCode != 400 || *e["errors"][0].Field != "personalizations.0.to.0.email" ||
		e["errors"][0].Message != "Does not contain a valid address." {
		t.Fatalf("invalid address: %d %+v", resp.StatusCode, e)
	}
	if resp, e := post(t, s, "k", `{"personalizations":[{"to":[{"email":"b@example.com"}]}],"from":{"email":"f@example.com"}}`); resp.StatusCode != 400 || len(e["errors"]) != 2 {
		t.Fatalf("no subject, no content: %d %+v", resp.StatusCode, e)
	}
	if len(s.Messages()) != 1 {
		t.Fatalf("refused requests were kept: %d", len(s.Messages()))
	}
}
