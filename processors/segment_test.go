package processors

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/notifyd/notifyd/schemas"
)

// segmentProfiles are the profiles the matching table refers to by name.
var segmentProfiles = map[string]*schemas.Profile{
	"anna": {UserID: "u1", Locale: "de", Timezone: "Europe/Berlin",
		Attributes: map[string]string{"plan": "pro", "age": "34", "vip": "", "score": "7.5", "city": `Köln "am Rhein"`}},
	"ben": {UserID: "u2", Locale: "de-AT", Timezone: "Europe/Vienna",
		Attributes: map[string]string{"plan": "free", "age": "17", "score": "x"}},
	"cleo": {UserID: "u3", Locale: "fr", Attributes: map[string]string{"plan": "pro", "age": "3.4e1", "path": `C:\tmp`}},
	"dan":  {UserID: "u4"}, // no locale, no attributes
}

func TestSegmentMatch(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string // profiles that match, sorted
	}{
		{`locale = "de"`, []string{"anna"}}, // exact: not "de-AT"
		{`locale ^= "de"`, []string{"anna", "ben"}},
		{`locale = "DE"`, nil}, // case-sensitive
		{`locale != "de"`, []string{"ben", "cleo", "dan"}},
		{`locale = "de" AND attributes.plan = "pro"`, []string{"anna"}},
		{`LOCALE = "fr" or Attributes.plan = "free"`, []string{"ben", "cleo"}},
		{`userId = "u4"`, []string{"dan"}},
		{`timezone ^= "Europe/"`, []string{"anna", "ben"}},

		// Precedence: NOT > AND > OR.
		{`locale = "fr" OR locale = "de" AND attributes.plan = "free"`, []string{"cleo"}},
		{`(locale = "fr" OR locale ^= "de") AND attributes.plan = "free"`, []string{"ben"}},
		{`NOT locale = "de" AND attributes.plan = "pro"`, []string{"cleo"}},
		{`NOT (locale = "de" AND attributes.plan = "pro")`, []string{"ben", "cleo", "dan"}},
		{`NOT NOT locale = "fr"`, []string{"cleo"}},
		{`((((userId = "u1"))))`, []string{"anna"}},

		// IN and NOT IN.
		{`userId IN ("u1", "u3", "u9")`, []string{"anna", "cleo"}},
		{`userId not in ("u1", "u3")`, []string{"ben", "dan"}},
		{`NOT userId IN ("u1", "u3")`, []string{"ben", "dan"}},
		{`attributes.age IN (17, 34)`, []string{"anna", "ben", "cleo"}}, // numeric: "3.4e1" is 34
		{`attributes.age IN ("17", 99)`, []string{"ben"}},
		{`attributes.plan IN ("")`, []string{"dan"}}, // missing is ""
		{`userId IN ("a", "b", "c", "d", "e", "f", "g", "h", "u2", 1, 2, 3, 4, 5, 6, 7, 8)`, []string{"ben"}},
		{`attributes.age IN (1, 2, 3, 4, 5, 6, 7, 8, 17)`, []string{"ben"}},

		// EXISTS: the key is present, even empty.
		{`attributes.vip EXISTS`, []string{"anna"}},
		{`NOT attributes.vip exists`, []string{"ben", "cleo", "dan"}},
		{`attributes.plan EXISTS`, []string{"anna", "ben", "cleo"}},
		{`locale EXISTS`, []string{"anna", "ben", "cleo"}},
		{`timezone EXISTS`, []string{"anna", "ben"}},

		// Numbers: ordered comparisons are false when not a number.
		{`attributes.age >= 18`, []string{"anna", "cleo"}},
		{`attributes.age < 18`, []string{"ben"}},
		{`NOT attributes.age < 18`, []string{"anna", "cleo", "dan"}},
		{`attributes.age > 33.9 AND attributes.age <= 34`, []string{"anna", "cleo"}},
		{`attributes.score > 7`, []string{"anna"}}, // "x" is not a number
		{`attributes.score <= -1e3`, nil},
		{`attributes.age = 34`, []string{"anna", "cleo"}},
		{`attributes.age = "34"`, []string{"anna"}},
		{`attributes.age != 34`, []string{"ben", "dan"}},
		{`attributes.missing > -1`, nil},

		// Missing attributes compare as "".
		{`attributes.plan = ""`, []string{"dan"}},
		{`attributes.plan != ""`, []string{"anna", "ben", "cleo"}},
		{`attributes.vip = ""`, []string{"anna", "ben", "cleo", "dan"}}, // present but empty

		// Escapes.
		{`attributes.city = "Köln \"am Rhein\""`, []string{"anna"}},
		{`attributes.path = "C:\\tmp"`, []string{"cleo"}},
	} {
		s, err := ParseSegment(tc.expr)
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		var got []string
		for _, name := range []string{"anna", "ben", "cleo", "dan"} {
			if s.Match(segmentProfiles[name]) {
				got = append(got, name)
			}
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: matched %v, want %v", tc.expr, got, tc.want)
		}
		if s.Match(nil) {
			t.Errorf("%s: matched a nil profile", tc.expr)
		}
	}
}

