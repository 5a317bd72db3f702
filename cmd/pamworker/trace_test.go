package main

import (
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/pamworker/pamworker/events"
)

// otlpReceiver is an in-process OTLP/HTTP trace receiver: what the worker exports over the
// real protocol, decoded.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []*tracepb.Span
	url   string
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	o := &otlpReceiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/traces" {
			http.NotFound(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		var req coltrace.ExportTraceServiceRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		o.mu.Lock()
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				o.spans = append(o.spans, ss.Spans...)
			}
		}
		o.mu.Unlock()
		out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(srv.Close)
	o.url = srv.URL
	return o
}

// trace returns the spans of traceID (hex) once every kind in want is among them.
func (o *otlpReceiver) trace(t *testing.T, traceID string, want ...tracepb.Span_SpanKind) []*tracepb.Span {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		o.mu.Lock()
		var got []*tracepb.Span
		kinds := map[tracepb.Span_SpanKind]bool{}
		for _, s := range o.spans {
			if hex.EncodeToString(s.TraceId) == traceID {
				got = append(got, s)
				kinds[s.Kind] = true
			}
		}
		o.mu.Unlock()
		all := true
		for _, k := range want {
			all = all && kinds[k]
		}
		if all {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s: %d spans, kinds %v, want %v", traceID, len(got), kinds, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func spanOf(spans []*tracepb.Span, kind tracepb.Span_SpanKind) *tracepb.Span {
	for _, s := range spans {
		if s.Kind == kind {
			return s
		}
	}
	return nil
}

// spanNamed waits for the span of traceID called name (the vendor call comes after the token
// request, both client spans).
func spanNamed(t *testing.T, o *otlpReceiver, traceID, name string) *tracepb.Span {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, s := range o.trace(t, traceID) {
			if s.Name == name {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s has no span %q", traceID, name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func attr(s *tracepb.Span, key string) string {
	for _, a := range s.Attributes {
		if a.Key == key {
			return a.Value.GetStringValue()
		}
	}
	return ""
}

// TestTraceEndToEnd follows one action from a SOAR tool's HTTP request through NATS and the
// worker to the vendor call and the result: one trace id all along, each span the child of
// the one before, no id or secret beyond the event id in any attribute.
func TestTraceEndToEnd(t *testing.T) {
	t.Parallel()
	otlp := newOTLPReceiver(t)
	ir := newIngressRig(t)
	startWorker(t, append(append(ir.rig.env, ir.env...),
		"OTEL_EXPORTER_OTLP_ENDPOINT="+otlp.url, "OTEL_BSP_SCHEDULE_DELAY=100", "OTEL_SERVICE_NAME=pamworker-test"))
	results, err := ir.nc.SubscribeSync("results.>")
	if err != nil {
		t.Fatal(err)
	}

	const traceID, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	session := ir.segura.AddSession()
	resp, b := ir.post(t, events.SessionDrop, "soar", `{"session_id":"`+session+`"}`, "traceparent", "00-"+traceID+"-"+parent+"-01")
	if resp.StatusCode != 200 {
		t.Fatalf("POST: %d\n%s", resp.StatusCode, b)
	}
	eventID := decodeResult(t, b).EventID
	resultHeader := resultTraceparent(t, results, eventID)
	if !strings.HasPrefix(resultHeader, "00-"+traceID+"-") {
		t.Errorf("the result's traceparent %q is not in the caller's trace %s", resultHeader, traceID)
	}

	spans := otlp.trace(t, traceID, tracepb.Span_SPAN_KIND_SERVER, tracepb.Span_SPAN_KIND_PRODUCER, tracepb.Span_SPAN_KIND_CONSUMER, tracepb.Span_SPAN_KIND_CLIENT)
	server, producer := spanOf(spans, tracepb.Span_SPAN_KIND_SERVER), spanOf(spans, tracepb.Span_SPAN_KIND_PRODUCER)
	consumer, client := spanOf(spans, tracepb.Span_SPAN_KIND_CONSUMER), spanNamed(t, otlp, traceID, "HTTP DELETE")
	for _, link := range []struct {
		child, parent *tracepb.Span
		parentID      string
	}{
		{server, nil, parent},
		{producer, server, ""},
		{consumer, producer, ""},
		{client, consumer, ""},
	} {
		want := link.parentID
		if link.parent != nil {
			want = hex.EncodeToString(link.parent.SpanId)
		}
		if got := hex.EncodeToString(link.child.ParentSpanId); got != want {
			t.Errorf("span %q: parent %s, want %s", link.child.Name, got, want)
		}
	}
	if server.Name != "POST /v1/actions/{subject}" || producer.Name != "send pam.session.drop" || consumer.Name != "process pam.session.drop" || client.Name != "HTTP DELETE" {
		t.Errorf("span names: %q %q %q %q", server.Name, producer.Name, consumer.Name, client.Name)
	}
	for _, s := range []*tracepb.Span{producer, consumer} {
		if attr(s, "messaging.system") != "nats" || attr(s, "messaging.destination.name") != events.SessionDrop || attr(s, "messaging.message.id") != eventID {
			t.Errorf("span %q lacks the messaging attributes: %v", s.Name, s.Attributes)
		}
	}
	if u := attr(client, "url.full"); !strings.HasSuffix(u, "/api/pam/session/drop/%7Bid%7D") || attr(client, "url.template") != "/api/pam/session/drop/{id}" ||
		attr(client, "pamworker.target") != "segura/default" {
		t.Errorf("vendor span: url.full %q, url.template %q, target %q", u, attr(client, "url.template"), attr(client, "pamworker.target"))
	}
	if attr(consumer, "pamworker.status") != "succeeded" {
		t.Errorf("process span status %q", attr(consumer, "pamworker.status"))
	}
	// No session id, token or other canary in any span.
	for _, s := range spans {
		text := s.String()
		if strings.Contains(text, session) {
			t.Errorf("span %q holds the session id", s.Name)
		}
		scanForSecrets(t, "span "+s.Name, text)
	}

	// An event published straight to NATS with a traceparent continues that trace.
	const direct, directParent = "1bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	if err := ir.nc.PublishMsg(&nats.Msg{Subject: events.CredentialDisable, Data: []byte(`{"event_id":"direct-1","credential_id":90}`),
		Header: nats.Header{"traceparent": []string{"00-" + direct + "-" + directParent + "-01"}, "Nats-Msg-Id": []string{"direct-1"}}}); err != nil {
		t.Fatal(err)
	}
	if h := resultTraceparent(t, results, "direct-1"); !strings.HasPrefix(h, "00-"+direct+"-") {
		t.Errorf("direct event's result traceparent %q", h)
	}
	spans = otlp.trace(t, direct, tracepb.Span_SPAN_KIND_CONSUMER, tracepb.Span_SPAN_KIND_CLIENT)
	if c := spanOf(spans, tracepb.Span_SPAN_KIND_CONSUMER); hex.EncodeToString(c.ParentSpanId) != directParent {
		t.Errorf("direct event's span parent %x, want %s", c.ParentSpanId, directParent)
	}
}

// resultTraceparent waits for the result of id on sub and returns its traceparent header.
func resultTraceparent(t *testing.T, sub *nats.Subscription, id string) string {
	t.Helper()
	for {
		m, err := sub.NextMsg(20 * time.Second)
		if err != nil {
			t.Fatalf("no result for %s", id)
		}
		if strings.Contains(string(m.Data), `"event_id":"`+id+`"`) {
			return m.Header.Get("traceparent")
		}
	}
}
