package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/notifyd/notifyd/config"
)

// Keys holds API keys by their SHA-256 only.
type Keys struct {
	hashes [][32]byte
	names  []string
}

// NewKeys hashes the configured keys; the plaintext is not kept.
func NewKeys(keys []config.APIKey) *Keys {
	k := &Keys{}
	for _, c := range keys {
		if c.Key == "" {
			continue
		}
		k.hashes = append(k.hashes, sha256.Sum256([]byte(c.Key)))
		k.names = append(k.names, c.Name)
	}
	return k
}

// Check returns the key's name, or "" if the key is not known.
func (k *Keys) Check(presented string) string {
	if presented == "" {
		return ""
	}
	h := sha256.Sum256([]byte(presented))
	name := ""
	for i, kh := range k.hashes {
		if subtle.ConstantTimeCompare(h[:], kh[:]) == 1 {
			name = k.names[i]
		}
	}
	return name
}

func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		token, ok := strings.CutPrefix(auth, "Bearer ")
		if !ok || s.Keys.Check(strings.TrimSpace(token)) == "" {
			writeError(w, &Error{Status: http.StatusUnauthorized, Code: "unauthenticated",
				Message: "missing or unknown API key: send Authorization: Bearer <key>"})
			return
		}
		next.ServeHTTP(w, r)
	})
}
