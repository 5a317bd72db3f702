package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/ingress"
)

// The ingress tests run the real binary with its HTTP ingress and call it as a SOAR tool
// would: bearer tokens, the action's payload as body, Idempotency-Key, Prefer: wait.

// ingressRig is a rig whose worker (or a separate ingress process) serves the ingress.
type ingressRig struct {
	*rig
	addr   string            // the ingress's host:port
	tokens map[string]string // by caller name
	env    []string          // the ingress settings, to add to the rig's
	seen   *observed
}

// newIngressRig gives three callers tokens: soar may post every action, tines only session
// drops, other every action of pam.> and element.>.
func newIngressRig(t *testing.T, extra ...string) *ingressRig {
	t.Helper()
	ir := &ingressRig{rig: newRig(t), addr: freeAddr(t), tokens: map[string]string{}, seen: observedIn(t)}
	var callers []string
	for _, c := range []struct{ name, subjects string }{{"soar", ">"}, {"tines", "pam.session.drop"}, {"other", "pam.>,element.>"}} {
		token := "tok-" + c.name + "-" + newEventID()
		addCanary("ingress token of "+c.name, token)
		ir.tokens[c.name] = token
		callers = append(callers, c.name+":"+ingress.HashToken(token)+":"+c.subjects)
	}
	ir.env = append([]string{"PAMWORKER_INGRESS_ADDR=" + ir.addr, "PAMWORKER_INGRESS_CALLERS=" + strings.Join(callers, ";")}, extra...)
	return ir
}

// observed records every route and status the ingress answered in a test, to check them
// against the OpenAPI document it serves.
type observed struct {
	mu   sync.Mutex
	seen map[string]bool // "POST /v1/actions/{subject} 200"
}

func observedIn(t *testing.T) *observed { return &observed{seen: map[string]bool{}} }

var resultPath = regexp.MustCompile(`^/v1/results/[^/]+$`)

func (o *observed) add(method, path string, code int) {
	route := path
	switch {
	case strings.HasPrefix(path, "/v1/actions/"):
		route = "/v1/actions/{subject}"
	case resultPath.MatchString(strings.SplitN(path, "?", 2)[0]):
		route = "/v1/results/{event_id}"
	}
	o.mu.Lock()
	o.seen[method+" "+route+" "+strconv.Itoa(code)] = true
	o.mu.Unlock()
}

// call is one HTTP request to the ingress as caller (a name in tokens, or a raw
// "Bearer ..." value, or "" for none); hdr holds extra headers.
func (ir *ingressRig) call(t *testing.T, method, path, caller string, body io.Reader, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+ir.addr+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if tok, ok := ir.tokens[caller]; ok {
		req.Header.Set("Authorization", "Bearer "+tok)
	} else if caller != "" {
		req.Header.Set("Authorization", caller)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	scanForSecrets(t, method+" "+path, string(b))
	ir.seen.add(method, path, resp.StatusCode)
	return resp, b
}

func (ir *ingressRig) post(t *testing.T, subject, caller, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	return ir.call(t, http.MethodPost, "/v1/actions/"+subject, caller, strings.NewReader(body), hdr...)
}

// pendingBody is the body of a 202 or 503 while an event has no result.
type pendingBody struct {
	EventID     string `json:"event_id"`
	Status      string `json:"status"`
	Location    string `json:"location"`
	Target      string `json:"target"`
	TargetState string `json:"target_state"`
	Reason      string `json:"reason"`
}

func decodeResult(t *testing.T, b []byte) events.Result {
	t.Helper()
	var res events.Result
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("not a result: %v\n%s", err, b)
	}
	return res
}

// checkOpenAPI fetches the served document and checks that every route and status seen in
// the test is in it: the document cannot drift from what the ingress answers.
func (ir *ingressRig) checkOpenAPI(t *testing.T) {
	t.Helper()
	resp, b := ir.call(t, http.MethodGet, "/v1/openapi.json", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("openapi.json: %d", resp.StatusCode)
	}
	var doc struct {
		OpenAPI string                                                   `json:"openapi"`
		Paths   map[string]map[string]struct{ Responses map[string]any } `json:"paths"`
	}
	if err := json.Unmarshal(b, &doc); err != nil || !strings.HasPrefix(doc.OpenAPI, "3.1") {
		t.Fatalf("openapi.json is not an OpenAPI 3.1 document: %v %q", err, doc.OpenAPI)
	}
	ir.seen.mu.Lock()
	defer ir.seen.mu.Unlock()
	for k := range ir.seen.seen {
		f := strings.Fields(k)
		op, ok := doc.Paths[f[1]][strings.ToLower(f[0])]
		if !ok {
			t.Errorf("%s %s answered but not in openapi.json", f[0], f[1])
			continue
		}
		if _, ok := op.Responses[f[2]]; !ok {
			t.Errorf("%s %s answered %s, which openapi.json does not document", f[0], f[1], f[2])
		}
	}
}

