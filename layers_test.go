package cairn

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/cairnmesh/cairn"

// The layers of the repository, lowest first. A package may import packages
// of its own layer and of lower layers; the three components and the CLI
// share one layer but never import each other.
//
//	apis -> internal -> {istiod-lite, ztunnel, waypoint, cairnctl} -> integration
var layers = map[string]int{
	"apis":        0,
	"internal":    1,
	"istiod-lite": 2,
	"ztunnel":     2,
	"waypoint":    2,
	"cairnctl":    2,
	"integration": 3,
}

// area is the top-level folder of a package in this module, "" for the
// module root, or ok=false for packages of other modules.
func area(importPath string) (name string, ok bool) {
	if importPath == module {
		return "", true
	}
	rest, found := strings.CutPrefix(importPath, module+"/")
	if !found {
		return "", false
	}
	name, _, _ = strings.Cut(rest, "/")
	return name, true
}

// importViolation says why pkg may not import imp, or returns "" if it may.
func importViolation(pkg, imp string) string {
	from, ok := area(pkg)
	if !ok {
		return ""
	}
	to, ok := area(imp)
	if !ok {
		return ""
	}
	fromLayer, fromKnown := layers[from]
	toLayer, toKnown := layers[to]
	switch {
	case from == "":
		return "the module root holds tests only and imports no package of the module"
	case !fromKnown:
		return "top-level folder " + from + " has no layer: add it to layers in layers_test.go"
	case !toKnown:
		return "top-level folder " + to + " has no layer and may not be imported"
	case from == to:
		return ""
	case toLayer > fromLayer:
		return from + " is below " + to + " and may not import it"
	case toLayer == fromLayer:
		return from + " and " + to + " are separate components and never import each other"
	}
	return ""
}

type listedPackage struct {
	ImportPath   string
	Imports      []string
	TestImports  []string
	XTestImports []string
	Deps         []string
	Name         string
	ForTest      string
}

func goList(t *testing.T, args ...string) []listedPackage {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-json"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v\n%s", args, err, stderr.String())
	}
	var pkgs []listedPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func TestImportViolation(t *testing.T) {
	tests := []struct {
		pkg, imp string
		allowed  bool
	}{
		{module + "/ztunnel/proxy", module + "/internal/hbone", true},
		{module + "/ztunnel/proxy", module + "/ztunnel/state", true},
		{module + "/internal/hbone", module + "/apis/ca/v1", true},
		{module + "/integration/lab", module + "/istiod-lite/model", true},
		{module + "/ztunnel/proxy", "golang.org/x/net/http2", true},
		{module + "/apis/security/v1", module + "/internal/spiffe", false},
		{module + "/internal/hbone", module + "/ztunnel/state", false},
		{module + "/waypoint/proxy", module + "/ztunnel/proxy", false},
		{module + "/istiod-lite/xds", module + "/cairnctl/cmd/cairnctl", false},
		{module + "/ztunnel/app", module + "/integration/lab", false},
		{module + "/newfolder/x", module + "/apis/security/v1", false},
		{module, module + "/internal/version", false},
	}
	for _, tc := range tests {
		got := importViolation(tc.pkg, tc.imp)
		if (got == "") != tc.allowed {
			t.Errorf("importViolation(%s, %s) = %q, want allowed=%v", tc.pkg, tc.imp, got, tc.allowed)
		}
	}
}

// TestLayering checks every package of the module, its tests included,
// against the layering above.
func TestLayering(t *testing.T) {
	for _, p := range goList(t, "-test", "-deps", module+"/...") {
		if p.ForTest != "" || strings.HasSuffix(p.ImportPath, ".test") {
			continue // test variants repeat the package's own imports
		}
		if _, ok := area(p.ImportPath); !ok {
			continue
		}
		for _, imp := range slices.Concat(p.Imports, p.TestImports, p.XTestImports) {
			if why := importViolation(p.ImportPath, imp); why != "" {
				t.Errorf("%s imports %s: %s", p.ImportPath, imp, why)
			}
		}
	}
}

// TestCommandsLinkNoTestCode keeps test harnesses out of the binaries users
// run: no package of this module that a command links may import testing
// or internal/testenv. (Third-party libraries are not held to it:
// go-control-plane's pkg/log imports testing for a test logger.)
func TestCommandsLinkNoTestCode(t *testing.T) {
	pkgs := goList(t, "-deps", module+"/...")
	byPath := make(map[string]listedPackage, len(pkgs))
	for _, p := range pkgs {
		byPath[p.ImportPath] = p
	}
	for _, cmd := range pkgs {
		if cmd.Name != "main" {
			continue
		}
		for _, dep := range append([]string{cmd.ImportPath}, cmd.Deps...) {
			if _, ours := area(dep); !ours {
				continue
			}
			for _, imp := range byPath[dep].Imports {
				if imp == "testing" || imp == module+"/internal/testenv" {
					t.Errorf("command %s links %s, which imports %s", cmd.ImportPath, dep, imp)
				}
			}
		}
	}
}

// TestZtunnelLinksNoEnvoyAPI keeps go-control-plane's generated Envoy types
// (and the xDS protos they bring) out of ztunnel's binary, whatever package
// would bring them in: registering their descriptors at start-up costs
// every node megabytes of binary and RSS (docs/performance.md). The
// waypoint's Envoy registry lives in waypoint/; internal/xdsclient's own
// test (TestLinksNoEnvoyAPI) guards that package only.
func TestZtunnelLinksNoEnvoyAPI(t *testing.T) {
	for _, p := range goList(t, "-deps", module+"/ztunnel/cmd/ztunnel") {
		if strings.HasPrefix(p.ImportPath, "github.com/envoyproxy/") || strings.HasPrefix(p.ImportPath, "github.com/cncf/xds/") {
			t.Errorf("ztunnel links %s", p.ImportPath)
		}
	}
}
