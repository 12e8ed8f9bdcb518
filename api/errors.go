// Package api is notifyd's HTTP API v1 (shared/API.md).
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Error is the API's error body.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

func (e *Error) Error() string { return e.Message }

func invalid(field, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Code: "invalid_argument", Field: field, Message: fmt.Sprintf(format, args...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // templates carry HTML; keep it readable
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Status: http.StatusInternalServerError, Code: "internal", Message: err.Error()}
	}
	if e.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="notifyd"`)
	}
	writeJSON(w, e.Status, map[string]any{"error": e})
}

// decode reads a JSON body strictly (unknown fields are errors) and turns
// decoder errors into API errors naming the field.
func decode(r *http.Request, limit int64, dst any) *Error {
	body := http.MaxBytesReader(nil, r.Body, limit)
	d := json.NewDecoder(body)
	d.DisallowUnknownFields()
	if err := d.Decode(dst); err != nil {
		return jsonError(err, limit)
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return jsonError(err, limit)
		}
		return invalid("", "request body must hold a single JSON value")
	}
	return nil
}

func jsonError(err error, limit int64) *Error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: "payload_too_large",
			Message: fmt.Sprintf("request body exceeds %d bytes", limit)}
	case errors.As(err, &syn):
		return invalid("", "malformed JSON at byte %d: %v", syn.Offset, err)
	case errors.As(err, &typ):
		return invalid(typ.Field, "%s must be %s, got %s", fieldOr(typ.Field), typ.Type.String(), typ.Value)
	case errors.Is(err, io.EOF):
		return invalid("", "request body is empty")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("", "malformed JSON: unexpected end of body")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return invalid(name, "unknown field %q", name)
	}
	return invalid("", "malformed JSON: %v", err)
}

func fieldOr(f string) string {
	if f == "" {
		return "value"
	}
	return f
}
