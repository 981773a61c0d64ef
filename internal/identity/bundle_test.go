package identity

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cairnmesh/cairn/internal/pki"
)

func rootSerials(certs []*x509.Certificate) string {
	var s []string
	for _, c := range certs {
		s = append(s, c.SerialNumber.Text(16))
	}
	return strings.Join(s, ",")
}

func TestBundleLoadsAndServesItsTrustDomain(t *testing.T) {
	a := newRoot(t)
	b := newTestBundle(t, filepath.Join(t.TempDir(), "root-cert.pem"), a.Cert)
	got, err := b.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		t.Fatal(err)
	}
	if !got.HasX509Authority(a.Cert) || len(got.X509Authorities()) != 1 {
		t.Errorf("bundle %v, want the one root", got.X509Authorities())
	}
	if _, err := b.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.example")); err == nil {
		t.Error("bundle served a foreign trust domain")
	}
	d := b.Dump()
	if d.TrustDomain != "cluster.local" || len(d.Roots) != 1 || d.Roots[0].Serial != a.Cert.SerialNumber.Text(16) || d.LastError != "" {
		t.Errorf("dump %+v", d)
	}
}

func TestNewBundleFailsWithoutRoots(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]BundleConfig{
		"missing":      {Path: filepath.Join(dir, "missing.pem")},
		"empty":        {Path: empty},
		"no path":      {},
		"trust domain": {Path: empty, TrustDomain: "Not A Domain"},
	} {
		if _, err := NewBundle(cfg); err == nil {
			t.Errorf("%s: NewBundle succeeded", name)
		}
	}
}

// TestBundleReloadsKubeletVolume updates the file the way the kubelet
// updates a ConfigMap volume: root-cert.pem is a link into ..data, a link
// to a timestamped directory, and an update writes a new directory and
// swaps ..data.
func TestBundleReloadsKubeletVolume(t *testing.T) {
	dir := t.TempDir()
	a, b := newRoot(t), newRoot(t)
	version := func(name string, roots ...*x509.Certificate) {
		t.Helper()
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "root-cert.pem"), pki.EncodeCertsPEM(roots...), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..v1", a.Cert)
	path := filepath.Join(dir, "root-cert.pem")
	if err := os.Symlink("..data/root-cert.pem", path); err != nil {
		t.Fatal(err)
	}
	bundle, err := NewBundle(BundleConfig{Path: path, PollInterval: 5 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	runBundle(t, bundle)

	changed := bundle.Changed()
	version("..v2", a.Cert, b.Cert)
	awaitClosed(t, changed)
	if got, want := rootSerials(bundle.Roots()), rootSerials([]*x509.Certificate{a.Cert, b.Cert}); got != want {
		t.Errorf("roots after the update: %s, want %s", got, want)
	}
	// Same size, different root: the file's identity tells it changed.
	changed = bundle.Changed()
	version("..v3", b.Cert, a.Cert)
	awaitClosed(t, changed)
	if got, want := rootSerials(bundle.Roots()), rootSerials([]*x509.Certificate{b.Cert, a.Cert}); got != want {
		t.Errorf("roots after the second update: %s, want %s", got, want)
	}
}

func TestBundleKeepsRootsWhenFileIsBroken(t *testing.T) {
	a, b := newRoot(t), newRoot(t)
	path := filepath.Join(t.TempDir(), "root-cert.pem")
	bundle := newTestBundle(t, path, a.Cert)

	// reload is what every poll does; calling it keeps the test free of
	// timing.
	if err := os.WriteFile(path, []byte("-----BEGIN CERTIFICATE-----\ntruncat"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := bundle.reload(); err == nil {
		t.Fatal("reload accepted a broken file")
	}
	if err := bundle.reload(); err != nil {
		t.Errorf("the same broken file was reported twice: %v", err)
	}
	if got := rootSerials(bundle.Roots()); got != rootSerials([]*x509.Certificate{a.Cert}) {
		t.Errorf("roots after a broken file: %s, want the previous", got)
	}
	if d := bundle.Dump(); d.LastError == "" {
		t.Error("dump does not say the file is broken")
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := bundle.reload(); err == nil {
		t.Error("reload accepted a missing file")
	}
	if err := bundle.reload(); err != nil {
		t.Errorf("the missing file was reported twice: %v", err)
	}

	changed := bundle.Changed()
	writeRoots(t, path, b.Cert)
	if err := bundle.reload(); err != nil {
		t.Fatal(err)
	}
	awaitClosed(t, changed)
	if got := rootSerials(bundle.Roots()); got != rootSerials([]*x509.Certificate{b.Cert}) {
		t.Errorf("roots after repair: %s", got)
	}
	if d := bundle.Dump(); d.LastError != "" {
		t.Errorf("dump still reports %q", d.LastError)
	}
}

func TestBundleIgnoresRewriteOfSameRoots(t *testing.T) {
	a := newRoot(t)
	path := filepath.Join(t.TempDir(), "root-cert.pem")
	bundle := newTestBundle(t, path, a.Cert)
	changed := bundle.Changed()
	writeRoots(t, path, a.Cert)
	if err := bundle.reload(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
		t.Error("same roots signalled a change")
	default:
	}
}

func TestBundleRunTwice(t *testing.T) {
	bundle := newTestBundle(t, filepath.Join(t.TempDir(), "root-cert.pem"), newRoot(t).Cert)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := bundle.Run(ctx); err != nil {
		t.Fatalf("Run with an ended context: %v", err)
	}
	if err := bundle.Run(t.Context()); err == nil {
		t.Error("second Run did not fail")
	}
}
