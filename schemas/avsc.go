package schemas

import (
	"encoding/json"
	"fmt"
	"strings"
)

// avroType is what the typed codecs (typed.go) need of a parsed .avsc: the
// binary layout and the field defaults. goavro parses the same file and stays
// the authority; a schema this parser does not understand just gets no typed
// plan, and its records take the generic path.
type avroType struct {
	kind    avroKind
	name    string      // record: full name
	fields  []avroField // record
	items   *avroType   // array items, map values
	minSize int         // fewest bytes a value encodes to (bounds preallocation)
}

type avroField struct {
	name   string
	typ    *avroType
	def    any // the default as encoding/json decoded it, like goavro
	hasDef bool
}

type avroKind uint8

const (
	avroUnsupported avroKind = iota // null, union, enum, fixed: none in notifyd's schemas
	avroBoolean
	avroInt
	avroLong
	avroFloat
	avroDouble
	avroBytes
	avroString
	avroRecord
	avroArray
	avroMap
)

var avroPrimitives = map[string]avroKind{
	"null": avroUnsupported, "boolean": avroBoolean, "int": avroInt, "long": avroLong,
	"float": avroFloat, "double": avroDouble, "bytes": avroBytes, "string": avroString,
}

func parseAvsc(spec []byte) (*avroType, error) {
	var j any
	if err := json.Unmarshal(spec, &j); err != nil {
		return nil, err
	}
	p := avscParser{named: map[string]*avroType{}}
	t, err := p.parse(j, "")
	if err != nil {
		return nil, err
	}
	setMinSize(t, map[*avroType]bool{})
	return t, nil
}

type avscParser struct {
	named map[string]*avroType // full name → type, for references
}

func (p *avscParser) parse(j any, ns string) (*avroType, error) {
	switch s := j.(type) {
	case string:
		if k, ok := avroPrimitives[s]; ok {
			return &avroType{kind: k}, nil
		}
		if t, ok := p.named[qualify(s, ns)]; ok {
			return t, nil
		}
		if t, ok := p.named[s]; ok {
			return t, nil
		}
		return nil, fmt.Errorf("unknown type %q", s)
	case []any: // a union
		return &avroType{kind: avroUnsupported}, nil
	case map[string]any:
		switch typ := s["type"]; typ {
		case "record", "error":
			name, _ := s["name"].(string)
			if name == "" {
				return nil, fmt.Errorf("record without a name")
			}
			if nsv, ok := s["namespace"].(string); ok && !strings.Contains(name, ".") {
				ns = nsv
			}
			t := &avroType{kind: avroRecord, name: qualify(name, ns)}
			p.named[t.name] = t // before the fields: they may refer to it
			if i := strings.LastIndexByte(t.name, '.'); i >= 0 {
				ns = t.name[:i]
			} else {
				ns = ""
			}
			fields, _ := s["fields"].([]any)
			for _, f := range fields {
				fm, ok := f.(map[string]any)
				if !ok {
					return nil, fmt.Errorf("record %s: field is a %T", t.name, f)
				}
				fname, _ := fm["name"].(string)
				ft, err := p.parse(fm["type"], ns)
				if err != nil {
					return nil, fmt.Errorf("record %s field %s: %w", t.name, fname, err)
				}
				def, hasDef := fm["default"]
				t.fields = append(t.fields, avroField{name: fname, typ: ft, def: def, hasDef: hasDef})
			}
			return t, nil
		case "array":
			items, err := p.parse(s["items"], ns)
			if err != nil {
				return nil, err
			}
			return &avroType{kind: avroArray, items: items}, nil
		case "map":
			values, err := p.parse(s["values"], ns)
			if err != nil {
				return nil, err
			}
			return &avroType{kind: avroMap, items: values}, nil
		case "enum", "fixed":
			if name, ok := s["name"].(string); ok {
				if nsv, ok := s["namespace"].(string); ok && !strings.Contains(name, ".") {
					ns = nsv
				}
				t := &avroType{kind: avroUnsupported, name: qualify(name, ns)}
				p.named[t.name] = t
				return t, nil
			}
			return &avroType{kind: avroUnsupported}, nil
		default: // {"type": "string"} or {"type": {...}}
			if typ == nil {
				return nil, fmt.Errorf("schema object without a type")
			}
			return p.parse(typ, ns)
		}
	}
	return nil, fmt.Errorf("unexpected schema %T", j)
}

func qualify(name, ns string) string {
	if ns == "" || strings.Contains(name, ".") {
		return name
	}
	return ns + "." + name
}

func setMinSize(t *avroType, seen map[*avroType]bool) int {
	if seen[t] {
		return t.minSize // a recursive record: what is known so far is a lower bound
	}
	seen[t] = true
	switch t.kind {
	case avroBoolean, avroInt, avroLong, avroBytes, avroString, avroArray, avroMap:
		t.minSize = 1
	case avroFloat:
		t.minSize = 4
	case avroDouble:
		t.minSize = 8
	case avroRecord:
		n := 0
		for _, f := range t.fields {
			n += setMinSize(f.typ, seen)
		}
		t.minSize = n
	}
	if t.items != nil {
		setMinSize(t.items, seen)
	}
	return t.minSize
}
