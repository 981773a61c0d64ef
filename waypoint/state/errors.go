package state

import (
	"errors"
	"fmt"
	"strings"
)

// FieldError says why one resource was refused: the resource's name, the
// path of the field in it (proto field names, list indexes in brackets, the
// type of an unpacked Any in parentheses), and the reason.
type FieldError struct {
	TypeURL  string
	Resource string
	Field    string
	Reason   string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s: %s", e.Resource, e.Reason)
	}
	return fmt.Sprintf("%s: %s: %s", e.Resource, e.Field, e.Reason)
}

// InvalidError gathers the FieldErrors of one resource or one update.
type InvalidError struct {
	Violations []*FieldError
}

func (e *InvalidError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d invalid field(s): ", len(e.Violations))
	for i, v := range e.Violations {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(v.Error())
	}
	return b.String()
}

// Unwrap lets errors.As find each FieldError.
func (e *InvalidError) Unwrap() []error {
	out := make([]error, len(e.Violations))
	for i, v := range e.Violations {
		out[i] = v
	}
	return out
}

// violations collects the FieldErrors of one resource while it is checked
// and compiled.
type violations struct {
	typeURL  string
	resource string
	list     []*FieldError
}

func (v *violations) add(field, format string, args ...any) {
	v.list = append(v.list, &FieldError{
		TypeURL:  v.typeURL,
		Resource: v.resource,
		Field:    field,
		Reason:   fmt.Sprintf(format, args...),
	})
}

func (v *violations) err() error {
	if len(v.list) == 0 {
		return nil
	}
	return &InvalidError{Violations: v.list}
}

// FieldErrors returns every FieldError inside err.
func FieldErrors(err error) []*FieldError {
	var inv *InvalidError
	if errors.As(err, &inv) {
		return inv.Violations
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return []*FieldError{fe}
	}
	return nil
}
