package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"

	"github.com/pamworker/pamworker/events"
)

// otlpReceiver is an in-process OTLP/HTTP trace receiver: what the worker exports over the
// real protocol, decoded by the OpenTelemetry Collector's own OTLP JSON decoder (pdata).
type otlpReceiver struct {
	mu    sync.Mutex
	spans []gotSpan
	url   string
}

// gotSpan is one received span.
type gotSpan struct {
	traceID, spanID, parentID, name string
	kind                            ptrace.SpanKind
	attrs                           map[string]string
	text                            string // everything it holds, to scan for secrets
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	o := &otlpReceiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "want application/json on /v1/traces", http.StatusUnsupportedMediaType)
			return
		}
		body, _ := io.ReadAll(r.Body)
		traces, err := (&ptrace.JSONUnmarshaler{}).UnmarshalTraces(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			t.Errorf("the OTLP receiver could not decode an export: %v\n%s", err, body)
			return
		}
		o.mu.Lock()
		for i := 0; i < traces.ResourceSpans().Len(); i++ {
			ss := traces.ResourceSpans().At(i).ScopeSpans()
			for j := 0; j < ss.Len(); j++ {
				spans := ss.At(j).Spans()
				for k := 0; k < spans.Len(); k++ {
					o.spans = append(o.spans, received(spans.At(k)))
				}
			}
		}
		o.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte("{}"))
	}))
	t.Cleanup(srv.Close)
	o.url = srv.URL
	return o
}

func received(sp ptrace.Span) gotSpan {
	g := gotSpan{traceID: sp.TraceID().String(), spanID: sp.SpanID().String(), parentID: sp.ParentSpanID().String(),
		name: sp.Name(), kind: sp.Kind(), attrs: map[string]string{}}
	sp.Attributes().Range(func(k string, v pcommon.Value) bool {
		g.attrs[k] = v.AsString()
		return true
	})
	g.text = fmt.Sprint(g.name, g.attrs)
	for e := 0; e < sp.Events().Len(); e++ {
		g.text += " " + sp.Events().At(e).Name() + fmt.Sprint(sp.Events().At(e).Attributes().AsRaw())
	}
	return g
}

// trace returns the spans of traceID (hex) once every kind in want is among them.
func (o *otlpReceiver) trace(t *testing.T, traceID string, want ...ptrace.SpanKind) []gotSpan {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		o.mu.Lock()
		var got []gotSpan
		kinds := map[ptrace.SpanKind]bool{}
		for _, s := range o.spans {
			if s.traceID == traceID {
				got = append(got, s)
				kinds[s.kind] = true
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

func spanOf(spans []gotSpan, kind ptrace.SpanKind) gotSpan {
	for _, s := range spans {
		if s.kind == kind {
			return s
		}
	}
	return gotSpan{}
}

// spanNamed waits for the span of traceID called name (the vendor call comes after the token
// request, both client spans).
func spanNamed(t *testing.T, o *otlpReceiver, traceID, name string) gotSpan {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, s := range o.trace(t, traceID) {
			if s.name == name {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s has no span %q", traceID, name)
		}
		time.Sleep(50 * time.Millisecond)
	}
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
	if h := resultTraceparent(t, results, eventID); !strings.HasPrefix(h, "00-"+traceID+"-") {
		t.Errorf("the result's traceparent %q is not in the caller's trace %s", h, traceID)
	}

	spans := otlp.trace(t, traceID, ptrace.SpanKindServer, ptrace.SpanKindProducer, ptrace.SpanKindConsumer, ptrace.SpanKindClient)
	server, producer := spanOf(spans, ptrace.SpanKindServer), spanOf(spans, ptrace.SpanKindProducer)
	consumer, client := spanOf(spans, ptrace.SpanKindConsumer), spanNamed(t, otlp, traceID, "HTTP DELETE")
	for _, link := range []struct{ child, parent gotSpan }{
		{server, gotSpan{spanID: parent}},
		{producer, server},
		{consumer, producer},
		{client, consumer},
	} {
		if link.child.parentID != link.parent.spanID {
			t.Errorf("span %q: parent %s, want %s", link.child.name, link.child.parentID, link.parent.spanID)
		}
	}
	if server.name != "POST /v1/actions/{subject}" || producer.name != "send pam.session.drop" || consumer.name != "process pam.session.drop" || client.name != "HTTP DELETE" {
		t.Errorf("span names: %q %q %q %q", server.name, producer.name, consumer.name, client.name)
	}
	for _, s := range []gotSpan{producer, consumer} {
		if s.attrs["messaging.system"] != "nats" || s.attrs["messaging.destination.name"] != events.SessionDrop || s.attrs["messaging.message.id"] != eventID {
			t.Errorf("span %q lacks the messaging attributes: %v", s.name, s.attrs)
		}
	}
	if u := client.attrs["url.full"]; !strings.HasSuffix(u, "/api/pam/session/drop/%7Bid%7D") || client.attrs["url.template"] != "/api/pam/session/drop/{id}" ||
		client.attrs["pamworker.target"] != "segura/default" {
		t.Errorf("vendor span: %v", client.attrs)
	}
	if consumer.attrs["pamworker.status"] != "succeeded" {
		t.Errorf("process span status %q", consumer.attrs["pamworker.status"])
	}
	// No session id, token or other canary in any span.
	for _, s := range spans {
		if strings.Contains(s.text, session) {
			t.Errorf("span %q holds the session id", s.name)
		}
		scanForSecrets(t, "span "+s.name, s.text)
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
	spans = otlp.trace(t, direct, ptrace.SpanKindConsumer, ptrace.SpanKindClient)
	if c := spanOf(spans, ptrace.SpanKindConsumer); c.parentID != directParent {
		t.Errorf("direct event's span parent %s, want %s", c.parentID, directParent)
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
