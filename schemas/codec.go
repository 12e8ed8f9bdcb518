package schemas

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"github.com/linkedin/goavro/v2"
)

//go:embed *.avsc
var schemaFiles embed.FS

// MaxRecordBytes bounds a record notifyd decodes (Kafka's default message size
// is 1 MiB); larger input is refused before decoding.
const MaxRecordBytes = 4 << 20

// MaxItems bounds the items of one array or map in a record.
const MaxItems = 1 << 20

func init() {
	// goavro preallocates an array or map for the item count a record claims,
	// up to MaxInt32 items by default: 22 crafted bytes asked for ~32 GiB and
	// killed the process (found by FuzzDecodeSendRequest). With this bound a
	// lying record costs at most a 16 MiB allocation before it fails.
	goavro.MaxBlockCount = MaxItems
	goavro.MaxBlockSize = MaxRecordBytes
}

// ErrUnknownSchema means a record's fingerprint matches no schema version notifyd knows.
var ErrUnknownSchema = errors.New("unknown schema fingerprint")

// version is one embedded schema file: <name>.v<N>.avsc.
type version struct {
	file   string
	n      int
	codec  *goavro.Codec
	record string    // Avro full name, e.g. notifyd.StatusEvent
	schema *avroType // for the typed codecs; nil: records of it take the generic path
}

var (
	loadOnce      sync.Once
	loadErr       error
	byFingerprint map[uint64]*version
	latestByName  map[string]*version
)

func load() error {
	loadOnce.Do(func() {
		byFingerprint = map[uint64]*version{}
		latestByName = map[string]*version{}
		entries, err := fs.Glob(schemaFiles, "*.avsc")
		if err != nil {
			loadErr = err
			return
		}
		for _, file := range entries {
			v, err := parseVersion(file)
			if err != nil {
				loadErr = err
				return
			}
			byFingerprint[v.codec.Rabin] = v
			if cur, ok := latestByName[v.record]; !ok || v.n > cur.n {
				latestByName[v.record] = v
			}
		}
	})
	return loadErr
}

func parseVersion(file string) (*version, error) {
	parts := strings.Split(strings.TrimSuffix(file, ".avsc"), ".v")
	if len(parts) != 2 {
		return nil, fmt.Errorf("schema file %s: want <name>.v<N>.avsc", file)
	}
	n, err := strconv.Atoi(parts[1])
	if err != nil {
		return nil, fmt.Errorf("schema file %s: version: %w", file, err)
	}
	spec, err := schemaFiles.ReadFile(file)
	if err != nil {
		return nil, err
	}
	c, err := goavro.NewCodec(string(spec))
	if err != nil {
		return nil, fmt.Errorf("schema file %s: %w", file, err)
	}
	v := &version{file: file, n: n, codec: c, record: typeName(c)}
	if t, err := parseAvsc(spec); err == nil && t.kind == avroRecord && t.name == v.record {
		v.schema = t
	}
	return v, nil
}

// Versions lists the embedded schema files of one record type, oldest first.
func Versions(record string) ([]string, error) {
	if err := load(); err != nil {
		return nil, err
	}
	var vs []*version
	for _, v := range byFingerprint {
		if v.record == record {
			vs = append(vs, v)
		}
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].n < vs[j].n })
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.file
	}
	return out, nil
}

// Codec encodes T with the newest schema of its record and decodes any known version.
//
// It reads and writes T's fields straight from and into Avro binary with plans
// compiled once (typed.go); goavro through generic maps (toNative,
// fromNative) is the reference it matches, and the path for any combination
// of schema and Go type without a plan.
type Codec[T any] struct {
	record string
	latest *version
	typed  *typedCodec
}

// NewCodec returns the codec for the Avro record with full name record (e.g. "notifyd.Profile").
func NewCodec[T any](record string) *Codec[T] {
	if err := load(); err != nil {
		panic(err)
	}
	v, ok := latestByName[record]
	if !ok {
		panic("schemas: no schema for record " + record)
	}
	if reflect.TypeFor[T]().Kind() != reflect.Struct {
		panic("schemas: codec type must be a struct")
	}
	return &Codec[T]{record: record, latest: v, typed: compileTyped(reflect.TypeFor[T](), record, v)}
}

// Encode writes v in Avro single-object encoding with the newest schema.
func (c *Codec[T]) Encode(v *T) ([]byte, error) {
	if c.typed.enc == nil || v == nil {
		return c.encodeGeneric(v)
	}
	return c.typed.encode(unsafe.Pointer(v)), nil
}

// encodeGeneric is the reference encoder: goavro from toNative's maps.
func (c *Codec[T]) encodeGeneric(v *T) ([]byte, error) {
	b, err := c.latest.codec.SingleFromNative(nil, toNative(reflect.ValueOf(v).Elem()))
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", c.record, err)
	}
	return b, nil
}

// Decode reads a single-object encoded record written with any known version of the schema.
func (c *Codec[T]) Decode(b []byte) (*T, error) {
	v, body, err := c.writer(b)
	if err != nil {
		return nil, err
	}
	plan := c.typed.dec[v.codec.Rabin]
	if plan == nil || plan.v != v {
		return c.decodeNative(v, body)
	}
	out := new(T)
	d := decoder{b: body}
	if err := plan.root.decode(&d, unsafe.Pointer(out)); err != nil {
		return nil, fmt.Errorf("decode %s (%s): %w", c.record, v.file, err)
	}
	if d.i != len(body) {
		return nil, fmt.Errorf("decode %s (%s): %d trailing bytes", c.record, v.file, len(body)-d.i)
	}
	return out, nil
}

