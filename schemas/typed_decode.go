package schemas

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"strconv"
	"unsafe"

	"github.com/linkedin/goavro/v2"
)

type decOp uint8

const (
	decString decOp = iota
	decBytes        // bytes into []byte (empty: nil, like fromNative)
	decBool
	decIntTo32   // int into int32
	decIntTo64   // int into int64
	decLongTo32  // long into int32, truncated like reflect's SetInt
	decLongTo64  // long into int64
	decFloat     // float into float64
	decDouble    // double into float64
	decRecord    // record into struct
	decArray     // array into slice, through reflect for growing
	decStrings   // array of string into a slice of string kind
	decMap       // map into map[string]V, through reflect
	decStringMap // map of string into map[string]string
	decInt32Map  // map of int into map[string]int32
	decBoolMap   // map of boolean into map[string]bool
)

// decNode reads one value into the Go value at a pointer. The target is
// always freshly zeroed, so a field the writer lacks keeps its zero value.
type decNode struct {
	op      decOp
	fields  []decField   // decRecord, in writer order
	elem    *decNode     // array items, map values
	typ     reflect.Type // decArray, decMap: the Go slice or map type
	size    uintptr      // decArray: element size
	minSize int          // array item or map entry: fewest bytes it takes
}

type decField struct {
	name string
	off  uintptr
	node *decNode  // nil: skip a value of type skip
	skip *avroType // a writer field the Go type lacks
}

// decoder reads Avro binary exactly as goavro v2.15.0 does: varints of any
// length (bits past 64 dropped), block counts bounded by MaxBlockCount,
// duplicate map keys refused, booleans only 0 or 1.
type decoder struct {
	b []byte
	i int
}

// noItems is the data pointer of a decoded empty array: fromNative makes
// those non-nil (reflect.MakeSlice of 0), and so must we, without allocating.
var noItems struct{}

var errNegativeSize = errors.New("negative size")

func (d *decoder) varint() (uint64, error) {
	var u uint64
	var shift uint
	for i := d.i; i < len(d.b); i++ {
		c := d.b[i]
		u |= uint64(c&0x7f) << shift // a shift past 63 drops the bits, as in goavro
		if c < 0x80 {
			d.i = i + 1
			return u, nil
		}
		shift += 7
	}
	return 0, io.ErrShortBuffer
}

func (d *decoder) long() (int64, error) {
	u, err := d.varint()
	return int64(u>>1) ^ -int64(u&1), err
}

func (d *decoder) int() (int32, error) {
	u, err := d.varint()
	return int32(uint32(u>>1)) ^ -int32(u&1), err
}

// size reads the length of a string or bytes value and checks it is there.
func (d *decoder) size() (int, error) {
	n, err := d.long()
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, fmt.Errorf("%w: %d", errNegativeSize, n)
	}
	if n > int64(len(d.b)-d.i) {
		return 0, io.ErrShortBuffer
	}
	return int(n), nil
}

func (d *decoder) string() (string, error) {
	n, err := d.size()
	if err != nil {
		return "", err
	}
	s := string(d.b[d.i : d.i+n])
	d.i += n
	return s, nil
}

func (d *decoder) bool() (bool, error) {
	if d.i >= len(d.b) {
		return false, io.ErrShortBuffer
	}
	c := d.b[d.i]
	if c > 1 {
		return false, fmt.Errorf("boolean byte %d", c)
	}
	d.i++
	return c == 1, nil
}

func (d *decoder) fixed(n int) ([]byte, error) {
	if len(d.b)-d.i < n {
		return nil, io.ErrShortBuffer
	}
	b := d.b[d.i : d.i+n]
	d.i += n
	return b, nil
}

// blockCount reads the item count of the next block of an array or map.
func (d *decoder) blockCount() (int, error) {
	n, err := d.long()
	if err != nil {
		return 0, fmt.Errorf("block count: %w", err)
	}
	if n < 0 {
		if n == math.MinInt64 {
			return 0, fmt.Errorf("block count %d", n)
		}
		n = -n
		if _, err := d.long(); err != nil { // the block's byte size, unused
			return 0, fmt.Errorf("block size: %w", err)
		}
	}
	if n > goavro.MaxBlockCount {
		return 0, fmt.Errorf("block count %d exceeds %d", n, goavro.MaxBlockCount)
	}
	return int(n), nil
}

