package xdsclient

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

// The type URLs of workload discovery.
const (
	AddressTypeURL       = "type.googleapis.com/cairn.workload.v1.Address"
	AuthorizationTypeURL = "type.googleapis.com/cairn.workload.v1.Authorization"
)

// Registry maps a type URL to a function that returns a new, empty message
// of that type, into which the client decodes resources.
type Registry map[string]func() proto.Message

// NewRegistry builds a Registry from example messages, each registered under
// its own type URL ("type.googleapis.com/" + full name), so that a URL and
// its message type cannot disagree.
func NewRegistry(examples ...proto.Message) Registry {
	r := make(Registry, len(examples))
	for _, m := range examples {
		pr := m.ProtoReflect()
		r[TypeURLOf(m)] = func() proto.Message { return pr.New().Interface() }
	}
	return r
}

// WorkloadRegistry is the Registry of workload discovery: Address and
// Authorization.
func WorkloadRegistry() Registry {
	return NewRegistry(&workloadv1.Address{}, &workloadv1.Authorization{})
}

// TypeURLOf is the type URL of m's message type.
func TypeURLOf(m proto.Message) string {
	return "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName())
}

// decoder returns the factory of url.
func (r Registry) decoder(url string) (func() proto.Message, error) {
	f, ok := r[url]
	if !ok || f == nil {
		return nil, fmt.Errorf("no message type registered for %s", url)
	}
	return f, nil
}