func TestSegmentNilMatchesNothing(t *testing.T) {
	var s *Segment
	if s.Match(segmentProfiles["anna"]) || s.String() != "" {
		t.Fatal("a nil segment matched or printed")
	}
	s, err := ParseSegment(`NOT locale = "xx"`)
	if err != nil {
		t.Fatal(err)
	}
	if s.Match(nil) {
		t.Fatal("a negation matched a nil profile")
	}
}

func TestSegmentString(t *testing.T) {
	for _, tc := range []struct{ expr, want string }{
		{`locale="de"`, `locale = "de"`},
		{"  LOCALE\t^=\n\"de\"  ", `locale ^= "de"`},
		{`userid = "a" and TIMEZONE exists`, `userId = "a" AND timezone EXISTS`},
		{`attributes.Plan = "pro"`, `attributes.Plan = "pro"`},
		{`(locale = "a" OR locale = "b") OR locale = "c"`, `locale = "a" OR locale = "b" OR locale = "c"`},
		{`locale = "a" AND (locale = "b" AND locale = "c")`, `locale = "a" AND locale = "b" AND locale = "c"`},
		{`(locale = "a" OR locale = "b") AND locale = "c"`, `(locale = "a" OR locale = "b") AND locale = "c"`},
		{`locale = "a" OR (locale = "b" AND locale = "c")`, `locale = "a" OR locale = "b" AND locale = "c"`},
		{`not (locale = "a")`, `NOT locale = "a"`},
		{`NOT (locale = "a" AND locale = "b")`, `NOT (locale = "a" AND locale = "b")`},
		{`NOT NOT (locale = "a")`, `NOT NOT locale = "a"`},
		{`attributes.n >= 5.0`, `attributes.n >= 5`},
		{`attributes.n < -0.5e1`, `attributes.n < -5`},
		{`attributes.n > 1e21`, `attributes.n > 1e+21`},
		{`attributes.n IN (1,"a" , 2.50)`, `attributes.n IN (1, "a", 2.5)`},
		{`attributes.n not IN ("x")`, `attributes.n NOT IN ("x")`},
		{`attributes.q = "say \"hi\" \\o/"`, `attributes.q = "say \"hi\" \\o/"`},
	} {
		s, err := ParseSegment(tc.expr)
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		if got := s.String(); got != tc.want {
			t.Errorf("%s: String() = %s, want %s", tc.expr, got, tc.want)
		}
		again, err := ParseSegment(s.String())
		if err != nil {
			t.Errorf("%s: canonical form does not parse: %v", s, err)
			continue
		}
		if !reflect.DeepEqual(again, s) {
			t.Errorf("%s: canonical form parses to another segment", s)
		}
	}
}

