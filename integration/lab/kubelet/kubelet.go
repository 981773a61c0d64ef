package kubelet

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"github.com/cairnmesh/cairn/integration/lab/kubeletapi"
)

// Kubelet is one running lab kubelet.
type Kubelet struct {
	cfg      Config
	log      *slog.Logger
	client   kubernetes.Interface
	recorder record.EventRecorder
	cni      *cni
	cgroups  *cgroups
	backoff  backoff
	nsenter  string
	hostDirs map[string]string
	cpus     int
	memory   int64

	mu      sync.Mutex
	workers map[string]*podWorker // by pod UID
	byName  map[string]string     // namespace/name -> UID
	loaded  map[string]*podRecord // records of a previous kubelet not yet claimed
	wg      sync.WaitGroup
	ctx     context.Context

	// onStatus, if set, sees every status written (tests measure with it).
	onStatus func(pod *corev1.Pod, st corev1.PodStatus)
}

// Run runs the kubelet until ctx is done. Pods keep running after it
// returns; the next Run with the same NodeRoot adopts them.
func Run(ctx context.Context, cfg Config) error {
	k, err := newKubelet(cfg)
	if err != nil {
		return err
	}
	return k.run(ctx)
}

func newKubelet(cfg Config) (*Kubelet, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	// First of all, before the kubelet opens a socket: a socket belongs
	// to the cgroup its process was in when it was made, and node agents
	// tell the kubelet's connections apart by it.
	cg, err := discoverCgroups(cfg.CgroupParent, cfg.Cgroup)
	if err != nil {
		return nil, fmt.Errorf("kubelet: %w", err)
	}
	if err := cg.join(); err != nil {
		return nil, fmt.Errorf("kubelet: moving into its own cgroup: %w", err)
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubelet: reading kubeconfig: %w", err)
	}
	restCfg.QPS, restCfg.Burst = 50, 100
	restCfg.UserAgent = "cairn-lab-kubelet/" + cfg.NodeName
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("kubelet: %w", err)
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return nil, fmt.Errorf("kubelet: nsenter (util-linux) is needed for exec: %w", err)
	}
	k := &Kubelet{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "kubelet", "node", cfg.NodeName),
		client:  client,
		cni:     newCNI(cfg),
		cgroups: cg,
		backoff: backoff{base: cfg.BackoffBase, max: cfg.BackoffMax, reset: cfg.BackoffReset},
		nsenter: nsenter,
		cpus:    runtime.NumCPU(),
		memory:  memTotal(),
		workers: map[string]*podWorker{},
		byName:  map[string]string{},
	}
	k.hostDirs = map[string]string{}
	for _, d := range hostDirs {
		fi, err := os.Lstat(d)
		switch {
		case err != nil:
		case fi.Mode()&os.ModeSymlink != 0:
			k.hostDirs[d], _ = os.Readlink(d)
		case fi.IsDir():
			k.hostDirs[d] = ""
		}
	}
	return k, nil
}

func (k *Kubelet) run(ctx context.Context) error {
	k.ctx = ctx
	cfg := k.cfg
	k.warnMountNamespace()
	for _, d := range []string{cfg.stateDir(), cfg.podsDir(), cfg.logDir(), cfg.CNIConfDir, cfg.nodePath("/var/log/containers")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("kubelet: %w", err)
		}
	}
	if err := ensureSharedMount(cfg.netnsDir()); err != nil {
		return fmt.Errorf("kubelet: %w", err)
	}
	if err := writeJSON(filepath.Join(cfg.stateDir(), cgroupBasesFile), k.cgroups.bases, 0o644); err != nil {
		return fmt.Errorf("kubelet: %w", err)
	}
	loaded, err := cfg.loadRecords()
	if err != nil {
		return fmt.Errorf("kubelet: reading pod state: %w", err)
	}
	k.loaded = loaded

	// Events: a broadcaster whose goroutines end with Shutdown.
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: k.client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	k.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: cfg.NodeName})

	// The API's listener is bound first: a port in use fails the start.
	var srv *kubeletapi.Server
	if cfg.TLSCertFile != "" {
		if srv, err = k.newAPIServer(); err != nil {
			return err
		}
	}
	served := false
	defer func() {
		if srv != nil && !served {
			srv.Close()
		}
	}()
	if err := k.registerNode(ctx); err != nil {
		return err
	}

	factory := informers.NewSharedInformerFactoryWithOptions(k.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName).String()
		}))
	podInformer := factory.Core().V1().Pods().Informer()
	if _, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { k.podChanged(obj) },
		UpdateFunc: func(_, obj any) { k.podChanged(obj) },
		DeleteFunc: func(obj any) { k.podDeleted(obj) },
	}); err != nil {
		return fmt.Errorf("kubelet: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.HasSynced) {
		return ctx.Err()
	}
	// Records of pods the API no longer has: clean them up.
	k.mu.Lock()
	for uid, rec := range k.loaded {
		w := newPodWorker(k, uid, rec)
		w.gone = true
		k.workers[uid] = w
		delete(k.loaded, uid)
		k.startWorker(w, nil)
	}
	k.mu.Unlock()
	k.log.Info("kubelet running", "node_ip", cfg.NodeIP, "pod_cidr", cfg.PodCIDR, "node_root", cfg.NodeRoot)

	var bg sync.WaitGroup
	bg.Go(func() { k.heartbeat(ctx) })
	if srv != nil {
		served = true
		bg.Go(func() {
			if err := srv.Serve(ctx); err != nil && ctx.Err() == nil {
				k.log.Error("kubelet API stopped", "err", err)
			}
		})
	}
	<-ctx.Done()
	bg.Wait()
	k.wg.Wait()
	k.log.Info("kubelet stopped")
	return nil
}

