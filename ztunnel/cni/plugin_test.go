package cni

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
)

// fakeZtunnel records what the plugin sends.
type fakeZtunnel struct {
	mu      sync.Mutex
	adds    []Pod
	dels    []Pod
	addErr  error
	capture bool
}

func (f *fakeZtunnel) Add(_ context.Context, pod Pod) (Reply, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.adds = append(f.adds, pod)
	if f.addErr != nil {
		return Reply{}, f.addErr
	}
	return Reply{Captured: f.capture}, nil
}

func (f *fakeZtunnel) Del(_ context.Context, pod Pod) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dels = append(f.dels, pod)
	return nil
}

// serve runs a fake ztunnel on a socket in a temp dir and returns the path.
func serve(t *testing.T, h Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cni.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: &Server{Handler: h, Log: slog.New(slog.DiscardHandler)}}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return sock
}

// netconf is a chained plugin's stdin: the plugin's entry with the previous
// plugins' result, as libcni passes it.
func netconf(socket string) []byte {
	return []byte(`{"cniVersion":"1.0.0","name":"lab","type":"cairn-cni","socket":"` + socket + `","timeoutSeconds":5,
	  "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/cni-1"}],
	  "ips":[{"address":"198.18.1.7/24","gateway":"198.18.1.1","interface":0}]}}`)
}

func args(socket string) *skel.CmdArgs {
	return &skel.CmdArgs{
		ContainerID: "c0ffee", Netns: "/var/run/netns/cni-1", IfName: "eth0",
		Args:      "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=reviews-1;K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=u-1",
		StdinData: netconf(socket),
	}
}

func TestAddHandsThePodToZtunnel(t *testing.T) {
	z := &fakeZtunnel{capture: true}
	sock := serve(t, z)
	if err := cmdAdd(args(sock)); err != nil {
		t.Fatal(err)
	}
	if len(z.adds) != 1 {
		t.Fatalf("ztunnel got %d ADDs, want 1", len(z.adds))
	}
	got := z.adds[0]
	if got.Namespace != "shop" || got.Name != "reviews-1" || got.UID != "u-1" || got.Netns != "/var/run/netns/cni-1" ||
		got.ContainerID != "c0ffee" || len(got.IPs) != 1 || got.IPs[0] != "198.18.1.7" {
		t.Errorf("ztunnel got %+v", got)
	}
}

func TestAddFailsWhenZtunnelIsDown(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	err := cmdAdd(args(sock))
	if err == nil || !strings.Contains(err.Error(), "is the ztunnel DaemonSet running") {
		t.Fatalf("ADD with no ztunnel: %v, want a failure that says why", err)
	}
}

func TestAddFailsWhenZtunnelCannotCapture(t *testing.T) {
	sock := serve(t, &fakeZtunnel{addErr: errors.New("iptables-restore: exit status 1")})
	err := cmdAdd(args(sock))
	if err == nil || !strings.Contains(err.Error(), "iptables-restore") {
		t.Fatalf("ADD: %v, want ztunnel's reason", err)
	}
}

func TestAddNeedsAPreviousResult(t *testing.T) {
	a := args("/nonexistent")
	a.StdinData = []byte(`{"cniVersion":"1.0.0","name":"lab","type":"cairn-cni"}`)
	if err := cmdAdd(a); err == nil || !strings.Contains(err.Error(), "chained") {
		t.Fatalf("ADD without prevResult: %v", err)
	}
}

func TestDelNeverFails(t *testing.T) {
	z := &fakeZtunnel{}
	sock := serve(t, z)
	if err := cmdDel(args(sock)); err != nil {
		t.Fatal(err)
	}
	if len(z.dels) != 1 || z.dels[0].Name != "reviews-1" {
		t.Errorf("ztunnel got DELs %+v", z.dels)
	}
	if err := cmdDel(args(filepath.Join(t.TempDir(), "absent.sock"))); err != nil {
		t.Errorf("DEL with no ztunnel failed: %v", err)
	}
}

func TestServerRefusesMalformedRequests(t *testing.T) {
	sock := serve(t, &fakeZtunnel{})
	c := client{socket: sock, timeout: DefaultTimeout}
	if _, err := c.post(context.Background(), "add", Pod{Name: "x"}); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("a pod without namespace and netns: %v, want 400", err)
	}
	if _, err := c.post(context.Background(), "explode", Pod{Namespace: "a", Name: "b", Netns: "/n"}); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("an unknown operation: %v, want 404", err)
	}
	var r Reply
	out, err := c.post(context.Background(), "add", Pod{Namespace: "a", Name: "b", Netns: "/n"})
	if err != nil || json.Unmarshal(out, &r) != nil {
		t.Errorf("a good request: %v %q", err, out)
	}
}

// TestNewZtunnelKeepsTheSocketWhenTheOldOneCloses: in a rolling update the
// new ztunnel binds the socket path while the old one still listens; the
// old one closing its listener must leave the new one reachable.
func TestNewZtunnelKeepsTheSocketWhenTheOldOneCloses(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "cni.sock")
	old, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	z := &fakeZtunnel{capture: true}
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: &Server{Handler: z, Log: slog.New(slog.DiscardHandler)}}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cmdAdd(args(sock)); err != nil {
		t.Fatalf("ADD after the old ztunnel closed its listener: %v", err)
	}
}
