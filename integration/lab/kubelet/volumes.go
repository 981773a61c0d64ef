package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Volumes live in <NodeRoot>/var/lib/kubelet/pods/<uid>/volumes/<kind>/<name>,
// as on a real node; hostPath volumes are the node's directories, i.e.
// NodeRoot + path, except /proc, /sys and /dev (and what is below them),
// which are the real ones.

// volumeKind returns the directory name of a volume's kind, or "" for a
// kind the lab kubelet cannot provide.
func volumeKind(v *corev1.Volume) string {
	switch {
	case v.EmptyDir != nil:
		return "kubernetes.io~empty-dir"
	case v.HostPath != nil:
		return "hostpath"
	case v.ConfigMap != nil:
		return "kubernetes.io~configmap"
	case v.Secret != nil:
		return "kubernetes.io~secret"
	case v.DownwardAPI != nil:
		return "kubernetes.io~downward-api"
	case v.Projected != nil:
		for _, s := range v.Projected.Sources {
			if s.ClusterTrustBundle != nil || s.PodCertificate != nil {
				return ""
			}
		}
		return "kubernetes.io~projected"
	}
	return ""
}

// volumeTypeName names a volume's source type for messages: the JSON
// name of its one set field, e.g. "awsElasticBlockStore".
func volumeTypeName(v *corev1.Volume) string {
	data, err := json.Marshal(v.VolumeSource)
	if err != nil {
		return "unknown"
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(data, &m) != nil || len(m) == 0 {
		return "unknown"
	}
	return sortedKeys(m)[0]
}

// realHostPaths stay the host's own in hostPath volumes.
var realHostPaths = []string{"/proc", "/sys", "/dev"}

// hostPathOnHost maps a hostPath volume's path on the node to the host.
func (c Config) hostPathOnHost(p string) string {
	p = path.Clean("/" + p)
	for _, r := range realHostPaths {
		if p == r || strings.HasPrefix(p, r+"/") {
			return p
		}
	}
	return c.nodePath(p)
}

// podVolumes is the kubelet's record of one pod's volumes.
type podVolumes struct {
	dirs        map[string]hostVolume
	written     map[string][]string // volume -> files written last time (relative paths)
	tokens      map[string]tokenEntry
	nextRefresh time.Time
}

type tokenEntry struct {
	token     string
	refreshAt time.Time
}

// volumeRefresh is how often configMap, secret, downward API and
// projected volumes are rewritten from the API (a kubelet's sync period
// is about a minute).
const volumeRefresh = 30 * time.Second

type fileData struct {
	data []byte
	mode os.FileMode
}

// setupVolumes makes (or refreshes) every volume of pod and returns the
// earliest time they need a refresh.
func (k *Kubelet) setupVolumes(ctx context.Context, pod *corev1.Pod, objs objectSource, pv *podVolumes, podIPs []string) error {
	if pv.dirs == nil {
		pv.dirs = map[string]hostVolume{}
		pv.written = map[string][]string{}
		pv.tokens = map[string]tokenEntry{}
	}
	now := time.Now()
	next := now.Add(volumeRefresh)
	base := filepath.Join(k.cfg.podsDir(), string(pod.UID), "volumes")
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		kind := volumeKind(v)
		if kind == "" {
			return fmt.Errorf("volume %q: %w", v.Name, errUnsupportedVolume)
		}
		switch {
		case v.HostPath != nil:
			p, err := k.prepareHostPath(v.HostPath)
			if err != nil {
				return fmt.Errorf("volume %q: %w", v.Name, err)
			}
			pv.dirs[v.Name] = hostVolume{Path: p, Host: true}
			continue
		case v.EmptyDir != nil:
			dir := filepath.Join(base, kind, v.Name)
			if err := os.MkdirAll(dir, 0o777); err != nil {
				return fmt.Errorf("volume %q: %w", v.Name, err)
			}
			_ = os.Chmod(dir, 0o777)
			pv.dirs[v.Name] = hostVolume{Path: dir}
			continue
		}
		dir := filepath.Join(base, kind, v.Name)
		if _, ok := pv.dirs[v.Name]; ok && now.Before(pv.nextRefresh) {
			continue
		}
		files, err := k.volumeFiles(ctx, pod, v, objs, pv, podIPs, &next)
		if err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
		written, err := syncFiles(dir, files, pv.written[v.Name])
		if err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
		pv.written[v.Name] = written
		pv.dirs[v.Name] = hostVolume{Path: dir}
	}
	if !now.Before(pv.nextRefresh) {
		pv.nextRefresh = next
	}
	return nil
}

var errUnsupportedVolume = errors.New("this volume type is not supported by the lab kubelet")

