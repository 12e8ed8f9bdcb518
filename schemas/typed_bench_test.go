package schemas

import "testing"

// Old path (generic: goavro through maps) against the typed codecs, on
// realistic records: a rendered email, a status event, a user's state with 20
// recent entries, a lifecycle with 5 history entries.

func BenchmarkEncode(b *testing.B) {
	benchEncode(b, "Notification", NotificationCodec, sampleNotification())
	benchEncode(b, "StatusEvent", StatusEventCodec, sampleStatusEvent())
	benchEncode(b, "UserState", UserStateCodec, sampleUserState())
	benchEncode(b, "Lifecycle", LifecycleCodec, sampleLifecycle())
}

func BenchmarkDecode(b *testing.B) {
	benchDecode(b, "Notification", NotificationCodec, sampleNotification())
	benchDecode(b, "StatusEvent", StatusEventCodec, sampleStatusEvent())
	benchDecode(b, "UserState", UserStateCodec, sampleUserState())
	benchDecode(b, "Lifecycle", LifecycleCodec, sampleLifecycle())
}

func benchEncode[T any](b *testing.B, name string, c *Codec[T], v *T) {
	rec, err := c.encodeGeneric(v)
	if err != nil {
		b.Fatal(err)
	}
	for _, path := range []struct {
		name string
		enc  func(*T) ([]byte, error)
	}{{"generic", c.encodeGeneric}, {"typed", c.Encode}} {
		b.Run(name+"/"+path.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(rec)))
			for b.Loop() {
				if _, err := path.enc(v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func benchDecode[T any](b *testing.B, name string, c *Codec[T], v *T) {
	rec, err := c.encodeGeneric(v)
	if err != nil {
		b.Fatal(err)
	}
	for _, path := range []struct {
		name string
		dec  func([]byte) (*T, error)
	}{{"generic", c.decodeGeneric}, {"typed", c.Decode}} {
		b.Run(name+"/"+path.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(rec)))
			for b.Loop() {
				if _, err := path.dec(rec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
