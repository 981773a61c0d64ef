// Package admin serves the operator endpoints of Cairn's proxies (ztunnel,
// the waypoint): the admin port (localhost only: /config_dump,
// /debug/connections, /debug/pprof/), the readiness port (/healthz/ready,
// for the kubelet) and the metrics port (/metrics, for Prometheus), on
// SO_REUSEPORT listeners so that a successor binds them during a rollout.
package admin

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cairnmesh/cairn/internal/drain"
)

// Sources are what the endpoints show; each returns a JSON-encodable value.
type Sources struct {
	// ConfigDump holds named sections: workloads, certificates, pods, ...
	ConfigDump  map[string]func() any
	Connections func() any
	// Ready reports whether the proxy can serve (ztunnel: its
	// configuration synced, its node's pods listed). When not ready, the detail says what it waits
	// for; when ready, a detail is a warning that does not fail the probe
	// (configuration that may be stale: the proxy serves on with it).
	Ready func() (ready bool, detail string)
}

// AdminHandler serves /config_dump and /debug/connections.
func AdminHandler(src Sources, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, r *http.Request) {
		out := make(map[string]any, len(src.ConfigDump))
		only := r.URL.Query().Get("section")
		for name, f := range src.ConfigDump {
			if only == "" || only == name {
				out[name] = f()
			}
		}
		writeJSON(w, out, log)
	})
	mux.HandleFunc("GET /debug/connections", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, map[string]any{"connections": src.Connections()}, log)
	})
	// Go's profiles, for finding where a proxy spends its CPU and memory
	// (the admin port listens on localhost only).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// ReadinessHandler serves /healthz/ready: 200 when ready and not draining,
// with the warning of Sources.Ready, if any, in the body.
func ReadinessHandler(src Sources, st *drain.State) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if st.Draining() {
			http.Error(w, st.Reason(), http.StatusServiceUnavailable)
			return
		}
		ok, detail := src.Ready()
		switch {
		case !ok:
			http.Error(w, detail, http.StatusServiceUnavailable)
		case detail != "":
			_, _ = w.Write([]byte("ready; warning: " + detail + "\n"))
		default:
			_, _ = w.Write([]byte("ready\n"))
		}
	})
	return mux
}

// MetricsHandler serves /metrics from g.
func MetricsHandler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	return mux
}

func writeJSON(w http.ResponseWriter, v any, log *slog.Logger) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		log.Warn("writing an admin response", "err", err)
	}
}