// bound caps what a block's count may preallocate by what the rest of the
// record can hold: a lying count fails at the end of the input, having
// allocated no more than the input could fill.
func (d *decoder) bound(count, minSize int) int {
	if minSize > 0 {
		if m := (len(d.b) - d.i) / minSize; count > m {
			return m
		}
	}
	return count
}

func (n *decNode) decode(d *decoder, p unsafe.Pointer) error {
	switch n.op {
	case decString:
		s, err := d.string()
		*(*string)(p) = s
		return err
	case decBytes:
		size, err := d.size()
		if err != nil {
			return err
		}
		if size > 0 {
			*(*[]byte)(p) = append([]byte(nil), d.b[d.i:d.i+size]...)
			d.i += size
		}
		return nil
	case decBool:
		v, err := d.bool()
		*(*bool)(p) = v
		return err
	case decIntTo32:
		v, err := d.int()
		*(*int32)(p) = v
		return err
	case decIntTo64:
		v, err := d.int()
		*(*int64)(p) = int64(v)
		return err
	case decLongTo32:
		v, err := d.long()
		*(*int32)(p) = int32(v)
		return err
	case decLongTo64:
		v, err := d.long()
		*(*int64)(p) = v
		return err
	case decFloat:
		b, err := d.fixed(4)
		if err != nil {
			return err
		}
		*(*float64)(p) = float64(math.Float32frombits(binary.LittleEndian.Uint32(b)))
		return nil
	case decDouble:
		b, err := d.fixed(8)
		if err != nil {
			return err
		}
		*(*float64)(p) = math.Float64frombits(binary.LittleEndian.Uint64(b))
		return nil
	case decRecord:
		for i := range n.fields {
			f := &n.fields[i]
			var err error
			if f.node != nil {
				err = f.node.decode(d, unsafe.Add(p, f.off))
			} else {
				err = d.skip(f.skip)
			}
			if err != nil {
				return inPath(f.name, err)
			}
		}
		return nil
	case decStrings:
		return n.decodeStrings(d, p)
	case decArray:
		return n.decodeArray(d, p)
	case decStringMap:
		return decodeMapOf(d, p, n.minSize, (*decoder).string)
	case decInt32Map:
		return decodeMapOf(d, p, n.minSize, (*decoder).int)
	case decBoolMap:
		return decodeMapOf(d, p, n.minSize, (*decoder).bool)
	case decMap:
		return n.decodeMap(d, p)
	}
	panic("schemas: unknown decode op")
}

func (n *decNode) decodeStrings(d *decoder, p unsafe.Pointer) error {
	count, err := d.blockCount()
	if err != nil {
		return err
	}
	s := make([]string, 0, d.bound(count, n.minSize))
	for count != 0 {
		for j := 0; j < count; j++ {
			e, err := d.string()
			if err != nil {
				return inPath("["+strconv.Itoa(len(s))+"]", err)
			}
			s = append(s, e)
		}
		if count, err = d.blockCount(); err != nil {
			return err
		}
	}
	*(*[]string)(p) = s[:len(s):len(s)] // cap == len, as fromNative's MakeSlice
	return nil
}

func (n *decNode) decodeArray(d *decoder, p unsafe.Pointer) error {
	h := (*sliceHeader)(p)
	count, err := d.blockCount()
	if err != nil {
		return err
	}
	if count == 0 {
		h.data = unsafe.Pointer(&noItems)
		return nil
	}
	// reflect grows the slice in place (zeroed, typed memory); items are
	// then decoded straight into it.
	sv := reflect.NewAt(n.typ, p).Elem()
	for count != 0 {
		if room := h.cap - h.len; room < count {
			sv.Grow(d.bound(count, n.minSize))
		}
		for j := 0; j < count; j++ {
			if h.len == h.cap {
				sv.Grow(1)
			}
			h.len++
			if err := n.elem.decode(d, unsafe.Add(h.data, uintptr(h.len-1)*n.size)); err != nil {
				return inPath("["+strconv.Itoa(h.len-1)+"]", err)
			}
		}
		if count, err = d.blockCount(); err != nil {
			return err
		}
	}
	h.cap = h.len
	return nil
}