func TestIngressActions(t *testing.T) {
	t.Parallel()
	ir := newIngressRig(t, "PAMWORKER_INGRESS_RATE=1000") // the rate limit has a test of its own
	w := startWorker(t, append(ir.rig.env, ir.env...))
	session := ir.segura.AddSession()
	ir.element.AddSession("jdoe", "")

	// Every action over HTTP, the result in the response, its status mapped for a playbook.
	for _, tc := range []struct {
		subject, body string
		code          int
		status        events.Status
	}{
		{events.SessionDrop, `{"session_id":"` + session + `","correlation_id":"INC-1"}`, 200, events.Succeeded},
		{events.CredentialDisable, `{"credential_id":21}`, 200, events.Succeeded},
		{events.CredentialEnable, `{"credential_id":21}`, 200, events.Succeeded},
		{events.CustodyRelease, `{"credential_id":22}`, 200, events.Succeeded}, // not in custody: 1018, a noop
		{events.ElementSessionsDelete, `{"username":"jdoe"}`, 200, events.Succeeded},
		{events.CredentialDisable, `{"credential_id":999999}`, 502, events.Failed},
		{events.CredentialDisable, `{"credential_id":23,"requested_by":"alice"}`, 200, events.Succeeded},
	} {
		resp, b := ir.post(t, tc.subject, "soar", tc.body)
		res := decodeResult(t, b)
		if resp.StatusCode != tc.code || res.Status != tc.status || res.Action != tc.subject || resp.Header.Get("Pamworker-Event-Id") != res.EventID {
			t.Errorf("%s %s: %d %s, want %d %s\n%s", tc.subject, tc.body, resp.StatusCode, res.Status, tc.code, tc.status, b)
		}
		if want := "soar"; !strings.Contains(tc.body, "requested_by") && res.RequestedBy != want {
			t.Errorf("%s: requested_by %q, want the caller's name %q", tc.subject, res.RequestedBy, want)
		}
		if strings.Contains(tc.body, "alice") && res.RequestedBy != "alice" {
			t.Errorf("requested_by in the body was replaced: %q", res.RequestedBy)
		}
		// The same result is there to GET afterwards, from the ledger.
		if resp, b2 := ir.call(t, http.MethodGet, "/v1/results/"+res.EventID, "soar", nil); resp.StatusCode != tc.code || !bytes.Equal(b, b2) {
			t.Errorf("GET the result of %s: %d\n%s\nwant\n%s", res.EventID, resp.StatusCode, b2, b)
		}
	}
	if ir.segura.SessionOpen(session) {
		t.Error("the session was not dropped")
	}
	if active, _, _ := ir.segura.Credential(23); active {
		t.Error("credential 23 was not disabled")
	}
	if ir.element.Sessions("jdoe") != 0 {
		t.Error("jdoe's Element sessions were not deleted")
	}

	// CloudEvents, structured and binary: the CloudEvents id is the event id.
	s2, s3 := ir.segura.AddSession(), ir.segura.AddSession()
	resp, b := ir.post(t, events.SessionDrop, "soar", `{"specversion":"1.0","id":"ce-struct-1","type":"pam.session.drop","source":"xsoar","data":{"session_id":"`+s2+`"}}`,
		"Content-Type", "application/cloudevents+json")
	if res := decodeResult(t, b); resp.StatusCode != 200 || res.EventID != "ce-struct-1" || ir.segura.SessionOpen(s2) {
		t.Errorf("CloudEvents structured: %d\n%s", resp.StatusCode, b)
	}
	resp, b = ir.post(t, events.SessionDrop, "soar", `{"session_id":"`+s3+`"}`,
		"ce-specversion", "1.0", "ce-id", "ce-bin-1", "ce-type", "pam.session.drop", "ce-source", "tines")
	if res := decodeResult(t, b); resp.StatusCode != 200 || res.EventID != "ce-bin-1" || ir.segura.SessionOpen(s3) {
		t.Errorf("CloudEvents binary: %d\n%s", resp.StatusCode, b)
	}

	// Refused before anything is published: malformed (400), unknown field or invalid (422),
	// unknown action (404), wrong media type (415).
	before := streamMessages(t, ir.rig)
	for _, tc := range []struct {
		subject, body string
		code          int
		want          string
		hdr           []string
	}{
		{events.CredentialDisable, `{"credential_id":`, 400, "not a JSON object", nil},
		{events.CredentialDisable, `{"credential_id":5,"credentail_id":6}`, 422, `unknown field \"credentail_id\"`, nil},
		{events.CredentialDisable, `{"credential_id":"5; DROP"}`, 422, "credential_id", nil},
		{events.SessionDrop, `{"session_id":""}`, 422, "session_id", nil},
		{events.SessionDrop, `{"session_id":"a\u200bb"}`, 422, "session_id", nil},
		{events.CredentialDisable, `{"credential_id":5,"dry_run":null}`, 422, "dry_run", nil},
		{"pam.everything.delete", `{}`, 404, "no action is bound", nil},
		{events.CredentialDisable, `{"credential_id":5}`, 415, "media type", []string{"Content-Type", "application/xml"}},
		{events.CredentialDisable, `{"credential_id":5}`, 422, "Idempotency-Key", []string{"Idempotency-Key", "k-1", "ce-specversion", "1.0", "ce-id", "k-2", "ce-type", "x", "ce-source", "y"}},
	} {
		resp, b := ir.post(t, tc.subject, "soar", tc.body, tc.hdr...)
		if resp.StatusCode != tc.code || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s %s: %d, want %d naming %q\n%s", tc.subject, tc.body, resp.StatusCode, tc.code, tc.want, b)
		}
	}
	if after := streamMessages(t, ir.rig); after != before {
		t.Errorf("refused requests published %d events", after-before)
	}

	// Idempotency-Key: a retried POST gets the same result and the vendor is called once, also
	// when the retries race each other; the same key with another body is refused.
	resp, first := ir.post(t, events.CredentialDisable, "soar", `{"credential_id":60}`, "Idempotency-Key", "xsoar-inc-77-step-3")
	if resp.StatusCode != 200 || decodeResult(t, first).EventID != "xsoar-inc-77-step-3" {
		t.Fatalf("first POST with a key: %d\n%s", resp.StatusCode, first)
	}
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, again := ir.post(t, events.CredentialDisable, "soar", `{"credential_id":60}`, "Idempotency-Key", "xsoar-inc-77-step-3")
			if resp.StatusCode != 200 || !bytes.Equal(first, again) {
				t.Errorf("retried POST: %d\n%s\nwant\n%s", resp.StatusCode, again, first)
			}
		}()
	}
	wg.Wait()
	race := make(chan []byte, 4)
	for range 4 { // four retries of a new key at once: one event, one call
		go func() {
			_, b := ir.post(t, events.CredentialDisable, "soar", `{"credential_id":61}`, "Idempotency-Key", "race-key-1")
			race <- b
		}()
	}
	var raced [][]byte
	for range 4 {
		raced = append(raced, <-race)
	}
	for _, b := range raced[1:] {
		if !bytes.Equal(b, raced[0]) {
			t.Errorf("racing retries answered differently:\n%s\n%s", b, raced[0])
		}
	}
	if n := ir.segura.CallsTo("DELETE", "/pam/credential/60"); n != 1 {
		t.Errorf("a retried POST called the vendor %d times", n)
	}
	if n := ir.segura.CallsTo("DELETE", "/pam/credential/61"); n != 1 {
		t.Errorf("racing retries called the vendor %d times", n)
	}
	resp, b = ir.post(t, events.CredentialEnable, "soar", `{"credential_id":60}`, "Idempotency-Key", "xsoar-inc-77-step-3")
	if res := decodeResult(t, b); resp.StatusCode != 422 || res.Error == nil || res.Error.Code != events.CodeIDConflict {
		t.Errorf("the same key with another body: %d\n%s", resp.StatusCode, b)
	}
	if active, _, _ := ir.segura.Credential(60); active {
		t.Error("the conflicting enable ran")
	}

	// Who may post what: 401 without or with a wrong token, 403 for a subject the caller may
	// not post, and a token in the wrong scheme is no token.
	wrong := "Bearer not-a-token-" + newEventID()
	addCanary("wrong ingress token", strings.TrimPrefix(wrong, "Bearer "))
	for _, tc := range []struct {
		caller, subject string
		code            int
	}{
		{"", events.SessionDrop, 401},
		{wrong, events.SessionDrop, 401},
		{"Basic " + ir.tokens["soar"], events.SessionDrop, 401},
		{"tines", events.CredentialDisable, 403},
		{"tines", events.ElementSessionsDelete, 403},
	} {
		if resp, b := ir.post(t, tc.subject, tc.caller, `{"credential_id":70}`); resp.StatusCode != tc.code {
			t.Errorf("%q posting %s: %d, want %d\n%s", tc.caller, tc.subject, resp.StatusCode, tc.code, b)
		}
	}
	if active, _, _ := ir.segura.Credential(70); !active {
		t.Error("a refused caller's disable ran")
	}
	resp, b = ir.post(t, events.SessionDrop, "tines", `{"session_id":"`+ir.segura.AddSession()+`"}`)
	if res := decodeResult(t, b); resp.StatusCode != 200 || res.RequestedBy != "tines" {
		t.Errorf("tines posting a session drop: %d\n%s", resp.StatusCode, b)
	}
	// A caller reads only results of subjects it may post.
	if resp, _ := ir.call(t, http.MethodGet, "/v1/results/xsoar-inc-77-step-3", "tines", nil); resp.StatusCode != 404 {
		t.Errorf("tines read a credential result: %d", resp.StatusCode)
	}
	if resp, _ := ir.call(t, http.MethodGet, "/v1/results/never-seen-id", "soar", nil); resp.StatusCode != 404 {
		t.Errorf("GET an id never seen: %d, want 404", resp.StatusCode)
	}
	if resp, _ := ir.call(t, http.MethodGet, "/v1/results/xsoar-inc-77-step-3", "", nil); resp.StatusCode != 401 {
		t.Errorf("GET without a token: %d, want 401", resp.StatusCode)
	}

	// 413 for a body over PAMWORKER_MAX_EVENT_BYTES, announced or streamed.
	big := `{"credential_id":71,"reason":"` + strings.Repeat("x", events.DefaultMaxEventBytes) + `"}`
	if resp, _ := ir.post(t, events.CredentialDisable, "soar", big); resp.StatusCode != 413 {
		t.Errorf("a big body: %d, want 413", resp.StatusCode)
	}
	chunked := io.MultiReader(strings.NewReader(big), strings.NewReader(""))
	if resp, _ := ir.call(t, http.MethodPost, "/v1/actions/"+events.CredentialDisable, "soar", chunked); resp.StatusCode != 413 {
		t.Errorf("a big chunked body: %d, want 413", resp.StatusCode)
	}

	// Prefer: respond-async answers 202 at once, with where to poll.
	resp, b = ir.post(t, events.CredentialDisable, "soar", `{"credential_id":72}`, "Prefer", "respond-async")
	if resp.StatusCode != 202 || resp.Header.Get("Retry-After") == "" || !strings.HasPrefix(resp.Header.Get("Location"), "/v1/results/") {
		t.Fatalf("respond-async: %d %v\n%s", resp.StatusCode, resp.Header, b)
	}
	pollResult(t, ir, resp.Header.Get("Location"), "soar", 200)

	// An event published straight to NATS with a traceparent gets it back on its result, with
	// tracing off in the worker.
	sub, err := ir.nc.SubscribeSync("results." + events.CredentialDisable)
	if err != nil {
		t.Fatal(err)
	}
	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	if err := ir.nc.PublishMsg(&nats.Msg{Subject: events.CredentialDisable, Data: []byte(`{"event_id":"traced-1","credential_id":73}`),
		Header: nats.Header{"traceparent": []string{tp}, "Nats-Msg-Id": []string{"traced-1"}}}); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := sub.NextMsg(20 * time.Second)
		if err != nil {
			t.Fatal("no result for traced-1")
		}
		if strings.Contains(string(m.Data), `"traced-1"`) {
			if got := m.Header.Get("traceparent"); got != tp {
				t.Errorf("result traceparent %q, want the event's %q", got, tp)
			}
			break
		}
	}

	metrics := w.get(t, "/metrics")
	for _, want := range []string{
		`pamworker_ingress_requests_total{code="200",operation="postAction"}`,
		`pamworker_ingress_requests_total{code="401",operation="postAction"}`,
		`pamworker_ingress_requests_total{code="403",operation="postAction"}`,
		`pamworker_ingress_auth_failures_total{reason="missing"}`,
		`pamworker_ingress_auth_failures_total{reason="invalid_token"}`,
		`pamworker_ingress_request_duration_seconds_bucket{operation="postAction",le=`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !strings.Contains(w.logs.String(), "authentication") {
		t.Error("failed authentication is not logged")
	}
	if strings.Contains(w.logs.String(), "does not list") {
		t.Error("the ingress answered a status its OpenAPI document does not list")
	}
	ir.checkOpenAPI(t)
}

