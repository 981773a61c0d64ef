package xds

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Identity is who an authenticated xDS client is.
type Identity struct {
	// Principal names the client: its SPIFFE ID
	// (spiffe://cluster.local/ns/cairn-system/sa/ztunnel) when it presented a
	// mesh certificate, or its ServiceAccount
	// (system:serviceaccount:cairn-system:ztunnel) when it presented a token.
	Principal string `json:"principal"`
	// Node is the Kubernetes node the client runs on when its credential says
	// so (the pod claims of a bound ServiceAccount token), empty otherwise.
	Node string `json:"node,omitempty"`
}

func (id Identity) String() string {
	if id.Node == "" {
		return id.Principal
	}
	return id.Principal + " on node " + id.Node
}

// Authenticator says who the client of a new xDS stream is, from the
// stream's context (gRPC metadata such as a bearer token, or the peer's TLS
// state). It is called once per stream, before anything is sent. An error
// refuses the stream with codes.Unauthenticated, or with the error's own
// code when it is a gRPC status error with codes.PermissionDenied.
type Authenticator interface {
	Authenticate(ctx context.Context) (Identity, error)
}

// AuthenticatorFunc adapts a function to an Authenticator.
type AuthenticatorFunc func(ctx context.Context) (Identity, error)

// Authenticate calls f.
func (f AuthenticatorFunc) Authenticate(ctx context.Context) (Identity, error) { return f(ctx) }

var _ Authenticator = AuthenticatorFunc(nil)

// refusal turns an Authenticator error into the gRPC error the client sees.
func refusal(err error) error {
	if st, ok := status.FromError(err); ok && st.Code() == codes.PermissionDenied {
		return err
	}
	return status.Errorf(codes.Unauthenticated, "xds: client not authenticated: %v", err)
}
