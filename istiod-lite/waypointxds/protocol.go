package waypointxds

import (
	"strings"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// protocol is how the waypoint reads a Service port's traffic.
type protocol int

const (
	// protoAuto: HTTP, version detected per connection (appProtocol unset
	// or unknown).
	protoAuto protocol = iota
	// protoHTTP1: HTTP/1.1 (appProtocol http, kubernetes.io/ws).
	protoHTTP1
	// protoHTTP2: HTTP/2 with prior knowledge (http2, h2c, grpc).
	protoHTTP2
	// protoTCP: not HTTP; passed through (https, tls, tcp and other
	// protocols known not to be HTTP).
	protoTCP
)

func (p protocol) String() string {
	switch p {
	case protoHTTP1:
		return "http"
	case protoHTTP2:
		return "http2"
	case protoTCP:
		return "tcp"
	}
	return "auto"
}

// http reports whether routes apply to the port.
func (p protocol) http() bool { return p != protoTCP }

// grpc reports whether gRPC (which needs HTTP/2) can reach the port.
func (p protocol) grpc() bool { return p == protoHTTP2 || p == protoAuto }

func (p protocol) codec() hcmv3.HttpConnectionManager_CodecType {
	switch p {
	case protoHTTP1:
		return hcmv3.HttpConnectionManager_HTTP1
	case protoHTTP2:
		return hcmv3.HttpConnectionManager_HTTP2
	}
	return hcmv3.HttpConnectionManager_AUTO
}

// protocolOf reads a Service port's appProtocol, else the prefix of its name
// before "-", as Istio's protocol selection does.
func protocolOf(p Port) protocol {
	ap := strings.ToLower(p.AppProtocol)
	if ap == "" {
		ap, _, _ = strings.Cut(strings.ToLower(p.Name), "-")
	}
	switch ap {
	case "http", "http1", "kubernetes.io/ws":
		return protoHTTP1
	case "http2", "h2c", "kubernetes.io/h2c", "grpc":
		return protoHTTP2
	case "https", "tls", "tcp", "kubernetes.io/wss", "mongo", "mysql", "redis", "istio.io/hbone":
		return protoTCP
	}
	return protoAuto
}
