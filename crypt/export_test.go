package crypt

// AppendHeader exposes the envelope header writer to the fuzz targets.
var AppendHeader = appendHeader

// UnwrapRaw unwraps d with a raw wrapping key (a master key for a tenant
// key, a tenant key for a subject key): the tests use it to learn the key
// material and look for it in the topic's bytes.
func UnwrapRaw(wrappingKey []byte, d *DataKey) ([]byte, error) {
	a, err := newAEAD(wrappingKey)
	if err != nil {
		return nil, err
	}
	return unwrapRaw(a, d.recordKey(), d)
}

// PendingKeys counts the keys k prepared whose records it has not seen written.
func PendingKeys(k *Keyring) int { return k.pending.len() }
