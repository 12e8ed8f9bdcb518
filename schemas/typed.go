package schemas

// Typed codecs: Avro binary straight from and into Go structs, with no
// map[string]any in between (goavro + toNative/fromNative were ~30% of the
// pipeline's CPU and most of its allocations).
//
// Why our own compiled codec and not github.com/hamba/avro/v2 (v2.31.0,
// tried): hamba cannot be made equivalent to the goavro path this replaces.
// It writes arrays and maps in blocks of 100 items with negative counts and
// byte sizes (goavro: one block of up to MaxBlockCount, positive count), so
// the bytes differ; it decodes an empty bytes field to []byte{} (the old path:
// nil); it accepts a map with a duplicate key, which goavro rejects; and it
// rejects a varint longer than 10 bytes, which goavro accepts. Matching all
// of that would take a validation pass over every record in front of hamba,
// giving up much of its speed.
//
// So a plan is compiled once per (schema version, Go type) from the parsed
// .avsc (avsc.go): struct fields by offset, a schema field the Go type lacks
// written as its default, a writer field the Go type lacks skipped (and
// validated as goavro would), and everything else exactly as goavro reads and
// writes it (typed_encode.go, typed_decode.go). goavro stays the schema
// authority (fingerprints, Versions, RecordName) and the reference: a
// combination this compiler does not handle gets no plan and takes the generic
// path, so the typed path never guesses.

import (
	"encoding/binary"
	"fmt"
	"math"
	"reflect"
	"unsafe"
)

// typedCodec holds the compiled plans of one Codec[T].
type typedCodec struct {
	header [10]byte            // single-object header of the newest version
	enc    *encNode            // nil: encode takes the generic path
	dec    map[uint64]*decPlan // by writer fingerprint; absent: the generic path
}

type decPlan struct {
	v    *version
	root *decNode
}

// compileTyped builds the plans of a codec of t for record; it never fails,
// a plan that does not compile is just absent.
func compileTyped(t reflect.Type, record string, latest *version) *typedCodec {
	tc := &typedCodec{dec: map[uint64]*decPlan{}}
	binary.LittleEndian.PutUint64(tc.header[2:], latest.codec.Rabin)
	tc.header[0], tc.header[1] = 0xC3, 0x01
	if !toNativeSupports(t, map[reflect.Type]bool{}) {
		return tc // toNative would panic on t; only the generic path says how
	}
	if latest.schema != nil {
		if n, err := compileEnc(latest.schema, t, map[planKey]*encNode{}); err == nil {
			tc.enc = n
		}
	}
	for fp, v := range byFingerprint {
		if v.record != record || v.schema == nil {
			continue
		}
		if n, err := compileDec(v.schema, t, map[planKey]*decNode{}); err == nil {
			tc.dec[fp] = &decPlan{v: v, root: n}
		}
	}
	return tc
}

type planKey struct {
	s *avroType
	t reflect.Type
}

// avroFields lists the fields of struct t the way fieldsOf does, by name; it
// fails where fromNative would panic or two fields share a name.
func avroFields(t reflect.Type) (map[string]reflect.StructField, error) {
	out := map[string]reflect.StructField{}
	for _, f := range fieldsOf(t) {
		sf := t.Field(f.index)
		if !sf.IsExported() {
			return nil, fmt.Errorf("%s.%s: unexported", t, sf.Name)
		}
		if _, dup := out[f.name]; dup {
			return nil, fmt.Errorf("%s: two fields named %q", t, f.name)
		}
		out[f.name] = sf
	}
	return out, nil
}

// toNativeSupports tells whether toNative handles every tagged field of t
// (it panics on other kinds, even of fields the schema does not have).
func toNativeSupports(t reflect.Type, seen map[reflect.Type]bool) bool {
	if seen[t] {
		return true
	}
	seen[t] = true
	switch t.Kind() {
	case reflect.Struct:
		for _, f := range fieldsOf(t) {
			if !toNativeSupports(t.Field(f.index).Type, seen) {
				return false
			}
		}
		return true
	case reflect.Slice:
		return t.Elem().Kind() == reflect.Uint8 || toNativeSupports(t.Elem(), seen)
	case reflect.Map:
		return t.Key() == reflect.TypeFor[string]() && toNativeSupports(t.Elem(), seen)
	case reflect.String, reflect.Bool, reflect.Int32, reflect.Int64, reflect.Float64:
		return true
	}
	return false
}

var (
	typeString    = reflect.TypeFor[string]()
	typeStringMap = reflect.TypeFor[map[string]string]()
	typeInt32Map  = reflect.TypeFor[map[string]int32]()
	typeBoolMap   = reflect.TypeFor[map[string]bool]()
)

