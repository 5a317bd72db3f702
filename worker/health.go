package worker

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Readiness is what /readyz asks.
type Readiness interface {
	Ready() (bool, []string)
}

// HealthHandler serves /metrics from g, /healthz (the process is alive) and /readyz (200 once
// connected to NATS and consuming, else 503; either way the body lists targets that refuse the
// worker, so an operator sees why events wait).
func HealthHandler(g prometheus.Gatherer, r Readiness) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		ready, why := r.Ready()
		var b strings.Builder
		if ready {
			b.WriteString("ready\n")
		} else {
			w.WriteHeader(http.StatusServiceUnavailable)
			b.WriteString("not ready\n")
		}
		for _, s := range why {
			b.WriteString(s + "\n")
		}
		_, _ = w.Write([]byte(b.String()))
	})
	return mux
}
