// Package model turns Kubernetes objects into the L4 mesh model that
// istiod-lite serves to ztunnel: the Address (Workload or Service) and
// Authorization protobufs of apis/workload/v1.
//
// Every builder here is pure: it reads only its arguments, calls no API
// server and keeps no state, so the same inputs always give an equal
// result. Callers compare a new value with the previous one using Equal and
// push nothing when they are equal.
//
// Workloads come from pods, as in Istio ambient: a pod's workload lists the
// Services whose selector matches it, so a Service's endpoints are the
// workloads whose services map has the Service's key. EndpointSlices are
// needed only for Services without a selector, whose endpoints are not pods
// (BuildEndpointSliceWorkloads); endpoints that point at a pod are skipped
// there because the pod gives the workload.
//
// Resource names (xDS names):
//
//	Workload       "<cluster>/<group>/<kind>/<namespace>/<name>", e.g. "Kubernetes//Pod/shop/web-1"
//	Service        "<namespace>/<hostname>", e.g. "shop/web.shop.svc.cluster.local"
//	Authorization  "<namespace>/<name>"; a converted PeerAuthentication is
//	               "<namespace>/converted_peer_authentication_<name>"
package model

import (
	"fmt"

	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
	"github.com/cairnmesh/cairn/internal/ambient"
)

// Type URLs of the resources of workload discovery.
const (
	AddressTypeURL       = "type.googleapis.com/cairn.workload.v1.Address"
	AuthorizationTypeURL = "type.googleapis.com/cairn.workload.v1.Authorization"
)

// Labels and values Cairn shares with Istio.
const (
	// DataplaneModeLabel enrols a namespace or pod in the mesh ("ambient")
	// or, on a pod, opts it out ("none").
	DataplaneModeLabel = ambient.DataplaneModeLabel
	// DataplaneModeAmbient is the value that enrols.
	DataplaneModeAmbient = ambient.DataplaneModeAmbient
	// DataplaneModeNone on a pod keeps it out of the mesh.
	DataplaneModeNone = ambient.DataplaneModeNone
)

// DefaultRootNamespace holds mesh-wide policies unless Config says
// otherwise; it is Istio's, so that users' mesh-wide policies apply as they
// are.
const DefaultRootNamespace = "istio-system"

// Config holds the mesh-wide settings the builders need. The zero value is
// ready to use: every empty field takes the default named in its comment.
type Config struct {
	// ClusterID names this cluster in workload uids. Default "Kubernetes".
	ClusterID string
	// DomainSuffix is the cluster's DNS domain. Default "cluster.local".
	DomainSuffix string
	// TrustDomain is the SPIFFE trust domain. Default "cluster.local".
	TrustDomain string
	// RootNamespace holds mesh-wide policies. Default "istio-system".
	RootNamespace string
	// Network names the network of pod and service addresses. Default "".
	Network string
}

func (c Config) withDefaults() Config {
	if c.ClusterID == "" {
		c.ClusterID = "Kubernetes"
	}
	if c.DomainSuffix == "" {
		c.DomainSuffix = "cluster.local"
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "cluster.local"
	}
	if c.RootNamespace == "" {
		c.RootNamespace = DefaultRootNamespace
	}
	return c
}

// Skipped says what a builder left out and why, for a log line or an event.
type Skipped struct {
	// Object names what was left out, e.g. "Service shop/web port 8080".
	Object string
	// Reason is a sentence a user can act on.
	Reason string
}

func (s Skipped) String() string { return s.Object + ": " + s.Reason }

// Equal reports whether two model values are equal, so that callers push
// nothing when a recomputed value did not change.
func Equal(a, b proto.Message) bool { return proto.Equal(a, b) }

// AddressName is the xDS resource name of an Address, or "" for an empty
// one.
func AddressName(a *workloadv1.Address) string {
	switch t := a.GetType().(type) {
	case *workloadv1.Address_Workload:
		return t.Workload.GetUid()
	case *workloadv1.Address_Service:
		return ServiceName(t.Service.GetNamespace(), t.Service.GetHostname())
	}
	return ""
}

// AuthorizationName is the xDS resource name of an Authorization.
func AuthorizationName(a *workloadv1.Authorization) string {
	return a.GetNamespace() + "/" + a.GetName()
}

// ServiceName is the resource name of a Service, also the key of a
// workload's services map.
func ServiceName(namespace, hostname string) string { return namespace + "/" + hostname }

// Hostname is the DNS name of a Service.
func (c Config) Hostname(namespace, name string) string {
	c = c.withDefaults()
	return fmt.Sprintf("%s.%s.svc.%s", name, namespace, c.DomainSuffix)
}

// PodUID is the uid (and resource name) of the workload of a pod.
func (c Config) PodUID(namespace, name string) string {
	return c.withDefaults().ClusterID + "//Pod/" + namespace + "/" + name
}
