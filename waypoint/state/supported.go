package state

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	// The extensions the waypoint implements, registered so that the Any
	// fields that carry them can be unpacked and checked.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// supported lists, per message type, the fields the waypoint implements.
// Any other field that is set makes the resource invalid: the waypoint
// never silently ignores configuration it was given. Messages of the
// google.protobuf package (wrappers, Duration, Struct) are values and are
// taken whole; an Any is unpacked and its content checked the same way.
//
// A field listed here is read by compile.go; a test checks that every name
// exists in its message, so a typo cannot widen or narrow the subset.
var supported = map[protoreflect.FullName][]protoreflect.Name{
	// Listener: one filter chain per destination (VIP or pod IP, port).
	"envoy.config.listener.v3.Listener": {
		"name", "address", "internal_listener", "stat_prefix", "filter_chains", "default_filter_chain",
	},
	"envoy.config.listener.v3.Listener.InternalListenerConfig": {},
	"envoy.config.core.v3.Address":                             {"socket_address"},
	"envoy.config.core.v3.SocketAddress":                       {"address", "port_value"},
	"envoy.config.listener.v3.FilterChain":                     {"name", "filter_chain_match", "filters", "metadata"},
	"envoy.config.listener.v3.FilterChainMatch":                {"destination_port", "prefix_ranges"},
	"envoy.config.core.v3.CidrRange":                           {"address_prefix", "prefix_len"},
	"envoy.config.listener.v3.Filter":                          {"name", "typed_config"},
	"envoy.config.core.v3.Metadata":                            {"filter_metadata"},

	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": {
		"codec_type", "stat_prefix", "rds", "route_config", "http_filters", "upgrade_configs",
	},
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig": {"upgrade_type", "enabled"},
	"envoy.extensions.filters.network.http_connection_manager.v3.Rds":                                 {"config_source", "route_config_name"},
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter":                          {"name", "typed_config"},
	"envoy.config.core.v3.ConfigSource":                                                               {"ads", "resource_api_version"},
	"envoy.config.core.v3.AggregatedConfigSource":                                                     {},
	"envoy.extensions.filters.http.router.v3.Router":                                                  {},
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy":                                          {"stat_prefix", "cluster"},

	// RouteConfiguration.
	"envoy.config.route.v3.RouteConfiguration": {"name", "virtual_hosts", "validate_clusters"},
	"envoy.config.route.v3.VirtualHost":        {"name", "domains", "routes"},
	"envoy.config.route.v3.Route": {
		"name", "match", "route", "redirect", "direct_response", "metadata",
		"request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
	},
	"envoy.config.route.v3.RouteMatch": {
		"prefix", "path", "safe_regex", "path_separated_prefix", "case_sensitive",
		"headers", "query_parameters", "grpc", "filter_state",
	},
	"envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions": {},
	"envoy.config.route.v3.HeaderMatcher":                    {"name", "string_match", "present_match", "invert_match"},
	"envoy.config.route.v3.QueryParameterMatcher":            {"name", "string_match", "present_match"},
	"envoy.type.matcher.v3.StringMatcher":                    {"exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"},
	"envoy.type.matcher.v3.RegexMatcher":                     {"regex"},
	"envoy.type.matcher.v3.RegexMatchAndSubstitute":          {"pattern", "substitution"},
	"envoy.type.matcher.v3.FilterStateMatcher":               {"key", "string_match"},
	"envoy.config.route.v3.RouteAction": {
		"cluster", "weighted_clusters", "cluster_not_found_response_code",
		"prefix_rewrite", "regex_rewrite", "host_rewrite_literal",
		"timeout", "retry_policy", "request_mirror_policies",
	},
	"envoy.config.route.v3.WeightedCluster": {"clusters"},
	"envoy.config.route.v3.WeightedCluster.ClusterWeight": {
		"name", "weight",
		"request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
	},
	"envoy.config.route.v3.RetryPolicy":                     {"retry_on", "num_retries", "per_try_timeout", "retriable_status_codes", "retry_back_off"},
	"envoy.config.route.v3.RetryPolicy.RetryBackOff":        {"base_interval", "max_interval"},
	"envoy.config.route.v3.RouteAction.RequestMirrorPolicy": {"cluster", "runtime_fraction", "disable_shadow_host_suffix_append"},
	"envoy.config.core.v3.RuntimeFractionalPercent":         {"default_value"},
	"envoy.type.v3.FractionalPercent":                       {"numerator", "denominator"},
	"envoy.config.route.v3.RedirectAction": {
		"https_redirect", "scheme_redirect", "host_redirect", "port_redirect",
		"path_redirect", "prefix_rewrite", "regex_rewrite", "response_code", "strip_query",
	},
	"envoy.config.route.v3.DirectResponseAction": {"status", "body"},
	"envoy.config.core.v3.DataSource":            {"inline_string", "inline_bytes"},
	"envoy.config.core.v3.HeaderValueOption":     {"header", "append_action"},
	"envoy.config.core.v3.HeaderValue":           {"key", "value"},

	// Cluster.
	"envoy.config.cluster.v3.Cluster": {
		"name", "type", "eds_cluster_config", "connect_timeout", "lb_policy", "least_request_lb_config",
		"load_assignment", "typed_extension_protocol_options", "metadata",
	},
	"envoy.config.cluster.v3.Cluster.EdsClusterConfig":     {"eds_config", "service_name"},
	"envoy.config.cluster.v3.Cluster.LeastRequestLbConfig": {"choice_count"},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
		"explicit_http_config", "use_downstream_protocol_config",
	},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig":      {"http_protocol_options", "http2_protocol_options"},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig": {"http_protocol_options", "http2_protocol_options"},
	"envoy.config.core.v3.Http1ProtocolOptions":                                      {},
	"envoy.config.core.v3.Http2ProtocolOptions":                                      {},

	// ClusterLoadAssignment.
	"envoy.config.endpoint.v3.ClusterLoadAssignment": {"cluster_name", "endpoints"},
	"envoy.config.endpoint.v3.LocalityLbEndpoints":   {"locality", "lb_endpoints"},
	"envoy.config.core.v3.Locality":                  {"region", "zone", "sub_zone"},
	"envoy.config.endpoint.v3.LbEndpoint":            {"endpoint", "health_status", "metadata", "load_balancing_weight"},
	"envoy.config.endpoint.v3.Endpoint":              {"address"},
}

