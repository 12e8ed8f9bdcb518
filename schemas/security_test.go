package schemas

import (
	"reflect"
	"testing"
)

func TestSecurityRecordsRoundTrip(t *testing.T) {
	k := &APIKey{ID: "0123456789abcdef", Tenant: "acme", Name: "ci", Scopes: []string{"send", "profiles:read"},
		Hash: []byte{1, 2, 3}, CreatedAt: 1, CreatedBy: "config:root", ExpiresAt: 2, RevokedAt: 3, RotatedTo: "x",
		RateLimit: 2.5, Burst: 5}
	b, err := APIKeyCodec.Encode(k)
	if err != nil {
		t.Fatal(err)
	}
	got, err := APIKeyCodec.Decode(b)
	if err != nil || !reflect.DeepEqual(got, k) {
		t.Fatalf("api key round trip: %+v, %v", got, err)
	}
	a := &AuditEvent{ID: "a", At: 9, Tenant: "acme", KeyID: "k", KeyName: "ci", Action: "DELETE /v1/profiles/{userId}",
		Resources: map[string]string{"userId": "u1"}, Status: 204, RemoteAddr: "127.0.0.1:1"}
	b, err = AuditEventCodec.Encode(a)
	if err != nil {
		t.Fatal(err)
	}
	ga, err := AuditEventCodec.Decode(b)
	if err != nil || !reflect.DeepEqual(ga, a) {
		t.Fatalf("audit round trip: %+v, %v", ga, err)
	}
	if _, err := AuditEventCodec.Decode([]byte{0xC3, 0x01, 1, 2}); err == nil {
		t.Fatal("garbage decoded")
	}
}
