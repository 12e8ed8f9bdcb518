package schemas

// NotificationPII is the plaintext of a notification's envelope
// (Notification.Sealed): what the notification says about its user. It is
// Avro (notification_pii.v1), not JSON: a stage that opens or seals it pays a
// decode/encode of the same kind as the record around it, and the schema
// fingerprint at its head tells it apart from the JSON envelopes written
// before (which start with '{').
type NotificationPII struct {
	Recipient Recipient `avro:"recipient"`
	Data      string    `avro:"data"`
	Address   string    `avro:"address"`
	Content   Content   `avro:"content"`
	Targets   []Target  `avro:"targets"`
}

// NotificationPIICodec encodes the plaintext of notification envelopes.
var NotificationPIICodec = NewCodec[NotificationPII]("notifyd.NotificationPII")