// pollResult polls location as a Logic App would, honouring Retry-After, until it answers
// want.
func pollResult(t *testing.T, ir *ingressRig, location, caller string, want int) []byte {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, b := ir.call(t, http.MethodGet, location, caller, nil)
		if resp.StatusCode == want {
			return b
		}
		if resp.StatusCode != 202 && resp.StatusCode != 503 {
			t.Fatalf("poll %s: %d\n%s", location, resp.StatusCode, b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("poll %s: still %d after 30s\n%s", location, resp.StatusCode, b)
		}
		secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		time.Sleep(time.Duration(max(secs, 1)) * time.Second / 4) // a quarter: the test need not be slow
	}
}

func streamMessages(t *testing.T, r *rig) uint64 {
	t.Helper()
	s, err := r.js.Stream(t.Context(), "PAMWORKER_EVENTS")
	if err != nil {
		return 0
	}
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// TestIngressSlowVendor: a result that takes longer than the caller waits is a 202 with where
// to poll; the poll finds it once it exists; the vendor is called once.
func TestIngressSlowVendor(t *testing.T) {
	t.Parallel()
	ir := newIngressRig(t)
	startWorker(t, append(ir.rig.env, ir.env...))
	ir.segura.SetLatency(3 * time.Second)
	resp, b := ir.post(t, events.CredentialDisable, "soar", `{"credential_id":80}`, "Prefer", "wait=1", "Idempotency-Key", "slow-1")
	if resp.StatusCode != 202 || resp.Header.Get("Location") == "" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("slow vendor, Prefer: wait=1: %d %v\n%s", resp.StatusCode, resp.Header, b)
	}
	var pending pendingBody
	if err := json.Unmarshal(b, &pending); err != nil || pending.EventID != "slow-1" || pending.Status != "pending" || pending.Location != resp.Header.Get("Location") {
		t.Errorf("202 body: %v %s", err, b)
	}
	// Polled at once: still pending. A retried POST meanwhile is the same event, pending too.
	if resp, _ := ir.call(t, http.MethodGet, pending.Location, "soar", nil); resp.StatusCode != 202 {
		t.Errorf("poll while pending: %d", resp.StatusCode)
	}
	if resp, _ := ir.post(t, events.CredentialDisable, "soar", `{"credential_id":80}`, "Prefer", "wait=0", "Idempotency-Key", "slow-1"); resp.StatusCode != 202 {
		t.Errorf("retried POST while pending: %d", resp.StatusCode)
	}
	// The same key with another body while the first is pending: refused, not "pending".
	if resp, b := ir.post(t, events.CredentialEnable, "soar", `{"credential_id":80}`, "Prefer", "wait=0", "Idempotency-Key", "slow-1"); resp.StatusCode != 422 || !strings.Contains(string(b), events.CodeIDConflict) {
		t.Errorf("another body under a pending key: %d\n%s", resp.StatusCode, b)
	}
	res := decodeResult(t, pollResult(t, ir, pending.Location, "soar", 200))
	if res.EventID != "slow-1" || res.Status != events.Succeeded {
		t.Errorf("polled result: %+v", res)
	}
	// The Location without its sequence works too (the ledger answers).
	if resp, _ := ir.call(t, http.MethodGet, "/v1/results/slow-1", "soar", nil); resp.StatusCode != 200 {
		t.Errorf("GET without seq: %d", resp.StatusCode)
	}
	if n := ir.segura.CallsTo("DELETE", "/pam/credential/80"); n != 1 {
		t.Errorf("vendor called %d times", n)
	}
	ir.checkOpenAPI(t)
}

