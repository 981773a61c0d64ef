package state

import (
	"cmp"
	"maps"
	"slices"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

// Copy-on-write: cloneFor copies the maps of the snapshot that a delta of
// typeURL may change (a shallow copy: the lists and messages in them are
// shared). The set* methods then never modify a shared list; they store a
// new one in the copied map. The cost of a delta is thus one copy of a few
// maps plus the lists it touches, rather than a rebuild of every index.

func (s *Snapshot) cloneFor(typeURL string) *Snapshot {
	next := *s
	next.replaced = make(chan struct{})
	switch typeURL {
	case AddressTypeURL:
		next.workloads = maps.Clone(s.workloads)
		next.services = maps.Clone(s.services)
		next.workloadsByAddress = maps.Clone(s.workloadsByAddress)
		next.servicesByAddress = maps.Clone(s.servicesByAddress)
		next.endpoints = maps.Clone(s.endpoints)
		next.byNode = maps.Clone(s.byNode)
	case AuthorizationTypeURL:
		next.authorizations = maps.Clone(s.authorizations)
		next.namespacePolicies = maps.Clone(s.namespacePolicies)
	}
	return &next
}

// remove deletes the resource named name, reporting whether it existed.
func (s *Snapshot) remove(typeURL, name string) bool {
	switch typeURL {
	case AddressTypeURL:
		if w := s.workloads[name]; w != nil {
			s.setWorkload(w, nil)
			return true
		}
		if svc := s.services[name]; svc != nil {
			s.setService(svc, nil)
			return true
		}
	case AuthorizationTypeURL:
		if p := s.authorizations[name]; p != nil {
			s.setAuthorization(name, p, nil)
			return true
		}
	}
	return false
}

func (s *Snapshot) putAddress(name string, a *workloadv1.Address) {
	if w := a.GetWorkload(); w != nil {
		if old := s.services[name]; old != nil {
			s.setService(old, nil)
		}
		s.setWorkload(s.workloads[name], w)
		return
	}
	svc := a.GetService()
	if old := s.workloads[name]; old != nil {
		s.setWorkload(old, nil)
	}
	s.setService(s.services[name], svc)
}

func (s *Snapshot) putAuthorization(name string, p *workloadv1.Authorization) {
	s.setAuthorization(name, s.authorizations[name], p)
}

func workloadKey(w *workloadv1.Workload) string           { return w.GetUid() }
func serviceKey(s *workloadv1.Service) string             { return s.GetNamespace() + "/" + s.GetHostname() }
func authorizationKey(a *workloadv1.Authorization) string { return authorizationName(a) }

// setWorkload replaces old by w in every index; either may be nil (an
// insert or a removal). Both have the same uid.
func (s *Snapshot) setWorkload(old, w *workloadv1.Workload) {
	uid := cmp.Or(w.GetUid(), old.GetUid())
	newAddrs := workloadAddresses(w)
	for _, a := range workloadAddresses(old) {
		if !slices.Contains(newAddrs, a) {
			setList(s.workloadsByAddress, a, without(s.workloadsByAddress[a], uid, workloadKey))
		}
	}
	for _, a := range newAddrs {
		setList(s.workloadsByAddress, a, replaceOrAppend(s.workloadsByAddress[a], w, workloadKey))
	}

	for key := range old.GetServices() {
		if _, still := w.GetServices()[key]; !still {
			setList(s.endpoints, key, without(s.endpoints[key], uid, workloadKey))
		}
	}
	for key := range w.GetServices() {
		setList(s.endpoints, key, insertSorted(s.endpoints[key], w, workloadKey))
	}

	if n := old.GetNode(); n != "" && (w == nil || w.GetNode() != n) {
		setList(s.byNode, n, without(s.byNode[n], uid, workloadKey))
	}
	if n := w.GetNode(); n != "" {
		setList(s.byNode, n, insertSorted(s.byNode[n], w, workloadKey))
	}

	if w == nil {
		delete(s.workloads, uid)
	} else {
		s.workloads[uid] = w
	}
}

// setService replaces old by svc; either may be nil.
func (s *Snapshot) setService(old, svc *workloadv1.Service) {
	name := serviceKey(old)
	if svc != nil {
		name = serviceKey(svc)
	}
	newAddrs := serviceAddresses(svc)
	for _, a := range serviceAddresses(old) {
		if !slices.Contains(newAddrs, a) {
			setList(s.servicesByAddress, a, without(s.servicesByAddress[a], name, serviceKey))
		}
	}
	for _, a := range newAddrs {
		setList(s.servicesByAddress, a, replaceOrAppend(s.servicesByAddress[a], svc, serviceKey))
	}
	if svc == nil {
		delete(s.services, name)
	} else {
		s.services[name] = svc
	}
}

// setAuthorization replaces old by p; either may be nil.
func (s *Snapshot) setAuthorization(name string, old, p *workloadv1.Authorization) {
	if old != nil {
		switch old.GetScope() {
		case workloadv1.Scope_GLOBAL:
			s.globalPolicies = without(s.globalPolicies, name, authorizationKey)
		case workloadv1.Scope_NAMESPACE:
			ns := old.GetNamespace()
			setList(s.namespacePolicies, ns, without(s.namespacePolicies[ns], name, authorizationKey))
		}
	}
	if p == nil {
		delete(s.authorizations, name)
		return
	}
	switch p.GetScope() {
	case workloadv1.Scope_GLOBAL:
		s.globalPolicies = insertSorted(s.globalPolicies, p, authorizationKey)
	case workloadv1.Scope_NAMESPACE:
		ns := p.GetNamespace()
		setList(s.namespacePolicies, ns, insertSorted(s.namespacePolicies[ns], p, authorizationKey))
	}
	s.authorizations[name] = p
}

// workloadAddresses returns w's addresses as index keys, once each; nil
// for a nil workload. Validation has checked their length.
func workloadAddresses(w *workloadv1.Workload) []NetworkAddress {
	var out []NetworkAddress
	for _, b := range w.GetAddresses() {
		ip, err := ipFromBytes(b)
		if err != nil {
			continue
		}
		if a := networkAddress(w.GetNetwork(), ip); !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

func serviceAddresses(s *workloadv1.Service) []NetworkAddress {
	var out []NetworkAddress
	for _, na := range s.GetAddresses() {
		ip, err := ipFromBytes(na.GetAddress())
		if err != nil {
			continue
		}
		if a := networkAddress(na.GetNetwork(), ip); !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// setList stores list under k, or deletes k when the list is empty so that
// the maps do not fill with empty entries.
func setList[K comparable, T any](m map[K][]T, k K, list []T) {
	if len(list) == 0 {
		delete(m, k)
		return
	}
	m[k] = list
}

// without returns a new list without the element whose key is key, or the
// list itself if it has none.
func without[T any](list []T, key string, keyOf func(T) string) []T {
	i := slices.IndexFunc(list, func(v T) bool { return keyOf(v) == key })
	if i < 0 {
		return list
	}
	out := make([]T, 0, len(list)-1)
	out = append(out, list[:i]...)
	return append(out, list[i+1:]...)
}

// replaceOrAppend returns a new list with v in the place of the element
// with v's key, or at the end if there is none.
func replaceOrAppend[T any](list []T, v T, keyOf func(T) string) []T {
	key := keyOf(v)
	out := make([]T, len(list), len(list)+1)
	copy(out, list)
	if i := slices.IndexFunc(out, func(e T) bool { return keyOf(e) == key }); i >= 0 {
		out[i] = v
		return out
	}
	return append(out, v)
}

// insertSorted returns a new list, sorted by key, with v in the place of
// the element with v's key, or inserted where it belongs.
func insertSorted[T any](list []T, v T, keyOf func(T) string) []T {
	key := keyOf(v)
	i, found := slices.BinarySearchFunc(list, key, func(e T, k string) int { return cmp.Compare(keyOf(e), k) })
	out := make([]T, 0, len(list)+1)
	out = append(out, list[:i]...)
	out = append(out, v)
	if found {
		i++
	}
	return append(out, list[i:]...)
}