func (k *Kubelet) prepareHostPath(hp *corev1.HostPathVolumeSource) (string, error) {
	p := k.cfg.hostPathOnHost(hp.Path)
	typ := corev1.HostPathUnset
	if hp.Type != nil {
		typ = *hp.Type
	}
	fi, statErr := os.Stat(p)
	switch typ {
	case corev1.HostPathUnset, corev1.HostPathDirectoryOrCreate:
		if statErr != nil {
			if err := os.MkdirAll(p, 0o755); err != nil {
				return "", fmt.Errorf("hostPath %s: %w", hp.Path, err)
			}
		}
	case corev1.HostPathFileOrCreate:
		if statErr != nil {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return "", fmt.Errorf("hostPath %s: %w", hp.Path, err)
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return "", fmt.Errorf("hostPath %s: %w", hp.Path, err)
			}
			f.Close()
		}
	case corev1.HostPathDirectory:
		if statErr != nil || !fi.IsDir() {
			return "", fmt.Errorf("hostPath type check failed: %s is not a directory", hp.Path)
		}
	case corev1.HostPathFile:
		if statErr != nil || !fi.Mode().IsRegular() {
			return "", fmt.Errorf("hostPath type check failed: %s is not a file", hp.Path)
		}
	case corev1.HostPathSocket:
		if statErr != nil || fi.Mode()&os.ModeSocket == 0 {
			return "", fmt.Errorf("hostPath type check failed: %s is not a socket file", hp.Path)
		}
	case corev1.HostPathCharDev:
		if statErr != nil || fi.Mode()&os.ModeCharDevice == 0 {
			return "", fmt.Errorf("hostPath type check failed: %s is not a character device", hp.Path)
		}
	case corev1.HostPathBlockDev:
		if statErr != nil || fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
			return "", fmt.Errorf("hostPath type check failed: %s is not a block device", hp.Path)
		}
	}
	return p, nil
}

// volumeFiles computes the files of a configMap, secret, downwardAPI or
// projected volume. next is lowered to the time a token needs renewing.
func (k *Kubelet) volumeFiles(ctx context.Context, pod *corev1.Pod, v *corev1.Volume, objs objectSource, pv *podVolumes, podIPs []string, next *time.Time) (map[string]fileData, error) {
	files := map[string]fileData{}
	mode := func(m *int32, def *int32) os.FileMode {
		switch {
		case m != nil:
			return os.FileMode(*m)
		case def != nil:
			return os.FileMode(*def)
		}
		return 0o644
	}
	switch {
	case v.ConfigMap != nil:
		return files, addConfigMap(files, objs, &v.ConfigMap.LocalObjectReference, v.ConfigMap.Items, v.ConfigMap.Optional, mode(nil, v.ConfigMap.DefaultMode))
	case v.Secret != nil:
		return files, addSecret(files, objs, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, mode(nil, v.Secret.DefaultMode))
	case v.DownwardAPI != nil:
		return files, k.addDownward(files, pod, v.DownwardAPI.Items, mode(nil, v.DownwardAPI.DefaultMode), podIPs)
	case v.Projected != nil:
		def := mode(nil, v.Projected.DefaultMode)
		for _, src := range v.Projected.Sources {
			var err error
			switch {
			case src.ConfigMap != nil:
				err = addConfigMap(files, objs, &src.ConfigMap.LocalObjectReference, src.ConfigMap.Items, src.ConfigMap.Optional, def)
			case src.Secret != nil:
				err = addSecret(files, objs, src.Secret.Name, src.Secret.Items, src.Secret.Optional, def)
			case src.DownwardAPI != nil:
				err = k.addDownward(files, pod, src.DownwardAPI.Items, def, podIPs)
			case src.ServiceAccountToken != nil:
				err = k.addToken(ctx, files, pod, v.Name, src.ServiceAccountToken, def, pv, next)
			}
			if err != nil {
				return nil, err
			}
		}
		return files, nil
	}
	return nil, errUnsupportedVolume
}

