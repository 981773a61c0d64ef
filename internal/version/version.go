// Package version reports which build of Cairn is running. The release is
// stamped at link time by the Makefile:
//
//	-ldflags '-X github.com/cairnmesh/cairn/internal/version.version=v0.1.0'
package version

import (
	"fmt"
	"runtime"
)

// version is set by the linker; "dev" marks a plain `go build`.
var version = "dev"

// Version is the release of this binary, such as "v0.1.0" or "dev".
func Version() string { return version }

// String is the one-line form every binary prints for --version.
func String() string {
	return fmt.Sprintf("%s (%s, %s/%s)", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
