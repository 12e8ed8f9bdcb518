package schemas

import (
	"bytes"
	"encoding/binary"
	"math"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// The typed codecs must be the generic (goavro) path, only faster: these
// fuzz targets check it both ways for every schema version of a record.
//
//   - A Go value drawn from the input encodes to the bytes goavro writes for
//     toNative's form of it (for a map of two or more entries, goavro's order
//     is Go's random map order, so there the two records are compared as
//     goavro reads them, and by length), and decodes to what the generic path
//     decodes.
//   - For every version the reader must read, a datum drawn from the input,
//     written by that version's goavro codec, decodes to exactly what the
//     generic path decodes, nil against empty included; and so do mutations
//     of it, the input itself as a record, and the input as the body of a
//     record of some version: both paths accept or both reject.

func FuzzCodecNotification(f *testing.F) { fuzzChecks(f, checkNotification) }
func FuzzCodecStatusEvent(f *testing.F)  { fuzzChecks(f, checkStatusEvent) }
func FuzzCodecSendRequest(f *testing.F)  { fuzzChecks(f, checkSendRequest) }
func FuzzCodecUserState(f *testing.F)    { fuzzChecks(f, checkUserState) }
func FuzzCodecLifecycle(f *testing.F)    { fuzzChecks(f, checkLifecycle) }
func FuzzCodecLedgerEntry(f *testing.F)  { fuzzChecks(f, checkLedgerEntry) }
func FuzzCodecDedupEntry(f *testing.F)   { fuzzChecks(f, checkDedupEntry) }

// FuzzCodecOthers covers every other record, and Go types that lack most of
// their record's fields (so decoding skips them); the input's first byte
// picks one.
func FuzzCodecOthers(f *testing.F) { fuzzChecks(f, append(otherChecks(), skipChecks()...)...) }

func fuzzChecks(f *testing.F, checks ...codecCheck) {
	pick := func(data []byte) (codecCheck, []byte) {
		if len(checks) == 1 {
			return checks[0], data
		}
		if len(data) == 0 {
			return checks[0], data
		}
		return checks[int(data[0])%len(checks)], data[1:]
	}
	seed := func(i int, b []byte) []byte {
		if len(checks) == 1 {
			return b
		}
		return append([]byte{byte(i)}, b...)
	}
	for i, c := range checks {
		for _, s := range c.seeds() {
			f.Add(seed(i, s))
		}
		f.Add(seed(i, []byte("0123456789abcdefghijklmnopqrstuvwxyz")))
		f.Add(seed(i, bytes.Repeat([]byte{0xff, 0x03, 0x02}, 40)))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, rest := pick(data)
		c.check(t, rest)
	})
}

// checkCodec runs every equivalence check on one input; without encode,
// only the decoding ones (for Go types the newest schema cannot write).
func checkCodec[T any](t *testing.T, c *Codec[T], data []byte, encode bool) {
	t.Helper()
	versions := versionsOf(t, c.record)

	// The input as a record, and as the body of a record of some version.
	sameDecode(t, c, data)
	if len(data) > 0 {
		v := versions[int(data[0])%len(versions)]
		sameDecode(t, c, append(soeHeader(v), data[1:]...))
	}

	g := &gen{b: data}

	// A Go value: both encoders agree, and it decodes back.
	if encode {
		v := new(T)
		fillGo(g, reflect.ValueOf(v).Elem(), 0)
		b := sameEncode(t, c, v)
		got := sameDecode(t, c, b)
		if got == nil {
			t.Fatalf("%s: own record does not decode: % x", c.record, b)
		}
		// Decoding makes nil slices and maps empty (and empty bytes nil), in
		// the generic path as in the typed one.
		if !sameValue(reflect.ValueOf(got).Elem(), reflect.ValueOf(v).Elem(), true) {
			t.Fatalf("%s: round trip\n got %+v\nwant %+v", c.record, got, v)
		}
	}

	// Every version the reader reads: goavro's record of a drawn datum, and
	// mutations of it.
	for _, ver := range versions {
		native := genNative(g, ver.schema, 0)
		b, err := ver.codec.SingleFromNative(nil, native)
		if err != nil {
			t.Fatalf("%s: goavro encode of drawn datum: %v", ver.file, err)
		}
		d := sameDecode(t, c, b)
		if d == nil {
			t.Fatalf("%s: goavro's record does not decode: % x", ver.file, b)
		}
		if encode {
			sameEncode(t, c, d)
		}
		for range 1 + g.n(3) {
			sameDecode(t, c, mutate(g, b))
		}
	}
}