// newAPIServer builds the kubelet API server (integration/lab/kubeletapi)
// on this kubelet's Runtime.
func (k *Kubelet) newAPIServer() (*kubeletapi.Server, error) {
	cert, err := os.ReadFile(k.cfg.TLSCertFile)
	if err != nil {
		return nil, fmt.Errorf("kubelet API: %w", err)
	}
	key, err := os.ReadFile(k.cfg.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("kubelet API: %w", err)
	}
	caPEM, err := os.ReadFile(k.cfg.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("kubelet API: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("kubelet API: no certificate in %s", k.cfg.ClientCAFile)
	}
	srv, err := kubeletapi.NewServer(kubeletapi.Config{
		Runtime:   &runtimeAPI{k: k},
		Addr:      k.cfg.APIAddress,
		CertPEM:   cert,
		KeyPEM:    key,
		ClientCAs: pool,
		Logger:    k.log.With("component", "kubelet-api"),
	})
	if err != nil {
		return nil, fmt.Errorf("kubelet API: %w", err)
	}
	return srv, nil
}

// warnMountNamespace warns when the kubelet does not share the mount
// namespace of PID 1: pods' network namespaces would then be mounted
// where the rest of the lab does not see them.
func (k *Kubelet) warnMountNamespace() {
	self, err1 := os.Readlink("/proc/self/ns/mnt")
	init, err2 := os.Readlink("/proc/1/ns/mnt")
	if err1 == nil && err2 == nil && self != init {
		k.log.Warn("the kubelet runs in a private mount namespace (started with `ip netns exec`?): pod network namespaces will not be visible outside it")
	}
}

func (k *Kubelet) podChanged(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	uid := string(pod.UID)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ctx.Err() != nil {
		return
	}
	w := k.workers[uid]
	if w == nil {
		rec := k.loaded[uid]
		delete(k.loaded, uid)
		w = newPodWorker(k, uid, rec)
		k.workers[uid] = w
		k.byName[pod.Namespace+"/"+pod.Name] = uid
		w.pod = pod
		k.startWorker(w, pod)
		return
	}
	k.byName[pod.Namespace+"/"+pod.Name] = uid
	w.update(pod)
}

func (k *Kubelet) podDeleted(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	k.mu.Lock()
	w := k.workers[string(pod.UID)]
	k.mu.Unlock()
	if w != nil {
		w.deleted()
	}
}

// startWorker runs w until its pod is done with or the kubelet stops.
// Called with k.mu held.
func (k *Kubelet) startWorker(w *podWorker, pod *corev1.Pod) {
	ctx := k.ctx
	k.wg.Go(func() {
		if w.rec != nil {
			w.adoptRecord(ctx, pod)
		}
		w.run(ctx)
		k.mu.Lock()
		if k.workers[w.uid] == w {
			delete(k.workers, w.uid)
		}
		for name, uid := range k.byName {
			if uid == w.uid {
				delete(k.byName, name)
			}
		}
		k.mu.Unlock()
	})
}

// worker returns the worker of a pod by namespace and name.
func (k *Kubelet) worker(namespace, name string) *podWorker {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.workers[k.byName[namespace+"/"+name]]
}

func (k *Kubelet) event(pod *corev1.Pod, typ, reason, format string, args ...any) {
	if pod == nil || pod.UID == "" || k.recorder == nil {
		return
	}
	k.recorder.Eventf(pod, typ, reason, format, args...)
}

func (k *Kubelet) observeStatus(pod *corev1.Pod, st corev1.PodStatus) {
	if k.onStatus != nil {
		k.onStatus(pod, st)
	}
}

// memTotal returns the machine's memory in bytes.
func memTotal() int64 {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			var kb int64
			if _, err := fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb); err == nil {
				return kb * 1024
			}
		}
	}
	return 0
}
