package state

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	workloadv1 "github.com/cairnmesh/cairn/apis/workload/v1"
)

// Type URLs of the two resource types of workload discovery.
const (
	AddressTypeURL       = "type.googleapis.com/cairn.workload.v1.Address"
	AuthorizationTypeURL = "type.googleapis.com/cairn.workload.v1.Authorization"
)

// Store holds the current Snapshot. Readers call Snapshot; the xDS client
// calls Apply.
type Store struct {
	// mu serialises writers only: Apply builds the next snapshot from the
	// current one, so two concurrent Applies would lose one's changes.
	// Readers never take it.
	mu      sync.Mutex
	cur     atomic.Pointer[Snapshot]
	applied map[string]bool // types applied at least once; guarded by mu
}

// NewStore returns a store whose snapshot is empty.
func NewStore() *Store {
	s := &Store{applied: make(map[string]bool, 2)}
	s.cur.Store(emptySnapshot())
	return s
}

// Snapshot returns the current snapshot. Take it once per decision: two
// calls may return different snapshots.
func (s *Store) Snapshot() *Snapshot { return s.cur.Load() }

// Apply applies one delta of resources of type typeURL: upserts maps xDS
// names to new values, removes lists names that are gone (unknown names
// are ignored, as delta xDS allows). A value may be the message itself
// (*workloadv1.Address or *workloadv1.Authorization) or an *anypb.Any that
// holds it.
//
// Invalid resources are rejected one by one: every other resource of the
// delta is applied, and a rejected one keeps its previous value. The error
// is then an *ApplyError naming each rejected resource. An unknown type URL
// changes nothing and returns an error wrapping ErrUnknownType.
//
// The first Apply of each type, even an empty one, counts as that type's
// initial state; the snapshot after the first Apply of both is Synced.
//
// Apply publishes one new snapshot when anything changed, so readers never
// see half a delta. Stored messages are owned by the store: the caller must
// not modify them afterwards.
func (s *Store) Apply(typeURL string, upserts map[string]proto.Message, removes []string) error {
	if typeURL != AddressTypeURL && typeURL != AuthorizationTypeURL {
		return fmt.Errorf("%w %q", ErrUnknownType, typeURL)
	}
	s.mu.Lock()
	defer s.mu.Unlock()

	cur := s.cur.Load()
	next := cur.cloneFor(typeURL)
	var rejected []*ResourceError
	changed := false
	reject := func(name string, err error) {
		rejected = append(rejected, &ResourceError{TypeURL: typeURL, Name: name, Err: err})
	}

	// Removals first, so that a name both removed and upserted (which
	// delta xDS forbids) ends up with the new value rather than nothing.
	for _, name := range removes {
		if _, ok := upserts[name]; ok {
			continue
		}
		changed = next.remove(typeURL, name) || changed
	}
	for _, name := range slices.Sorted(maps.Keys(upserts)) {
		switch typeURL {
		case AddressTypeURL:
			a, err := unpack[*workloadv1.Address](upserts[name], typeURL)
			if err == nil {
				err = validateAddress(name, a)
			}
			if err != nil {
				reject(name, err)
				continue
			}
			next.putAddress(name, a)
		case AuthorizationTypeURL:
			a, err := unpack[*workloadv1.Authorization](upserts[name], typeURL)
			if err == nil {
				err = validateAuthorization(name, a)
			}
			if err != nil {
				reject(name, err)
				continue
			}
			next.putAuthorization(name, a)
		}
		changed = true
	}

	if !s.applied[typeURL] {
		s.applied[typeURL] = true
		if s.applied[AddressTypeURL] && s.applied[AuthorizationTypeURL] {
			next.synced, changed = true, true
		}
	}
	if changed {
		s.cur.Store(next)
		close(cur.replaced)
	}
	if len(rejected) > 0 {
		slices.SortFunc(rejected, func(a, b *ResourceError) int { return cmp.Compare(a.Name, b.Name) })
		return &ApplyError{Rejected: rejected}
	}
	return nil
}

// unpack returns m as a T, unwrapping an Any whose type URL is typeURL.
func unpack[T interface {
	proto.Message
	*workloadv1.Address | *workloadv1.Authorization
}](m proto.Message, typeURL string) (T, error) {
	switch v := m.(type) {
	case T:
		if v == nil {
			return nil, fmt.Errorf("%w: nil %T", ErrWrongMessage, v)
		}
		return v, nil
	case *anypb.Any:
		if v.GetTypeUrl() != typeURL {
			return nil, fmt.Errorf("%w: Any holds %q, want %q", ErrWrongMessage, v.GetTypeUrl(), typeURL)
		}
		msg, err := v.UnmarshalNew()
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		out, ok := msg.(T)
		if !ok {
			return nil, fmt.Errorf("%w: Any decodes to %T", ErrWrongMessage, msg)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: got %T for %s", ErrWrongMessage, m, typeURL)
}