func versionsOf(t *testing.T, record string) []*version {
	var vs []*version
	for _, v := range byFingerprint {
		if v.record == record && v.schema != nil {
			vs = append(vs, v)
		}
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].n < vs[j].n })
	if len(vs) == 0 {
		t.Fatalf("%s: no parsed versions", record)
	}
	return vs
}

func soeHeader(v *version) []byte {
	h := []byte{0xC3, 0x01, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.LittleEndian.PutUint64(h[2:], v.codec.Rabin)
	return h
}

// sameEncode checks the typed encoder against the generic one and returns
// the typed record.
func sameEncode[T any](t *testing.T, c *Codec[T], v *T) []byte {
	t.Helper()
	want, werr := c.encodeGeneric(v)
	got, gerr := c.Encode(v)
	if werr != nil || gerr != nil {
		t.Fatalf("%s: encode: generic %v, typed %v", c.record, werr, gerr)
	}
	if bytes.Equal(got, want) {
		return got
	}
	if !hasMultiEntryMap(reflect.ValueOf(v).Elem()) {
		t.Fatalf("%s: typed encode differs\n got % x\nwant % x\nvalue %+v", c.record, got, want, v)
	}
	// Map order is random in both: compare as goavro reads them.
	gn, _, gerr := c.latest.codec.NativeFromSingle(got)
	wn, _, werr := c.latest.codec.NativeFromSingle(want)
	if len(got) != len(want) || gerr != nil || werr != nil || !sameValue(reflect.ValueOf(gn), reflect.ValueOf(wn), false) {
		t.Fatalf("%s: typed encode differs beyond map order (%v, %v)\n got % x\nwant % x", c.record, gerr, werr, got, want)
	}
	return got
}

// sameDecode checks that both decoders accept or both reject b, and agree on
// the value, exactly; it returns the value, nil if rejected.
func sameDecode[T any](t *testing.T, c *Codec[T], b []byte) *T {
	t.Helper()
	want, werr := c.decodeGeneric(b)
	got, gerr := c.Decode(b)
	if (werr == nil) != (gerr == nil) {
		t.Fatalf("%s: decode of % x: generic %v, typed %v", c.record, b, werr, gerr)
	}
	if werr != nil {
		if !strings.Contains(gerr.Error(), c.record) {
			t.Fatalf("%s: error does not name the record: %v", c.record, gerr)
		}
		for _, v := range byFingerprint {
			if file := "(" + v.file + ")"; strings.Contains(werr.Error(), file) && !strings.Contains(gerr.Error(), file) {
				t.Fatalf("%s: error does not name %s: %v", c.record, v.file, gerr)
			}
		}
		return nil
	}
	if !sameValue(reflect.ValueOf(got).Elem(), reflect.ValueOf(want).Elem(), false) {
		t.Fatalf("%s: decode of % x\ntyped   %#v\ngeneric %#v", c.record, b, got, want)
	}
	return got
}

func mutate(g *gen, b []byte) []byte {
	out := append([]byte(nil), b...)
	pos := func() int {
		if len(out) <= 10 {
			return g.n(len(out) + 1)
		}
		return 10 + g.n(len(out)-10) // mostly the body: the header is checked before either path
	}
	switch g.n(7) {
	case 0:
		return out[:pos()]
	case 1:
		if p := pos(); p < len(out) {
			out[p] ^= 1 << g.n(8)
		}
	case 2:
		if p := pos(); p < len(out) {
			out[p] = []byte{0x00, 0x01, 0x02, 0x7f, 0x80, 0xff, 0xfe, 0x81}[g.n(8)]
		}
	case 3:
		p := pos()
		return append(out[:p], append([]byte{g.byte()}, out[p:]...)...)
	case 4:
		if p := pos(); p < len(out) {
			return append(out[:p], out[p+1:]...)
		}
	case 5:
		return append(out, g.byte())
	case 6:
		// a varint continued: a count or length made long or huge
		if p := pos(); p < len(out) {
			return append(out[:p], append([]byte{0x80 | g.byte(), 0x80 | g.byte()}, out[p:]...)...)
		}
	}
	return out
}

// gen draws values from a fuzz input; past its end it draws zeros, so every
// input makes a (smaller) value.
type gen struct {
	b []byte
	i int
}

func (g *gen) byte() byte {
	if g.i >= len(g.b) {
		return 0
	}
	c := g.b[g.i]
	g.i++
	return c
}

// n is in [0, k).
func (g *gen) n(k int) int {
	if k <= 1 {
		return 0
	}
	if k <= 256 {
		return int(g.byte()) % k
	}
	return int(g.uint64() % uint64(k))
}

func (g *gen) uint64() uint64 {
	var b [8]byte
	for i := range b {
		b[i] = g.byte()
	}
	return binary.LittleEndian.Uint64(b[:])
}

var pieces = []string{"a", "Z", "0", " ", "é", "ß", "Ω", "主题", "颜色", "🙂", "📦", "\u200b", "\x00", "\n", `"`, `\`,
	"<p>", "%7C", "|", "#", "email", "sha256:"}

func (g *gen) string() string {
	switch g.n(8) {
	case 0:
		return ""
	case 1: // any bytes, invalid UTF-8 included
		b := make([]byte, g.n(12))
		for i := range b {
			b[i] = g.byte()
		}
		return string(b)
	case 2: // long: a multi-byte length
		return strings.Repeat(pieces[g.n(len(pieces))], 64+g.n(256))
	default:
		var sb strings.Builder
		for range 1 + g.n(6) {
			sb.WriteString(pieces[g.n(len(pieces))])
		}
		return sb.String()
	}
}

func (g *gen) bytes() []byte {
	switch g.n(4) {
	case 0:
		return nil
	case 1:
		return []byte{}
	default:
		b := make([]byte, g.n(40))
		for i := range b {
			b[i] = g.byte()
		}
		return b
	}
}

func (g *gen) int64() int64 {
	switch g.n(8) {
	case 0:
		return 0
	case 1:
		return -1
	case 2:
		return math.MinInt64
	case 3:
		return math.MaxInt64
	case 4:
		return int64(g.uint64())
	case 5:
		return -int64(g.n(200))
	case 6:
		return 1 << g.n(64)
	}
	return int64(g.n(128))
}

func (g *gen) int32() int32 {
	switch g.n(8) {
	case 0:
		return 0
	case 1:
		return -1
	case 2:
		return math.MinInt32
	case 3:
		return math.MaxInt32
	case 4:
		return int32(g.uint64())
	case 5:
		return -int32(g.n(200))
	case 6:
		return 1 << g.n(32)
	}
	return int32(g.n(128))
}

func (g *gen) float64() float64 {
	switch g.n(8) {
	case 0:
		return 0
	case 1:
		return math.Copysign(0, -1)
	case 2:
		return math.Inf(1)
	case 3:
		return math.Inf(-1)
	case 4:
		return math.NaN()
	case 5:
		return math.Float64frombits(g.uint64())
	case 6:
		return -1e300
	}
	return float64(g.n(100)) / 4
}

// items is how many items an array or map gets; -1: nil, 0: empty.
func (g *gen) items(depth int) int {
	switch g.n(4) {
	case 0:
		return -1
	case 1:
		return 0
	}
	if depth > 3 {
		return 1
	}
	return 1 + g.n(4)
}

// fillGo draws a Go value of the kinds toNative handles.
func fillGo(g *gen, v reflect.Value, depth int) {
	switch v.Kind() {
	case reflect.Struct:
		for _, f := range fieldsOf(v.Type()) {
			fillGo(g, v.Field(f.index), depth+1)
		}
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			v.SetBytes(g.bytes())
			return
		}
		n := g.items(depth)
		if n < 0 {
			return
		}
		s := reflect.MakeSlice(v.Type(), n, n)
		for i := range n {
			fillGo(g, s.Index(i), depth+1)
		}
		v.Set(s)
	case reflect.Map:
		n := g.items(depth)
		if n < 0 {
			return
		}
		m := reflect.MakeMap(v.Type())
		for range n {
			e := reflect.New(v.Type().Elem()).Elem()
			fillGo(g, e, depth+1)
			m.SetMapIndex(reflect.ValueOf(g.string()), e)
		}
		v.Set(m)
	case reflect.String:
		v.SetString(g.string())
	case reflect.Bool:
		v.SetBool(g.byte()&1 == 1)
	case reflect.Int32:
		v.SetInt(int64(g.int32()))
	case reflect.Int64:
		v.SetInt(g.int64())
	case reflect.Float64:
		v.SetFloat(g.float64())
	default:
		panic("fillGo: unexpected kind " + v.Kind().String())
	}
}

// genNative draws a goavro native datum of schema s; a record sometimes
// lacks fields that have a default, which goavro then writes.
func genNative(g *gen, s *avroType, depth int) any {
	switch s.kind {
	case avroString:
		return g.string()
	case avroBytes:
		return g.bytes()
	case avroBoolean:
		return g.byte()&1 == 1
	case avroInt:
		return g.int32()
	case avroLong:
		return g.int64()
	case avroFloat:
		return float32(g.float64())
	case avroDouble:
		return g.float64()
	case avroArray:
		n := max(g.items(depth), 0)
		a := make([]any, n)
		for i := range a {
			a[i] = genNative(g, s.items, depth+1)
		}
		return a
	case avroMap:
		n := max(g.items(depth), 0)
		m := make(map[string]any, n)
		for range n {
			m[g.string()] = genNative(g, s.items, depth+1)
		}
		return m
	case avroRecord:
		m := map[string]any{}
		for _, f := range s.fields {
			if f.hasDef && g.n(5) == 0 {
				continue
			}
			m[f.name] = genNative(g, f.typ, depth+1)
		}
		return m
	}
	panic("genNative: unsupported schema")
}

// sameValue is reflect.DeepEqual with floats compared by their bits (NaN
// equals itself, -0 does not equal 0); loose treats nil and empty slices and
// maps as equal.
func sameValue(a, b reflect.Value, loose bool) bool {
	if a.IsValid() != b.IsValid() {
		return false
	}
	if !a.IsValid() {
		return true
	}
	if a.Type() != b.Type() {
		return false
	}
	switch a.Kind() {
	case reflect.Interface, reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return sameValue(a.Elem(), b.Elem(), loose)
	case reflect.Struct:
		for i := range a.NumField() {
			if !sameValue(a.Field(i), b.Field(i), loose) {
				return false
			}
		}
		return true
	case reflect.Slice:
		if (!loose && a.IsNil() != b.IsNil()) || a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !sameValue(a.Index(i), b.Index(i), loose) {
				return false
			}
		}
		return true
	case reflect.Map:
		if (!loose && a.IsNil() != b.IsNil()) || a.Len() != b.Len() {
			return false
		}
		it := a.MapRange()
		for it.Next() {
			bv := b.MapIndex(it.Key())
			if !bv.IsValid() || !sameValue(it.Value(), bv, loose) {
				return false
			}
		}
		return true
	case reflect.Float32, reflect.Float64:
		return math.Float64bits(a.Float()) == math.Float64bits(b.Float())
	case reflect.String:
		return a.String() == b.String()
	case reflect.Bool:
		return a.Bool() == b.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return a.Int() == b.Int()
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return a.Uint() == b.Uint()
	}
	panic("sameValue: unexpected kind " + a.Kind().String())
}

func hasMultiEntryMap(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if hasMultiEntryMap(v.Field(i)) {
				return true
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			if hasMultiEntryMap(v.Index(i)) {
				return true
			}
		}
	case reflect.Map:
		if v.Len() > 1 {
			return true
		}
		it := v.MapRange()
		for it.Next() {
			if hasMultiEntryMap(it.Value()) {
				return true
			}
		}
	}
	return false
}
