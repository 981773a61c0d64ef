package cni

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Install says where the plugin goes on a node (paths as ztunnel sees
// them, through its hostPath mounts).
type Install struct {
	Binary  string // the cairn-cni binary to copy, e.g. ztunnel's own image's
	BinDir  string // the node's CNI bin directory, e.g. /opt/cni/bin
	ConfDir string // the node's CNI configuration directory, e.g. /etc/cni/net.d
	Socket  string // ztunnel's socket as the plugin (on the node) sees it

	matched binStamp // the files' stamps when last found identical
}

// Ensure copies the binary (when it differs) and chains the plugin into
// the node's CNI configuration list, the first file in ConfDir as the
// runtime picks it. It changes nothing that is already right, so ztunnel
// calls it again whenever the cluster's CNI may have rewritten its file.
// It reports whether it changed the configuration.
func (in *Install) Ensure() (bool, error) {
	if err := in.copyBinary(); err != nil {
		return false, err
	}
	path, conf, err := in.confList()
	if err != nil {
		return false, err
	}
	plugins, err := pluginsOf(conf)
	if err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	if i := ourIndex(plugins); i >= 0 {
		// Already chained; keep it last and its socket current.
		if i == len(plugins)-1 && plugins[i]["socket"] == in.Socket {
			return false, nil
		}
		plugins = slices.Delete(plugins, i, i+1)
	}
	plugins = append(plugins, map[string]any{"type": PluginType, "socket": in.Socket})
	conf["plugins"] = plugins
	return true, writeJSON(path, conf)
}

// Remove takes the plugin out of the configuration list and deletes the
// binary. A node without either is fine.
func (in Install) Remove() error {
	var errs []error
	if path, conf, err := in.confList(); err == nil {
		plugins, perr := pluginsOf(conf)
		if perr == nil {
			if i := ourIndex(plugins); i >= 0 {
				conf["plugins"] = slices.Delete(plugins, i, i+1)
				errs = append(errs, writeJSON(path, conf))
			}
		} else {
			errs = append(errs, fmt.Errorf("%s: %w", path, perr))
		}
	} else if !errors.Is(err, errNoConf) {
		errs = append(errs, err)
	}
	if err := os.Remove(filepath.Join(in.BinDir, PluginType)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("removing the plugin binary: %w", err))
	}
	return errors.Join(errs...)
}

var errNoConf = errors.New("no CNI configuration list on the node yet")

// confList reads the configuration file the runtime uses: the first by
// name. Only configuration lists can chain plugins.
func (in Install) confList() (string, map[string]any, error) {
	files, err := confFiles(in.ConfDir)
	if err != nil {
		return "", nil, fmt.Errorf("listing %s: %w", in.ConfDir, err)
	}
	if len(files) == 0 {
		return "", nil, fmt.Errorf("%w in %s (the cluster's CNI writes one when it starts)", errNoConf, in.ConfDir)
	}
	path := files[0]
	if filepath.Ext(path) != ".conflist" {
		return "", nil, fmt.Errorf("%s is a single-plugin configuration; cairn-cni chains only into a .conflist", path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", nil, fmt.Errorf("reading %s: %w", path, err)
	}
	var conf map[string]any
	if err := json.Unmarshal(data, &conf); err != nil {
		return "", nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	return path, conf, nil
}

// confFiles lists the network configuration files in dir in the order
// container runtimes load them (libcni's rule): files, not directories,
// named *.conf, *.conflist or *.json, sorted by name. A directory that
// does not exist yet holds none. It is written here rather than called from
// libcni, which would link libcni's plugin invocation and its tracing into
// ztunnel for a directory listing.
func confFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir) // sorted by name
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		switch filepath.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	return files, nil
}

func pluginsOf(conf map[string]any) ([]map[string]any, error) {
	raw, ok := conf["plugins"].([]any)
	if !ok {
		return nil, errors.New(`no "plugins" list`)
	}
	out := make([]map[string]any, 0, len(raw))
	for _, p := range raw {
		m, ok := p.(map[string]any)
		if !ok {
			return nil, errors.New("a plugin entry is not an object")
		}
		out = append(out, m)
	}
	return out, nil
}

func ourIndex(plugins []map[string]any) int {
	return slices.IndexFunc(plugins, func(p map[string]any) bool { return p["type"] == PluginType })
}

// writeJSON replaces path atomically: the runtime never reads half a file.
func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding %s: %w", path, err)
	}
	return replaceFile(path, data, 0o644)
}

func replaceFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".cairn-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	return nil
}

// copyBinary installs the plugin binary unless an identical one is there.
// The comparison streams both files through a hash (the plugin is about
// 10 MB and Ensure runs every few seconds: reading both whole would be
// most of ztunnel's allocations), and is skipped while neither file's size
// and modification time changed since the last time they matched.
func (in *Install) copyBinary() error {
	src, err := os.Stat(in.Binary)
	if err != nil {
		return fmt.Errorf("reading the plugin binary: %w", err)
	}
	dst := filepath.Join(in.BinDir, PluginType)
	cur, err := os.Stat(dst)
	if err == nil {
		stamp := binStamp{src.Size(), src.ModTime(), cur.Size(), cur.ModTime()}
		if stamp == in.matched {
			return nil
		}
		if src.Size() == cur.Size() {
			same, err := sameContent(in.Binary, dst)
			if err != nil {
				return err
			}
			if same {
				in.matched = stamp
				return nil
			}
		}
	}
	if err := os.MkdirAll(in.BinDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", in.BinDir, err)
	}
	data, err := os.ReadFile(in.Binary)
	if err != nil {
		return fmt.Errorf("reading the plugin binary: %w", err)
	}
	return replaceFile(dst, data, 0o755)
}

// binStamp is what copyBinary remembers of two files found identical.
type binStamp struct {
	srcSize int64
	srcTime time.Time
	dstSize int64
	dstTime time.Time
}

func sameContent(a, b string) (bool, error) {
	ha, err := fileHash(a)
	if err != nil {
		return false, err
	}
	hb, err := fileHash(b)
	if err != nil {
		return false, err
	}
	return ha == hb, nil
}

func fileHash(path string) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	f, err := os.Open(path)
	if err != nil {
		return sum, fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, fmt.Errorf("reading %s: %w", path, err)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
