package worker

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
)

// Metrics are the worker's Prometheus series. Every label value comes from a closed set:
// action subjects, statuses, retry reasons, HTTP codes, configured target names.
type Metrics struct {
	processed  *prometheus.CounterVec
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	retries    *prometheus.CounterVec
	inFlight   prometheus.Gauge
	targetUp   *prometheus.GaugeVec
	duplicates *prometheus.CounterVec
	redeliver  *prometheus.CounterVec
	protected  *prometheus.CounterVec
	paused     prometheus.Gauge
	held       *prometheus.CounterVec
	stalled    prometheus.Gauge
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		processed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pamworker_events_processed_total",
			Help: "Events that reached a terminal result, by action and status.",
		}, []string{"action", "status"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pamworker_api_requests_total",
			Help: "Vendor API attempts, retries and token requests included; code is the HTTP status, timeout or error.",
		}, []string{"target", "action", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pamworker_event_duration_seconds",
			Help:    "Time from receipt of an event to its terminal result.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"action"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pamworker_retries_total",
			Help: "In-process retries of an API call, by action and reason.",
		}, []string{"action", "reason"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pamworker_in_flight",
			Help: "Events being processed now.",
		}),
		targetUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pamworker_target_up",
			Help: "1 while the target accepts the worker, 0 while it refuses it (bad credentials, missing permission).",
		}, []string{"target"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pamworker_duplicates_total",
			Help: "Events whose id already had a result, answered from the record without calling the vendor.",
		}, []string{"action"}),
		redeliver: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pamworker_deferred_total",
			Help: "Events handed back to JetStream for later delivery, by reason.",
		}, []string{"action", "reason"}),
	}
	m.protected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pamworker_protected_refused_total",
		Help: "Events refused because they act on a protected object.",
	}, []string{"action"})
	m.paused = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pamworker_paused",
		Help: "1 while an operator has paused consumption (pamworker pause).",
	})
	m.held = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pamworker_held_total",
		Help: "Times an event was held back by a blast-radius limit (it waits in the stream).",
	}, []string{"action"})
	m.stalled = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pamworker_stalled",
		Help: "1 while the worker makes no progress: no event decided for the stall timeout while events wait or its own publishes fail.",
	})
	reg.MustRegister(m.processed, m.requests, m.duration, m.retries, m.inFlight, m.targetUp, m.duplicates, m.redeliver, m.protected, m.paused, m.held, m.stalled)
	return m
}

// actionLabel keeps the label set closed: unknown subjects share one value.
func actionLabel(subject string) string {
	if events.IsAction(subject) {
		return subject
	}
	return "unknown"
}

// InstrumentTransport counts every request made through rt, labelled by the Call its context
// carries (requests without one are not counted).
func (m *Metrics) InstrumentTransport(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(req)
		if c, ok := handlers.CallFrom(req.Context()); ok {
			m.requests.WithLabelValues(c.Target, c.Action, requestCode(resp, err)).Inc()
		}
		return resp, err
	})
}

func requestCode(resp *http.Response, err error) string {
	if err == nil {
		return strconv.Itoa(resp.StatusCode)
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return "timeout"
	}
	return "error"
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
