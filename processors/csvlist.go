package processors

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strings"
)

// A recipient list is a CSV file uploaded by a product team, possibly
// hundreds of MB. It is read as a stream: encoding/csv parses it, behind a
// reader that passes it on one physical line at a time and bounds what
// encoding/csv would otherwise buffer whole (a line, or a quoted field that
// runs over many lines). A line past those bounds is replaced by a short
// line that encoding/csv always rejects as malformed, so it becomes one line
// error and reading resumes at the next line, with line numbers unchanged.

// MaxLineErrors bounds the line errors a ListReport lists; Rejected still
// counts them all.
const MaxLineErrors = 1000

// MaxCSVLine is the longest line of a recipient list, in bytes, without its
// line ending. A longer line is a line error.
const MaxCSVLine = 64 << 10

// maxCSVRecord bounds a record whose quoted field runs over several lines:
// a stray quote would otherwise make the rest of the file one record.
const maxCSVRecord = 4 * MaxCSVLine

// ErrListHeader is a list whose header row is missing or names no user id
// column; nothing was added.
var ErrListHeader = errors.New("list header")

// ErrTooManyLines is a list with more data lines than allowed; the lines
// before the limit were read.
var ErrTooManyLines = errors.New("too many lines")

// ListReport is the outcome of one upload.
type ListReport struct {
	Lines    int         `json:"lines"` // data lines read (header excluded)
	Accepted int         `json:"accepted"`
	Rejected int         `json:"rejected"`
	Errors   []LineError `json:"errors,omitempty"`         // the first MaxLineErrors
	Ignored  []string    `json:"ignoredColumns,omitempty"` // header columns other than the user id
}

// LineError is why one line of a list was rejected. Line is the 1-based line
// in the file.
type LineError struct {
	Line  int    `json:"line"`
	Error string `json:"error"`
}

// reject counts a bad line, and lists it while the list is not full: the
// reason is only formatted then, a list of bad lines costs no more to read.
func (rep *ListReport) reject(line int, format string, args ...any) {
	rep.Rejected++
	if len(rep.Errors) < MaxLineErrors {
		rep.Errors = append(rep.Errors, LineError{Line: line, Error: fmt.Sprintf(format, args...)})
	}
}

// userIDColumns are the header names of the user id column, lower-cased, in
// order of preference: a list may carry both its own "id" and a "userId".
var userIDColumns = []string{"userid", "user_id", "id"}

// ReadMembers reads a CSV whose header row names a user id column ("userId",
// "user_id" or "id", case-insensitive, BOM tolerated) and calls add for every
// valid user id, in file order, with the id's line in the file. Spaces around
// an id are trimmed; empty lines (and lines of empty fields) are skipped.
//
// A bad line (malformed CSV, no user id field, an invalid id, longer than
// MaxCSVLine) is counted and reported in the ListReport and reading goes on.
// maxLines bounds the data lines, 0 or less meaning no bound: past it,
// ReadMembers stops with ErrTooManyLines. A missing header or user id column
// is ErrListHeader, before any add. An error from add or from r stops the
// read and is returned. The report is valid up to where reading stopped.
func ReadMembers(r io.Reader, maxLines int, add func(line int, userID string) error) (ListReport, error) {
	var rep ListReport
	src := newCSVLines(r)
	cr := csv.NewReader(src)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true

	header, err := cr.Read()
	if err != nil {
		var pe *csv.ParseError
		switch {
		case err == io.EOF:
			return rep, fmt.Errorf("%w: the list is empty", ErrListHeader)
		case errors.As(err, &pe):
			format, args := src.parseError(pe)
			return rep, fmt.Errorf("%w: line %d: %s", ErrListHeader, pe.Line, fmt.Sprintf(format, args...))
		default:
			return rep, fmt.Errorf("read list: %w", err)
		}
	}
	headerLine, _ := cr.FieldPos(0)
	col, err := userIDColumn(header)
	if err != nil {
		return rep, fmt.Errorf("%w: line %d: %w", ErrListHeader, headerLine, err)
	}
	columns := len(header)
	for i, name := range header {
		if name = strings.TrimSpace(name); i != col && name != "" {
			rep.Ignored = append(rep.Ignored, Clip(name, 200))
		}
	}
	src.recordDone(cr.InputOffset())

	for {
		before := cr.InputOffset()
		rec, err := cr.Read()
		if err == io.EOF {
			return rep, nil
		}
		var pe *csv.ParseError
		if err != nil && !errors.As(err, &pe) {
			return rep, fmt.Errorf("read list: %w", err)
		}
		src.recordDone(cr.InputOffset())
		if err == nil && blankRecord(rec) {
			continue
		}
		if maxLines > 0 && rep.Lines == maxLines {
			return rep, fmt.Errorf("%w: more than %d data lines", ErrTooManyLines, maxLines)
		}
		rep.Lines++

		if pe != nil {
			format, args := src.parseError(pe)
			rep.reject(pe.Line, format, args...)
			if cr.InputOffset() == before {
				// encoding/csv did not move past the error: it would
				// return it forever.
				return rep, fmt.Errorf("read list: line %d: %w", pe.Line, err)
			}
			continue
		}
		if col >= len(rec) {
			line, _ := cr.FieldPos(0)
			rep.reject(line, "no user id: the line has %d fields, the header %d", len(rec), columns)
			continue
		}
		line, _ := cr.FieldPos(col)
		id := strings.TrimSpace(rec[col])
		if !validUserID(id) {
			if id == "" {
				rep.reject(line, "empty user id")
			} else {
				rep.reject(line, "invalid user id %q", Clip(id, 64))
			}
			continue
		}
		if err := add(line, id); err != nil {
			return rep, fmt.Errorf("line %d: %w", line, err)
		}
		rep.Accepted++
	}
}