// writer checks a record's size and header and finds its writer's schema.
func (c *Codec[T]) writer(b []byte) (*version, []byte, error) {
	if len(b) > MaxRecordBytes {
		return nil, nil, fmt.Errorf("decode %s: record of %d bytes exceeds %d", c.record, len(b), MaxRecordBytes)
	}
	fp, body, err := goavro.FingerprintFromSOE(b)
	if err != nil {
		return nil, nil, fmt.Errorf("decode %s: not an Avro single-object record: %w", c.record, err)
	}
	v, ok := byFingerprint[fp]
	if !ok {
		return nil, nil, fmt.Errorf("decode %s: %w %016x", c.record, ErrUnknownSchema, fp)
	}
	if v.record != c.record {
		return nil, nil, fmt.Errorf("decode %s: record is a %s", c.record, v.record)
	}
	return v, body, nil
}

// decodeGeneric is the reference decoder: goavro's maps through fromNative.
func (c *Codec[T]) decodeGeneric(b []byte) (*T, error) {
	v, body, err := c.writer(b)
	if err != nil {
		return nil, err
	}
	return c.decodeNative(v, body)
}

func (c *Codec[T]) decodeNative(v *version, body []byte) (*T, error) {
	native, rest, err := v.codec.NativeFromBinary(body)
	if err != nil {
		return nil, fmt.Errorf("decode %s (%s): %w", c.record, v.file, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("decode %s (%s): %d trailing bytes", c.record, v.file, len(rest))
	}
	out := new(T)
	if err := fromNative(reflect.ValueOf(out).Elem(), native, ""); err != nil {
		return nil, fmt.Errorf("decode %s (%s): %w", c.record, v.file, err)
	}
	return out, nil
}

// The shared codecs, one per record type (DESIGN rule 6).
var (
	SendRequestCodec  = NewCodec[SendRequest]("notifyd.SendRequest")
	NotificationCodec = NewCodec[Notification]("notifyd.Notification")
	ProfileCodec      = NewCodec[Profile]("notifyd.Profile")
	TemplateCodec     = NewCodec[Template]("notifyd.Template")
	StatusEventCodec  = NewCodec[StatusEvent]("notifyd.StatusEvent")
	DedupEntryCodec   = NewCodec[DedupEntry]("notifyd.DedupEntry")
	UserStateCodec    = NewCodec[UserState]("notifyd.UserState")
	LifecycleCodec    = NewCodec[Lifecycle]("notifyd.Lifecycle")
	DeadLetterCodec   = NewCodec[DeadLetter]("notifyd.DeadLetter")
	LedgerEntryCodec  = NewCodec[LedgerEntry]("notifyd.LedgerEntry")
	FeedbackCodec     = NewCodec[DeliveryFeedback]("notifyd.DeliveryFeedback")
	ScheduledCodec    = NewCodec[ScheduledEntry]("notifyd.ScheduledEntry")
	InboxCommandCodec = NewCodec[InboxCommand]("notifyd.InboxCommand")
	InboxFeedCodec    = NewCodec[InboxFeed]("notifyd.InboxFeed")
	InboxEventCodec   = NewCodec[InboxEvent]("notifyd.InboxEvent")
)

// Goka adapts a Codec to goka.Codec; values are *T.
type Goka[T any] struct{ C *Codec[T] }

// Encode implements goka.Codec.
func (g Goka[T]) Encode(value any) ([]byte, error) {
	v, ok := value.(*T)
	if !ok {
		return nil, fmt.Errorf("encode %s: got %T", g.C.record, value)
	}
	return g.C.Encode(v)
}

// Decode implements goka.Codec.
func (g Goka[T]) Decode(data []byte) (any, error) { return g.C.Decode(data) }

func typeName(c *goavro.Codec) string {
	n := c.TypeName()
	return n.String()
}

// Decoded is a table value read leniently: a record that does not decode yields
// Err instead of failing the processor that reads it (DESIGN rule 7).
type Decoded[T any] struct {
	V   *T
	Err error
}

// Lenient adapts a Codec to goka.Codec for tables other writers may feed; values are Decoded[T].
type Lenient[T any] struct{ C *Codec[T] }

// Encode implements goka.Codec.
func (l Lenient[T]) Encode(value any) ([]byte, error) {
	switch v := value.(type) {
	case *T:
		return l.C.Encode(v)
	case Decoded[T]:
		return l.C.Encode(v.V)
	}
	return nil, fmt.Errorf("encode %s: got %T", l.C.record, value)
}

// Decode implements goka.Codec; it never fails.
func (l Lenient[T]) Decode(data []byte) (any, error) {
	v, err := l.C.Decode(data)
	return Decoded[T]{V: v, Err: err}, nil
}

// RecordName is the Avro full name of a single-object encoded record
// ("notifyd.Notification"), for readers that accept more than one type.
func RecordName(b []byte) (string, error) {
	if err := load(); err != nil {
		return "", err
	}
	fp, _, err := goavro.FingerprintFromSOE(b)
	if err != nil {
		return "", fmt.Errorf("not an Avro single-object record: %w", err)
	}
	v, ok := byFingerprint[fp]
	if !ok {
		return "", fmt.Errorf("%w %016x", ErrUnknownSchema, fp)
	}
	return v.record, nil
}