// decodeMapOf reads a map whose values are one primitive into a map[string]V.
func decodeMapOf[V any](d *decoder, p unsafe.Pointer, minSize int, value func(*decoder) (V, error)) error {
	count, err := d.blockCount()
	if err != nil {
		return err
	}
	m := make(map[string]V, d.bound(count, minSize))
	for count != 0 {
		for j := 0; j < count; j++ {
			k, err := d.string()
			if err != nil {
				return fmt.Errorf("map key: %w", err)
			}
			v, err := value(d)
			if err != nil {
				return inPath(strconv.Quote(k), err)
			}
			before := len(m)
			if m[k] = v; len(m) == before {
				return fmt.Errorf("duplicate map key %q", k)
			}
		}
		if count, err = d.blockCount(); err != nil {
			return err
		}
	}
	*(*map[string]V)(p) = m
	return nil
}

func (n *decNode) decodeMap(d *decoder, p unsafe.Pointer) error {
	count, err := d.blockCount()
	if err != nil {
		return err
	}
	m := reflect.MakeMapWithSize(n.typ, d.bound(count, n.minSize))
	key := reflect.New(typeString).Elem()
	val := reflect.New(n.typ.Elem()).Elem()
	vp := val.Addr().UnsafePointer()
	for count != 0 {
		for j := 0; j < count; j++ {
			k, err := d.string()
			if err != nil {
				return fmt.Errorf("map key: %w", err)
			}
			val.SetZero()
			if err := n.elem.decode(d, vp); err != nil {
				return inPath(strconv.Quote(k), err)
			}
			key.SetString(k)
			before := m.Len()
			if m.SetMapIndex(key, val); m.Len() == before {
				return fmt.Errorf("duplicate map key %q", k)
			}
		}
		if count, err = d.blockCount(); err != nil {
			return err
		}
	}
	reflect.NewAt(n.typ, p).Elem().Set(m)
	return nil
}

// skip reads and drops a value of a writer field the Go type lacks, failing
// where goavro would fail to decode it.
func (d *decoder) skip(s *avroType) error {
	switch s.kind {
	case avroString, avroBytes:
		n, err := d.size()
		d.i += n
		return err
	case avroBoolean:
		_, err := d.bool()
		return err
	case avroInt, avroLong:
		_, err := d.varint()
		return err
	case avroFloat:
		_, err := d.fixed(4)
		return err
	case avroDouble:
		_, err := d.fixed(8)
		return err
	case avroRecord:
		for _, f := range s.fields {
			if err := d.skip(f.typ); err != nil {
				return inPath(f.name, err)
			}
		}
		return nil
	case avroArray, avroMap:
		var keys map[string]struct{} // a map's keys, for goavro's duplicate check
		if s.kind == avroMap {
			keys = map[string]struct{}{}
		}
		for {
			count, err := d.blockCount()
			if err != nil || count == 0 {
				return err
			}
			for j := 0; j < count; j++ {
				if keys != nil {
					k, err := d.string()
					if err != nil {
						return fmt.Errorf("map key: %w", err)
					}
					if _, dup := keys[k]; dup {
						return fmt.Errorf("duplicate map key %q", k)
					}
					keys[k] = struct{}{}
				}
				if err := d.skip(s.items); err != nil {
					return err
				}
			}
		}
	}
	return fmt.Errorf("cannot skip Avro kind %d", s.kind)
}

// pathError names where in a record decoding failed (content.data, recent[3]).
type pathError struct {
	path string
	err  error
}

func (e *pathError) Error() string { return "field " + e.path + ": " + e.err.Error() }
func (e *pathError) Unwrap() error { return e.err }

func inPath(step string, err error) error {
	if pe, ok := err.(*pathError); ok {
		if pe.path[0] == '[' {
			pe.path = step + pe.path
		} else {
			pe.path = step + "." + pe.path
		}
		return pe
	}
	return &pathError{path: step, err: err}
}
