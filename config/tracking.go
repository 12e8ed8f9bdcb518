package config

// Tracking turns on email open and click tracking and one-click unsubscribe
// (RFC 8058): links in a non-transactional email's HTML go through signed
// redirects at BaseURL, a pixel records the open, and List-Unsubscribe
// headers point at a signed unsubscribe URL.
type Tracking struct {
	// BaseURL is where recipients reach notifyd's /t/ endpoints (the API's
	// public address, e.g. https://t.example.com). Empty: tracking is off.
	BaseURL string `yaml:"baseUrl"`
	// Secret signs the links (HMAC-SHA256); every API instance and every
	// email sink needs the same. Empty: one is generated once and kept in
	// dataDir/tracking.secret (fine for one instance). NOTIFYD_TRACKING_SECRET.
	Secret string `yaml:"secret"`
}
