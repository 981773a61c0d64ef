package route

import (
	"net/http"

	"github.com/cairnmesh/cairn/waypoint/state"
)

// ApplyHeaders applies one level of header mutations to h: removals
// first, then additions in order (Envoy's HeaderParser). Apply the most
// specific level first (a split's, then the route's): a later level's
// overwrite wins, as in Envoy.
func ApplyHeaders(h http.Header, ops *state.HeaderOps) {
	for _, name := range ops.Remove {
		delete(h, name)
	}
	for i := range ops.Add {
		a := &ops.Add[i]
		switch a.Action {
		case state.AppendIfExistsOrAdd:
			h[a.Name] = append(h[a.Name], a.Value)
		case state.AddIfAbsent:
			if len(h[a.Name]) == 0 {
				h[a.Name] = []string{a.Value}
			}
		case state.OverwriteIfExistsOrAdd:
			h[a.Name] = []string{a.Value}
		case state.OverwriteIfExists:
			if len(h[a.Name]) > 0 {
				h[a.Name] = []string{a.Value}
			}
		}
	}
}
