package config

// Encryption configures the envelope encryption of personal data (package
// crypt): master keys wrap one key per tenant, tenant keys wrap one key per
// user, and user keys seal contacts and rendered content in every record.
type Encryption struct {
	// MasterKeys is "id:base64,id2:base64" (each key 32 random bytes); the
	// first is current: it wraps new tenant keys. Older ones stay listed until
	// `notifyd keys rewrap` has rewrapped every tenant key under the current
	// one. Also NOTIFYD_MASTER_KEYS. Empty: the all-in-one mode generates one
	// under dataDir/master.key; roles against external brokers must set it,
	// the same on every process.
	MasterKeys string `yaml:"masterKeys"`
}
