package xdsclient

import "google.golang.org/protobuf/proto"

// Handler receives the resources the control plane sends. The client calls
// it from one goroutine, one Update at a time, in the order the responses
// arrive.
type Handler interface {
	// Apply applies u entirely or not at all. A nil error ACKs the response;
	// an error NACKs it with the error's message, and the client then
	// assumes the handler's state is what it was before the call. The one
	// exception is a *RejectedError: the handler applied everything but the
	// resources it names.
	Apply(u Update) error
}

// RejectedError is what a Handler returns when it applied an Update except
// some resources (which keep their previous value, if any). The response is
// NACKed with the error's message, but the rest counts as accepted: the
// type can become synced, and the accepted versions are remembered for the
// next reconnect. One bad resource from the control plane therefore does
// not hold back every other change, nor ztunnel's readiness.
type RejectedError struct {
	Names []string // the rejected resources
	Err   error    // why, naming them
}

func (e *RejectedError) Error() string { return e.Err.Error() }
func (e *RejectedError) Unwrap() error { return e.Err }

// HandlerFunc adapts a function to a Handler.
type HandlerFunc func(u Update) error

// Apply calls f.
func (f HandlerFunc) Apply(u Update) error { return f(u) }

var _ Handler = HandlerFunc(nil)

// Update is one response of the control plane for one type: the resources
// added or changed, and the names removed. It is a delta against what the
// handler accepted before; it is never a full state, except that the first
// Update of a type after the client starts holds everything there is.
type Update struct {
	// TypeURL is the type of every resource in Resources.
	TypeURL string
	// Resources maps resource names to the new or changed resources, decoded
	// into the Registry's message type for TypeURL. The handler may keep
	// the messages; the client does not touch them again.
	Resources map[string]proto.Message
	// Removed names resources that no longer exist. It may name resources
	// the handler does not hold (for instance ones it rejected); the handler
	// ignores those.
	Removed []string
	// SystemVersion is the control plane's version of the type at this
	// response, for logs and debug pages only.
	SystemVersion string
}
