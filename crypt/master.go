package crypt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
)

// KeySize is the size of every key: master, tenant and subject keys are AES-256.
const KeySize = 32

// MaxMasterKeys bounds how many master keys one configuration may hold.
const MaxMasterKeys = 16

// MaxMasterKeysSpec bounds the length of a NOTIFYD_MASTER_KEYS value.
const MaxMasterKeysSpec = 4096

var masterIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ErrUnknownMaster means a tenant key is wrapped by a master key id that is
// not configured: the master key was removed before Rewrap moved every tenant
// key to the current one.
var ErrUnknownMaster = errors.New("crypt: tenant key wrapped by a master key that is not configured")

// MasterKey is one named master key. Its String and LogValue never show the key.
type MasterKey struct {
	ID  string
	Key []byte
}

// String names the key without its material.
func (m MasterKey) String() string { return "master key " + m.ID }

// GoString keeps the key material out of %#v.
func (m MasterKey) GoString() string { return m.String() }

// LogValue keeps the key material out of logs.
func (m MasterKey) LogValue() slog.Value { return slog.StringValue(m.ID) }

// MasterKeys is the configured set of master keys and which one wraps new
// tenant keys. The others stay readable so a rotation needs no downtime.
type MasterKeys struct {
	current string
	keys    []MasterKey
}

// NewMasterKeys validates keys (32 bytes each, unique well-formed ids, at
// most MaxMasterKeys) and that current names one of them.
func NewMasterKeys(current string, keys ...MasterKey) (MasterKeys, error) {
	if len(keys) == 0 {
		return MasterKeys{}, errors.New("master keys: none configured")
	}
	if len(keys) > MaxMasterKeys {
		return MasterKeys{}, fmt.Errorf("master keys: %d configured, at most %d", len(keys), MaxMasterKeys)
	}
	seen := map[string]bool{}
	out := MasterKeys{current: current, keys: make([]MasterKey, len(keys))}
	for i, k := range keys {
		if err := validateMasterKey(k); err != nil {
			return MasterKeys{}, err
		}
		if seen[k.ID] {
			return MasterKeys{}, fmt.Errorf("master keys: id %q appears twice", k.ID)
		}
		seen[k.ID] = true
		out.keys[i] = MasterKey{ID: k.ID, Key: append([]byte(nil), k.Key...)}
	}
	if !seen[current] {
		return MasterKeys{}, fmt.Errorf("master keys: current %q is not one of the configured ids %v", current, out.IDs())
	}
	return out, nil
}

func validateMasterKey(k MasterKey) error {
	if !masterIDPattern.MatchString(k.ID) {
		return fmt.Errorf("master key id %q: want 1-64 of A-Z a-z 0-9 . _ -", k.ID)
	}
	if len(k.Key) != KeySize {
		return fmt.Errorf("master key %s: %d bytes, want %d", k.ID, len(k.Key), KeySize)
	}
	if subtle.ConstantTimeCompare(k.Key, make([]byte, KeySize)) == 1 {
		return fmt.Errorf("master key %s: all zero bytes", k.ID)
	}
	return nil
}

// DecodeMasterKey builds a MasterKey from its id and base64 text (standard
// or URL alphabet, padded or not), as the config file holds it.
func DecodeMasterKey(id, b64 string) (MasterKey, error) {
	b64 = strings.TrimSpace(b64)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err := enc.DecodeString(b64); err == nil {
			k := MasterKey{ID: id, Key: key}
			return k, validateMasterKey(k)
		}
	}
	// The error names the id only: the text may be a slightly mistyped key.
	return MasterKey{}, fmt.Errorf("master key %s: not base64", id)
}

// ParseMasterKeys reads the NOTIFYD_MASTER_KEYS form "id:base64,id:base64…";
// the first key is the current one.
func ParseMasterKeys(s string) (MasterKeys, error) {
	if len(s) > MaxMasterKeysSpec {
		return MasterKeys{}, fmt.Errorf("master keys: %d characters, at most %d", len(s), MaxMasterKeysSpec)
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return MasterKeys{}, errors.New("master keys: none configured")
	}
	var keys []MasterKey
	for i, item := range strings.Split(s, ",") {
		if i >= MaxMasterKeys {
			return MasterKeys{}, fmt.Errorf("master keys: at most %d", MaxMasterKeys)
		}
		id, b64, ok := strings.Cut(strings.TrimSpace(item), ":")
		if !ok {
			return MasterKeys{}, fmt.Errorf("master keys: item %d: want id:base64", i+1)
		}
		k, err := DecodeMasterKey(strings.TrimSpace(id), b64)
		if err != nil {
			return MasterKeys{}, fmt.Errorf("master keys: item %d: %w", i+1, err)
		}
		keys = append(keys, k)
	}
	return NewMasterKeys(keys[0].ID, keys...)
}

// Current is the id of the master key that wraps new tenant keys.
func (m MasterKeys) Current() string { return m.current }

// IDs lists the configured master key ids, in configuration order.
func (m MasterKeys) IDs() []string {
	ids := make([]string, len(m.keys))
	for i, k := range m.keys {
		ids[i] = k.ID
	}
	return ids
}

// String shows the ids, never the keys.
func (m MasterKeys) String() string {
	return fmt.Sprintf("master keys %v (current %s)", m.IDs(), m.current)
}

// GoString keeps the key material out of %#v.
func (m MasterKeys) GoString() string { return m.String() }

// LogValue keeps the key material out of logs.
func (m MasterKeys) LogValue() slog.Value {
	return slog.GroupValue(slog.String("current", m.current), slog.Any("ids", m.IDs()))
}

// aeads builds one AES-GCM per master key.
func (m MasterKeys) aeads() (map[string]cipher.AEAD, error) {
	out := make(map[string]cipher.AEAD, len(m.keys))
	for _, k := range m.keys {
		a, err := newAEAD(k.Key)
		if err != nil {
			return nil, fmt.Errorf("master key %s: %w", k.ID, err)
		}
		out[k.ID] = a
	}
	return out, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
