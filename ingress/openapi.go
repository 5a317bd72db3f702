package ingress

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pamworker/pamworker/events"
)

// route is one endpoint: the mux registers these, and the OpenAPI document is made from them,
// so the two cannot drift (TestOpenAPIMatchesRoutes checks every answer against it).
type route struct {
	method, path, operation, summary string
	responses                        map[int]string
}

var routes = []route{
	{http.MethodPost, "/v1/actions/{subject}", "postAction",
		"Run an action: the body is the event payload of the subject (or a CloudEvents event, structured or binary). The answer is the event's result if it comes within the wait (Prefer: wait=N, capped by the server), else 202 and where to poll.",
		map[int]string{
			200: "succeeded: the result (noop included)",
			202: "queued, no result yet: poll Location after Retry-After",
			400: "not JSON, or unreadable",
			401: "no or unknown token or client certificate",
			403: "the caller may not post this subject",
			404: "no action is bound to the subject",
			413: "larger than PAMWORKER_MAX_EVENT_BYTES",
			415: "not application/json or a CloudEvents event",
			422: "rejected: invalid, refused (protected object, signature ...), or an id already used by another event; the body is a rejected result",
			429: "the caller is over its rate: retry after Retry-After",
			502: "failed: the vendor refused, or retries ran out; the body is the failed result",
			503: "queued, but its target is down (refuses the worker, or its circuit is open) and it waits for it: poll Location after Retry-After (application/json, Pending); or the event could not be queued (NATS unavailable): nothing was done, send it again (application/problem+json)",
		}},
	{http.MethodGet, "/v1/results/{event_id}", "getResult",
		"The result of an event: the same statuses as the POST once it exists, 202 while it is pending, 404 for an id never seen.",
		map[int]string{
			200: "succeeded", 202: "pending: retry after Retry-After", 401: "no or unknown token or client certificate",
			404: "no such event (or not one of the caller's subjects)", 422: "rejected", 502: "failed",
			503: "pending, and its target is down (Pending, with Location and Retry-After); or not readable now (Problem)",
		}},
	{http.MethodGet, "/v1/openapi.json", "openapi", "This document.", map[int]string{200: "the OpenAPI 3.1 document"}},
}

