package route

import (
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/cairnmesh/cairn/waypoint/state"
)

// location builds a redirect's Location by Gateway API's rules for
// RequestRedirect (the mesh's "listener port" is the destination port):
//   - scheme: the redirect's, else the request's (always http: the waypoint
//     receives HTTP inside HBONE);
//   - host: the redirect's, else the request's Host without its port;
//   - port: the redirect's; else, if the redirect sets a scheme, that
//     scheme's well-known port (http 80, https 443; another scheme keeps
//     the destination port); else the destination port. The port is left
//     out when it is the scheme's well-known one;
//   - path: path_redirect, else prefix_rewrite of the matched prefix, else
//     regex_rewrite of the path, else the request's path;
//   - query: the request's, unless strip_query, or path_redirect brings
//     its own.
func location(rd *state.Redirect, m *state.Match, r *http.Request, path, query string, dstPort uint16) string {
	scheme := "http"
	if rd.Scheme != "" {
		scheme = rd.Scheme
	}
	host := rd.Host
	if host == "" {
		host = hostOnly(r.Host)
	}
	port := int(rd.Port)
	if port == 0 {
		port = int(dstPort)
		if rd.Scheme != "" {
			if wk := wellKnownPort(rd.Scheme); wk != 0 {
				port = wk
			}
		}
	}
	newPath := path
	switch {
	case rd.PathRedirect != "":
		newPath = rd.PathRedirect
		if i := strings.IndexByte(newPath, '?'); i >= 0 {
			newPath, query = newPath[:i], newPath[i+1:]
		}
	case rd.HasPrefix:
		newPath = rd.PrefixRewrite + path[matchedPrefixLen(m, path):]
	case rd.RegexRewrite != nil:
		newPath = rd.RegexRewrite.Pattern.ReplaceAllString(path, rd.RegexRewrite.Template)
	}
	if rd.StripQuery {
		query = ""
	}
	var b strings.Builder
	b.Grow(len(scheme) + len(host) + len(newPath) + len(query) + 16)
	b.WriteString(scheme)
	b.WriteString("://")
	if port == 0 || port == wellKnownPort(scheme) {
		if strings.Contains(host, ":") {
			b.WriteString("[" + host + "]")
		} else {
			b.WriteString(host)
		}
	} else {
		b.WriteString(net.JoinHostPort(host, strconv.Itoa(port)))
	}
	if !strings.HasPrefix(newPath, "/") {
		b.WriteByte('/')
	}
	b.WriteString(newPath)
	if query != "" {
		b.WriteByte('?')
		b.WriteString(query)
	}
	return b.String()
}

func wellKnownPort(scheme string) int {
	switch scheme {
	case "http":
		return 80
	case "https":
		return 443
	}
	return 0
}

// hostOnly drops the port of a Host header ("a:80", "[::1]:80", "::1"
// without brackets stays as it is).
func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		return host
	}
	return strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
}