func addConfigMap(files map[string]fileData, objs objectSource, ref *corev1.LocalObjectReference, items []corev1.KeyToPath, optional *bool, def os.FileMode) error {
	cm, err := objs.configMap(ref.Name)
	if err != nil {
		if errors.Is(err, errObjectNotFound) && ptrTrue(optional) {
			return nil
		}
		return fmt.Errorf("configmap %q: %w", ref.Name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return addItems(files, "configmap "+ref.Name, data, items, optional, def)
}

func addSecret(files map[string]fileData, objs objectSource, name string, items []corev1.KeyToPath, optional *bool, def os.FileMode) error {
	s, err := objs.secret(name)
	if err != nil {
		if errors.Is(err, errObjectNotFound) && ptrTrue(optional) {
			return nil
		}
		return fmt.Errorf("secret %q: %w", name, err)
	}
	return addItems(files, "secret "+name, s.Data, items, optional, def)
}

func addItems(files map[string]fileData, what string, data map[string][]byte, items []corev1.KeyToPath, optional *bool, def os.FileMode) error {
	if len(items) == 0 {
		for k, v := range data {
			files[k] = fileData{v, def}
		}
		return nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if ptrTrue(optional) {
				continue
			}
			return fmt.Errorf("%s has no key %q", what, it.Key)
		}
		m := def
		if it.Mode != nil {
			m = os.FileMode(*it.Mode)
		}
		files[it.Path] = fileData{v, m}
	}
	return nil
}

func (k *Kubelet) addDownward(files map[string]fileData, pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, def os.FileMode, podIPs []string) error {
	ec := k.envContext(podIPs)
	for _, it := range items {
		var v string
		var err error
		switch {
		case it.FieldRef != nil:
			v, err = podField(pod, it.FieldRef.FieldPath, ec)
		case it.ResourceFieldRef != nil:
			c := findContainer(pod, it.ResourceFieldRef.ContainerName)
			if c == nil {
				return fmt.Errorf("downwardAPI %s: no container %q", it.Path, it.ResourceFieldRef.ContainerName)
			}
			ref := *it.ResourceFieldRef
			ref.ContainerName = ""
			v, err = resourceField(c, &ref, ec)
		}
		if err != nil {
			return fmt.Errorf("downwardAPI %s: %w", it.Path, err)
		}
		m := def
		if it.Mode != nil {
			m = os.FileMode(*it.Mode)
		}
		files[it.Path] = fileData{[]byte(v), m}
	}
	return nil
}

// addToken adds a ServiceAccount token bound to the pod, requesting a
// new one when the last is 80% through its life.
func (k *Kubelet) addToken(ctx context.Context, files map[string]fileData, pod *corev1.Pod, volume string,
	src *corev1.ServiceAccountTokenProjection, def os.FileMode, pv *podVolumes, next *time.Time) error {
	key := volume + "/" + src.Path
	now := time.Now()
	entry, ok := pv.tokens[key]
	if !ok || !now.Before(entry.refreshAt) {
		exp := int64(3600)
		if src.ExpirationSeconds != nil {
			exp = *src.ExpirationSeconds
		}
		req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
			ExpirationSeconds: &exp,
			BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		}}
		if src.Audience != "" {
			req.Spec.Audiences = []string{src.Audience}
		}
		sa := pod.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		tr, err := k.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("requesting a token for service account %s/%s: %w", pod.Namespace, sa, err)
		}
		life := tr.Status.ExpirationTimestamp.Sub(now)
		entry = tokenEntry{token: tr.Status.Token, refreshAt: now.Add(life * 8 / 10)}
		pv.tokens[key] = entry
	}
	if entry.refreshAt.Before(*next) {
		*next = entry.refreshAt
	}
	files[src.Path] = fileData{[]byte(entry.token), def}
	return nil
}

// syncFiles writes files into dir (each atomically, by rename) and
// removes the files it wrote last time (prev) that are gone. Nothing
// else in dir is touched: a mount point a container made there must stay.
func syncFiles(dir string, files map[string]fileData, prev []string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var written []string
	for rel, f := range files {
		clean := path.Clean(rel)
		if path.IsAbs(rel) || clean == ".." || strings.HasPrefix(clean, "../") {
			return nil, fmt.Errorf("file path %q leaves the volume", rel)
		}
		p := filepath.Join(dir, clean)
		if old, err := os.ReadFile(p); err == nil && string(old) == string(f.data) {
			if fi, err := os.Stat(p); err == nil && fi.Mode().Perm() == f.mode.Perm() {
				written = append(written, clean)
				continue
			}
		}
		if err := writeFileAtomic(p, f.data, f.mode); err != nil {
			return nil, err
		}
		written = append(written, clean)
	}
	for _, old := range prev {
		if _, ok := files[old]; !ok {
			_ = os.Remove(filepath.Join(dir, old))
		}
	}
	return written, nil
}

// apiObjects fetches ConfigMaps and Secrets of one namespace, each at
// most once per sync.
type apiObjects struct {
	ctx        context.Context
	client     kubernetes.Interface
	namespace  string
	configMaps map[string]*corev1.ConfigMap
	secrets    map[string]*corev1.Secret
}

func newAPIObjects(ctx context.Context, client kubernetes.Interface, namespace string) *apiObjects {
	return &apiObjects{ctx: ctx, client: client, namespace: namespace,
		configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}}
}

func (a *apiObjects) configMap(name string) (*corev1.ConfigMap, error) {
	if cm, ok := a.configMaps[name]; ok {
		return cm, nil
	}
	cm, err := a.client.CoreV1().ConfigMaps(a.namespace).Get(a.ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("configmap %q %w", name, errObjectNotFound)
	}
	if err != nil {
		return nil, err
	}
	a.configMaps[name] = cm
	return cm, nil
}

func (a *apiObjects) secret(name string) (*corev1.Secret, error) {
	if s, ok := a.secrets[name]; ok {
		return s, nil
	}
	s, err := a.client.CoreV1().Secrets(a.namespace).Get(a.ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("secret %q %w", name, errObjectNotFound)
	}
	if err != nil {
		return nil, err
	}
	a.secrets[name] = s
	return s, nil
}

func findContainer(pod *corev1.Pod, name string) *corev1.Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == name {
			return &pod.Spec.Containers[i]
		}
	}
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == name {
			return &pod.Spec.InitContainers[i]
		}
	}
	return nil
}
