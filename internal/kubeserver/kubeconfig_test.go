package kubeserver

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

func TestWriteKubeconfigRoundTrips(t *testing.T) {
	ca, err := NewCA("test-ca", ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := ca.IssueClient("admin", []string{"system:masters"})
	if err != nil {
		t.Fatal(err)
	}
	want := &rest.Config{
		Host: "https://127.0.0.1:6443",
		TLSClientConfig: rest.TLSClientConfig{
			ServerName: "kubernetes.default.svc",
			CAData:     ca.CertPEM,
			CertData:   admin.CertPEM,
			KeyData:    admin.KeyPEM,
		},
	}
	path := filepath.Join(t.TempDir(), "sub", "admin.kubeconfig")
	if err := WriteKubeconfig(path, want, "lab"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600 (it holds a private key)", fi.Mode().Perm())
	}

	got, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Host != want.Host {
		t.Errorf("Host = %q, want %q", got.Host, want.Host)
	}
	if got.ServerName != want.ServerName {
		t.Errorf("ServerName = %q, want %q", got.ServerName, want.ServerName)
	}
	for name, pair := range map[string][2][]byte{
		"CAData":   {got.CAData, want.CAData},
		"CertData": {got.CertData, want.CertData},
		"KeyData":  {got.KeyData, want.KeyData},
	} {
		if !bytes.Equal(pair[0], pair[1]) {
			t.Errorf("%s differs after the round trip", name)
		}
	}

	raw, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if raw.CurrentContext != "lab" {
		t.Errorf("current-context = %q, want lab", raw.CurrentContext)
	}
}

func TestWriteKubeconfigToken(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("test-ca", ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	want := &rest.Config{
		Host:            "https://198.18.0.1:6443",
		BearerToken:     "abc.def.ghi",
		TLSClientConfig: rest.TLSClientConfig{CAFile: caFile},
	}
	path := filepath.Join(dir, "kubeconfig")
	if err := WriteKubeconfig(path, want, "sa"); err != nil {
		t.Fatal(err)
	}
	got, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	if got.BearerToken != want.BearerToken || got.CAFile != want.CAFile || got.Host != want.Host {
		t.Errorf("got host %q token %q ca %q", got.Host, got.BearerToken, got.CAFile)
	}
}
