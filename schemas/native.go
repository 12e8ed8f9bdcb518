package schemas

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
)

// The converter maps Go structs tagged `avro:"name"` to goavro's native form
// (map[string]any, []any, scalars) and back. The schemas avoid unions, so the
// mapping needs no schema: a field a writer did not know decodes as Go's zero
// value, which is also every field's Avro default.

type fieldInfo struct {
	name  string
	index int
}

var fieldCache sync.Map // reflect.Type -> []fieldInfo

func fieldsOf(t reflect.Type) []fieldInfo {
	if f, ok := fieldCache.Load(t); ok {
		return f.([]fieldInfo)
	}
	var fs []fieldInfo
	for i := 0; i < t.NumField(); i++ {
		tag := t.Field(i).Tag.Get("avro")
		if tag == "" || tag == "-" {
			continue
		}
		fs = append(fs, fieldInfo{name: tag, index: i})
	}
	fieldCache.Store(t, fs)
	return fs
}

func toNative(v reflect.Value) any {
	switch v.Kind() {
	case reflect.Struct:
		fs := fieldsOf(v.Type())
		m := make(map[string]any, len(fs))
		for _, f := range fs {
			m[f.name] = toNative(v.Field(f.index))
		}
		return m
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			if v.IsNil() {
				return []byte{}
			}
			return v.Bytes()
		}
		out := make([]any, v.Len())
		for i := range out {
			out[i] = toNative(v.Index(i))
		}
		return out
	case reflect.Map:
		out := make(map[string]any, v.Len())
		it := v.MapRange()
		for it.Next() {
			out[it.Key().String()] = toNative(it.Value())
		}
		return out
	case reflect.String:
		return v.String()
	case reflect.Bool:
		return v.Bool()
	case reflect.Int32:
		return int32(v.Int())
	case reflect.Int64:
		return v.Int()
	case reflect.Float64:
		return v.Float()
	}
	panic(fmt.Sprintf("schemas: unsupported kind %s", v.Kind()))
}

// fromNative fills dst from a goavro native datum; path names the field for errors.
func fromNative(dst reflect.Value, src any, path string) error {
	if src == nil {
		return nil
	}
	switch dst.Kind() {
	case reflect.Struct:
		m, ok := src.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want record, got %T", path, src)
		}
		for _, f := range fieldsOf(dst.Type()) {
			if v, ok := m[f.name]; ok {
				if err := fromNative(dst.Field(f.index), v, join(path, f.name)); err != nil {
					return err
				}
			}
		}
	case reflect.Slice:
		if dst.Type().Elem().Kind() == reflect.Uint8 {
			b, ok := src.([]byte)
			if !ok {
				return fmt.Errorf("%s: want bytes, got %T", path, src)
			}
			dst.SetBytes(append([]byte(nil), b...))
			return nil
		}
		a, ok := src.([]any)
		if !ok {
			return fmt.Errorf("%s: want array, got %T", path, src)
		}
		s := reflect.MakeSlice(dst.Type(), len(a), len(a))
		for i, e := range a {
			if err := fromNative(s.Index(i), e, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		dst.Set(s)
	case reflect.Map:
		m, ok := src.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want map, got %T", path, src)
		}
		out := reflect.MakeMapWithSize(dst.Type(), len(m))
		for k, e := range m {
			ev := reflect.New(dst.Type().Elem()).Elem()
			if err := fromNative(ev, e, join(path, k)); err != nil {
				return err
			}
			out.SetMapIndex(reflect.ValueOf(k), ev)
		}
		dst.Set(out)
	case reflect.String:
		s, ok := src.(string)
		if !ok {
			return fmt.Errorf("%s: want string, got %T", path, src)
		}
		dst.SetString(s)
	case reflect.Bool:
		b, ok := src.(bool)
		if !ok {
			return fmt.Errorf("%s: want boolean, got %T", path, src)
		}
		dst.SetBool(b)
	case reflect.Int32, reflect.Int64:
		switch n := src.(type) {
		case int32:
			dst.SetInt(int64(n))
		case int64:
			dst.SetInt(n)
		default:
			return fmt.Errorf("%s: want integer, got %T", path, src)
		}
	case reflect.Float64:
		switch n := src.(type) {
		case float64:
			dst.SetFloat(n)
		case float32:
			dst.SetFloat(float64(n))
		default:
			return fmt.Errorf("%s: want double, got %T", path, src)
		}
	default:
		return fmt.Errorf("%s: unsupported kind %s", path, dst.Kind())
	}
	return nil
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + strings.TrimSpace(name)
}