// userIDColumn finds the user id column of a header row.
func userIDColumn(header []string) (int, error) {
	for _, want := range userIDColumns {
		found := -1
		for i, name := range header {
			if !strings.EqualFold(strings.TrimSpace(name), want) {
				continue
			}
			if found >= 0 {
				return -1, fmt.Errorf("columns %d and %d are both %q", found+1, i+1, want)
			}
			found = i
		}
		if found >= 0 {
			return found, nil
		}
	}
	return -1, errors.New(`no user id column (userId, user_id or id)`)
}

// validUserID tells whether id may be a recipient of a list. "|" is refused
// whatever ValidID allows: downstream keys use it as a separator.
func validUserID(id string) bool {
	return ValidID(id) && !strings.Contains(id, "|")
}

// blankRecord tells whether a record only holds spaces: an empty line to a
// reader of the file (spreadsheets write them as ",,,").
func blankRecord(rec []string) bool {
	for _, f := range rec {
		if strings.TrimSpace(f) != "" {
			return false
		}
	}
	return true
}

// cutMarker replaces a line that is too long. encoding/csv rejects it with
// ErrQuote on that very line whether it starts a record (a quoted field
// followed by a byte) or continues a quoted field (the quote closes it, then
// a byte follows), and resumes at the next line.
var cutMarker = []byte("\"\x00\"\x00\n")

// cutLine is a line csvLines replaced by cutMarker, and why.
type cutLine struct {
	line   int
	record bool // a quoted field ran over maxCSVRecord; else the line is over MaxCSVLine
}

// csvLines passes a CSV stream on to encoding/csv line by line, replacing
// the lines that would make it buffer too much by cutMarker.
type csvLines struct {
	src     *bufio.Reader
	line    []byte // what is left to pass on of the current line
	blank   bool   // the current line is empty: encoding/csv skips it
	lineNo  int    // lines read from src
	out     int64  // bytes passed on
	pending int    // bytes of non-empty lines passed on since the current record began, at most
	cut     []cutLine
	err     error // src's error, returned once line is passed on
}

func newCSVLines(r io.Reader) *csvLines {
	// Room for the longest line and its "\r\n".
	return &csvLines{src: bufio.NewReaderSize(r, MaxCSVLine+2)}
}

func (l *csvLines) Read(p []byte) (int, error) {
	for len(l.line) == 0 {
		if l.err != nil {
			return 0, l.err
		}
		l.next()
	}
	n := copy(p, l.line)
	l.line = l.line[n:]
	l.out += int64(n)
	if !l.blank {
		l.pending += n
	}
	return n, nil
}

// next loads the following line of src.
func (l *csvLines) next() {
	raw, err := l.src.ReadSlice('\n')
	if len(raw) == 0 && err != nil {
		l.err = err
		return
	}
	l.lineNo++
	if l.lineNo == 1 {
		raw = bytes.TrimPrefix(raw, []byte("\uFEFF"))
	}
	tooLong := false
	if err == bufio.ErrBufferFull {
		tooLong = true
		for err == bufio.ErrBufferFull {
			_, err = l.src.ReadSlice('\n')
		}
	}
	if err != nil {
		l.err = err
	}
	n := len(raw)
	if n > 0 && raw[n-1] == '\n' {
		n--
	}
	if n > 0 && raw[n-1] == '\r' {
		n--
	}
	tooLong = tooLong || n > MaxCSVLine
	l.blank = n == 0 && !tooLong
	switch {
	case tooLong:
		l.line = cutMarker
		l.cut = append(l.cut, cutLine{line: l.lineNo})
	case !l.blank && l.pending+len(raw) > maxCSVRecord:
		l.line = cutMarker
		l.cut = append(l.cut, cutLine{line: l.lineNo, record: true})
	default:
		l.line = raw
	}
}

// recordDone tells that encoding/csv finished a record at offset (its
// InputOffset): what was passed on past it belongs to the next one.
func (l *csvLines) recordDone(offset int64) {
	l.pending = int(l.out - offset)
}

// parseError says what a parse error of encoding/csv is about, as a format
// and its arguments, telling the lines csvLines replaced from malformed ones.
func (l *csvLines) parseError(pe *csv.ParseError) (string, []any) {
	for len(l.cut) > 0 && l.cut[0].line < pe.Line {
		l.cut = l.cut[1:]
	}
	if len(l.cut) > 0 && l.cut[0].line == pe.Line {
		c := l.cut[0]
		l.cut = l.cut[1:]
		if c.record {
			return "quoted field from line %d runs over %d KiB", []any{pe.StartLine, maxCSVRecord >> 10}
		}
		return "line longer than %d KiB", []any{MaxCSVLine >> 10}
	}
	return "column %d: %v", []any{pe.Column, pe.Err}
}
