package schemas

import (
	"encoding/binary"
	"math"
	"reflect"
	"sync"
	"unsafe"

	"github.com/linkedin/goavro/v2"
)

type encOp uint8

const (
	encString encOp = iota
	encBytes        // []byte as bytes (nil writes as empty, like toNative)
	encBool
	encInt       // int32 as int
	encLong32    // int32 as long
	encLong      // int64 as long
	encDouble    // float64 as double
	encRecord    // struct as record
	encArray     // slice as array
	encStrings   // slice of string kind as array of string
	encMap       // map[string]V as map, through reflect
	encStringMap // map[string]string as map of string
	encInt32Map  // map[string]int32 as map of int
	encBoolMap   // map[string]bool as map of boolean
)

// encNode writes one Go value; every op it has cannot fail (compileEnc only
// plans combinations goavro writes without a value-dependent check).
type encNode struct {
	op     encOp
	fields []encField   // encRecord, in schema order
	elem   *encNode     // array items, map values
	size   uintptr      // encArray: element size
	typ    reflect.Type // encMap: the Go map type
}

type encField struct {
	off   uintptr
	node  *encNode // nil: konst, the schema default of a field the Go type lacks
	konst []byte
}

func (n *encNode) encode(buf []byte, p unsafe.Pointer) []byte {
	switch n.op {
	case encString:
		s := *(*string)(p)
		return append(appendLong(buf, int64(len(s))), s...)
	case encBytes:
		b := *(*[]byte)(p)
		return append(appendLong(buf, int64(len(b))), b...)
	case encBool:
		if *(*bool)(p) {
			return append(buf, 1)
		}
		return append(buf, 0)
	case encInt:
		return appendInt(buf, *(*int32)(p))
	case encLong32:
		return appendLong(buf, int64(*(*int32)(p)))
	case encLong:
		return appendLong(buf, *(*int64)(p))
	case encDouble:
		return binary.LittleEndian.AppendUint64(buf, math.Float64bits(*(*float64)(p)))
	case encRecord:
		for i := range n.fields {
			f := &n.fields[i]
			if f.node == nil {
				buf = append(buf, f.konst...)
			} else {
				buf = f.node.encode(buf, unsafe.Add(p, f.off))
			}
		}
		return buf
	case encStrings:
		s := *(*[]string)(p)
		var left int64
		for i, e := range s {
			if left == 0 {
				left = blockLen(len(s) - i)
				buf = appendLong(buf, left)
			}
			buf = append(appendLong(buf, int64(len(e))), e...)
			left--
		}
		return append(buf, 0)
	case encArray:
		h := (*sliceHeader)(p)
		var left int64
		for i := 0; i < h.len; i++ {
			if left == 0 {
				left = blockLen(h.len - i)
				buf = appendLong(buf, left)
			}
			buf = n.elem.encode(buf, unsafe.Add(h.data, uintptr(i)*n.size))
			left--
		}
		return append(buf, 0)
	case encStringMap:
		return appendMapOf(buf, *(*map[string]string)(p), func(buf []byte, v string) []byte {
			return append(appendLong(buf, int64(len(v))), v...)
		})
	case encInt32Map:
		return appendMapOf(buf, *(*map[string]int32)(p), appendInt)
	case encBoolMap:
		return appendMapOf(buf, *(*map[string]bool)(p), func(buf []byte, v bool) []byte {
			if v {
				return append(buf, 1)
			}
			return append(buf, 0)
		})
	case encMap:
		m := reflect.NewAt(n.typ, p).Elem()
		count := m.Len()
		if count == 0 {
			return append(buf, 0)
		}
		// One addressable value to copy each entry into: the element node
		// reads it by pointer.
		k := reflect.New(typeString).Elem()
		v := reflect.New(n.typ.Elem()).Elem()
		vp := v.Addr().UnsafePointer()
		var left int64
		var it reflect.MapIter
		it.Reset(m)
		for i := 0; it.Next(); i++ {
			if left == 0 {
				left = blockLen(count - i)
				buf = appendLong(buf, left)
			}
			k.SetIterKey(&it)
			buf = append(appendLong(buf, int64(k.Len())), k.String()...)
			v.SetIterValue(&it)
			buf = n.elem.encode(buf, vp)
			left--
		}
		return append(buf, 0)
	}
	panic("schemas: unknown encode op")
}

// appendMapOf writes a map of one primitive. Entries go in Go's map order,
// like goavro's (it ranges over toNative's map): the bytes of a map of two or
// more entries are not deterministic in either path.
func appendMapOf[V any](buf []byte, m map[string]V, value func([]byte, V) []byte) []byte {
	var left int64
	i := 0
	for k, v := range m {
		if left == 0 {
			left = blockLen(len(m) - i)
			buf = appendLong(buf, left)
		}
		buf = append(appendLong(buf, int64(len(k))), k...)
		buf = value(buf, v)
		left--
		i++
	}
	return append(buf, 0)
}

// blockLen is the item count of the next block when left items remain:
// goavro writes blocks of at most MaxBlockCount items.
func blockLen(left int) int64 {
	return min(int64(left), goavro.MaxBlockCount)
}

func appendLong(buf []byte, v int64) []byte {
	return appendVarint(buf, uint64(v<<1)^uint64(v>>63))
}

func appendInt(buf []byte, v int32) []byte {
	return appendVarint(buf, uint64(uint32(v<<1)^uint32(v>>31)))
}

func appendVarint(buf []byte, u uint64) []byte {
	for u >= 0x80 {
		buf = append(buf, byte(u)|0x80)
		u >>= 7
	}
	return append(buf, byte(u))
}

// encBufs are scratch buffers: an encode writes into one and copies the
// result out, so a record costs one allocation of its exact size.
var encBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// maxPooledBuf keeps one huge record from pinning its buffer in the pool.
const maxPooledBuf = 256 << 10

func (tc *typedCodec) encode(p unsafe.Pointer) []byte {
	bp := encBufs.Get().(*[]byte)
	buf := append((*bp)[:0], tc.header[:]...)
	buf = tc.enc.encode(buf, p)
	out := make([]byte, len(buf))
	copy(out, buf)
	if cap(buf) <= maxPooledBuf {
		*bp = buf
		encBufs.Put(bp)
	}
	return out
}