// supportedSet is supported as sets, built once.
var supportedSet = func() map[protoreflect.FullName]map[protoreflect.Name]bool {
	out := make(map[protoreflect.FullName]map[protoreflect.Name]bool, len(supported))
	for msg, fields := range supported {
		set := make(map[protoreflect.Name]bool, len(fields))
		for _, f := range fields {
			set[f] = true
		}
		out[msg] = set
	}
	return out
}()

// validator is what protoc-gen-validate generates for every Envoy message.
type validator interface{ Validate() error }

// checkSupported adds a violation for every field set in m, at any depth,
// that the waypoint does not implement, and for every Any whose content
// fails to unpack or to validate. path is m's own path ("" at the top).
func checkSupported(m protoreflect.Message, path string, v *violations) {
	if m.Descriptor().FullName() == "google.protobuf.Any" {
		checkAny(m, path, v)
		return
	}
	allowed, known := supportedSet[m.Descriptor().FullName()]
	if !known {
		if strings.HasPrefix(string(m.Descriptor().FullName()), "google.protobuf.") {
			return
		}
		v.add(path, "message type %s is not supported by the waypoint", m.Descriptor().FullName())
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		p := join(path, string(fd.Name()))
		if !allowed[fd.Name()] {
			v.add(p, "field is not supported by the waypoint")
			return true
		}
		switch {
		case fd.IsMap():
			if fd.MapValue().Kind() != protoreflect.MessageKind {
				return true
			}
			val.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				checkSupported(mv.Message(), fmt.Sprintf("%s[%q]", p, k.String()), v)
				return true
			})
		case fd.IsList():
			if fd.Kind() != protoreflect.MessageKind {
				return true
			}
			l := val.List()
			for i := 0; i < l.Len(); i++ {
				checkSupported(l.Get(i).Message(), fmt.Sprintf("%s[%d]", p, i), v)
			}
		case fd.Kind() == protoreflect.MessageKind:
			checkSupported(val.Message(), p, v)
		}
		return true
	})
}

// checkAny unpacks an Any (its type must be linked in, see the imports)
// and checks its content: its generated Validate() (which the outer
// resource's Validate() does not reach) and its fields.
func checkAny(m protoreflect.Message, path string, v *violations) {
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		v.add(path, "malformed Any")
		return
	}
	inner, err := a.UnmarshalNew()
	if err != nil {
		v.add(path, "type %s is not supported by the waypoint: %v", a.GetTypeUrl(), err)
		return
	}
	p := fmt.Sprintf("%s(%s)", path, inner.ProtoReflect().Descriptor().FullName())
	if val, ok := inner.(validator); ok {
		if err := val.Validate(); err != nil {
			v.add(p, "invalid: %v", err)
			return
		}
	}
	checkSupported(inner.ProtoReflect(), p, v)
}

// unpack returns the content of an Any that checkAny accepted.
func unpack(a *anypb.Any) (proto.Message, error) {
	return a.UnmarshalNew()
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}
