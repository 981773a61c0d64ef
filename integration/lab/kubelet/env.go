package kubelet

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
)

// objectSource fetches the ConfigMaps and Secrets of the pod's namespace
// that env and volumes refer to. A missing object is an error wrapping
// errObjectNotFound.
type objectSource interface {
	configMap(name string) (*corev1.ConfigMap, error)
	secret(name string) (*corev1.Secret, error)
}

var errObjectNotFound = errors.New("not found")

// envList is an ordered set of environment variables: a later Set of the
// same name replaces the value in place.
type envList struct {
	names  []string
	values map[string]string
}

func newEnvList() *envList { return &envList{values: map[string]string{}} }

func (l *envList) set(name, value string) {
	if _, ok := l.values[name]; !ok {
		l.names = append(l.names, name)
	}
	l.values[name] = value
}

func (l *envList) get(name string) (string, bool) {
	v, ok := l.values[name]
	return v, ok
}

func (l *envList) environ() []string {
	out := make([]string, 0, len(l.names))
	for _, n := range l.names {
		out = append(out, n+"="+l.values[n])
	}
	return out
}

// envContext is what downward-API env and expansion need besides the pod.
type envContext struct {
	hostIP   string
	podIPs   []string
	nodeCPU  resource.Quantity // allocatable: the default for limits
	nodeMem  resource.Quantity
	services []string // KEY=value service variables (KUBERNETES_SERVICE_HOST, ...)
	base     []string // runtime defaults (PATH, HOSTNAME, HOME); env overrides them
}

// containerEnv computes a container's environment as a kubelet does:
// runtime defaults, then service variables, then envFrom, then env in
// order, each env value expanded with $(VAR) against what came before.
func containerEnv(pod *corev1.Pod, c *corev1.Container, ec envContext, objs objectSource) ([]string, error) {
	out := newEnvList()
	for _, kv := range ec.base {
		k, v, _ := strings.Cut(kv, "=")
		out.set(k, v)
	}
	// Service variables are visible to expansion but come after the
	// container's own, which win on a clash.
	services := newEnvList()
	for _, kv := range ec.services {
		k, v, _ := strings.Cut(kv, "=")
		services.set(k, v)
	}
	own := newEnvList()
	lookup := func(name string) (string, bool) {
		if v, ok := own.get(name); ok {
			return v, true
		}
		return services.get(name)
	}

	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			ref := from.ConfigMapRef
			cm, err := objs.configMap(ref.Name)
			if err != nil {
				if errors.Is(err, errObjectNotFound) && ptrTrue(ref.Optional) {
					continue
				}
				return nil, fmt.Errorf("envFrom configMap %q: %w", ref.Name, err)
			}
			for _, k := range sortedKeys(cm.Data) {
				if name := from.Prefix + k; validEnvName(name) {
					own.set(name, cm.Data[k])
				}
			}
		case from.SecretRef != nil:
			ref := from.SecretRef
			s, err := objs.secret(ref.Name)
			if err != nil {
				if errors.Is(err, errObjectNotFound) && ptrTrue(ref.Optional) {
					continue
				}
				return nil, fmt.Errorf("envFrom secret %q: %w", ref.Name, err)
			}
			for _, k := range sortedKeys(s.Data) {
				if name := from.Prefix + k; validEnvName(name) {
					own.set(name, string(s.Data[k]))
				}
			}
		}
	}

	for _, e := range c.Env {
		if e.ValueFrom == nil {
			own.set(e.Name, expand(e.Value, lookup))
			continue
		}
		v, skip, err := envValueFrom(pod, c, e.ValueFrom, ec, objs)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if !skip {
			own.set(e.Name, v)
		}
	}

	for _, n := range services.names {
		if _, ok := own.get(n); !ok {
			out.set(n, services.values[n])
		}
	}
	for _, n := range own.names {
		out.set(n, own.values[n])
	}
	return out.environ(), nil
}

// envValueFrom resolves one valueFrom. skip is true for a missing
// optional key.
func envValueFrom(pod *corev1.Pod, c *corev1.Container, from *corev1.EnvVarSource, ec envContext, objs objectSource) (value string, skip bool, err error) {
	switch {
	case from.FieldRef != nil:
		v, err := podField(pod, from.FieldRef.FieldPath, ec)
		return v, false, err
	case from.ResourceFieldRef != nil:
		v, err := resourceField(c, from.ResourceFieldRef, ec)
		return v, false, err
	case from.ConfigMapKeyRef != nil:
		ref := from.ConfigMapKeyRef
		cm, err := objs.configMap(ref.Name)
		if err != nil {
			if errors.Is(err, errObjectNotFound) && ptrTrue(ref.Optional) {
				return "", true, nil
			}
			return "", false, fmt.Errorf("configMap %q: %w", ref.Name, err)
		}
		if v, ok := cm.Data[ref.Key]; ok {
			return v, false, nil
		}
		if v, ok := cm.BinaryData[ref.Key]; ok {
			return string(v), false, nil
		}
		if ptrTrue(ref.Optional) {
			return "", true, nil
		}
		return "", false, fmt.Errorf("configMap %q has no key %q", ref.Name, ref.Key)
	case from.SecretKeyRef != nil:
		ref := from.SecretKeyRef
		s, err := objs.secret(ref.Name)
		if err != nil {
			if errors.Is(err, errObjectNotFound) && ptrTrue(ref.Optional) {
				return "", true, nil
			}
			return "", false, fmt.Errorf("secret %q: %w", ref.Name, err)
		}
		if v, ok := s.Data[ref.Key]; ok {
			return string(v), false, nil
		}
		if ptrTrue(ref.Optional) {
			return "", true, nil
		}
		return "", false, fmt.Errorf("secret %q has no key %q", ref.Name, ref.Key)
	}
	return "", false, errors.New("valueFrom names no source the lab kubelet supports")
}

