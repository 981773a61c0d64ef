package kubelet

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// fakeObjects is an objectSource over fixed ConfigMaps and Secrets.
type fakeObjects struct {
	cms     map[string]*corev1.ConfigMap
	secrets map[string]*corev1.Secret
}

func (f fakeObjects) configMap(name string) (*corev1.ConfigMap, error) {
	if cm, ok := f.cms[name]; ok {
		return cm, nil
	}
	return nil, errObjectNotFound
}

func (f fakeObjects) secret(name string) (*corev1.Secret, error) {
	if s, ok := f.secrets[name]; ok {
		return s, nil
	}
	return nil, errObjectNotFound
}

func testPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", UID: "uid-1",
			Labels: map[string]string{"app": "web", "tier": "front"}},
		Spec: corev1.PodSpec{NodeName: "lab-node-1", ServiceAccountName: "web",
			Containers: []corev1.Container{{Name: "app", Image: "cairn/echoserver:v1"}}},
	}
}

func TestContainerEnv(t *testing.T) {
	pod := testPod()
	c := &corev1.Container{
		Name: "app",
		EnvFrom: []corev1.EnvFromSource{
			{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}, Prefix: "CFG_"},
			{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "gone"}, Optional: ptr.To(true)}},
		},
		Env: []corev1.EnvVar{
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
			{Name: "POD_UID", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.uid"}}},
			{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			{Name: "HOST_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
			{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
			{Name: "SA", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.serviceAccountName"}}},
			{Name: "TIER", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['tier']"}}},
			{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "db"}, Key: "password"}}},
			{Name: "MODE", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "mode"}}},
			{Name: "MISSING", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "nope", Optional: ptr.To(true)}}},
			{Name: "CPUS", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}},
			{Name: "URL", Value: "http://$(POD_NAME).$(POD_NAMESPACE):$(KUBERNETES_SERVICE_PORT)/$(UNDEFINED)/$$(POD_NAME)"},
			{Name: "PATH", Value: "/custom"},
		},
	}
	objs := fakeObjects{
		cms:     map[string]*corev1.ConfigMap{"cfg": {Data: map[string]string{"mode": "fast", "level": "3", "bad-name": "x"}}},
		secrets: map[string]*corev1.Secret{"db": {Data: map[string][]byte{"password": []byte("s3cret")}}},
	}
	ec := envContext{
		hostIP:   "198.18.0.11",
		podIPs:   []string{"198.18.1.5"},
		nodeCPU:  resource.MustParse("2"),
		nodeMem:  resource.MustParse("1Gi"),
		services: []string{"KUBERNETES_SERVICE_HOST=198.19.0.1", "KUBERNETES_SERVICE_PORT=443"},
		base:     []string{"PATH=/usr/bin", "HOSTNAME=web-1", "HOME=/root"},
	}
	env, err := containerEnv(pod, c, ec, objs)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"PATH=/custom", "HOSTNAME=web-1", "HOME=/root",
		"KUBERNETES_SERVICE_HOST=198.19.0.1", "KUBERNETES_SERVICE_PORT=443",
		"CFG_bad-name=x", "CFG_level=3", "CFG_mode=fast",
		"POD_NAME=web-1", "POD_NAMESPACE=shop", "POD_UID=uid-1", "POD_IP=198.18.1.5", "HOST_IP=198.18.0.11",
		"NODE=lab-node-1", "SA=web", "TIER=front", "PASSWORD=s3cret", "MODE=fast", "CPUS=2",
		"URL=http://web-1.shop:443/$(UNDEFINED)/$(POD_NAME)",
	}
	if !slices.Equal(env, want) {
		t.Errorf("env:\n got %q\nwant %q", env, want)
	}

	// A missing required key fails the container, not silently.
	c.Env = []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "none"}, Key: "k"}}}}
	if _, err := containerEnv(pod, c, ec, objs); !errors.Is(err, errObjectNotFound) {
		t.Errorf("missing secret: %v", err)
	}
}

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "1", "B": "two"}
	lookup := func(n string) (string, bool) { v, ok := vars[n]; return v, ok }
	for in, want := range map[string]string{
		"plain":       "plain",
		"$(A)$(B)":    "1two",
		"$(C)":        "$(C)",
		"$$(A)":       "$(A)",
		"$$":          "$",
		"cost $5":     "cost $5",
		"$(A":         "$(A",
		"x$":          "x$",
		"a-$(B)-$(A)": "a-two-1",
	} {
		if got := expand(in, lookup); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEntrypoint(t *testing.T) {
	env := []string{"PORT=8080"}
	for _, tc := range []struct {
		name          string
		command, args []string
		want          []string
	}{
		{"image default", nil, nil, []string{"/cairn/bin/ztunnel"}},
		{"args only", nil, []string{"--port=$(PORT)"}, []string{"/cairn/bin/ztunnel", "--port=8080"}},
		{"command of a real image", []string{"/usr/local/bin/ztunnel", "proxy"}, []string{"ztunnel"}, []string{"/cairn/bin/ztunnel", "proxy", "ztunnel"}},
		{"other program", []string{"/bin/sh", "-c"}, []string{"echo $(PORT)"}, []string{"/bin/sh", "-c", "echo 8080"}},
		{"bare name", []string{"sleep", "1"}, nil, []string{"sleep", "1"}},
	} {
		c := &corev1.Container{Command: tc.command, Args: tc.args}
		if got := entrypoint(c, "/cairn/bin/ztunnel", env); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestBuildSpecMounts(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	cfgFile := filepath.Join(dir, "vol", "settings", "app.conf")
	if err := os.MkdirAll(filepath.Dir(cfgFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgFile, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	pod := testPod()
	c := &corev1.Container{
		Name: "app", Image: "cairn/echoserver:v1", WorkingDir: "/work",
		VolumeMounts: []corev1.VolumeMount{
			{Name: "token", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true},
			{Name: "netns", MountPath: "/var/run/netns"},
			{Name: "settings", MountPath: "/etc/app/app.conf", SubPath: "app.conf"},
			{Name: "data", MountPath: "/var"},
		},
	}
	in := planInput{
		Pod: pod, Container: c,
		Env:    []string{"A=1"},
		Binary: filepath.Join(bin, "echoserver"),
		BinDir: bin,
		Volumes: map[string]hostVolume{
			"token":    {Path: filepath.Join(dir, "vol", "token")},
			"netns":    {Path: "/lab/node/var/run/netns", Host: true},
			"settings": {Path: filepath.Join(dir, "vol", "settings")},
			"data":     {Path: filepath.Join(dir, "vol", "data")},
		},
		Files:    podFiles{ResolvConf: "/p/resolv.conf", Hosts: "/p/hosts", Hostname: "/p/hostname"},
		NetNS:    "/lab/node/var/run/netns/cni-1",
		Cgroups:  []string{"/sys/fs/cgroup/pids/kubepods/besteffort/poduid-1/c1"},
		Hostname: "web-1",
		ID:       "c1", Dir: "/state/c1", LogPath: "/log/0.log",
		HostDirs: map[string]string{"/usr": "", "/bin": "usr/bin", "/lib64": "usr/lib64"},
	}
	spec, err := buildSpec(in)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Argv[0] != "/cairn/bin/echoserver" || spec.WorkingDir != "/work" || spec.RootDir != "/state/c1/rootfs" || spec.NetNS != in.NetNS {
		t.Errorf("spec: argv %q wd %q root %q netns %q", spec.Argv, spec.WorkingDir, spec.RootDir, spec.NetNS)
	}
	var got []string
	for _, m := range spec.Mounts {
		s := m.Kind + " " + m.Target
		if m.Source != "" {
			s += " <- " + m.Source
		}
		if m.ReadOnly {
			s += " ro"
		}
		if m.Owned {
			s += " owned"
		}
		got = append(got, s)
	}
	want := []string{
		"bind /usr <- /usr ro",
		"symlink /bin <- usr/bin",
		"symlink /lib64 <- usr/lib64",
		"overlay /etc <- /etc",
		"proc /proc",
		"sysfs /sys",
		"rbind /sys/fs/cgroup <- /sys/fs/cgroup",
		"rbind /dev <- /dev",
		"tmpfs /tmp",
		"tmpfs /run",
		"symlink /var/run <- ../run",
		"bind /cairn/bin <- " + bin + " ro",
		"bind /etc/resolv.conf <- /p/resolv.conf",
		"bind /etc/hosts <- /p/hosts",
		"bind /etc/hostname <- /p/hostname",
		// Volumes: parents first.
		"bind /var <- " + filepath.Join(dir, "vol", "data") + " owned",
		"rbind /var/run/netns <- /lab/node/var/run/netns",
		"bind /etc/app/app.conf <- " + cfgFile + " owned",
		"bind /var/run/secrets/kubernetes.io/serviceaccount <- " + filepath.Join(dir, "vol", "token") + " ro owned",
	}
	if !slices.Equal(got, want) {
		t.Errorf("mounts:\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
	for _, m := range spec.Mounts {
		if m.Target == "/etc/app/app.conf" && !m.File {
			t.Error("a subPath file mount is not marked as a file")
		}
	}

	// A binary from outside bin/ is bound at /cairn/image.
	in.Binary = "/opt/coredns"
	spec, err = buildSpec(in)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Argv[0] != "/cairn/image/coredns" || !slices.ContainsFunc(spec.Mounts, func(m mountSpec) bool {
		return m.Target == "/cairn/image/coredns" && m.Source == "/opt/coredns" && m.File
	}) {
		t.Errorf("outside binary: argv %q", spec.Argv)
	}

	// subPath may not leave its volume.
	c.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/x", SubPath: "../../etc"}}
	if _, err := buildSpec(in); err == nil {
		t.Error("a subPath with .. was accepted")
	}
}

func TestResolvConf(t *testing.T) {
	node := []byte("# node\nnameserver 198.18.0.1\nsearch lab.example\noptions edns0\n")
	pod := testPod()
	cluster := "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 198.19.0.10\noptions ndots:5\n"
	fromNode := "search lab.example\nnameserver 198.18.0.1\noptions edns0\n"
	for _, tc := range []struct {
		name        string
		policy      corev1.DNSPolicy
		hostNetwork bool
		clusterDNS  string
		config      *corev1.PodDNSConfig
		want        string
	}{
		{"default policy is ClusterFirst", "", false, "198.19.0.10", nil, cluster},
		{"ClusterFirst on the host network uses the node's", corev1.DNSClusterFirst, true, "198.19.0.10", nil, fromNode},
		{"ClusterFirstWithHostNet", corev1.DNSClusterFirstWithHostNet, true, "198.19.0.10", nil, cluster},
		{"Default", corev1.DNSDefault, false, "198.19.0.10", nil, fromNode},
		{"no cluster DNS", corev1.DNSClusterFirst, false, "", nil, fromNode},
		{"None with dnsConfig", corev1.DNSNone, false, "198.19.0.10", &corev1.PodDNSConfig{
			Nameservers: []string{"198.18.0.53"}, Searches: []string{"x.test"},
			Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr.To("2")}}},
			"search x.test\nnameserver 198.18.0.53\noptions ndots:2\n"},
		{"dnsConfig merges", corev1.DNSClusterFirst, false, "198.19.0.10", &corev1.PodDNSConfig{
			Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr.To("1")}, {Name: "edns0"}}},
			"search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver 198.19.0.10\noptions ndots:1 edns0\n"},
	} {
		p := pod.DeepCopy()
		p.Spec.DNSPolicy, p.Spec.HostNetwork, p.Spec.DNSConfig = tc.policy, tc.hostNetwork, tc.config
		if got := resolvConf(p, tc.clusterDNS, "cluster.local", node); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
	}
}

func TestHostsFile(t *testing.T) {
	pod := testPod()
	pod.Spec.Subdomain = "web"
	pod.Spec.HostAliases = []corev1.HostAlias{{IP: "198.18.0.99", Hostnames: []string{"db.local", "db"}}}
	got := hostsFile(pod, []string{"198.18.1.5"}, "cluster.local", nil)
	for _, want := range []string{
		"127.0.0.1\tlocalhost\n",
		"198.18.1.5\tweb-1.web.shop.svc.cluster.local\tweb-1\n",
		"198.18.0.99\tdb.local\tdb\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("hosts lacks %q:\n%s", want, got)
		}
	}
	pod.Spec.HostNetwork = true
	if got := hostsFile(pod, []string{"198.18.0.11"}, "cluster.local", []byte("198.18.0.11 lab-node-1")); !strings.HasPrefix(got, "198.18.0.11 lab-node-1\n") {
		t.Errorf("hostNetwork hosts:\n%s", got)
	}
}

func TestResolveImage(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"echoserver", "coredns"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{BinDir: dir, Images: map[string]string{
		"coredns/coredns":            filepath.Join(dir, "coredns"),
		"registry.k8s.io/pause:3.10": filepath.Join(dir, "echoserver"),
	}}
	for image, want := range map[string]string{
		"cairn/echoserver:latest":            filepath.Join(dir, "echoserver"),
		"cairn/echoserver":                   filepath.Join(dir, "echoserver"),
		"docker.io/cairn/echoserver:v2":      filepath.Join(dir, "echoserver"),
		"coredns/coredns:1.12.0":             filepath.Join(dir, "coredns"),
		"registry.k8s.io/pause:3.10":         filepath.Join(dir, "echoserver"),
		"cairn/echoserver@sha256:0123456789": filepath.Join(dir, "echoserver"),
	} {
		got, err := cfg.resolveImage(image)
		if err != nil || got != want {
			t.Errorf("resolveImage(%q) = %q, %v; want %q", image, got, err, want)
		}
	}
	for _, image := range []string{"cairn/missing:1", "nginx:1.27", "registry.k8s.io/pause:3.9", "cairn/../etc/passwd"} {
		if _, err := cfg.resolveImage(image); !errors.Is(err, ErrUnknownImage) {
			t.Errorf("resolveImage(%q): %v, want ErrUnknownImage", image, err)
		}
	}
}

func TestAdmission(t *testing.T) {
	pod := testPod()
	if r := admissionError(pod); r != nil {
		t.Fatalf("plain pod rejected: %+v", r)
	}
	pod.Spec.Volumes = []corev1.Volume{{Name: "ebs", VolumeSource: corev1.VolumeSource{
		AWSElasticBlockStore: &corev1.AWSElasticBlockStoreVolumeSource{VolumeID: "vol-1"}}}}
	r := admissionError(pod)
	if r == nil || r.Reason != "UnsupportedVolume" || !strings.Contains(r.Message, "awsElasticBlockStore") {
		t.Errorf("got %+v", r)
	}
	pod = testPod()
	pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "nope", MountPath: "/x"}}
	if r := admissionError(pod); r == nil {
		t.Error("a mount of a missing volume was admitted")
	}
}
