package processors_test

import (
	"context"
	"strings"
	"testing"

	"github.com/notifyd/notifyd/processors"
	"github.com/notifyd/notifyd/schemas"
)

// BenchmarkSealOpenNotification seals a rendered email notification and opens
// it again, as the deliver group and a sink do for every notification:
//
//	go test -run '^$' -bench SealOpenNotification -benchmem ./processors/
func BenchmarkSealOpenNotification(b *testing.B) {
	kr := keyring(b)
	ctx := context.Background()
	n := &schemas.Notification{ID: "n-0001", UserID: "user-42", Channel: "email", Address: "user42@example.com",
		Data:      `{"order":"A-1001","items":3,"total":"42.00"}`,
		Recipient: schemas.Recipient{UserID: "user-42", Email: "user42@example.com", Locale: "en"},
		Content: schemas.Content{Subject: "Your order A-1001 has shipped",
			HTML: "<html><body>" + strings.Repeat("<p>Your order is on its way.</p>", 20) + "</body></html>",
			Text: strings.Repeat("Your order is on its way. ", 20)}}
	if _, err := processors.SealNotification(ctx, kr, n); err != nil { // creates the key
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		s, err := processors.SealNotification(ctx, kr, n)
		if err != nil {
			b.Fatal(err)
		}
		if err := processors.OpenNotification(ctx, kr, s); err != nil {
			b.Fatal(err)
		}
	}
}
