package cairn

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// generatorTools are the programs hack/generate.sh runs; make tools installs
// them (protoc from Debian, the rest into bin/tools).
var generatorTools = []string{
	"protoc", "protoc-gen-go", "protoc-gen-go-grpc",
	"controller-gen", "client-gen", "lister-gen", "informer-gen",
}

// generatedMarker is Go's convention for generated files
// (https://go.dev/s/generatedcode); hack/generate.sh gives its YAML output
// the same line with a # comment.
var generatedMarker = regexp.MustCompile(`(?m)^(//|#) Code generated .* DO NOT EDIT\.$`)

// TestGeneratedCodeIsFresh regenerates every generated file into a copy of
// the source tree and compares the result with the files in the repository.
func TestGeneratedCodeIsFresh(t *testing.T) {
	if testing.Short() {
		t.Skip("regenerating takes a while; skipped in -short mode")
	}
	repo, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", filepath.Join(repo, "bin", "tools")+string(os.PathListSeparator)+os.Getenv("PATH"))
	for _, tool := range generatorTools {
		if _, err := exec.LookPath(tool); err != nil {
			msg := fmt.Sprintf("%s not found in bin/tools or on PATH; run `make tools` first", tool)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}

	// Copy the generator's inputs without the generated files, so that the
	// script must produce each of them from scratch.
	tmp := t.TempDir()
	if err := copyInputs(repo, tmp); err != nil {
		t.Fatalf("copying the sources: %v", err)
	}

	start := time.Now()
	cmd := exec.Command("bash", filepath.Join(tmp, "hack", "generate.sh"), tmp)
	cmd.Dir = tmp
	// Offline: everything the generators load must already be in the
	// module cache, as it is after the module's packages were built.
	cmd.Env = append(os.Environ(), "GOPROXY=off", "GOWORK=off", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/generate.sh failed: %v\n%s", err, out)
	}
	t.Logf("regenerated in %v", time.Since(start).Round(time.Millisecond))

	want, err := generatedFiles(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if len(want) == 0 {
		t.Fatal("hack/generate.sh produced no generated files")
	}
	have, err := generatedFiles(repo)
	if err != nil {
		t.Fatal(err)
	}

	var problems []string
	for _, path := range sortedKeys(want) {
		content, ok := have[path]
		switch {
		case !ok:
			problems = append(problems, "missing:  "+path)
		case !bytes.Equal(content, want[path]):
			problems = append(problems, "stale:    "+path+firstDifference(content, want[path]))
		}
	}
	for _, path := range sortedKeys(have) {
		if _, ok := want[path]; !ok {
			problems = append(problems, "obsolete: "+path+" (no longer generated; delete it)")
		}
	}
	if len(problems) > 0 {
		t.Errorf("generated files are out of date; run `make generate` and commit the result:\n  %s",
			strings.Join(problems, "\n  "))
	}
}

// isInput reports whether hack/generate.sh reads the file at rel.
func isInput(rel string) bool {
	return rel == "go.mod" || rel == "go.sum" || strings.HasSuffix(rel, ".proto") ||
		strings.HasPrefix(rel, "hack/") || strings.HasPrefix(rel, "apis/")
}

// mayBeGenerated reports whether hack/generate.sh could write the file at
// rel; isGenerated decides from its content.
func mayBeGenerated(rel string) bool {
	return strings.HasSuffix(rel, ".pb.go") || strings.HasPrefix(rel, "apis/") || strings.HasPrefix(rel, "install/")
}

func isGenerated(rel string, data []byte) bool {
	return mayBeGenerated(rel) && generatedMarker.Match(data)
}

// walkFiles calls fn with the slash-separated relative path of every file
// in tree, skipping bin/ and dot folders as hack/generate.sh does.
func walkFiles(tree string, fn func(rel, path string, d fs.DirEntry) error) error {
	return filepath.WalkDir(tree, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(tree, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == "bin" || (strings.HasPrefix(d.Name(), ".") && rel != ".") {
				return filepath.SkipDir
			}
			return nil
		}
		return fn(rel, path, d)
	})
}

// copyInputs copies the generator's inputs from the tree at from to the
// tree at to, leaving out generated files.
func copyInputs(from, to string) error {
	return walkFiles(from, func(rel, path string, d fs.DirEntry) error {
		if !isInput(rel) {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil || isGenerated(rel, data) {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		dst := filepath.Join(to, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, data, info.Mode().Perm())
	})
}

// generatedFiles returns the contents of the generated files of a tree, by
// slash-separated relative path.
func generatedFiles(tree string) (map[string][]byte, error) {
	files := make(map[string][]byte)
	err := walkFiles(tree, func(rel, path string, _ fs.DirEntry) error {
		if !mayBeGenerated(rel) {
			return nil
		}
		data, err := os.ReadFile(path)
		if err == nil && isGenerated(rel, data) {
			files[rel] = data
		}
		return err
	})
	return files, err
}

// firstDifference describes the first line where have and want differ.
func firstDifference(have, want []byte) string {
	h, w := strings.Split(string(have), "\n"), strings.Split(string(want), "\n")
	for i := range max(len(h), len(w)) {
		var hl, wl string
		if i < len(h) {
			hl = h[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if hl != wl {
			return fmt.Sprintf(" (line %d: have %q, want %q)", i+1, hl, wl)
		}
	}
	return ""
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
