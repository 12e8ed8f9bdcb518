package schemas

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/linkedin/goavro/v2"
)

// Every record type, every embedded version: a typed plan exists, so no
// record notifyd reads or writes silently takes the slow path.
func TestTypedPlansCoverEveryRecord(t *testing.T) {
	covered := map[string]bool{}
	for _, c := range allChecks() {
		covered[c.record] = true
		files := embeddedVersions(t, c.record)
		enc, dec := c.plans()
		if !enc || dec != len(files) {
			t.Errorf("%s: typed encode %v, typed decode of %d of versions %v", c.record, enc, dec, files)
		}
	}
	for _, c := range skipChecks() {
		files := embeddedVersions(t, c.record)
		if _, dec := c.plans(); dec != len(files) {
			t.Errorf("%s: a Go type of one field has typed plans for %d of versions %v", c.record, dec, files)
		}
	}
	for _, v := range byFingerprint {
		if strings.HasPrefix(v.file, "testdata/") {
			continue
		}
		if v.schema == nil {
			t.Errorf("%s: not parsed for the typed codecs", v.file)
		}
		if !covered[v.record] {
			t.Errorf("%s: record %s has no codec under the typed checks (add it to otherChecks)", v.file, v.record)
		}
	}
}

// embeddedVersions are Versions without those a test registered.
func embeddedVersions(t *testing.T, record string) []string {
	all, err := Versions(record)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, f := range all {
		if !strings.HasPrefix(f, "testdata/") {
			files = append(files, f)
		}
	}
	return files
}

// A record written by the old code (goavro from toNative) decodes with the
// typed path to what the old path decodes, and the typed encoder writes it
// back byte for byte.
func TestRecordsOfTheGenericPathDecodeTypedAndBack(t *testing.T) {
	for _, c := range allChecks() {
		for _, old := range c.seeds() {
			c.check(t, old) // the decode and re-encode comparisons, and more
		}
	}
	roundTrip(t, NotificationCodec, sampleNotification())
	roundTrip(t, StatusEventCodec, sampleStatusEvent())
	roundTrip(t, UserStateCodec, sampleUserState())
	roundTrip(t, LifecycleCodec, sampleLifecycle())
	roundTrip(t, ProfileCodec, sampleProfile())
	roundTrip(t, TemplateCodec, sampleTemplate())
	roundTrip(t, CampaignCommandCodec, sampleCampaignCommand())
}

func roundTrip[T any](t *testing.T, c *Codec[T], v *T) {
	t.Helper()
	old, err := c.encodeGeneric(v)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Decode(old)
	if err != nil {
		t.Fatalf("%s: typed decode of the old record: %v", c.record, err)
	}
	want, err := c.decodeGeneric(old)
	if err != nil || !sameValue(reflect.ValueOf(got).Elem(), reflect.ValueOf(want).Elem(), false) {
		t.Fatalf("%s: typed decode %+v, generic %+v (%v)", c.record, got, want, err)
	}
	again, err := c.Encode(got)
	if err != nil || !bytes.Equal(again, old) {
		t.Fatalf("%s: typed re-encode differs (%v)\n got % x\nwant % x", c.record, err, again, old)
	}
}

// userStateRecord is a notifyd.UserState record of the newest version with a
// hand-written body: day, sentToday, recent, digests.
func userStateRecord(body ...byte) []byte {
	return append(soeHeader(UserStateCodec.latest), body...)
}

