package handlers

import (
	"context"
	"net/http"
	"net/url"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// Traced wraps rt so that every request is a client span (otelhttp, with the trace context
// sent on in traceparent) whose URL carries no id: the span sees the request's route — the
// Call's Route, "/api/pam/session/drop/{id}" — or only its host, while the vendor gets the
// real URL. Session ids and credential names never become span attributes.
func Traced(rt http.RoundTripper) http.RoundTripper {
	restore := roundTripper(func(r *http.Request) (*http.Response, error) {
		// r is otelhttp's copy of the request, carrying the traceparent header and, in its
		// context, the client span.
		call, _ := CallFrom(r.Context())
		if span := trace.SpanFromContext(r.Context()); span.IsRecording() {
			span.SetAttributes(attribute.String("pamworker.target", call.Target), attribute.String("pamworker.action", call.Action))
			if call.Route != "" {
				span.SetAttributes(attribute.String("url.template", call.Route))
			}
		}
		if u, ok := r.Context().Value(realURL{}).(*url.URL); ok {
			r.URL = u
		}
		return rt.RoundTrip(r)
	})
	traced := otelhttp.NewTransport(restore, otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
		return "HTTP " + r.Method
	}))
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		call, _ := CallFrom(r.Context())
		shown := &url.URL{Scheme: r.URL.Scheme, Host: r.URL.Host, Path: call.Route}
		if shown.Path == "" {
			shown.Path = "/"
		}
		shownReq := r.WithContext(context.WithValue(r.Context(), realURL{}, r.URL))
		shownReq.URL = shown
		return traced.RoundTrip(shownReq)
	})
}

type realURL struct{}