// TestIngressTargetDown: while the target refuses the worker, the caller gets 503 naming the
// target and where to poll; once it is back the poll gets the result.
func TestIngressTargetDown(t *testing.T) {
	t.Parallel()
	ir := newIngressRig(t)
	startWorker(t, append(ir.rig.env, ir.env...))
	ir.segura.SetRevoked(true)
	resp, b := ir.post(t, events.CredentialDisable, "soar", `{"credential_id":81}`, "Prefer", "wait=2")
	var pending pendingBody
	_ = json.Unmarshal(b, &pending)
	if resp.StatusCode != 503 || pending.Target != "segura/default" || pending.TargetState != "refused" || resp.Header.Get("Location") == "" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("target down: %d %v\n%s", resp.StatusCode, resp.Header, b)
	}
	if resp, _ := ir.call(t, http.MethodGet, pending.Location, "soar", nil); resp.StatusCode != 503 {
		t.Errorf("poll while the target is down: %d", resp.StatusCode)
	}
	ir.segura.SetRevoked(false)
	if res := decodeResult(t, pollResult(t, ir, pending.Location, "soar", 200)); res.EventID != pending.EventID || res.Status != events.Succeeded {
		t.Errorf("after the target came back: %+v", res)
	}
	ir.checkOpenAPI(t)
}