// Whatever the old path rejects, the typed path rejects; goavro's quirks
// that accept odd input are accepted by both.
func TestTypedDecodeAcceptsAndRejectsLikeGeneric(t *testing.T) {
	real, err := UserStateCodec.encodeGeneric(sampleUserState())
	if err != nil {
		t.Fatal(err)
	}
	for n := range len(real) {
		if sameDecode(t, UserStateCodec, real[:n]) != nil {
			t.Fatalf("truncated to %d of %d bytes: decoded", n, len(real))
		}
	}
	notification, _ := NotificationCodec.encodeGeneric(sampleNotification())
	dl, _ := DeadLetterCodec.encodeGeneric(&DeadLetter{Topic: "t", Truncated: true})
	badBool := append([]byte(nil), dl...)
	badBool[len(badBool)-1] = 2 // truncated is the last field

	reject := map[string][]byte{
		"trailing byte":         append(append([]byte(nil), real...), 0),
		"unknown fingerprint":   {0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0},
		"not single-object":     []byte(`{"day":"x"}`),
		"wrong record type":     notification,
		"oversize":              append(userStateRecord(), make([]byte, MaxRecordBytes)...),
		"negative string size":  userStateRecord(0x01, 0, 0, 0),
		"string past the end":   userStateRecord(0xc8, 0x01, 'x'),
		"duplicate map key":     userStateRecord(0, 4, 2, 'a', 2, 2, 'a', 4, 0, 0, 0),
		"MinInt64 block count":  userStateRecord(0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01),
		"2^30 items claimed":    userStateRecord(0, 0, 0x80, 0x80, 0x80, 0x80, 0x08),
		"2^20 items, none sent": userStateRecord(0, 0, 0x80, 0x80, 0x80, 0x01),
		"2^20 map entries":      userStateRecord(0, 0x80, 0x80, 0x80, 0x01),
		"unterminated varint":   userStateRecord(0x80, 0x80),
		"no end of the array":   userStateRecord(0, 0, 2, 2, 'h', 2),
	}
	for name, b := range reject {
		if sameDecode(t, UserStateCodec, b) != nil {
			t.Errorf("%s: decoded", name)
		}
	}
	if sameDecode(t, DeadLetterCodec, badBool) != nil {
		t.Error("boolean byte 2: decoded")
	}

	accept := map[string][]byte{
		// goavro reads varints of any length, dropping bits past 64.
		"overlong varint": userStateRecord(0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0, 0, 0, 0),
		// A negative count is followed by the block's byte size (not checked).
		"negative block count": userStateRecord(0, 0x01, 0x7e, 2, 'a', 2, 0, 0, 0),
		"several blocks":       userStateRecord(0, 2, 2, 'a', 2, 2, 2, 'b', 4, 0, 0, 0),
	}
	for name, b := range accept {
		if sameDecode(t, UserStateCodec, b) == nil {
			t.Errorf("%s: rejected", name)
		}
	}
}

// A record that lies about its item count fails after allocating no more
// than its own size could fill; goavro preallocates for the claim.
func TestTypedDecodeOfLyingCountsAllocatesLittle(t *testing.T) {
	for name, b := range map[string][]byte{
		"array of 2^20 records": userStateRecord(0, 0, 0x80, 0x80, 0x80, 0x01),
		"map of 2^20 entries":   userStateRecord(0, 0x80, 0x80, 0x80, 0x01),
		"2^20 strings":          append(soeHeader(SendRequestCodec.latest), 0, 0, 0, 0, 0, 0, 0x80, 0x80, 0x80, 0x01),
	} {
		typed := allocated(func() {
			if _, err := decodeAny(b); err == nil {
				t.Fatalf("%s: decoded", name)
			}
		})
		generic := allocated(func() { _, _ = decodeAnyGeneric(b) })
		t.Logf("%s: typed allocated %d bytes, generic %d", name, typed, generic)
		if typed > 16<<10 {
			t.Errorf("%s: typed decode allocated %d bytes", name, typed)
		}
	}
}

func decodeAny(b []byte) (any, error) {
	if name, _ := RecordName(b); name == SendRequestCodec.record {
		return SendRequestCodec.Decode(b)
	}
	return UserStateCodec.Decode(b)
}

func decodeAnyGeneric(b []byte) (any, error) {
	if name, _ := RecordName(b); name == SendRequestCodec.record {
		return SendRequestCodec.decodeGeneric(b)
	}
	return UserStateCodec.decodeGeneric(b)
}

func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// goavro splits arrays and maps into blocks of MaxBlockCount items; the typed
// encoder does too, and both decoders read such records alike.
func TestTypedBlocksLikeGoavro(t *testing.T) {
	defer func(n int64) { goavro.MaxBlockCount = n }(goavro.MaxBlockCount)
	goavro.MaxBlockCount = 2

	st := sampleUserState() // 20 recent entries: ten blocks
	st.Digests[0].Items = append(st.Digests[0].Items, "four", "five")
	b := sameEncode(t, UserStateCodec, st)
	if sameDecode(t, UserStateCodec, b) == nil {
		t.Fatal("multi-block record rejected")
	}
	st.SentToday = map[string]int32{"email": 1, "push": 2, "sms": 3, "inbox": 4, "chat": 5}
	b = sameEncode(t, UserStateCodec, st)
	if got := sameDecode(t, UserStateCodec, b); got == nil || !reflect.DeepEqual(got.SentToday, st.SentToday) {
		t.Fatalf("multi-block map: %+v", got)
	}
	tm := sampleTemplate()
	tm.Channels["push"] = ChannelContent{Title: "t", Data: map[string]string{"a": "1", "b": "2", "c": "3"}}
	tm.Channels["sms"] = ChannelContent{Text: "x"}
	if sameDecode(t, TemplateCodec, sameEncode(t, TemplateCodec, tm)) == nil {
		t.Fatal("multi-block map of records rejected")
	}
}

