package kubeserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// binDir returns $K8S_ASSETS or skips: these tests start real processes.
func binDir(t *testing.T) string {
	dir := os.Getenv("K8S_ASSETS")
	if dir == "" {
		t.Skip("K8S_ASSETS not set (make k8s-bins builds the binaries into bin/k8s)")
	}
	return dir
}

func TestStartAndStop(t *testing.T) {
	bins := binDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	extraIP := net.ParseIP("198.18.0.1")
	s, err := Start(ctx, Options{
		Dir:           t.TempDir(),
		BinDir:        bins,
		ExtraIPs:      []net.IP{extraIP},
		ExtraDNSNames: []string{"api.lab.test"},
		ServiceCIDR:   "198.19.4.0/24",
	})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			s.Stop()
		}
	}()
	t.Logf("ready: %+v", s.Timings())

	// The admin kubeconfig on disk works.
	cfg, err := clientcmd.BuildConfigFromFlags("", s.KubeconfigPath())
	if err != nil {
		t.Fatal(err)
	}
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := admin.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP != "198.19.4.1" {
		t.Errorf("kubernetes Service ClusterIP %s, want the first address of the service CIDR", svc.Spec.ClusterIP)
	}

	// The served certificate carries the extra SANs and the Service IP.
	conn, err := tls.Dial("tcp", strings.TrimPrefix(s.URL(), "https://"), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.CA().CertPEM)
	for _, name := range []string{"198.18.0.1", "api.lab.test", "198.19.4.1", "kubernetes.default.svc", "127.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots}); err != nil {
			t.Errorf("serving certificate for %s: %v", name, err)
		}
	}

	// Other users are subject to RBAC.
	ucfg, err := s.ClientConfig("alice", "developers")
	if err != nil {
		t.Fatal(err)
	}
	alice, err := kubernetes.NewForConfig(ucfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.CoreV1().Secrets("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("alice listing secrets: err = %v, want Forbidden", err)
	}

	pids := s.PIDs()
	if len(pids) != 2 || pids[Etcd] == 0 || pids[APIServer] == 0 {
		t.Fatalf("PIDs = %v", pids)
	}
	start := time.Now()
	if err := s.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	stopped = true
	t.Logf("stopped in %v", time.Since(start))
	for name, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("%s (pid %d) still exists after Stop", name, pid)
		}
	}
	if len(s.PIDs()) != 0 {
		t.Errorf("PIDs after Stop = %v", s.PIDs())
	}
}

// TestStartFailureShowsLog: a server that can't start returns an error
// with its log's tail, and leaves nothing running.
func TestStartFailureShowsLog(t *testing.T) {
	bins := binDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	_, err := Start(ctx, Options{
		Dir:       dir,
		BinDir:    bins,
		ExtraArgs: map[string][]string{APIServer: {"--no-such-flag=1"}},
	})
	if err == nil {
		t.Fatal("Start succeeded with an unknown API server flag")
	}
	msg := err.Error()
	if !strings.Contains(msg, "kube-apiserver") || !strings.Contains(msg, "no-such-flag") {
		t.Errorf("error lacks the process name or its log's tail:\n%s", msg)
	}
	t.Logf("error, as a user sees it:\n%s", msg)
	if procs := processesMentioning(dir); len(procs) > 0 {
		t.Errorf("processes left running after the failed start: %v", procs)
	}
}

// processesMentioning returns the command lines of live processes whose
// arguments contain s.
func processesMentioning(s string) []string {
	entries, _ := os.ReadDir("/proc")
	var found []string
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !alive(pid) {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), s) {
			found = append(found, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return found
}