// compileEnc plans writing a Go value of type t with schema s, exactly as
// goavro writes toNative's form of it.
func compileEnc(s *avroType, t reflect.Type, memo map[planKey]*encNode) (*encNode, error) {
	key := planKey{s, t}
	if n, ok := memo[key]; ok {
		return n, nil
	}
	n := &encNode{}
	memo[key] = n // before recursing: a recursive type refers to itself
	k := t.Kind()
	switch {
	case s.kind == avroString && k == reflect.String:
		n.op = encString
	case s.kind == avroBytes && k == reflect.Slice && t.Elem().Kind() == reflect.Uint8:
		n.op = encBytes
	case s.kind == avroBoolean && k == reflect.Bool:
		n.op = encBool
	case s.kind == avroInt && k == reflect.Int32:
		n.op = encInt
	case s.kind == avroLong && k == reflect.Int32:
		n.op = encLong32
	case s.kind == avroLong && k == reflect.Int64:
		n.op = encLong
	case s.kind == avroDouble && k == reflect.Float64:
		n.op = encDouble
	case s.kind == avroArray && k == reflect.Slice && t.Elem().Kind() != reflect.Uint8:
		elem, err := compileEnc(s.items, t.Elem(), memo)
		if err != nil {
			return nil, err
		}
		n.op, n.elem, n.size = encArray, elem, t.Elem().Size()
		if elem.op == encString {
			n.op = encStrings
		}
	case s.kind == avroMap && k == reflect.Map && t.Key() == typeString:
		elem, err := compileEnc(s.items, t.Elem(), memo)
		if err != nil {
			return nil, err
		}
		n.op, n.elem, n.typ = encMap, elem, t
		switch {
		case t == typeStringMap && elem.op == encString:
			n.op = encStringMap
		case t == typeInt32Map && elem.op == encInt:
			n.op = encInt32Map
		case t == typeBoolMap && elem.op == encBool:
			n.op = encBoolMap
		}
	case s.kind == avroRecord && k == reflect.Struct:
		fields, err := avroFields(t)
		if err != nil {
			return nil, err
		}
		n.op = encRecord
		for _, sf := range s.fields {
			gf, ok := fields[sf.name]
			if !ok {
				// goavro writes the schema's default for a field the map lacks.
				if !sf.hasDef {
					return nil, fmt.Errorf("%s.%s: no Go field and no default", s.name, sf.name)
				}
				b, err := encodeDefault(nil, sf.typ, sf.def, true)
				if err != nil {
					return nil, fmt.Errorf("%s.%s: default: %w", s.name, sf.name, err)
				}
				n.fields = append(n.fields, encField{konst: b})
				continue
			}
			fn, err := compileEnc(sf.typ, gf.Type, memo)
			if err != nil {
				return nil, fmt.Errorf("%s.%s: %w", s.name, sf.name, err)
			}
			n.fields = append(n.fields, encField{off: gf.Offset, node: fn})
		}
	default:
		return nil, fmt.Errorf("no typed plan for Avro kind %d from Go %s", s.kind, t)
	}
	return n, nil
}

// encodeDefault writes a field default as goavro does: a field's own default
// is converted by its type first (top), values nested in it are taken as JSON
// decoded them.
func encodeDefault(buf []byte, s *avroType, d any, top bool) ([]byte, error) {
	switch s.kind {
	case avroString, avroBytes:
		v, ok := d.(string)
		if !ok {
			return nil, fmt.Errorf("want string, got %T", d)
		}
		return append(appendLong(buf, int64(len(v))), v...), nil
	case avroBoolean:
		v, ok := d.(bool)
		if !ok {
			return nil, fmt.Errorf("want bool, got %T", d)
		}
		if v {
			return append(buf, 1), nil
		}
		return append(buf, 0), nil
	case avroInt, avroLong:
		v, ok := d.(float64)
		if !ok {
			return nil, fmt.Errorf("want number, got %T", d)
		}
		if s.kind == avroInt {
			if i := int32(v); top || float64(i) == v {
				return appendInt(buf, i), nil
			}
		} else if i := int64(v); top || float64(i) == v {
			return appendLong(buf, i), nil
		}
		return nil, fmt.Errorf("%v would lose precision", v)
	case avroDouble:
		v, ok := d.(float64)
		if !ok {
			return nil, fmt.Errorf("want number, got %T", d)
		}
		return binary.LittleEndian.AppendUint64(buf, math.Float64bits(v)), nil
	case avroArray:
		a, ok := d.([]any)
		if !ok {
			return nil, fmt.Errorf("want array, got %T", d)
		}
		if len(a) > 0 {
			buf = appendLong(buf, int64(len(a)))
			for _, e := range a {
				var err error
				if buf, err = encodeDefault(buf, s.items, e, false); err != nil {
					return nil, err
				}
			}
		}
		return appendLong(buf, 0), nil
	case avroMap:
		m, ok := d.(map[string]any)
		if !ok || len(m) > 1 {
			// goavro writes a map default in random order: no constant bytes.
			return nil, fmt.Errorf("want a map of at most one entry, got %T", d)
		}
		if len(m) == 1 {
			buf = appendLong(buf, 1)
			for k, e := range m {
				buf = append(appendLong(buf, int64(len(k))), k...)
				var err error
				if buf, err = encodeDefault(buf, s.items, e, false); err != nil {
					return nil, err
				}
			}
		}
		return appendLong(buf, 0), nil
	case avroRecord:
		m, ok := d.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("want record, got %T", d)
		}
		for _, f := range s.fields {
			v, ok := m[f.name]
			var err error
			switch {
			case ok:
				buf, err = encodeDefault(buf, f.typ, v, false)
			case f.hasDef:
				buf, err = encodeDefault(buf, f.typ, f.def, true)
			default:
				err = fmt.Errorf("field %s: no value", f.name)
			}
			if err != nil {
				return nil, err
			}
		}
		return buf, nil
	}
	return nil, fmt.Errorf("no default encoding for Avro kind %d", s.kind)
}

