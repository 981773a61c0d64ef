package xds

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"time"
)

// DebugHandler serves, as JSON:
//
//	/debug/resources  what each type's cache holds: names and versions
//	/debug/clients    the connected clients: node, identity, subscriptions,
//	                  last nonces sent, ACKed and NACKed, resources sent
//
// /debug/resources?type=<type URL> limits the answer to one type.
func (s *Server) DebugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/resources", s.serveResources)
	mux.HandleFunc("GET /debug/clients", s.serveClients)
	return mux
}

type debugType struct {
	TypeURL     string          `json:"typeUrl"`
	Initialized bool            `json:"initialized"`
	Version     string          `json:"cacheVersion"`
	Count       int             `json:"count"`
	Resources   []debugResource `json:"resources"`
}

type debugResource struct {
	Name string `json:"name"`
	// Version is the per-resource version delta clients see (a hash of the
	// marshaled resource).
	Version string `json:"version"`
	// CacheVersion is the cache version of the push that last changed it.
	CacheVersion string    `json:"cacheVersion"`
	Changed      time.Time `json:"changed"`
}

func (s *Server) serveResources(w http.ResponseWriter, r *http.Request) {
	only := r.URL.Query().Get("type")
	if only != "" {
		if _, ok := s.types[only]; !ok {
			http.Error(w, "unknown type "+only, http.StatusNotFound)
			return
		}
	}
	type named struct {
		name string
		entry
	}
	var out []debugType
	for _, url := range s.typeURLs {
		if only != "" && url != only {
			continue
		}
		ts := s.types[url]
		s.pushMu.Lock()
		entries := make([]named, 0, len(ts.current))
		for name, e := range ts.current {
			entries = append(entries, named{name, e})
		}
		dt := debugType{TypeURL: url, Initialized: ts.initialized, Version: versionString(ts.version), Count: len(entries)}
		s.pushMu.Unlock()
		slices.SortFunc(entries, func(a, b named) int { return cmp.Compare(a.name, b.name) })
		dt.Resources = make([]debugResource, 0, len(entries))
		for _, e := range entries {
			dt.Resources = append(dt.Resources, debugResource{
				Name: e.name, Version: e.wire.GetVersion(), CacheVersion: versionString(e.version), Changed: e.changed,
			})
		}
		out = append(out, dt)
	}
	writeJSON(w, map[string]any{"types": out})
}

type debugClient struct {
	Stream    int64                      `json:"stream"`
	Node      string                     `json:"node"`
	Identity  Identity                   `json:"identity"`
	Peer      string                     `json:"peer"`
	Connected time.Time                  `json:"connected"`
	Types     map[string]debugClientType `json:"types"`
}

type debugClientType struct {
	Subscribed      []string `json:"subscribed"`
	LastNonceSent   string   `json:"lastNonceSent"`
	LastVersionSent string   `json:"lastVersionSent"`
	LastAckedNonce  string   `json:"lastAckedNonce"`
	LastNackedNonce string   `json:"lastNackedNonce,omitempty"`
	LastNackError   string   `json:"lastNackError,omitempty"`
	Responses       uint64   `json:"responses"`
	ResourcesSent   uint64   `json:"resourcesSent"`
	RemovalsSent    uint64   `json:"removalsSent"`
	Acks            uint64   `json:"acks"`
	Nacks           uint64   `json:"nacks"`
}

func (s *Server) serveClients(w http.ResponseWriter, _ *http.Request) {
	clients := s.clients.all()
	out := make([]debugClient, 0, len(clients))
	for _, c := range clients {
		dc := debugClient{Stream: c.stream, Identity: c.identity, Peer: c.peer, Connected: c.connected,
			Types: make(map[string]debugClientType)}
		c.mu.Lock()
		dc.Node = c.node
		for url, ct := range c.types {
			sub := make([]string, 0, len(ct.subscribed))
			for name := range ct.subscribed {
				sub = append(sub, name)
			}
			slices.Sort(sub)
			dc.Types[url] = debugClientType{
				Subscribed: sub, LastNonceSent: ct.lastNonceSent, LastVersionSent: ct.lastVersionSent,
				LastAckedNonce: ct.lastAckedNonce, LastNackedNonce: ct.lastNackedNonce, LastNackError: ct.lastNackError,
				Responses: ct.responses, ResourcesSent: ct.resourcesSent, RemovalsSent: ct.removalsSent,
				Acks: ct.acks, Nacks: ct.nacks,
			}
		}
		c.mu.Unlock()
		out = append(out, dc)
	}
	slices.SortFunc(out, func(a, b debugClient) int { return cmp.Compare(a.Stream, b.Stream) })
	writeJSON(w, map[string]any{"clients": out})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
