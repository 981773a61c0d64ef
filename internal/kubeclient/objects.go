package kubeclient

import "time"

// The objects below hold only the fields Cairn's small clients read; the
// JSON decoder skips everything else (managedFields, containers, ...), so
// a node's pods cost a few hundred bytes each rather than kilobytes. Add a
// field here when a reader needs it.

// ObjectMeta is the part of metav1.ObjectMeta Cairn reads.
type ObjectMeta struct {
	Name              string            `json:"name"`
	Namespace         string            `json:"namespace,omitempty"`
	UID               string            `json:"uid,omitempty"`
	ResourceVersion   string            `json:"resourceVersion,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
	DeletionTimestamp *time.Time        `json:"deletionTimestamp,omitempty"`
}

// Meta gives the metadata of every object that embeds ObjectMeta; it is
// what package kubewatch keys and versions objects by.
func (m *ObjectMeta) Meta() *ObjectMeta { return m }

// Key is namespace/name, or name for cluster-scoped objects: the key
// client-go's caches use too.
func (m *ObjectMeta) Key() string {
	if m.Namespace == "" {
		return m.Name
	}
	return m.Namespace + "/" + m.Name
}

// Object is implemented by the objects of this package (through their
// embedded ObjectMeta).
type Object interface{ Meta() *ObjectMeta }

// Pod phases that mean the pod will not run again.
const (
	PodSucceeded = "Succeeded"
	PodFailed    = "Failed"
)

// Pod is the part of a core/v1 Pod that ztunnel reads.
type Pod struct {
	ObjectMeta `json:"metadata"`
	Spec       struct {
		NodeName           string `json:"nodeName,omitempty"`
		ServiceAccountName string `json:"serviceAccountName,omitempty"`
		HostNetwork        bool   `json:"hostNetwork,omitempty"`
	} `json:"spec"`
	Status struct {
		Phase  string `json:"phase,omitempty"`
		PodIPs []struct {
			IP string `json:"ip"`
		} `json:"podIPs,omitempty"`
	} `json:"status"`
}

// Namespace is the part of a core/v1 Namespace that ztunnel reads: its
// labels.
type Namespace struct {
	ObjectMeta `json:"metadata"`
}

// Node is the part of a core/v1 Node that ztunnel reads: its annotations,
// its addresses and the port its kubelet listens on.
type Node struct {
	ObjectMeta `json:"metadata"`
	Status     struct {
		Addresses []struct {
			Type    string `json:"type"`
			Address string `json:"address"`
		} `json:"addresses,omitempty"`
		DaemonEndpoints struct {
			KubeletEndpoint struct {
				Port int32 `json:"Port"`
			} `json:"kubeletEndpoint"`
		} `json:"daemonEndpoints"`
	} `json:"status"`
}

// DaemonSet is the part of an apps/v1 DaemonSet that ztunnel reads:
// whether it exists and is being deleted.
type DaemonSet struct {
	ObjectMeta `json:"metadata"`
}

// ObjectReference names the object an Event is about.
type ObjectReference struct {
	Kind       string `json:"kind"`
	APIVersion string `json:"apiVersion,omitempty"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
	UID        string `json:"uid,omitempty"`
}

// EventSource is the component (and host) that reported an Event.
type EventSource struct {
	Component string `json:"component,omitempty"`
	Host      string `json:"host,omitempty"`
}

// Event types.
const (
	EventNormal  = "Normal"
	EventWarning = "Warning"
)

// Event is the part of a core/v1 Event that ztunnel writes: what
// `kubectl describe` shows under the object it names.
type Event struct {
	ObjectMeta          `json:"metadata"`
	InvolvedObject      ObjectReference `json:"involvedObject"`
	Reason              string          `json:"reason"`
	Message             string          `json:"message"`
	Type                string          `json:"type"`
	Source              EventSource     `json:"source"`
	FirstTimestamp      time.Time       `json:"firstTimestamp"`
	LastTimestamp       time.Time       `json:"lastTimestamp"`
	Count               int32           `json:"count"`
	ReportingController string          `json:"reportingComponent,omitempty"`
	ReportingInstance   string          `json:"reportingInstance,omitempty"`
}
