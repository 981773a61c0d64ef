package route

import (
	"net/http"
	"strings"

	"github.com/cairnmesh/cairn/waypoint/state"
)

// matches says whether every part of m matches the request.
func matches(m *state.Match, r *http.Request, path, query string, in Input) bool {
	if !matchPath(m, path) {
		return false
	}
	if m.GRPC && !strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		return false
	}
	for i := range m.Headers {
		if !matchHeader(&m.Headers[i], r) {
			return false
		}
	}
	for i := range m.Query {
		if !matchQuery(&m.Query[i], query) {
			return false
		}
	}
	for i := range m.FilterState {
		f := &m.FilterState[i]
		// The only key compile accepts is the peer's principal.
		if in.PeerPrincipal == "" || !matchString(&f.String, in.PeerPrincipal) {
			return false
		}
	}
	return true
}

func matchPath(m *state.Match, path string) bool {
	switch m.PathKind {
	case state.PathPrefix:
		return hasPrefix(path, m.Path, m.CaseInsensitive)
	case state.PathExact:
		if m.CaseInsensitive {
			return strings.EqualFold(path, m.Path)
		}
		return path == m.Path
	case state.PathSeparatedPrefix:
		if !hasPrefix(path, m.Path, m.CaseInsensitive) {
			return false
		}
		return len(path) == len(m.Path) || path[len(m.Path)] == '/'
	case state.PathRegex:
		return m.Regex.MatchString(path)
	}
	return false
}

func hasPrefix(s, prefix string, fold bool) bool {
	if len(s) < len(prefix) {
		return false
	}
	if fold {
		return strings.EqualFold(s[:len(prefix)], prefix)
	}
	return s[:len(prefix)] == prefix
}

// matchHeader follows Envoy: several values of one header are matched as
// one string joined with ","; invert_match inverts the result.
func matchHeader(h *state.HeaderMatch, r *http.Request) bool {
	value, present := headerValue(h, r)
	var ok bool
	switch {
	case h.String != nil:
		ok = present && matchString(h.String, value)
	case h.Absent:
		ok = !present
	default:
		ok = present
	}
	return ok != h.Invert
}

func headerValue(h *state.HeaderMatch, r *http.Request) (string, bool) {
	if h.Pseudo {
		switch h.Name {
		case ":method":
			return r.Method, true
		case ":path":
			return r.RequestURI, r.RequestURI != ""
		case ":authority":
			return r.Host, r.Host != ""
		case ":scheme":
			return "http", true
		}
		return "", false
	}
	vals := r.Header[h.Name]
	switch len(vals) {
	case 0:
		return "", false
	case 1:
		return vals[0], true
	default:
		return strings.Join(vals, ","), true
	}
}

// matchQuery looks at the first parameter of that name, undecoded, as
// Envoy does.
func matchQuery(q *state.QueryMatch, query string) bool {
	value, present := queryValue(query, q.Name)
	if !present {
		return false
	}
	if q.String == nil {
		return true
	}
	return matchString(q.String, value)
}

func queryValue(query, name string) (string, bool) {
	for query != "" {
		var part string
		part, query, _ = strings.Cut(query, "&")
		k, v, _ := strings.Cut(part, "=")
		if k == name {
			return v, true
		}
	}
	return "", false
}

func matchString(m *state.StringMatch, s string) bool {
	switch m.Kind {
	case state.StringExact:
		if m.IgnoreCase {
			return strings.EqualFold(s, m.Value)
		}
		return s == m.Value
	case state.StringPrefix:
		return hasPrefix(s, m.Value, m.IgnoreCase)
	case state.StringSuffix:
		if len(s) < len(m.Value) {
			return false
		}
		tail := s[len(s)-len(m.Value):]
		if m.IgnoreCase {
			return strings.EqualFold(tail, m.Value)
		}
		return tail == m.Value
	case state.StringContains:
		if m.IgnoreCase {
			return strings.Contains(strings.ToLower(s), m.Value)
		}
		return strings.Contains(s, m.Value)
	case state.StringRegex:
		return m.Regex.MatchString(s)
	}
	return false
}