// TestIngressRateLimit floods the ingress from one caller: it gets 429 with Retry-After while
// another caller's requests pass.
func TestIngressRateLimit(t *testing.T) {
	t.Parallel()
	ir := newIngressRig(t, "PAMWORKER_INGRESS_RATE=2")
	startWorker(t, append(ir.rig.env, ir.env...))
	var mu sync.Mutex
	codes := map[int]int{}
	retryAfter := true
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, _ := ir.post(t, events.CredentialDisable, "soar", fmt.Sprintf(`{"credential_id":%d,"dry_run":true}`, 100+i), "Prefer", "wait=0")
			mu.Lock()
			defer mu.Unlock()
			codes[resp.StatusCode]++
			if resp.StatusCode == 429 {
				if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || n < 1 {
					retryAfter = false
				}
			}
		}()
	}
	// Meanwhile another caller is not held back by the flood.
	for i := range 2 {
		if resp, b := ir.post(t, events.CredentialDisable, "other", fmt.Sprintf(`{"credential_id":%d,"dry_run":true}`, 200+i)); resp.StatusCode != 200 {
			t.Errorf("another caller during the flood: %d\n%s", resp.StatusCode, b)
		}
	}
	wg.Wait()
	if codes[429] < 30 || codes[429]+codes[200]+codes[202] != 40 || !retryAfter {
		t.Errorf("flood of 40 at 2/s: %v (Retry-After set on every 429: %v)", codes, retryAfter)
	}
	ir.checkOpenAPI(t)
}

