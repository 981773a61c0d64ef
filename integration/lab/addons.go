package lab

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"time"

	"k8s.io/client-go/rest"

	"github.com/cairnmesh/cairn/internal/manifest"
)

// addons are the manifests every lab gets: RBAC for its nodes and CoreDNS.
//
//go:embed addons/*.yaml
var addons embed.FS

// FieldManager is the server-side apply field manager of the lab's own
// objects.
const FieldManager = "cairn-lab"

// applyAddons applies every embedded add-on manifest.
func applyAddons(ctx context.Context, cfg *rest.Config, log *slog.Logger) error {
	start := time.Now()
	a, err := manifest.New(cfg, manifest.Options{FieldManager: FieldManager, Logger: log})
	if err != nil {
		return err
	}
	files, err := fs.Glob(addons, "addons/*.yaml")
	if err != nil {
		return err
	}
	for _, f := range files {
		data, err := addons.ReadFile(f)
		if err != nil {
			return err
		}
		if _, err := a.Apply(ctx, data); err != nil {
			return fmt.Errorf("applying lab add-on %s: %w", f, err)
		}
	}
	log.Info("add-ons applied", "took", time.Since(start).Round(time.Millisecond))
	return nil
}
