package ingress

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pamworker/pamworker/events"
)

// TestOpenAPIMatchesRoutes: the document lists exactly the routes the mux serves, each
// response with a description and a body schema; every status the handlers can answer is in
// the route's table (the end-to-end tests check every status they see against the served
// document, and the handler logs any other).
func TestOpenAPIMatchesRoutes(t *testing.T) {
	raw, err := json.Marshal(openAPI())
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string `json:"openapi"`
		Paths   map[string]map[string]struct {
			OperationID string `json:"operationId"`
			Responses   map[string]struct {
				Description string         `json:"description"`
				Content     map[string]any `json:"content"`
			} `json:"responses"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil || doc.OpenAPI != "3.1.0" {
		t.Fatalf("%v %q", err, doc.OpenAPI)
	}
	n := 0
	for _, item := range doc.Paths {
		n += len(item)
	}
	if n != len(routes) {
		t.Errorf("the document has %d operations, the mux %d routes", n, len(routes))
	}
	for _, rt := range routes {
		op, ok := doc.Paths[rt.path][strings.ToLower(rt.method)]
		if !ok || op.OperationID != rt.operation {
			t.Errorf("%s %s (%s) not in the document", rt.method, rt.path, rt.operation)
			continue
		}
		for code, desc := range rt.responses {
			r, ok := op.Responses[strconv.Itoa(code)]
			if !ok || r.Description != desc || len(r.Content) == 0 {
				t.Errorf("%s %s: response %d missing or without a body schema", rt.method, rt.path, code)
			}
		}
	}
	// The statuses statusOf maps results to are documented for both result routes.
	for _, st := range []events.Status{events.Succeeded, events.Failed, events.Rejected} {
		for _, rt := range routes[:2] {
			if _, ok := rt.responses[statusOf(st)]; !ok {
				t.Errorf("%s: status %d of a %s result is not documented", rt.operation, statusOf(st), st)
			}
		}
	}
}

func TestPreferWait(t *testing.T) {
	for _, tc := range []struct {
		prefer []string
		want   time.Duration
	}{
		{nil, 8 * time.Second},
		{[]string{"wait=3"}, 3 * time.Second},
		{[]string{"wait=30"}, 8 * time.Second}, // capped
		{[]string{"respond-async"}, 0},
		{[]string{"return=minimal, wait=2"}, 2 * time.Second},
		{[]string{"Wait=1"}, time.Second},
		{[]string{"wait=-4"}, 8 * time.Second},
		{[]string{"wait=abc"}, 8 * time.Second},
		{[]string{"wait=99999999999999999999"}, 8 * time.Second},
	} {
		r := httptest.NewRequest(http.MethodPost, "/", nil)
		for _, v := range tc.prefer {
			r.Header.Add("Prefer", v)
		}
		if got := preferWait(r, 8*time.Second); got != tc.want {
			t.Errorf("Prefer %q: %v, want %v", tc.prefer, got, tc.want)
		}
	}
}

func TestWithRequester(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"session_id":"a"}`, `{"session_id":"a","requested_by":"tines"}`},
		{`{"specversion":"1.0","id":"x","type":"t","source":"s","data":{"session_id":"a"}}`,
			`{"specversion":"1.0","id":"x","type":"t","source":"s","data":{"session_id":"a","requested_by":"tines"}}`},
		{`{"data":{"x":1}}`, `{"data":{"x":1},"requested_by":"tines"}`}, // not CloudEvents: data is a field like another
	} {
		got, err := withRequester([]byte(tc.in), "tines")
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: %s %v, want %s", tc.in, got, err, tc.want)
		}
	}
}
