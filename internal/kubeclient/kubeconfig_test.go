package kubeclient

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseKubeconfig(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{"ca.pem": "CA", "certs/me.crt": "CERT", "certs/me.key": "KEY", "tok": "T"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	const head = "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: other\n  context: {cluster: x, user: x}\n- name: c\n  context: {cluster: k, user: u, namespace: ignored}\n"

	t.Run("inline data", func(t *testing.T) {
		cfg, err := parseKubeconfig([]byte(head+`clusters:
- name: x
  cluster: {server: "https://wrong"}
- name: k
  cluster:
    server: https://10.0.0.1:6443/
    certificate-authority-data: `+b64("CA-INLINE")+`
    tls-server-name: kubernetes
users:
- name: u
  user:
    client-certificate-data: `+b64("C")+`
    client-key-data: `+b64("K")+`
`), dir)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Server != "https://10.0.0.1:6443" || string(cfg.CAData) != "CA-INLINE" || cfg.ServerName != "kubernetes" ||
			string(cfg.CertData) != "C" || string(cfg.KeyData) != "K" || cfg.Token != "" || cfg.TokenFile != "" || cfg.Insecure {
			t.Errorf("got %+v", cfg)
		}
	})
	t.Run("files relative to the kubeconfig", func(t *testing.T) {
		cfg, err := parseKubeconfig([]byte(head+`clusters:
- name: k
  cluster: {server: "https://k", certificate-authority: ca.pem}
users:
- name: u
  user: {client-certificate: certs/me.crt, client-key: `+filepath.Join(dir, "certs/me.key")+`, tokenFile: tok}
`), dir)
		if err != nil {
			t.Fatal(err)
		}
		if string(cfg.CAData) != "CA" || !bytes.Equal(cfg.CertData, []byte("CERT")) || string(cfg.KeyData) != "KEY" || cfg.TokenFile != filepath.Join(dir, "tok") {
			t.Errorf("got %+v", cfg)
		}
	})
	t.Run("inline token wins over the file", func(t *testing.T) {
		cfg, err := parseKubeconfig([]byte(head+`clusters:
- name: k
  cluster: {server: "https://k", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: abc, tokenFile: tok}
`), dir)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Token != "abc" || cfg.TokenFile != "" || !cfg.Insecure {
			t.Errorf("got %+v", cfg)
		}
	})

	for _, tc := range []struct{ name, doc, want string }{
		{"no current context", "clusters: []\n", "no current-context"},
		{"unknown context", "current-context: nope\n", `context "nope"`},
		{"unknown cluster", head + "clusters: [{name: x, cluster: {server: https://x}}]\n", `cluster "k" is not in`},
		{"no server", head + "clusters: [{name: k, cluster: {}}]\n", "has no server"},
		{"missing CA file", head + "clusters: [{name: k, cluster: {server: https://k, certificate-authority: nope.pem}}]\n", "nope.pem"},
		{"unknown user", head + "clusters: [{name: k, cluster: {server: https://k}}]\n", `user "u" is not in`},
		{"exec", head + "clusters: [{name: k, cluster: {server: https://k}}]\nusers: [{name: u, user: {exec: {command: aws}}}]\n", "exec"},
		{"auth provider", head + "clusters: [{name: k, cluster: {server: https://k}}]\nusers: [{name: u, user: {auth-provider: {name: gcp}}}]\n", "auth-provider"},
		{"basic auth", head + "clusters: [{name: k, cluster: {server: https://k}}]\nusers: [{name: u, user: {username: a, password: b}}]\n", "basic"},
		{"impersonation", head + "clusters: [{name: k, cluster: {server: https://k}}]\nusers: [{name: u, user: {as: admin}}]\n", "impersonation"},
		{"proxy", head + "clusters: [{name: k, cluster: {server: https://k, proxy-url: http://p}}]\n", "proxy-url"},
		{"not YAML", "{", ""},
	} {
		_, err := parseKubeconfig([]byte(tc.doc), dir)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one that mentions %q", tc.name, err, tc.want)
		}
	}
}

func TestInClusterNeedsItsEnvironment(t *testing.T) {
	t.Setenv(hostEnv, "")
	t.Setenv(portEnv, "")
	if _, err := inCluster(t.TempDir()); err != ErrNotInCluster {
		t.Errorf("outside a pod: %v, want ErrNotInCluster", err)
	}
	t.Setenv(hostEnv, "fd00::1")
	t.Setenv(portEnv, "443")
	dir := t.TempDir()
	if _, err := inCluster(dir); err == nil {
		t.Error("no token file: no error")
	}
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte("t"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), []byte("CA"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := inCluster(dir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server != "https://[fd00::1]:443" || string(cfg.CAData) != "CA" || cfg.TokenFile != filepath.Join(dir, "token") {
		t.Errorf("got %+v", cfg)
	}
}
