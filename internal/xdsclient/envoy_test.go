package xdsclient

import (
	"os/exec"
	"strings"
	"testing"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// TestMethodIsEnvoys: the stream the client opens by name is the one
// go-control-plane's generated server registers.
func TestMethodIsEnvoys(t *testing.T) {
	if deltaADSMethod != discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResources_FullMethodName {
		t.Errorf("method %q, Envoy's is %q", deltaADSMethod, discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResources_FullMethodName)
	}
	for _, sd := range discoverygrpc.AggregatedDiscoveryService_ServiceDesc.Streams {
		if sd.StreamName != deltaADSDesc.StreamName {
			continue
		}
		if sd.ClientStreams != deltaADSDesc.ClientStreams || sd.ServerStreams != deltaADSDesc.ServerStreams {
			t.Errorf("stream %+v, Envoy's is %+v", deltaADSDesc, sd)
		}
		return
	}
	t.Errorf("Envoy's ADS has no stream %s", deltaADSDesc.StreamName)
}

// TestLinksNoEnvoyAPI keeps go-control-plane (and the xDS protos it brings)
// out of the package, and so out of ztunnel (TestZtunnelLinksNoEnvoyAPI in the module root checks the binary as a whole): registering their descriptors
// at start-up is what the package's own messages avoid. Only its tests use
// them, to check the wire format.
func TestLinksNoEnvoyAPI(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for dep := range strings.FieldsSeq(string(out)) {
		if strings.HasPrefix(dep, "github.com/envoyproxy/") || strings.HasPrefix(dep, "github.com/cncf/xds/") {
			t.Errorf("the package links %s", dep)
		}
	}
}
