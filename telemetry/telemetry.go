// Package telemetry sets up OpenTelemetry tracing from the standard OTEL_* variables and holds
// the small pieces the rest of pamworker shares: the trace context carried in NATS headers and
// the HTTP server wrapper. Tracing is off unless configured; the W3C trace context of an event
// is passed on to its result either way.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Name is the instrumentation scope of pamworker's own spans.
const Name = "github.com/pamworker/pamworker"

var enabled atomic.Bool

// Enabled reports whether spans are recorded and exported.
func Enabled() bool { return enabled.Load() }

// Tracer is pamworker's tracer (a no-op one while tracing is off).
func Tracer() trace.Tracer { return otel.Tracer(Name) }

func init() { otel.SetTextMapPropagator(propagation.TraceContext{}) }

// Setup turns tracing on when the environment asks for it — OTEL_TRACES_EXPORTER names an
// exporter (otlp, console), or an OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT,
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) — and returns the function that flushes and stops it.
// The OTLP exporter (otlp.go) reads the specification's variables (endpoint, headers,
// certificate, timeout) and speaks http/json. OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
// OTEL_TRACES_SAMPLER and OTEL_BSP_* apply as usual. OTEL_SDK_DISABLED=true keeps it off.
func Setup(ctx context.Context, getenv func(string) string, service, version string) (func(context.Context) error, error) {
	none := func(context.Context) error { return nil }
	names := strings.ToLower(strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")))
	if names == "" && (getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "") {
		names = "otlp"
	}
	if names == "" || names == "none" || strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") {
		return none, nil
	}
	var opts []sdktrace.TracerProviderOption
	for _, name := range strings.Split(names, ",") {
		var exp sdktrace.SpanExporter
		var err error
		switch strings.TrimSpace(name) {
		case "otlp":
			exp, err = newExporter(getenv)
		case "console":
			exp, err = stdouttrace.New(stdouttrace.WithWriter(os.Stderr)) // stdout is a command's result
		case "none":
			continue
		default:
			return none, fmt.Errorf("OTEL_TRACES_EXPORTER: %q is not an exporter pamworker has (otlp, console, none)", name)
		}
		if err != nil {
			return none, fmt.Errorf("OTEL_TRACES_EXPORTER %s: %w", name, err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(service), semconv.ServiceVersion(version)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win
		resource.WithTelemetrySDK())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return none, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	tp := sdktrace.NewTracerProvider(append(opts, sdktrace.WithResource(res))...)
	otel.SetTracerProvider(tp)
	enabled.Store(true)
	return func(ctx context.Context) error {
		enabled.Store(false)
		otel.SetTracerProvider(noop.NewTracerProvider())
		return tp.Shutdown(ctx)
	}, nil
}

func newExporter(getenv func(string) string) (sdktrace.SpanExporter, error) {
	protocol := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	if protocol != "" && protocol != "http/json" {
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL %q: pamworker sends OTLP over HTTP in JSON (http/json, an OTLP receiver's port 4318); set http/json or leave it unset", protocol)
	}
	return newOTLPExporter(getenv)
}

// HTTPHandler wraps h in a server span per request (otelhttp) when tracing is on; the span is
// named after the route, never the path, which may hold an event id.
func HTTPHandler(h http.Handler, operation string) http.Handler {
	if !Enabled() {
		return h
	}
	return otelhttp.NewHandler(h, operation, otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
		if r.Pattern != "" {
			return r.Pattern // "POST /v1/actions/{subject}"
		}
		return r.Method
	}))
}

// HeaderCarrier carries the trace context in NATS message headers: a
// propagation.TextMapCarrier over nats.Header. NATS header names are case-sensitive; Get
// finds traceparent whatever its case, Set writes the lower-case W3C name.
type HeaderCarrier nats.Header

// Get returns the value of key.
func (c HeaderCarrier) Get(key string) string {
	if vs := c[key]; len(vs) > 0 {
		return vs[0]
	}
	for k, vs := range c {
		if strings.EqualFold(k, key) && len(vs) > 0 {
			return vs[0]
		}
	}
	return ""
}

// Set sets key to value, replacing any other casing of it.
func (c HeaderCarrier) Set(key, value string) {
	for k := range c {
		if k != key && strings.EqualFold(k, key) {
			delete(c, k)
		}
	}
	c[key] = []string{value}
}

// Keys lists the header names.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Extract returns ctx carrying the trace context of h, if it has one.
func Extract(ctx context.Context, h nats.Header) context.Context {
	if h == nil {
		return ctx
	}
	return otel.GetTextMapPropagator().Extract(ctx, HeaderCarrier(h))
}

// Inject writes the trace context of ctx into h.
func Inject(ctx context.Context, h nats.Header) {
	otel.GetTextMapPropagator().Inject(ctx, HeaderCarrier(h))
}
