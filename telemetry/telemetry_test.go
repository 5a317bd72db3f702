package telemetry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

func TestHeaderCarrier(t *testing.T) {
	h := nats.Header{"Traceparent": []string{"00-a-b-01"}}
	c := HeaderCarrier(h)
	if c.Get("traceparent") != "00-a-b-01" {
		t.Errorf("Get is not case-insensitive: %q", c.Get("traceparent"))
	}
	c.Set("traceparent", "00-c-d-01")
	if len(h) != 1 || h.Get("traceparent") != "00-c-d-01" {
		t.Errorf("Set left another casing: %v", h)
	}
	if keys := c.Keys(); len(keys) != 1 || keys[0] != "traceparent" {
		t.Errorf("Keys: %v", keys)
	}
}

// TestSetup: off unless asked; a wrong exporter or protocol is an error naming the variable.
func TestSetup(t *testing.T) {
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	ctx := context.Background()
	for _, e := range []func(string) string{env(), env("OTEL_TRACES_EXPORTER", "none"),
		env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1", "OTEL_SDK_DISABLED", "true")} {
		stop, err := Setup(ctx, e, "pamworker", "test")
		if err != nil || Enabled() {
			t.Errorf("tracing on (%v) without being asked", err)
		}
		_ = stop(ctx)
	}
	for _, tc := range []struct {
		env  func(string) string
		want string
	}{
		{env("OTEL_TRACES_EXPORTER", "zipkin"), "OTEL_TRACES_EXPORTER"},
		{env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{env("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x"), "OTEL_EXPORTER_OTLP_ENDPOINT"},
		{env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x", "OTEL_EXPORTER_OTLP_HEADERS", "secret-value-no-equals"), "OTEL_EXPORTER_OTLP_HEADERS"},
	} {
		if _, err := Setup(ctx, tc.env, "pamworker", "test"); err == nil || !strings.Contains(err.Error(), tc.want) || Enabled() {
			t.Errorf("want an error naming %s, got %v", tc.want, err)
		}
	}
	stop, err := Setup(ctx, env("OTEL_TRACES_EXPORTER", "console"), "pamworker", "test")
	if err != nil || !Enabled() {
		t.Fatalf("console exporter: %v", err)
	}
	if err := stop(ctx); err != nil || Enabled() {
		t.Errorf("stop: %v", err)
	}
}

// TestOTLPExporter: the batch goes as JSON to /v1/traces with the configured headers; a 503
// is retried, a 400 is not.
func TestOTLPExporter(t *testing.T) {
	var mu sync.Mutex
	var got []string
	codes := []int{503, 200, 400}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		body, _ := io.ReadAll(r.Body)
		got = append(got, r.URL.Path+" "+r.Header.Get("Content-Type")+" "+r.Header.Get("Api-Key")+" "+string(body))
		code := codes[0]
		codes = codes[1:]
		w.WriteHeader(code)
	}))
	defer srv.Close()
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": srv.URL, "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%3Dcret"}
	exp, err := newOTLPExporter(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	_, span := tp.Tracer("t").Start(context.Background(), "one")
	span.SetAttributes(attribute.Int("n", 7), attribute.StringSlice("s", []string{"a"}))
	span.End() // 503, then 200
	_, span = tp.Tracer("t").Start(context.Background(), "two")
	span.End() // 400: not retried
	_ = tp.Shutdown(context.Background())
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 {
		t.Fatalf("%d requests, want 3 (a retry after 503, none after 400): %v", len(got), got)
	}
	if !strings.HasPrefix(got[0], "/v1/traces application/json s=cret {\"resourceSpans\":") || got[0] != got[1] ||
		!strings.Contains(got[0], `"key":"n","value":{"intValue":"7"}`) || !strings.Contains(got[0], `"arrayValue":{"values":[{"stringValue":"a"}]}`) {
		t.Errorf("export: %s", got[0])
	}
}
