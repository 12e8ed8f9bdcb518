package webpushtest

// The user agent's side of RFC 8291, written independently of the provider:
// what a browser does with a push message it receives.

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Decrypt opens an aes128gcm push message body (RFC 8188 header, one record)
// with the user agent's private key and auth secret, as RFC 8291 §3.4 says:
//
//	ecdh_secret = ECDH(ua_private, as_public)
//	PRK_key     = HKDF-Extract(salt=auth_secret, IKM=ecdh_secret)
//	IKM         = HKDF-Expand(PRK_key, "WebPush: info" 0x00 ua_public as_public, 32)
//	PRK         = HKDF-Extract(salt, IKM)
//	CEK         = HKDF-Expand(PRK, "Content-Encoding: aes128gcm" 0x00, 16)
//	NONCE       = HKDF-Expand(PRK, "Content-Encoding: nonce" 0x00, 12)
//
// and returns the plaintext without its padding.
func Decrypt(body []byte, uaPrivate *ecdh.PrivateKey, authSecret []byte) ([]byte, error) {
	if len(authSecret) != 16 {
		return nil, errors.New("auth secret must be 16 bytes")
	}
	if len(body) < 21 {
		return nil, errors.New("body shorter than the aes128gcm header")
	}
	salt := body[:16]
	rs := binary.BigEndian.Uint32(body[16:20])
	idlen := int(body[20])
	if rs < 18 {
		return nil, fmt.Errorf("record size %d below the minimum of 18", rs)
	}
	if idlen != 65 || len(body) < 21+idlen {
		return nil, fmt.Errorf("keyid must be the 65-byte application server key, is %d bytes", idlen)
	}
	asPublicRaw := body[21 : 21+idlen]
	record := body[21+idlen:]
	if len(record) < 17 {
		return nil, errors.New("record shorter than the authentication tag and delimiter")
	}
	if uint64(len(record)) > uint64(rs) {
		return nil, fmt.Errorf("%d-byte record exceeds rs %d: a push message must be a single record", len(record), rs)
	}
	asPublic, err := ecdh.P256().NewPublicKey(asPublicRaw)
	if err != nil {
		return nil, fmt.Errorf("keyid is not a P-256 point: %w", err)
	}
	ecdhSecret, err := uaPrivate.ECDH(asPublic)
	if err != nil {
		return nil, err
	}
	prkKey, err := hkdf.Extract(sha256.New, ecdhSecret, authSecret)
	if err != nil {
		return nil, err
	}
	var info bytes.Buffer
	info.WriteString("WebPush: info")
	info.WriteByte(0)
	info.Write(uaPrivate.PublicKey().Bytes())
	info.Write(asPublicRaw)
	ikm, err := hkdf.Expand(sha256.New, prkKey, info.String(), 32)
	if err != nil {
		return nil, err
	}
	prk, err := hkdf.Extract(sha256.New, ikm, salt)
	if err != nil {
		return nil, err
	}
	cek, err := hkdf.Expand(sha256.New, prk, "Content-Encoding: aes128gcm\x00", 16)
	if err != nil {
		return nil, err
	}
	nonce, err := hkdf.Expand(sha256.New, prk, "Content-Encoding: nonce\x00", 12)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	padded, err := aead.Open(nil, nonce, record, nil)
	if err != nil {
		return nil, fmt.Errorf("decryption failed: %w", err)
	}
	// Strip the padding: zeros after the delimiter, which is 0x02 in the
	// last (here: only) record (RFC 8188 §2).
	i := len(padded) - 1
	for i >= 0 && padded[i] == 0 {
		i--
	}
	if i < 0 || padded[i] != 0x02 {
		return nil, errors.New("the record does not end with the last-record delimiter 0x02")
	}
	return padded[:i], nil
}
