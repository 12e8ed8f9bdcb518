package schemas

import (
	"reflect"
	"testing"
)

func TestSecurityRecordsRoundTrip(t *testing.T) {
	k := &APIKey{ID: "0123456789abcdef", Tenant: "acme", Name: "ci", Scopes: []string{"send", "profiles:read"},
		Hash: []byte{1, 2, 3}, CreatedAt: 1, CreatedBy: "config:root", ExpiresAt: 2, RevokedAt: 3, RotatedTo: "x",
		RateLimit: 2.5, Burst: 5, Replaces: "fedcba9876543210"}
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

// A key record written before rotations named their predecessor (v1) reads
// with no Replaces (DESIGN rule 6).
func TestAPIKeyV1StillDecodes(t *testing.T) {
	if err := load(); err != nil {
		t.Fatal(err)
	}
	var v1 *version
	for _, v := range byFingerprint {
		if v.file == "api_key.v1.avsc" {
			v1 = v
		}
	}
	if v1 == nil {
		t.Fatal("api_key.v1.avsc must stay embedded")
	}
	b, err := v1.codec.SingleFromNative(nil, map[string]any{"id": "0123456789abcdef", "tenant": "acme", "name": "ci",
		"scopes": []any{"send"}, "hash": []byte{1}, "createdAt": int64(1), "createdBy": "config:root", "expiresAt": int64(0),
		"revokedAt": int64(0), "rotatedTo": "fedcba9876543210", "rateLimit": 0.0, "burst": int32(0)})
	if err != nil {
		t.Fatal(err)
	}
	k, err := APIKeyCodec.Decode(b)
	if err != nil || k.ID != "0123456789abcdef" || k.CreatedBy != "config:root" || k.RotatedTo != "fedcba9876543210" || k.Replaces != "" {
		t.Fatalf("api_key v1 decoded %+v, %v", k, err)
	}
	if files, err := Versions("notifyd.APIKey"); err != nil || len(files) != 2 || files[1] != "api_key.v2.avsc" {
		t.Fatalf("api key versions %v, %v", files, err)
	}
}