// Go types the compiler has no plan for take the generic path, with its
// result and its errors.
type ledgerWithoutChannel struct { // channel has no default: goavro cannot write it
	NotificationID string `avro:"notificationId"`
}

type ledgerWithStringOffset struct { // fromNative refuses a long into a string
	Offset string `avro:"offset"`
}

type notificationCore struct { // every other field has a default
	ID        string    `avro:"id"`
	EventID   string    `avro:"eventId"`
	UserID    string    `avro:"userId"`
	Template  string    `avro:"template"`
	Recipient Recipient `avro:"recipient"`
	Content   struct {
		Title string `avro:"title"`
	} `avro:"content"`
}

type inboxCommandWithoutMessage struct { // message's default is a record: {"id": ""}
	Op     string `avro:"op"`
	UserID string `avro:"userId"`
}

func TestTypedPlansFallBackOrMatchForOtherGoTypes(t *testing.T) {
	noChannel := NewCodec[ledgerWithoutChannel]("notifyd.LedgerEntry")
	if noChannel.typed.enc != nil {
		t.Fatal("planned an encoder for a Go type lacking a field with no default")
	}
	if _, err := noChannel.Encode(&ledgerWithoutChannel{NotificationID: "n"}); err == nil || !strings.Contains(err.Error(), "channel") {
		t.Fatalf("encode without channel: %v", err)
	}
	ledger, _ := LedgerEntryCodec.Encode(sampleLedgerEntry())
	if got := sameDecode(t, noChannel, ledger); got == nil || got.NotificationID != sampleLedgerEntry().NotificationID {
		t.Fatalf("decode skipping fields: %+v", got)
	}

	stringOffset := NewCodec[ledgerWithStringOffset]("notifyd.LedgerEntry")
	if len(stringOffset.typed.dec) != 0 {
		t.Fatal("planned a decoder of a long into a string")
	}
	if _, err := stringOffset.Decode(ledger); err == nil || !strings.Contains(err.Error(), "want string") {
		t.Fatalf("decode of a long into a string: %v", err)
	}

	core := NewCodec[notificationCore]("notifyd.Notification")
	if core.typed.enc == nil {
		t.Fatal("no encoder for a Go type lacking fields that have defaults")
	}
	nc := &notificationCore{ID: "n", EventID: "e", UserID: "u", Template: "t", Recipient: Recipient{Email: "a@b.c"}}
	nc.Content.Title = "hi"
	b := sameEncode(t, core, nc)
	if full, err := NotificationCodec.Decode(b); err != nil || full.Content.Title != "hi" || full.Channels == nil {
		t.Fatalf("defaults written: %+v, %v", full, err)
	}

	noMessage := NewCodec[inboxCommandWithoutMessage]("notifyd.InboxCommand")
	if noMessage.typed.enc == nil {
		t.Fatal("no encoder for a Go type lacking a record field with a default")
	}
	b = sameEncode(t, noMessage, &inboxCommandWithoutMessage{Op: "add", UserID: "u"})
	if ic, err := InboxCommandCodec.Decode(b); err != nil || ic.Message.ID != "" || ic.Op != "add" {
		t.Fatalf("record default written: %+v, %v", ic, err)
	}
}

// The typed encoder hands out a fresh slice each time, never its scratch buffer.
func TestTypedEncodeResultsDoNotShareMemory(t *testing.T) {
	a, _ := StatusEventCodec.Encode(sampleStatusEvent())
	keep := append([]byte(nil), a...)
	other := sampleStatusEvent()
	other.Status = "failed"
	b, _ := StatusEventCodec.Encode(other)
	if !bytes.Equal(a, keep) || bytes.Equal(a, b) || cap(a) != len(a) {
		t.Fatal("encode results share memory")
	}
	if binary.LittleEndian.Uint64(a[2:10]) != StatusEventCodec.latest.codec.Rabin {
		t.Fatal("header is not the newest version's fingerprint")
	}
}