// podField resolves a downward-API field path.
func podField(pod *corev1.Pod, path string, ec envContext) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP":
		return ec.hostIP, nil
	case "status.hostIPs":
		return ec.hostIP, nil
	case "status.podIP":
		if len(ec.podIPs) > 0 {
			return ec.podIPs[0], nil
		}
		return "", nil
	case "status.podIPs":
		return strings.Join(ec.podIPs, ","), nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	}
	for prefix, m := range map[string]map[string]string{
		"metadata.labels":      pod.Labels,
		"metadata.annotations": pod.Annotations,
	} {
		if rest, ok := strings.CutPrefix(path, prefix+"['"); ok {
			if key, ok := strings.CutSuffix(rest, "']"); ok {
				return m[key], nil
			}
		}
	}
	return "", fmt.Errorf("unsupported fieldRef %q", path)
}

// formatMap renders labels or annotations as the downward API does:
// key="value" lines, sorted by key.
func formatMap(m map[string]string) string {
	var b strings.Builder
	for i, k := range sortedKeys(m) {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s=%s", k, strconv.Quote(m[k]))
	}
	return b.String()
}

// resourceField resolves a resourceFieldRef: the container's request or
// limit (the node's allocatable when no limit is set), divided by the
// divisor and rounded up.
func resourceField(c *corev1.Container, ref *corev1.ResourceFieldSelector, ec envContext) (string, error) {
	if ref.ContainerName != "" && ref.ContainerName != c.Name {
		return "", fmt.Errorf("resourceFieldRef of container %q is not supported", ref.ContainerName)
	}
	kind, res, ok := strings.Cut(ref.Resource, ".")
	if !ok {
		return "", fmt.Errorf("unsupported resourceFieldRef %q", ref.Resource)
	}
	name := corev1.ResourceName(res)
	var q resource.Quantity
	var found bool
	switch kind {
	case "limits":
		q, found = c.Resources.Limits[name]
	case "requests":
		q, found = c.Resources.Requests[name]
	default:
		return "", fmt.Errorf("unsupported resourceFieldRef %q", ref.Resource)
	}
	if !found {
		switch {
		case kind == "limits" && name == corev1.ResourceCPU:
			q = ec.nodeCPU
		case kind == "limits" && name == corev1.ResourceMemory:
			q = ec.nodeMem
		case kind == "requests" && name == corev1.ResourceCPU:
			q = resource.MustParse("0")
		default:
			q = resource.MustParse("0")
		}
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	if name == corev1.ResourceCPU {
		v := math.Ceil(float64(q.MilliValue()) / float64(divisor.MilliValue()))
		return strconv.FormatInt(int64(v), 10), nil
	}
	v := math.Ceil(float64(q.Value()) / float64(divisor.Value()))
	return strconv.FormatInt(int64(v), 10), nil
}

// expand replaces $(NAME) in s with lookup(NAME) as Kubernetes does:
// unknown names stay as they are, and $$ is a literal $.
func expand(s string, lookup func(string) (string, bool)) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := lookup(name); ok {
				b.WriteString(v)
			} else {
				b.WriteString("$(" + name + ")")
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// expandArgs expands $(VAR) in command and args against the final
// environment.
func expandArgs(args []string, env []string) []string {
	m := make(map[string]string, len(env))
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	lookup := func(n string) (string, bool) { v, ok := m[n]; return v, ok }
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = expand(a, lookup)
	}
	return out
}

// serviceEnv returns the Docker-links style variables of services:
// <NAME>_SERVICE_HOST, <NAME>_SERVICE_PORT, <NAME>_SERVICE_PORT_<PORT>
// and <NAME>_PORT*, as a kubelet sets them. Services without a ClusterIP
// are skipped.
func serviceEnv(services []*corev1.Service) []string {
	sorted := slices.Clone(services)
	slices.SortFunc(sorted, func(a, b *corev1.Service) int { return strings.Compare(a.Name, b.Name) })
	var out []string
	for _, s := range sorted {
		ip := s.Spec.ClusterIP
		if ip == "" || ip == corev1.ClusterIPNone || len(s.Spec.Ports) == 0 {
			continue
		}
		name := strings.ToUpper(strings.ReplaceAll(s.Name, "-", "_"))
		first := s.Spec.Ports[0]
		out = append(out,
			name+"_SERVICE_HOST="+ip,
			name+"_SERVICE_PORT="+strconv.Itoa(int(first.Port)))
		for _, p := range s.Spec.Ports {
			if p.Name != "" {
				pn := strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_"))
				out = append(out, name+"_SERVICE_PORT_"+pn+"="+strconv.Itoa(int(p.Port)))
			}
		}
		proto := strings.ToLower(string(first.Protocol))
		if proto == "" {
			proto = "tcp"
		}
		out = append(out, fmt.Sprintf("%s_PORT=%s://%s:%d", name, proto, ip, first.Port))
		for _, p := range s.Spec.Ports {
			pr := string(p.Protocol)
			if pr == "" {
				pr = "TCP"
			}
			prefix := fmt.Sprintf("%s_PORT_%d_%s", name, p.Port, strings.ToUpper(pr))
			out = append(out,
				fmt.Sprintf("%s=%s://%s:%d", prefix, strings.ToLower(pr), ip, p.Port),
				prefix+"_PROTO="+strings.ToLower(pr),
				prefix+"_PORT="+strconv.Itoa(int(p.Port)),
				prefix+"_ADDR="+ip)
		}
	}
	return out
}

func validEnvName(name string) bool { return len(validation.IsEnvVarName(name)) == 0 }

func ptrTrue(b *bool) bool { return b != nil && *b }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
