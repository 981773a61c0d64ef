package waypointxds

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// The fixture: namespace shop with a waypoint, Services web (four ports),
// web-v1 and web-v2 bound to it, plain (no waypoint), and other/api (a
// backend in another namespace, no waypoint).
var (
	waypointKey = types.NamespacedName{Namespace: "shop", Name: "waypoint"}
	epoch       = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
)

func fixtureServices() []Service {
	wp := waypointKey
	return []Service{
		{Namespace: "shop", Name: "web", VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::10")}, Waypoint: &wp,
			Ports: []Port{
				{Name: "http", Port: 80, AppProtocol: "http"},
				{Name: "http-alt", Port: 8080},
				{Name: "grpc", Port: 7070, AppProtocol: "kubernetes.io/h2c"},
				{Name: "tcp", Port: 9090},
				{Name: "web", Port: 3000},
			}},
		{Namespace: "shop", Name: "web-v1", VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.11")}, Waypoint: &wp,
			Ports: []Port{{Name: "http", Port: 80, AppProtocol: "http"}, {Name: "grpc", Port: 7070, AppProtocol: "grpc"}}},
		{Namespace: "shop", Name: "web-v2", VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.12")}, Waypoint: &wp,
			Ports: []Port{{Name: "http", Port: 80, AppProtocol: "http"}, {Name: "grpc", Port: 7070, AppProtocol: "grpc"}}},
		{Namespace: "shop", Name: "plain", VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20")},
			Ports: []Port{{Name: "http", Port: 80}}},
		{Namespace: "other", Name: "api", VIPs: []netip.Addr{netip.MustParseAddr("10.96.1.10")},
			Ports: []Port{{Name: "http", Port: 80, AppProtocol: "http"}}},
	}
}

func fixtureEndpoints() []Endpoint {
	ep := func(svc string, port int32, ip string, target int32, sa string) Endpoint {
		ns, name, _ := strings.Cut(svc, "/")
		return Endpoint{
			Service: types.NamespacedName{Namespace: ns, Name: name}, Port: port,
			Address: netip.MustParseAddr(ip), TargetPort: target,
			Identity: "spiffe://cluster.local/ns/" + ns + "/sa/" + sa, Node: "node-1",
		}
	}
	return []Endpoint{
		ep("shop/web", 80, "10.0.0.2", 8080, "web"),
		ep("shop/web", 80, "10.0.0.1", 8080, "web"),
		ep("shop/web-v1", 80, "10.0.0.11", 8080, "web-v1"),
		ep("shop/web-v2", 80, "10.0.0.12", 8080, "web-v2"),
		ep("shop/web-v1", 7070, "10.0.0.11", 7070, "web-v1"),
		ep("other/api", 80, "10.0.1.1", 0, "api"),
	}
}

func fixtureInput() Input {
	return Input{
		Waypoint:  Waypoint{Namespace: "shop", Name: "waypoint"},
		Services:  fixtureServices(),
		Endpoints: fixtureEndpoints(),
	}
}

// httpRoute decodes an HTTPRoute from YAML, strictly. Missing metadata
// defaults to namespace shop, and the creation time to epoch plus age
// seconds.
func httpRoute(t *testing.T, age int, doc string) *gatewayv1.HTTPRoute {
	t.Helper()
	r := &gatewayv1.HTTPRoute{}
	if err := yaml.UnmarshalStrict([]byte(doc), r); err != nil {
		t.Fatalf("HTTPRoute YAML: %v\n%s", err, doc)
	}
	defaults(&r.ObjectMeta, age)
	return r
}

func grpcRoute(t *testing.T, age int, doc string) *gatewayv1.GRPCRoute {
	t.Helper()
	r := &gatewayv1.GRPCRoute{}
	if err := yaml.UnmarshalStrict([]byte(doc), r); err != nil {
		t.Fatalf("GRPCRoute YAML: %v\n%s", err, doc)
	}
	defaults(&r.ObjectMeta, age)
	return r
}

func defaults(m *metav1.ObjectMeta, age int) {
	if m.Namespace == "" {
		m.Namespace = "shop"
	}
	if m.Generation == 0 {
		m.Generation = 1
	}
	if m.CreationTimestamp.IsZero() {
		m.CreationTimestamp = metav1.NewTime(epoch.Add(time.Duration(age) * time.Second))
	}
}

// rulesOnWeb80 is an HTTPRoute shop/r on Service web port 80 with the given
// rules (YAML, indented for spec.rules).
func rulesOnWeb80(t *testing.T, rules string) *gatewayv1.HTTPRoute {
	t.Helper()
	return httpRoute(t, 0, `
metadata: {name: r}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
`+indent(rules, "  "))
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.Trim(s, "\n"), "\n")
	// Strip the common indentation of the snippet, then add prefix.
	common := -1
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		n := len(l) - len(strings.TrimLeft(l, " \t"))
		if common < 0 || n < common {
			common = n
		}
	}
	for i, l := range lines {
		if len(l) >= common && common > 0 {
			l = l[common:]
		}
		lines[i] = prefix + strings.ReplaceAll(l, "\t", "  ")
	}
	return strings.Join(lines, "\n") + "\n"
}