func TestParseSegmentErrors(t *testing.T) {
	deep := strings.Repeat("(", 33) + `locale = "a"` + strings.Repeat(")", 33)
	nots := strings.Repeat("NOT ", 33) + `locale = "a"`
	many := strings.TrimSuffix(strings.Repeat(`locale="a"OR `, 257), "OR ")
	values := make([]string, 1001)
	for i := range values {
		values[i] = fmt.Sprint(i)
	}
	longIn := "userId IN (" + strings.Join(values, ",") + ")"
	for _, tc := range []struct{ expr, want string }{
		{``, `segment: column 1: empty expression`},
		{"  \t", `segment: column 1: empty expression`},
		{`locale = `, `segment: column 10: expected a value after "=", found the end of the expression`},
		{`locale = "de" AND attributes.plan =`, `segment: column 36: expected a value after "="`},
		{`locale = "de`, `segment: column 10: unterminated string`},
		{`locale = "de\"`, `segment: column 10: unterminated string`},
		{`locale = "de\`, `segment: column 10: unterminated string`},
		{`locale = "d\n"`, `segment: column 12: unknown escape "\\n" in string`},
		{`country = "de"`, `segment: column 1: unknown field "country"`},
		{`attributes = "x"`, `segment: column 1: expected an attribute name`},
		{`attributes. = "x"`, `segment: column 1: expected an attribute name after "attributes."`},
		{`attributes.` + strings.Repeat("a", 65) + ` EXISTS`, `segment: column 1: attribute name is 65 bytes, at most 64`},
		{`locale = "de")`, `segment: column 14: expected "AND", "OR" or the end of the expression, found ")"`},
		{`locale = "de" locale = "fr"`, `segment: column 15: expected "AND", "OR" or the end of the expression, found "locale"`},
		{`(locale = "de"`, `segment: column 15: expected ")" to close the "(" at column 1`},
		{`locale = "de" AND`, `segment: column 18: expected a field, "NOT" or "(", found the end of the expression`},
		{`AND locale = "de"`, `segment: column 1: expected a field, "NOT" or "(", found "AND"`},
		{`locale "de"`, `segment: column 8: expected an operator`},
		{`locale ! "de"`, `segment: column 8: expected "=" after "!"`},
		{`locale ^ "de"`, `segment: column 8: expected "=" after "^"`},
		{`locale ^= 5`, `segment: column 11: expected a string after "^="`},
		{`attributes.age > "5"`, `segment: column 18: expected a number after ">"`},
		{`attributes.age > 5x`, `segment: column 18: malformed number "5x"`},
		{`attributes.age > 1.`, `segment: column 18: malformed number "1."`},
		{`attributes.age > 1e999`, `segment: column 18: number 1e999 is out of range`},
		{`locale NOT ("de")`, `segment: column 12: expected "IN" after "NOT"`},
		{`locale IN "de"`, `segment: column 11: expected "(" after "IN"`},
		{`locale IN ()`, `segment: column 12: expected a value in the IN list, found ")"`},
		{`locale IN ("a" "b")`, `segment: column 16: expected "," or ")" in the IN list`},
		{`locale IN ("a",)`, `segment: column 16: expected a value in the IN list`},
		{`locale = "dé" AND ü`, `segment: column 19: unexpected character 'ü'`},
		{"locale = \"a\" \xff", `segment: column 14: unexpected byte 0xff`},
		{deep, `segment: column 33: nesting deeper than 32`},
		{nots, `segment: column 129: nesting deeper than 32`},
		{many, `segment: column 3329: more than 256 comparisons`},
		{longIn, `segment: column 3902: IN list has more than 1000 values`},
		{strings.Repeat(" ", 4090) + `locale = "a"`, `segment: expression is 4102 bytes, at most 4096`},
	} {
		_, err := ParseSegment(tc.expr)
		if err == nil {
			t.Errorf("%.60q: parsed", tc.expr)
			continue
		}
		if !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%.60q:\n got %v\nwant %s", tc.expr, err, tc.want)
		}
	}
}

func TestParseSegmentAtBounds(t *testing.T) {
	// 1000 values only fit 4096 bytes when short.
	values := make([]string, 1000)
	for i := range values {
		values[i] = fmt.Sprint(i % 10)
	}
	for _, expr := range []string{
		strings.Repeat("(", 32) + `locale = "a"` + strings.Repeat(")", 32),
		strings.Repeat("NOT ", 32) + `locale = "a"`,
		strings.TrimSuffix(strings.Repeat(`locale = "a" OR `, 256), " OR "),
		"userId IN (" + strings.Join(values, ",") + ")",
		`attributes.` + strings.Repeat("a", 64) + ` EXISTS`,
		strings.Repeat(" ", 4096-len(`locale = "a"`)) + `locale = "a"`,
	} {
		s, err := ParseSegment(expr)
		if err != nil {
			t.Errorf("%.60q: %v", expr, err)
			continue
		}
		if _, err := ParseSegment(s.String()); err != nil {
			t.Errorf("%.60q: canonical form: %v", expr, err)
		}
	}
	s, err := ParseSegment("userId IN (" + strings.Join(values, ",") + ")")
	if err != nil {
		t.Fatal(err)
	}
	if !s.Match(&schemas.Profile{UserID: "9"}) || s.Match(&schemas.Profile{UserID: "10"}) {
		t.Fatal("large IN list")
	}
}

// A terse expression whose canonical form would not fit the bound is refused
// rather than accepted with a String() that does not parse.
func TestParseSegmentCanonicalFormMustFit(t *testing.T) {
	terse := strings.TrimSuffix(strings.Repeat(`locale="a"OR `, 256), "OR ")
	terse += strings.Repeat(" ", 4000-len(terse))
	if _, err := ParseSegment(terse); err != nil {
		t.Fatalf("terse expression: %v", err)
	}
	terse = "userId IN (" + strings.TrimSuffix(strings.Repeat(`1e5,`, 1000), ",") + ")"
	_, err := ParseSegment(terse)
	if err == nil || !strings.Contains(err.Error(), "in canonical form, at most 4096") {
		t.Fatalf("got %v", err)
	}
}

func TestSegmentMatchDoesNotAllocate(t *testing.T) {
	s, err := ParseSegment(benchSegment)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range segmentProfiles {
		if n := testing.AllocsPerRun(100, func() { s.Match(p) }); n != 0 {
			t.Errorf("%s: %v allocations per Match", p.UserID, n)
		}
	}
}

func TestSegmentNumberSyntax(t *testing.T) {
	for _, tc := range []struct {
		s  string
		ok bool
	}{
		{"1", true}, {"-1", true}, {"+1.5", true}, {".5", true}, {"5.", true}, {"1e3", true}, {"1E-3", true},
		{"", false}, {"-", false}, {".", false}, {"1e", false}, {"e1", false}, {"0x10", false},
		{"Inf", false}, {"NaN", false}, {"1_000", false}, {" 1", false}, {"1e999", false},
	} {
		if _, ok := segNumber(tc.s); ok != tc.ok {
			t.Errorf("%q: number %v, want %v", tc.s, ok, tc.ok)
		}
	}
}

func FuzzParseSegment(f *testing.F) {
	for _, seed := range []string{
		`locale = "de" AND attributes.plan = "pro"`,
		`NOT (locale ^= "de" OR timezone EXISTS) AND userId NOT IN ("a", 1, -2.5e3)`,
		`attributes.age >= 18 AND attributes.age < 6.5e1`,
		`attributes.q = "say \"hi\" \\o/"`,
		`((locale = "a"))`,
		`locale="a"OR(locale="b"AND NOT locale="c")`,
		`attributes.x IN (1,2,3,4,5,6,7,8,9,"a","b","c","d","e","f","g","h","i")`,
		`locale = "de`,
		`attributes.n = -0`,
		"",
	} {
		f.Add(seed)
	}
	profiles := []*schemas.Profile{nil, {}}
	for _, p := range segmentProfiles {
		profiles = append(profiles, p)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		s, err := ParseSegment(expr)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "segment: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		text := s.String()
		again, err := ParseSegment(text)
		if err != nil {
			t.Fatalf("%q: canonical form %q does not parse: %v", expr, text, err)
		}
		if again.String() != text {
			t.Fatalf("%q: canonical form %q re-prints as %q", expr, text, again.String())
		}
		if !reflect.DeepEqual(again, s) {
			t.Fatalf("%q: canonical form %q parses to another segment", expr, text)
		}
		for _, p := range profiles {
			if s.Match(p) != again.Match(p) {
				t.Fatalf("%q: canonical form matches differently", expr)
			}
		}
	})
}

const benchSegment = `locale ^= "de" AND attributes.plan IN ("pro", "team", "enterprise") AND NOT attributes.vip EXISTS ` +
	`OR attributes.age >= 18 AND attributes.score > 5 AND userId NOT IN ("u7", "u8", "u9", "u10", "u11", "u12", "u13", "u14", "u15")`

func BenchmarkSegmentMatch(b *testing.B) {
	s, err := ParseSegment(benchSegment)
	if err != nil {
		b.Fatal(err)
	}
	profiles := make([]*schemas.Profile, 0, len(segmentProfiles))
	for _, p := range segmentProfiles {
		profiles = append(profiles, p)
	}
	b.ReportAllocs()
	matched := 0
	for i := 0; b.Loop(); i++ {
		if s.Match(profiles[i%len(profiles)]) {
			matched++
		}
	}
	if matched == 0 {
		b.Fatal("nothing matched")
	}
}
