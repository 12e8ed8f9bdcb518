package schemas

// APIKey is a managed API key (notify.apikeys, key: ID). Hash is the SHA-256
// of the key's secret; the secret itself is shown once and never stored.
type APIKey struct {
	ID        string   `avro:"id"`
	Tenant    string   `avro:"tenant"`
	Name      string   `avro:"name"`
	Scopes    []string `avro:"scopes"`
	Hash      []byte   `avro:"hash"`
	CreatedAt int64    `avro:"createdAt"`
	CreatedBy string   `avro:"createdBy"`
	ExpiresAt int64    `avro:"expiresAt"`
	RevokedAt int64    `avro:"revokedAt"`
	RotatedTo string   `avro:"rotatedTo"`
	RateLimit float64  `avro:"rateLimit"`
	Burst     int32    `avro:"burst"`
	// Replaces (v2) is the key a rotation's successor replaced, written with
	// the successor itself, so the two are one principal even before (or
	// without) the predecessor's record carrying RotatedTo.
	Replaces string `avro:"replaces"`
}

// AuditEvent records one authenticated write through the API (notify.audit,
// key: the tenant's name). It never carries a request body or a secret.
type AuditEvent struct {
	ID         string            `avro:"id"`
	At         int64             `avro:"at"`
	Tenant     string            `avro:"tenant"`
	KeyID      string            `avro:"keyId"`
	KeyName    string            `avro:"keyName"`
	Action     string            `avro:"action"`
	Resources  map[string]string `avro:"resources"`
	Status     int32             `avro:"status"`
	RemoteAddr string            `avro:"remoteAddr"`
}

// The codecs of the security records (DESIGN rule 6: one per record type).
var (
	APIKeyCodec     = NewCodec[APIKey]("notifyd.APIKey")
	AuditEventCodec = NewCodec[AuditEvent]("notifyd.AuditEvent")
)