// translateValid translates and fails the test if any resource does not
// pass its generated validation.
func translateValid(t *testing.T, in Input) Output {
	t.Helper()
	out := Translate(in)
	if err := validateOutput(out); err != nil {
		t.Fatalf("invalid output: %v", err)
	}
	return out
}

// validateOutput runs every resource's generated ValidateAll, and that of
// every typed config packed in them (Validate does not look inside Any).
func validateOutput(out Output) error {
	type validator interface{ ValidateAll() error }
	var msgs []proto.Message
	if out.Listener != nil {
		msgs = append(msgs, out.Listener)
		for _, fc := range out.Listener.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				inner, err := f.GetTypedConfig().UnmarshalNew()
				if err != nil {
					return fmt.Errorf("filter %s of chain %s: %w", f.GetName(), fc.GetName(), err)
				}
				msgs = append(msgs, inner)
				if hcm, ok := inner.(*hcmv3.HttpConnectionManager); ok {
					for _, hf := range hcm.GetHttpFilters() {
						h, err := hf.GetTypedConfig().UnmarshalNew()
						if err != nil {
							return fmt.Errorf("http filter %s of chain %s: %w", hf.GetName(), fc.GetName(), err)
						}
						msgs = append(msgs, h)
					}
				}
			}
		}
	}
	for _, r := range out.Routes {
		msgs = append(msgs, r)
	}
	for _, c := range out.Clusters {
		msgs = append(msgs, c)
		for name, a := range c.GetTypedExtensionProtocolOptions() {
			inner, err := a.UnmarshalNew()
			if err != nil {
				return fmt.Errorf("cluster %s option %s: %w", c.GetName(), name, err)
			}
			msgs = append(msgs, inner)
		}
	}
	for _, l := range out.LoadAssignments {
		msgs = append(msgs, l)
	}
	for _, m := range msgs {
		v, ok := m.(validator)
		if !ok {
			return fmt.Errorf("%T has no ValidateAll", m)
		}
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%T %s: %w", m, resourceName(m), err)
		}
	}
	return nil
}

func resourceName(m proto.Message) string {
	if n, ok := m.(interface{ GetName() string }); ok {
		return n.GetName()
	}
	return ""
}

// routeConfig returns the RouteConfiguration of a bound Service port.
func routeConfig(t *testing.T, out Output, name string) *routev3.RouteConfiguration {
	t.Helper()
	for _, r := range out.Routes {
		if r.GetName() == name {
			return r
		}
	}
	t.Fatalf("no RouteConfiguration %s", name)
	return nil
}

func routesOf(t *testing.T, out Output, name string) []*routev3.Route {
	t.Helper()
	vhs := routeConfig(t, out, name).GetVirtualHosts()
	if len(vhs) != 1 {
		t.Fatalf("%s has %d virtual hosts, want 1", name, len(vhs))
	}
	return vhs[0].GetRoutes()
}

// wantRoutes decodes routes from JSON (Envoy's own field names).
func wantRoutes(t *testing.T, js string) []*routev3.Route {
	t.Helper()
	vh := &routev3.VirtualHost{}
	if err := protojson.Unmarshal([]byte(`{"routes": `+js+`}`), vh); err != nil {
		t.Fatalf("want JSON: %v\n%s", err, js)
	}
	return vh.GetRoutes()
}

func clusterByName(t *testing.T, out Output, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range out.Clusters {
		if c.GetName() == name {
			return c
		}
	}
	t.Fatalf("no Cluster %s", name)
	return nil
}

func chainByName(t *testing.T, l *listenerv3.Listener, name string) *listenerv3.FilterChain {
	t.Helper()
	for _, fc := range l.GetFilterChains() {
		if fc.GetName() == name {
			return fc
		}
	}
	t.Fatalf("no filter chain %s", name)
	return nil
}

// ignoreMetadata leaves route metadata out of a comparison (it is checked
// on its own).
var ignoreMetadata = protocmp.IgnoreFields(&routev3.Route{}, "metadata")

func diffProto(want, got any, opts ...cmp.Option) string {
	return cmp.Diff(want, got, append([]cmp.Option{protocmp.Transform()}, opts...)...)
}

func outcomeFor(t *testing.T, outs []Outcome, kind, route string, parent int) Outcome {
	t.Helper()
	for _, o := range outs {
		if o.Kind == kind && o.Route.String() == route && o.ParentIndex == parent {
			return o
		}
	}
	t.Fatalf("no outcome for %s %s parent %d in %+v", kind, route, parent, outs)
	return Outcome{}
}

// cond returns "<status> <reason>" of a condition, "" when absent.
func cond(o Outcome, typ string) string {
	c := o.Condition(typ)
	if c == nil {
		return ""
	}
	return string(c.Status) + " " + c.Reason
}