// openAPI builds the OpenAPI 3.1 document of the routes.
func openAPI() map[string]any {
	paths := map[string]any{}
	for _, rt := range routes {
		responses := map[string]any{}
		codes := make([]int, 0, len(rt.responses))
		for c := range rt.responses {
			codes = append(codes, c)
		}
		sort.Ints(codes)
		for _, c := range codes {
			resp := map[string]any{"description": rt.responses[c]}
			switch {
			case rt.operation == "openapi":
				resp["content"] = map[string]any{"application/json": map[string]any{"schema": map[string]any{"type": "object"}}}
			case c == 200 || c == 422 || c == 502:
				resp["content"] = map[string]any{"application/json": map[string]any{"schema": map[string]any{"$ref": "#/components/schemas/Result"}}}
			case c == 202 || c == 503:
				resp["headers"] = map[string]any{
					"Location":    map[string]any{"schema": map[string]any{"type": "string"}, "description": "where the result will be"},
					"Retry-After": map[string]any{"schema": map[string]any{"type": "integer"}},
				}
				content := map[string]any{"application/json": map[string]any{"schema": map[string]any{"$ref": "#/components/schemas/Pending"}}}
				if c == 503 {
					content["application/problem+json"] = map[string]any{"schema": map[string]any{"$ref": "#/components/schemas/Problem"}}
				}
				resp["content"] = content
			default:
				resp["content"] = map[string]any{"application/problem+json": map[string]any{"schema": map[string]any{"$ref": "#/components/schemas/Problem"}}}
			}
			responses[strconv.Itoa(c)] = resp
		}
		op := map[string]any{"operationId": rt.operation, "summary": rt.summary, "responses": responses}
		if rt.operation != "openapi" {
			op["security"] = []any{map[string]any{"bearer": []any{}}, map[string]any{"mutualTLS": []any{}}}
		}
		switch rt.operation {
		case "postAction":
			op["parameters"] = []any{
				map[string]any{"name": "subject", "in": "path", "required": true, "schema": map[string]any{"type": "string", "enum": events.Actions()}},
				map[string]any{"name": "Idempotency-Key", "in": "header", "schema": map[string]any{"type": "string", "maxLength": events.MaxIDBytes},
					"description": "the event id (and Nats-Msg-Id): a retried POST gets the same result and acts once; the same key with another body is refused 422"},
				map[string]any{"name": "Prefer", "in": "header", "schema": map[string]any{"type": "string", "example": "wait=5"},
					"description": "RFC 7240 wait=N: how many seconds to wait for the result, at most the server's maximum; respond-async: none"},
			}
			op["requestBody"] = map[string]any{"required": true, "content": map[string]any{
				"application/json":             map[string]any{"schema": map[string]any{"$ref": "#/components/schemas/Event"}},
				"application/cloudevents+json": map[string]any{"schema": map[string]any{"type": "object", "required": []string{"specversion", "id", "type", "data"}}},
			}}
		case "getResult":
			op["parameters"] = []any{
				map[string]any{"name": "event_id", "in": "path", "required": true, "schema": map[string]any{"type": "string"}},
				map[string]any{"name": "seq", "in": "query", "schema": map[string]any{"type": "integer"}, "description": "as the Location of a 202 gives it"},
			}
		}
		item, _ := paths[rt.path].(map[string]any)
		if item == nil {
			item = map[string]any{}
		}
		item[strings.ToLower(rt.method)] = op
		paths[rt.path] = item
	}
	str := map[string]any{"type": "string"}
	return map[string]any{
		"openapi": "3.1.0",
		"info": map[string]any{"title": "pamworker ingress", "version": "1",
			"description": "Actions on privileged-access systems for SOAR playbooks. Status codes are meant to be branched on; docs/soar.md has recipes."},
		"paths": paths,
		"components": map[string]any{
			"securitySchemes": map[string]any{
				"bearer":    map[string]any{"type": "http", "scheme": "bearer"},
				"mutualTLS": map[string]any{"type": "mutualTLS"},
			},
			"schemas": map[string]any{
				"Event": map[string]any{"type": "object", "description": "the payload of the subject's action (README, Events); unknown fields are refused",
					"properties": map[string]any{"event_id": str, "target": str, "reason": str, "requested_by": str, "correlation_id": str,
						"dry_run": map[string]any{"type": "boolean"}, "time": str, "session_id": str,
						"credential_id": map[string]any{"type": []string{"integer", "string"}}, "username": str, "hostname": str,
						"auth_method": map[string]any{"type": "string", "enum": []string{"Cluster", "Ldap", "Idp"}}}},
				"Result": map[string]any{"type": "object", "required": []string{"event_id", "action", "status"},
					"properties": map[string]any{"event_id": str, "action": str, "target": str,
						"status":   map[string]any{"type": "string", "enum": []string{"succeeded", "failed", "rejected"}},
						"noop":     map[string]any{"type": "boolean"},
						"dry_run":  map[string]any{"type": "boolean"},
						"attempts": map[string]any{"type": "integer"}, "message": str,
						"error": map[string]any{"type": []string{"object", "null"}, "properties": map[string]any{"code": str, "message": str,
							"http_status": map[string]any{"type": "integer"}, "retryable": map[string]any{"type": "boolean"}}},
						"correlation_id": str, "requested_by": str, "duration_ms": map[string]any{"type": "number"},
						"finished_at": str, "details": map[string]any{"type": "object"}}},
				"Pending": map[string]any{"type": "object", "required": []string{"event_id", "status", "location"},
					"properties": map[string]any{"event_id": str, "status": map[string]any{"const": "pending"}, "location": str,
						"target": str, "target_state": map[string]any{"type": "string", "enum": []string{"refused", "circuit_open"}}, "reason": str}},
				"Problem": map[string]any{"type": "object", "properties": map[string]any{"type": str, "title": str, "status": map[string]any{"type": "integer"}, "detail": str}},
			},
		},
	}
}

// openapi is GET /v1/openapi.json (no authentication: it describes, it reveals nothing).
func (s *Server) openapi(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(openAPI())
}

// metrics are the ingress's Prometheus series, labelled from closed sets.
type metrics struct {
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	authFailures *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pamworker_ingress_requests_total",
			Help: "HTTP ingress requests, by operation and status code."}, []string{"operation", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pamworker_ingress_request_duration_seconds",
			Help:    "HTTP ingress request duration, waits for results included.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"operation"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pamworker_ingress_auth_failures_total",
			Help: "HTTP ingress requests refused for authentication, by reason (missing, invalid_token, unknown_certificate)."}, []string{"reason"}),
	}
	reg.MustRegister(m.requests, m.duration, m.authFailures)
	return m
}

// counted records every answer of rt: its code (checked against rt's documented ones by the
// tests) and its duration.
func (s *Server) counted(rt route, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		cw := &codeWriter{ResponseWriter: w, code: http.StatusOK}
		h(cw, r)
		s.m.requests.WithLabelValues(rt.operation, strconv.Itoa(cw.code)).Inc()
		s.m.duration.WithLabelValues(rt.operation).Observe(time.Since(start).Seconds())
		if _, documented := rt.responses[cw.code]; !documented {
			s.log.Error("ingress answered a status its OpenAPI document does not list", "operation", rt.operation, "code", cw.code)
		}
	})
}

type codeWriter struct {
	http.ResponseWriter
	code int
}

func (c *codeWriter) WriteHeader(code int) {
	c.code = code
	c.ResponseWriter.WriteHeader(code)
}

func hexDecode(s string) ([]byte, error) {
	b, err := hex.DecodeString(s)
	if err == nil && len(b) != 32 {
		err = errors.New("not 32 bytes")
	}
	return b, err
}
