package twiliotest

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func TestSignatureOfTwiliosExample(t *testing.T) {
	form := url.Values{"CallSid": {"CA1234567890ABCDE"}, "Caller": {"+14158675310"}, "Digits": {"1234"},
		"From": {"+14158675310"}, "To": {"+18005551212"}}
	if got := Signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", form); got != "GvWf1cFY/Q7PnoempGyD5oXAezc=" {
		t.Fatalf("signature %s", got)
	}
}

func TestServerChecksCredentialsAndForm(t *testing.T) {
	s := Start("AC1", "tok")
	defer s.Close()
	send := func(user, pass string, form url.Values) (int, map[string]any) {
		req, _ := http.NewRequest(http.MethodPost, s.URL+"/2010-04-01/Accounts/AC1/Messages.json", strings.NewReader(form.Encode()))
		req.SetBasicAuth(user, pass)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	good := url.Values{"To": {"+14155550100"}, "From": {"+15005550006"}, "Body": {"hi"}}
	if st, m := send("AC1", "bad", good); st != 401 || m["code"] != float64(CodeAuthenticate) {
		t.Fatalf("bad token: %d %v", st, m)
	}
	if st, m := send("AC1", "tok", url.Values{"To": {"+14155550100"}, "Body": {"hi"}}); st != 400 || m["code"] != float64(CodeFromRequired) {
		t.Fatalf("no From: %d %v", st, m)
	}
	if st, m := send("AC1", "tok", url.Values{"To": {"0100"}, "From": {"+15005550006"}, "Body": {"hi"}}); st != 400 || m["code"] != float64(CodeInvalidTo) {
		t.Fatalf("bad To: %d %v", st, m)
	}
	if st, m := send("AC1", "tok", good); st != 201 || !strings.HasPrefix(m["sid"].(string), "SM") || m["status"] != "queued" {
		t.Fatalf("good: %d %v", st, m)
	}
	if n := len(s.Messages()); n != 1 || s.Rejected() != 1 {
		t.Fatalf("accepted %d, rejected %d", n, s.Rejected())
	}
}
