package sinks

// Code shared by the push providers (fcm, apns, webpush).

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"

	"github.com/notifyd/notifyd/schemas"
)

// pushTargets are the targets of n on platform, in order.
func pushTargets(n *schemas.Notification, platform string) []schemas.Target {
	var targets []schemas.Target
	for _, t := range n.Targets {
		if t.Platform == platform {
			targets = append(targets, t)
		}
	}
	return targets
}

// pushUrgent: n is to be delivered at once, waking the device (a
// high-priority notification or an OTP).
func pushUrgent(n *schemas.Notification) bool { return n.Priority == "high" || n.OTP }

// apnsPriority is the apns-priority of n, for APNs directly and through
// FCM's apns headers: 10 (at once) when urgent, else 5 (power-considerate).
func apnsPriority(n *schemas.Notification) string {
	if pushUrgent(n) {
		return "10"
	}
	return "5"
}

// signES256JWT signs a JWT of the JSON header and claims with key: JWS ES256,
// whose signature is the raw 64-byte R‖S of ECDSA P-256 over SHA-256 of
// "header.claims", base64url each (RFC 7518 §3.4). APNs provider tokens and
// VAPID tokens are both made this way.
func signES256JWT(key *ecdsa.PrivateKey, header, claims []byte) (string, error) {
	signing := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(claims)
	digest := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}
