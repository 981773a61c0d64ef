package state

import (
	"errors"
	"fmt"
	"strings"
)

// Errors that Apply wraps, so that callers can tell a bad resource from a
// bad call with errors.Is.
var (
	// ErrUnknownType: the type URL is not one of workload discovery's; Apply
	// changes nothing.
	ErrUnknownType = errors.New("unknown resource type")
	// ErrWrongMessage: a resource is not the message its type URL names.
	ErrWrongMessage = errors.New("wrong message type")
	// ErrInvalid: a resource breaks a rule of apis/workload/v1 that ztunnel
	// relies on (a missing uid, an address that is not 4 or 16 bytes, a
	// resource name that does not match the resource, ...).
	ErrInvalid = errors.New("invalid resource")
)

// ResourceError is the rejection of one resource. The xDS client reports
// it back to the control plane (a NACK detail), so it names the resource.
type ResourceError struct {
	// TypeURL is the resource's type.
	TypeURL string
	// Name is the resource's xDS name.
	Name string
	// Err says what is wrong; it wraps ErrWrongMessage or ErrInvalid.
	Err error
}

func (e *ResourceError) Error() string {
	kind := e.TypeURL[strings.LastIndex(e.TypeURL, ".")+1:]
	return fmt.Sprintf("%s %q: %v", kind, e.Name, e.Err)
}

func (e *ResourceError) Unwrap() error { return e.Err }

// ApplyError lists the resources that Apply rejected. Apply applied every
// other resource of the call; each rejected one keeps its previous value
// (or stays absent).
type ApplyError struct {
	// Rejected is sorted by resource name.
	Rejected []*ResourceError
}

func (e *ApplyError) Error() string {
	parts := make([]string, len(e.Rejected))
	for i, r := range e.Rejected {
		parts[i] = r.Error()
	}
	return fmt.Sprintf("rejected %d resource(s): %s", len(e.Rejected), strings.Join(parts, "; "))
}

// Unwrap lets errors.Is and errors.As look at every rejection.
func (e *ApplyError) Unwrap() []error {
	out := make([]error, len(e.Rejected))
	for i, r := range e.Rejected {
		out[i] = r
	}
	return out
}
