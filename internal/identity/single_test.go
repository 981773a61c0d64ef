package identity

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/cairnmesh/cairn/internal/spiffe"
)

// TestSingleIssuesItsOneIdentity: a waypoint's manager obtains its own
// certificate with no Want of its own, and refuses an identity outside the
// trust domain at construction.
func TestSingleIssuesItsOneIdentity(t *testing.T) {
	dir := t.TempDir()
	root := newRoot(t)
	ca := newFakeCA(t, root, newFakeClock())
	h := &harness{t: t, tokenPath: filepath.Join(dir, "token")}
	h.writeToken("waypoint-token")
	bundle := newTestBundle(t, filepath.Join(dir, "root-cert.pem"), root.Cert)
	cfg := Config{Address: ca.addr, ServerName: testServerName, TokenFile: h.tokenPath, Bundle: bundle, Logger: testLogger(t)}

	if _, _, err := Single(cfg, spiffe.Identity{TrustDomain: "other.example", Namespace: "shop", ServiceAccount: "waypoint"}); err == nil {
		t.Error("Single accepted an identity of another trust domain")
	}

	id := identity("waypoint")
	m, src, err := Single(cfg, id)
	if err != nil {
		t.Fatal(err)
	}
	if src.Identity() != id {
		t.Errorf("source of %s, want %s", src.Identity(), id)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	actx, acancel := context.WithTimeout(ctx, 30*time.Second)
	defer acancel()
	svid, err := src.Await(actx)
	if err != nil {
		t.Fatalf("the waypoint's certificate: %v", err)
	}
	if got := svid.ID.String(); got != "spiffe://cluster.local/ns/shop/sa/waypoint" {
		t.Errorf("issued for %s", got)
	}
}
