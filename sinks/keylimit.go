package sinks

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// KeyLimiter bounds the calls per key on this instance: per robot, per chat,
// per phone number, as the providers' documented limits say (DingTalk and
// WeCom robots take 20 messages a minute). A call over the limit is not made:
// the provider answers RetryLater with the wait, and the notification goes
// through the retry topics instead of holding a lane worker.
type KeyLimiter struct {
	limit rate.Limit
	burst int
	mu    sync.Mutex
	keys  map[string]*rate.Limiter
	swept time.Time
}

// NewKeyLimiter allows perMinute calls a minute per key, burst at once (at
// least 1). perMinute <= 0 means no limit (a nil limiter).
func NewKeyLimiter(perMinute float64, burst int) *KeyLimiter {
	if perMinute <= 0 {
		return nil
	}
	return &KeyLimiter{limit: rate.Limit(perMinute / 60), burst: max(burst, 1), keys: map[string]*rate.Limiter{}}
}

// Take takes a call for key at now: 0 when it may go, or how long until it
// may (nothing is taken then).
func (k *KeyLimiter) Take(key string, now time.Time) time.Duration {
	if k == nil {
		return 0
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if now.Sub(k.swept) > 10*time.Minute {
		// Keys idle long enough to be full again carry no state worth keeping.
		for key, l := range k.keys {
			if l.TokensAt(now) >= float64(k.burst) {
				delete(k.keys, key)
			}
		}
		k.swept = now
	}
	l, ok := k.keys[key]
	if !ok {
		l = rate.NewLimiter(k.limit, k.burst)
		k.keys[key] = l
	}
	r := l.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d
	}
	return 0
}
