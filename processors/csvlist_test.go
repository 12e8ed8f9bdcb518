package processors

import (
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// csvMember is one call of ReadMembers's add.
type csvMember struct {
	line int
	id   string
}

// readCSVList runs ReadMembers over s, collecting what it adds.
func readCSVList(t *testing.T, r io.Reader, maxLines int) ([]csvMember, ListReport, error) {
	t.Helper()
	var got []csvMember
	rep, err := ReadMembers(r, maxLines, func(line int, id string) error {
		got = append(got, csvMember{line, id})
		return nil
	})
	return got, rep, err
}

func TestReadMembersAddsValidIDsInFileOrder(t *testing.T) {
	in := "\uFEFFname,UserId,plan\r\n" +
		"Ann,u1,pro\r\n" +
		"\r\n" +
		"\"Bob, Jr.\", u2 ,free\n" +
		",,\n" +
		"\"multi\nline\",u3,x\n" +
		"Dee,\"u4\",x"
	got, rep, err := readCSVList(t, strings.NewReader(in), 100)
	if err != nil {
		t.Fatal(err)
	}
	want := []csvMember{{2, "u1"}, {4, "u2"}, {7, "u3"}, {8, "u4"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("added %v, want %v", got, want)
	}
	wantRep := ListReport{Lines: 4, Accepted: 4, Ignored: []string{"name", "plan"}}
	if !reflect.DeepEqual(rep, wantRep) {
		t.Errorf("report %+v, want %+v", rep, wantRep)
	}
}

func TestReadMembersFindsTheUserIDColumn(t *testing.T) {
	for _, tc := range []struct {
		header  string
		want    string
		ignored []string
	}{
		{"userId", "a", nil},
		{"USER_ID,x", "a", []string{"x"}},
		{" Id ,x", "a", []string{"x"}},
		{"\uFEFF\"userid\",x", "a", []string{"x"}},
		{"id,userId", "b", []string{"id"}},
		{"id,user_id,", "b", []string{"id"}},
	} {
		got, rep, err := readCSVList(t, strings.NewReader(tc.header+"\na,b\n"), 10)
		if err != nil {
			t.Errorf("header %q: %v", tc.header, err)
			continue
		}
		if len(got) != 1 || got[0].id != tc.want || !reflect.DeepEqual(rep.Ignored, tc.ignored) {
			t.Errorf("header %q: added %v, ignored %q; want %q, ignored %q", tc.header, got, rep.Ignored, tc.want, tc.ignored)
		}
	}
}

func TestReadMembersRefusesAListWithoutUserIDColumn(t *testing.T) {
	for _, in := range []string{
		"",
		"\n\r\n\n",
		"email,name\nu1,a\n",
		"userId,userid\nu1,u2\n",
		"user\"Id\nu1\n",
		strings.Repeat("x", MaxCSVLine+1) + ",userId\nu1\n",
	} {
		_, err := ReadMembers(strings.NewReader(in), 10, func(int, string) error {
			t.Errorf("%.40q: add called before the header was accepted", in)
			return nil
		})
		if !errors.Is(err, ErrListHeader) {
			t.Errorf("%.40q: error %v, want ErrListHeader", in, err)
		}
	}
}

func TestReadMembersReportsBadLinesAndGoesOn(t *testing.T) {
	in := "userId,name\n" +
		"u1,a\n" +
		"bad id,b\n" + // 3
		"u|2,c\n" + // 4
		" ,d\n" + // 5
		"\n" +
		"u3\n" + // 7: fewer fields than the header, still has the id
		"u4,e,extra\n" + // 8: more fields
		"u5 \"x\",f\n" + // 9: bare quote
		"\"u6\"x,g\n" + // 10: extraneous quote
		"u7,h\n" +
		strings.Repeat("y", MaxCSVLine+1) + "\n" + // 12
		strings.Repeat("z", MaxCSVLine) + "\n" + // 13: just fits, but not an id
		"\"u8,h\n" // 14: quote left open at the end of the file
	oneField := "name,userId\nu9\n"
	got, rep, err := readCSVList(t, strings.NewReader(in), 100)
	if err != nil {
		t.Fatal(err)
	}
	want := []csvMember{{2, "u1"}, {7, "u3"}, {8, "u4"}, {11, "u7"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("added %v, want %v", got, want)
	}
	wantErrs := []struct {
		line int
		says string
	}{
		{3, `invalid user id "bad id"`},
		{4, `invalid user id "u|2"`},
		{5, "empty user id"},
		{9, "bare \""},
		{10, "extraneous or missing \""},
		{12, "longer than 64 KiB"},
		{13, "invalid user id"},
		{14, "extraneous or missing \""},
	}
	if rep.Lines != 12 || rep.Accepted != 4 || rep.Rejected != 8 || len(rep.Errors) != len(wantErrs) {
		t.Fatalf("report %+v", rep)
	}
	for i, w := range wantErrs {
		if e := rep.Errors[i]; e.Line != w.line || !strings.Contains(e.Error, w.says) {
			t.Errorf("error %d is %+v, want line %d saying %q", i, e, w.line, w.says)
		}
	}

	_, rep, err = readCSVList(t, strings.NewReader(oneField), 10)
	if err != nil || rep.Rejected != 1 || rep.Errors[0].Line != 2 || !strings.Contains(rep.Errors[0].Error, "no user id") {
		t.Errorf("line without the id column: %+v, %v", rep, err)
	}
}

func TestReadMembersListsTheFirstLineErrorsOnly(t *testing.T) {
	in := "userId\n" + strings.Repeat("no way\n", MaxLineErrors+500) + "u1\n"
	got, rep, err := readCSVList(t, strings.NewReader(in), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || rep.Rejected != MaxLineErrors+500 || len(rep.Errors) != MaxLineErrors {
		t.Errorf("added %d, rejected %d, listed %d errors", len(got), rep.Rejected, len(rep.Errors))
	}
	if last := rep.Errors[MaxLineErrors-1]; last.Line != MaxLineErrors+1 {
		t.Errorf("last listed error is on line %d, want %d", last.Line, MaxLineErrors+1)
	}
}

func TestReadMembersStopsPastMaxLines(t *testing.T) {
	in := "userId\nu1\n\nbad id\nu3\nu4\n"
	got, rep, err := readCSVList(t, strings.NewReader(in), 3)
	if !errors.Is(err, ErrTooManyLines) || !strings.Contains(err.Error(), "more than 3") {
		t.Errorf("error %v, want ErrTooManyLines", err)
	}
	if len(got) != 2 || rep.Lines != 3 || rep.Accepted != 2 || rep.Rejected != 1 {
		t.Errorf("added %v, report %+v", got, rep)
	}
	if _, _, err := readCSVList(t, strings.NewReader(in), 4); err != nil {
		t.Errorf("exactly maxLines lines: %v", err)
	}
}

func TestReadMembersStopsOnAddError(t *testing.T) {
	full := errors.New("topic unavailable")
	var calls int
	rep, err := ReadMembers(strings.NewReader("userId\nu1\nu2\nu3\n"), 10, func(line int, id string) error {
		calls++
		if id == "u2" {
			return full
		}
		return nil
	})
	if !errors.Is(err, full) || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("error %v, want the add error on line 3", err)
	}
	if calls != 2 || rep.Accepted != 1 || rep.Lines != 2 {
		t.Errorf("add called %d times, report %+v", calls, rep)
	}
}

// csvBrokenReader fails after its text.
type csvBrokenReader struct {
	text string
	err  error
}

func (r *csvBrokenReader) Read(p []byte) (int, error) {
	if r.text == "" {
		return 0, r.err
	}
	n := copy(p, r.text)
	r.text = r.text[n:]
	return n, nil
}

func TestReadMembersStopsOnReadError(t *testing.T) {
	reset := errors.New("connection reset")
	got, rep, err := readCSVList(t, &csvBrokenReader{text: "userId\nu1\nu2", err: reset}, 10)
	if !errors.Is(err, reset) {
		t.Errorf("error %v, want the read error", err)
	}
	if len(got) != 1 || rep.Accepted != 1 {
		t.Errorf("added %v, report %+v", got, rep)
	}
}

// csvLineGen generates a CSV stream on the fly: head, then n data lines from
// line(i), or one line of size bytes of fill, then tail. It fails the test
// when asked for more than 256 KiB at once.
type csvLineGen struct {
	t    *testing.T
	buf  []byte // what is left of the current piece
	mem  []byte // buf's storage, reused
	head string
	tail string
	line func(i int) string
	n, i int
	fill byte
	size int
}

func (g *csvLineGen) Read(p []byte) (int, error) {
	if len(p) > 256<<10 {
		g.t.Errorf("asked for %d bytes at once", len(p))
	}
	for len(g.buf) == 0 {
		switch {
		case g.head != "":
			g.buf, g.head = []byte(g.head), ""
		case g.size > 0:
			n := min(g.size, 4096)
			g.mem = g.mem[:0]
			for range n {
				g.mem = append(g.mem, g.fill)
			}
			g.buf = g.mem
			g.size -= n
		case g.i < g.n:
			g.mem = append(g.mem[:0], g.line(g.i)...)
			g.buf = g.mem
			g.i++
		case g.tail != "":
			g.buf, g.tail = []byte(g.tail), ""
		default:
			return 0, io.EOF
		}
	}
	n := copy(p, g.buf)
	g.buf = g.buf[n:]
	return n, nil
}

// allocatedBy reports the bytes allocated while f runs.
func allocatedBy(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

func TestReadMembersDoesNotBufferALongLine(t *testing.T) {
	for _, tc := range []struct {
		name, head, tail string
		errLine          int
		says             string
	}{
		{"plain", "userId,note\nu1,a\nu2,", "\nu3,b\n", 3, "line longer than 64 KiB"},
		{"in a quoted field", "userId,note\nu1,a\nu2,\"two\n", "\"\nu3,b\n", 4, "line longer than 64 KiB"},
	} {
		gen := &csvLineGen{t: t, head: tc.head, tail: tc.tail, fill: 'x', size: 1 << 20}
		var got []csvMember
		var rep ListReport
		var err error
		allocated := allocatedBy(func() { got, rep, err = readCSVList(t, gen, 100) })
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if allocated > 512<<10 {
			t.Errorf("%s: allocated %d KiB reading a 1 MiB line", tc.name, allocated>>10)
		}
		if len(got) != 2 || got[0].id != "u1" || got[1].id != "u3" {
			t.Errorf("%s: added %v, want u1 and u3", tc.name, got)
		}
		if rep.Lines != 3 || len(rep.Errors) != 1 || rep.Errors[0].Line != tc.errLine || !strings.Contains(rep.Errors[0].Error, tc.says) {
			t.Errorf("%s: report %+v, want an error on line %d saying %q", tc.name, rep, tc.errLine, tc.says)
		}
	}
}

func TestReadMembersBoundsAQuotedFieldOverManyLines(t *testing.T) {
	// A stray quote on line 3 opens a field that 128 lines of 8 KiB keep
	// open ("" is a quote inside it); read alone, each is a malformed line.
	const lines = 128
	line := "x\"\"" + strings.Repeat("y", 8<<10) + "\n"
	gen := &csvLineGen{t: t, head: "userId,note\nu1,a\nu2,\"open\n", tail: "u3,b\n", n: lines, line: func(int) string {
		return line
	}}
	var got []csvMember
	var rep ListReport
	var err error
	allocated := allocatedBy(func() { got, rep, err = readCSVList(t, gen, 1000) })
	if err != nil {
		t.Fatal(err)
	}
	// Whole, the record would take 1 MiB, and twice that while it grows.
	if allocated > 1536<<10 {
		t.Errorf("allocated %d KiB reading a 1 MiB quoted field", allocated>>10)
	}
	if len(got) != 2 || got[0].id != "u1" || got[1].id != "u3" {
		t.Errorf("added %v, want u1 and u3", got)
	}
	if len(rep.Errors) == 0 || rep.Errors[0].Line <= 3 || rep.Errors[0].Line > 3+lines ||
		!strings.Contains(rep.Errors[0].Error, "quoted field from line 3 runs over 256 KiB") {
		t.Fatalf("errors %+v, want the quoted field cut", rep.Errors)
	}
	if cut := rep.Errors[0].Line; rep.Rejected != 3+lines-cut+1 {
		t.Errorf("cut on line %d, then %d lines rejected, want every line after it", cut, rep.Rejected)
	}
}

func TestReadMembersStreamsALargeList(t *testing.T) {
	const size = 200 << 20
	const lineLen = len("user-0000000000,Someone Somewhere,2024-01-01\n")
	const lines = size / lineLen
	gen := &csvLineGen{t: t, head: "userId,name,since\n", n: lines, line: func(i int) string {
		return fmt.Sprintf("user-%010d,Someone Somewhere,2024-01-01\n", i)
	}}
	var added int
	var peak uint64
	var ms runtime.MemStats
	rep, err := ReadMembers(gen, lines, func(line int, id string) error {
		if line != added+2 {
			t.Fatalf("id %s on line %d, want %d", id, line, added+2)
		}
		added++
		if added%(1<<20) == 0 {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if added != lines || rep.Lines != lines || rep.Accepted != lines {
		t.Errorf("added %d, report %+v, want %d lines", added, rep, lines)
	}
	if peak > 64<<20 {
		t.Errorf("heap in use reached %d MiB reading a 200 MiB list", peak>>20)
	}
}

func FuzzReadMembers(f *testing.F) {
	for _, s := range []string{
		"userId\nu1\nu2\n",
		"\uFEFFid,name\r\nu1,\"a, b\"\r\n\r\n\"u2\",\"multi\nline\"\r\n",
		"user_id,x\nbad id,1\nu|2,2\n,\nu3\n",
		"userId\n\"u1\"x\nu2 \"q\"\n\"open\n",
		"name\nu1\n",
		"a,userId,b\n1\n1,2\n1,2,3,4\n",
		"userId\n\"\x00\"\x00\nu1\n",
	} {
		f.Add([]byte(s), uint8(0))
		f.Add([]byte(s), uint8(2))
	}
	f.Fuzz(func(t *testing.T, data []byte, maxLines uint8) {
		var added int
		rep, err := ReadMembers(strings.NewReader(string(data)), int(maxLines), func(line int, id string) error {
			if !ValidID(id) || strings.Contains(id, "|") || strings.TrimSpace(id) != id {
				t.Fatalf("added invalid id %q", id)
			}
			if line < 2 {
				t.Fatalf("id %q on line %d", id, line)
			}
			added++
			return nil
		})
		if errors.Is(err, ErrListHeader) && (added != 0 || rep.Lines != 0) {
			t.Fatalf("header error %v after %d lines", err, rep.Lines)
		}
		if rep.Accepted != added || rep.Accepted+rep.Rejected > rep.Lines {
			t.Fatalf("added %d, report %+v", added, rep)
		}
		if maxLines > 0 && rep.Lines > int(maxLines) {
			t.Fatalf("read %d lines, bound %d", rep.Lines, maxLines)
		}
		if len(rep.Errors) > MaxLineErrors || len(rep.Errors) > rep.Rejected {
			t.Fatalf("%d errors listed, %d rejected", len(rep.Errors), rep.Rejected)
		}
		for _, e := range rep.Errors {
			if e.Line < 1 || e.Error == "" {
				t.Fatalf("line error %+v", e)
			}
		}
	})
}