// TestIngressOwnProcess runs the ingress as its own process beside a separate worker.
func TestIngressOwnProcess(t *testing.T) {
	t.Parallel()
	ir := newIngressRig(t)
	startWorker(t, ir.rig.env) // no ingress in the worker
	in := startProc(t, append(append([]string{"PAMWORKER_NATS_URL=" + ir.natsURL}, ir.env...), "PAMWORKER_LOG_LEVEL=debug"), "ingress")
	session := ir.segura.AddSession()
	resp, b := ir.post(t, events.SessionDrop, "soar", `{"session_id":"`+session+`"}`)
	if res := decodeResult(t, b); resp.StatusCode != 200 || res.Status != events.Succeeded || ir.segura.SessionOpen(session) {
		t.Errorf("through the ingress process: %d\n%s", resp.StatusCode, b)
	}
	resp, b = ir.post(t, events.CredentialDisable, "soar", `{"credential_id":82}`, "Prefer", "respond-async")
	if resp.StatusCode != 202 {
		t.Fatalf("respond-async: %d\n%s", resp.StatusCode, b)
	}
	pollResult(t, ir, resp.Header.Get("Location"), "soar", 200)
	if m := in.get(t, "/metrics"); !strings.Contains(m, `pamworker_ingress_requests_total{code="200",operation="postAction"} 1`) {
		t.Errorf("ingress process metrics:\n%s", m)
	}
	if r := in.get(t, "/readyz"); !strings.HasPrefix(r, "ready") {
		t.Errorf("ingress /readyz: %q", r)
	}
}

func TestIngressHashToken(t *testing.T) {
	t.Parallel()
	stdout, _, code := cli(t, nil, "ingress", "hash-token", "s3cret-token")
	if code != 0 || strings.TrimSpace(stdout) != ingress.HashToken("s3cret-token") {
		t.Errorf("hash-token: %d %q", code, stdout)
	}
	stdout, _, code = cli(t, nil, "ingress", "hash-token", "--generate")
	if f := strings.Fields(stdout); code != 0 || len(f) != 4 || ingress.HashToken(f[1]) != f[3] {
		t.Errorf("hash-token --generate: %d %q", code, stdout)
	}
	if _, _, code := cli(t, nil, "ingress"); code != 2 {
		t.Errorf("ingress without PAMWORKER_INGRESS_ADDR: exit %d, want 2", code)
	}
}