// compileDec plans reading a value written with schema s into Go type t,
// exactly as goavro's native form of it goes through fromNative.
func compileDec(s *avroType, t reflect.Type, memo map[planKey]*decNode) (*decNode, error) {
	key := planKey{s, t}
	if n, ok := memo[key]; ok {
		return n, nil
	}
	n := &decNode{}
	memo[key] = n
	k := t.Kind()
	switch {
	case s.kind == avroString && k == reflect.String:
		n.op = decString
	case s.kind == avroBytes && k == reflect.Slice && t.Elem().Kind() == reflect.Uint8:
		n.op = decBytes
	case s.kind == avroBoolean && k == reflect.Bool:
		n.op = decBool
	case s.kind == avroInt && k == reflect.Int32:
		n.op = decIntTo32
	case s.kind == avroInt && k == reflect.Int64:
		n.op = decIntTo64
	case s.kind == avroLong && k == reflect.Int32:
		n.op = decLongTo32 // fromNative's SetInt truncates, and so do we
	case s.kind == avroLong && k == reflect.Int64:
		n.op = decLongTo64
	case s.kind == avroFloat && k == reflect.Float64:
		n.op = decFloat
	case s.kind == avroDouble && k == reflect.Float64:
		n.op = decDouble
	case s.kind == avroArray && k == reflect.Slice && t.Elem().Kind() != reflect.Uint8:
		elem, err := compileDec(s.items, t.Elem(), memo)
		if err != nil {
			return nil, err
		}
		n.op, n.elem, n.typ, n.size, n.minSize = decArray, elem, t, t.Elem().Size(), s.items.minSize
		if elem.op == decString {
			n.op = decStrings
		}
	case s.kind == avroMap && k == reflect.Map && t.Key() == typeString:
		elem, err := compileDec(s.items, t.Elem(), memo)
		if err != nil {
			return nil, err
		}
		n.op, n.elem, n.typ, n.minSize = decMap, elem, t, 1+s.items.minSize
		switch {
		case t == typeStringMap && elem.op == decString:
			n.op = decStringMap
		case t == typeInt32Map && elem.op == decIntTo32:
			n.op = decInt32Map
		case t == typeBoolMap && elem.op == decBool:
			n.op = decBoolMap
		}
	case s.kind == avroRecord && k == reflect.Struct:
		fields, err := avroFields(t)
		if err != nil {
			return nil, err
		}
		n.op = decRecord
		for _, sf := range s.fields {
			gf, ok := fields[sf.name]
			if !ok {
				// Read and dropped, but validated: goavro decodes it all.
				if !skippable(sf.typ, map[*avroType]bool{}) {
					return nil, fmt.Errorf("%s.%s: cannot skip Avro kind %d", s.name, sf.name, sf.typ.kind)
				}
				n.fields = append(n.fields, decField{name: sf.name, skip: sf.typ})
				continue
			}
			fn, err := compileDec(sf.typ, gf.Type, memo)
			if err != nil {
				return nil, fmt.Errorf("%s.%s: %w", s.name, sf.name, err)
			}
			n.fields = append(n.fields, decField{name: sf.name, off: gf.Offset, node: fn})
		}
	default:
		return nil, fmt.Errorf("no typed plan for Avro kind %d into Go %s", s.kind, t)
	}
	return n, nil
}

func skippable(s *avroType, seen map[*avroType]bool) bool {
	if seen[s] {
		return true
	}
	seen[s] = true
	switch s.kind {
	case avroUnsupported:
		return false
	case avroRecord:
		for _, f := range s.fields {
			if !skippable(f.typ, seen) {
				return false
			}
		}
	case avroArray, avroMap:
		return skippable(s.items, seen)
	}
	return true
}

// sliceHeader is the runtime layout of every Go slice.
type sliceHeader struct {
	data     unsafe.Pointer
	len, cap int
}
