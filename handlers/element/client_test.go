package element_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
	"github.com/pamworker/pamworker/handlers/element"
	"github.com/pamworker/pamworker/sandbox"
)

const (
	testUser     = "cluster-admin"
	testPassword = "el3ment-passw0rd"
)

func newClient(t *testing.T, url string, password string) *element.Client {
	t.Helper()
	c, err := element.New(element.Config{URL: url, Username: testUser, Password: handlers.NewSecret(password)})
	if err != nil {
		t.Fatalf("element.New: %v", err)
	}
	return c
}

func deleteEvent(username, authMethod string) events.Event {
	return events.Event{ID: "ev-1", Action: events.ElementSessionsDelete, Target: events.DefaultTarget, Username: username, AuthMethod: authMethod}
}

type rig struct {
	sim    *sandbox.Element
	client *element.Client
}

func setup(t *testing.T) *rig {
	t.Helper()
	sim := sandbox.NewElement(sandbox.ElementOptions{Username: testUser, Password: testPassword})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return &rig{sim: sim, client: newClient(t, srv.URL+sandbox.ElementEndpointPath, testPassword)}
}

// seen is one request as a hand-written Element recorded it.
type seen struct {
	method, path, contentType string
	user, pass                string
	basic                     bool
	body                      map[string]any
}

func TestRequestShape(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var reqs []seen
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		s := seen{method: r.Method, path: r.URL.Path, contentType: r.Header.Get("Content-Type")}
		s.user, s.pass, s.basic = r.BasicAuth()
		if err := json.Unmarshal(raw, &s.body); err != nil {
			t.Errorf("request body is not JSON: %v: %s", err, raw)
		}
		mu.Lock()
		reqs = append(reqs, s)
		mu.Unlock()
		fmt.Fprint(w, `{"id": 1, "result": {"sessions": []}}`)
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL+"/json-rpc/12.0", testPassword)

	tests := []struct {
		ev         events.Event
		wantMethod string
		wantParams map[string]any
	}{
		{deleteEvent("admin", "Cluster"), "DeleteAuthSessionsByUsername", map[string]any{"username": "admin", "authMethod": "Cluster"}},
		{deleteEvent("CN=Jane Doe,OU=Ops,DC=example,DC=com", "Ldap"), "DeleteAuthSessionsByUsername",
			map[string]any{"username": "CN=Jane Doe,OU=Ops,DC=example,DC=com", "authMethod": "Ldap"}},
		{deleteEvent("jane@example.com", ""), "DeleteAuthSessionsByUsername", map[string]any{"username": "jane@example.com"}},
		{func() events.Event { e := deleteEvent("admin", "Idp"); e.DryRun = true; return e }(), "ListAuthSessionsByUsername",
			map[string]any{"username": "admin", "authMethod": "Idp"}},
	}
	for _, tc := range tests {
		if _, err := c.Handle(context.Background(), tc.ev); err != nil {
			t.Fatalf("Handle: %v", err)
		}
	}
	if len(reqs) != len(tests) {
		t.Fatalf("server saw %d requests, want %d", len(reqs), len(tests))
	}
	ids := map[any]bool{}
	for i, tc := range tests {
		s := reqs[i]
		if s.method != http.MethodPost || s.path != "/json-rpc/12.0" || s.contentType != "application/json-rpc" {
			t.Errorf("request %d: %s %s Content-Type %q", i, s.method, s.path, s.contentType)
		}
		if !s.basic || s.user != testUser || s.pass != testPassword {
			t.Errorf("request %d: Basic auth %q/%q (present %v)", i, s.user, s.pass, s.basic)
		}
		if s.body["method"] != tc.wantMethod {
			t.Errorf("request %d: method %v, want %s", i, s.body["method"], tc.wantMethod)
		}
		if !reflect.DeepEqual(s.body["params"], tc.wantParams) {
			t.Errorf("request %d: params %v, want %v", i, s.body["params"], tc.wantParams)
		}
		if _, ok := s.body["id"].(float64); !ok || ids[s.body["id"]] {
			t.Errorf("request %d: id %v is not a fresh number", i, s.body["id"])
		}
		ids[s.body["id"]] = true
	}
}

func TestClassification(t *testing.T) {
	t.Parallel()
	rpcErr := func(name string) string {
		return fmt.Sprintf(`{"id": 1, "error": {"code": 500, "name": %q, "message": "%s happened"}}`, name, name)
	}
	inThirty := time.Now().Add(30 * time.Second).UTC().Format(http.TimeFormat)
	tests := []struct {
		name   string
		status int
		body   string
		header []string
		kind   string // "ok", "noop", "permanent", "retry", "down"
		code   string
		reason handlers.Reason
		after  time.Duration // -1: about 30s
	}{
		{name: "sessions deleted", status: 200, body: `{"id": 1, "result": {"sessions": [{"sessionID": "s1"}]}}`, kind: "ok"},
		{name: "no sessions", status: 200, body: `{"id": 1, "result": {"sessions": []}}`, kind: "noop"},
		{name: "result without sessions", status: 200, body: `{"id": 1, "result": {}}`, kind: "noop"},

		{name: "xDBVersionMismatch", status: 200, body: rpcErr("xDBVersionMismatch"), kind: "retry", code: "xDBVersionMismatch", reason: handlers.ReasonTransient},
		{name: "xNotReadyForIO", status: 200, body: rpcErr("xNotReadyForIO"), kind: "retry", code: "xNotReadyForIO", reason: handlers.ReasonTransient},
		{name: "transient with Retry-After", status: 200, body: rpcErr("xNotReadyForIO"), header: []string{"Retry-After", "4"},
			kind: "retry", code: "xNotReadyForIO", reason: handlers.ReasonTransient, after: 4 * time.Second},
		{name: "xPermissionDenied", status: 200, body: rpcErr("xPermissionDenied"), kind: "down", code: "xPermissionDenied"},
		{name: "xUnknownAccount", status: 200, body: rpcErr("xUnknownAccount"), kind: "permanent", code: "xUnknownAccount"},
		{name: "xInvalidParameter", status: 200, body: rpcErr("xInvalidParameter"), kind: "permanent", code: "xInvalidParameter"},
		{name: "xUnknownAPIMethod", status: 200, body: rpcErr("xUnknownAPIMethod"), kind: "permanent", code: "xUnknownAPIMethod"},
		{name: "named error with HTTP 500 is classified by name", status: 500, body: rpcErr("xUnknownAccount"), kind: "permanent", code: "xUnknownAccount"},

		{name: "HTTP 401", status: 401, body: "401 Unauthorized", kind: "down", code: "http_401"},
		{name: "HTTP 403", status: 403, body: "", kind: "down", code: "http_403"},
		{name: "HTTP 503 with Retry-After seconds", status: 503, body: "", header: []string{"Retry-After", "3"},
			kind: "retry", code: "http_503", reason: handlers.ReasonServer, after: 3 * time.Second},
		{name: "HTTP 503 with Retry-After date", status: 503, body: "", header: []string{"Retry-After", inThirty},
			kind: "retry", code: "http_503", reason: handlers.ReasonServer, after: -1},
		{name: "HTTP 429", status: 429, body: "", header: []string{"Retry-After", "1"}, kind: "retry", reason: handlers.ReasonRateLimit, after: time.Second},
		{name: "HTTP 500 without JSON", status: 500, body: "<html>oops</html>", kind: "retry", code: "http_500", reason: handlers.ReasonServer},
		{name: "HTTP 404", status: 404, body: "404 page not found", kind: "permanent", code: "http_404"},
		{name: "HTTP 415", status: 415, body: "unsupported media type", kind: "permanent", code: "http_415"},

		{name: "2xx that is not JSON", status: 200, body: "<html>proxy</html>", kind: "retry", code: "unexpected_reply", reason: handlers.ReasonServer},
		{name: "2xx empty", status: 200, body: "", kind: "retry", code: "unexpected_reply"},
		{name: "2xx without result or error", status: 200, body: `{"id": 1}`, kind: "retry", code: "unexpected_reply"},
		{name: "2xx error without a name", status: 200, body: `{"id": 1, "error": {"code": 500, "message": "boom"}}`, kind: "retry", code: "unexpected_reply"},
		{name: "2xx result of the wrong shape", status: 200, body: `{"id": 1, "result": {"sessions": "none"}}`, kind: "retry", code: "unexpected_reply"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			calls := 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				calls++
				for i := 0; i+1 < len(tc.header); i += 2 {
					w.Header().Set(tc.header[i], tc.header[i+1])
				}
				w.WriteHeader(tc.status)
				fmt.Fprint(w, tc.body)
			}))
			t.Cleanup(srv.Close)
			out, err := newClient(t, srv.URL+"/json-rpc/12.0", testPassword).Handle(context.Background(), deleteEvent("admin", ""))
			if calls != 1 {
				t.Errorf("calls = %d, want 1", calls)
			}
			switch tc.kind {
			case "ok", "noop":
				if err != nil {
					t.Fatalf("Handle = %v, want success", err)
				}
				if out.Noop != (tc.kind == "noop") || out.HTTPStatus != tc.status {
					t.Errorf("outcome %+v", out)
				}
				return
			}
			kind, re, pe, de := handlers.Classify(err)
			if kind.String() != tc.kind {
				t.Fatalf("Handle = %v (%T), want %s", err, err, tc.kind)
			}
			var ve handlers.VendorError
			switch {
			case re != nil:
				ve = re.VendorError
				if tc.reason != "" && re.Reason != tc.reason {
					t.Errorf("reason %q, want %q", re.Reason, tc.reason)
				}
				switch {
				case tc.after == -1 && (re.After <= 25*time.Second || re.After > 30*time.Second):
					t.Errorf("After = %v, want about 30s", re.After)
				case tc.after >= 0 && re.After != tc.after:
					t.Errorf("After = %v, want %v", re.After, tc.after)
				}
			case pe != nil:
				ve = pe.VendorError
			case de != nil:
				ve = de.VendorError
			}
			if tc.code != "" && ve.Code != tc.code {
				t.Errorf("code %q, want %q", ve.Code, tc.code)
			}
			if ve.HTTPStatus != tc.status {
				t.Errorf("HTTP status %d, want %d", ve.HTTPStatus, tc.status)
			}
			if strings.Contains(err.Error(), testPassword) {
				t.Errorf("error shows the password: %v", err)
			}
		})
	}
}

func TestDeleteAgainstSandbox(t *testing.T) {
	t.Parallel()
	r := setup(t)
	before := r.sim.SessionIDs(sandbox.ElementAdminUser)
	if len(before) != 2 {
		t.Fatalf("the sandbox seeds %d admin sessions, want 2", len(before))
	}
	out, err := r.client.Handle(context.Background(), deleteEvent(sandbox.ElementAdminUser, "Cluster"))
	if err != nil {
		t.Fatal(err)
	}
	if out.Noop || out.HTTPStatus != 200 || out.Details["count"] != 2 || out.Details["method"] != "DeleteAuthSessionsByUsername" {
		t.Errorf("outcome %+v", out)
	}
	if !strings.Contains(out.Message, "2") {
		t.Errorf("message %q does not count the sessions", out.Message)
	}
	// Details go into the result event as JSON: the sessions as the cluster returned them.
	raw, err := json.Marshal(out.Details)
	if err != nil {
		t.Fatal(err)
	}
	var details struct {
		Sessions []struct {
			SessionID  string `json:"sessionID"`
			Username   string `json:"username"`
			AuthMethod string `json:"authMethod"`
		} `json:"sessions"`
	}
	if err := json.Unmarshal(raw, &details); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range details.Sessions {
		got = append(got, s.SessionID)
		if s.Username != sandbox.ElementAdminUser || s.AuthMethod != "Cluster" {
			t.Errorf("session %+v", s)
		}
	}
	if !reflect.DeepEqual(got, before) {
		t.Errorf("deleted sessions %v, want %v", got, before)
	}
	if n := r.sim.Sessions(sandbox.ElementAdminUser); n != 0 {
		t.Errorf("admin still has %d sessions", n)
	}
	if n := r.sim.Sessions(sandbox.ElementOperatorUser); n != 1 {
		t.Errorf("operator has %d sessions, want 1 untouched", n)
	}

	again, err := r.client.Handle(context.Background(), deleteEvent(sandbox.ElementAdminUser, "Cluster"))
	if err != nil {
		t.Fatal(err)
	}
	if !again.Noop || again.Details["count"] != 0 {
		t.Errorf("second delete: %+v, want a noop with count 0", again)
	}
	if b, _ := json.Marshal(again.Details["sessions"]); string(b) != "[]" {
		t.Errorf("sessions of a noop = %s, want []", b)
	}
}

func TestAuthMethodFilter(t *testing.T) {
	t.Parallel()
	r := setup(t)
	out, err := r.client.Handle(context.Background(), deleteEvent(sandbox.ElementLDAPUser, "Cluster"))
	if err != nil || !out.Noop {
		t.Fatalf("Cluster delete of an LDAP user = %+v, %v; want a noop", out, err)
	}
	if r.sim.Sessions(sandbox.ElementLDAPUser) != 1 {
		t.Fatal("the LDAP session went")
	}
	out, err = r.client.Handle(context.Background(), deleteEvent(sandbox.ElementLDAPUser, "Ldap"))
	if err != nil || out.Noop || out.Details["count"] != 1 {
		t.Fatalf("Ldap delete = %+v, %v", out, err)
	}
	if r.sim.Sessions(sandbox.ElementLDAPUser) != 0 {
		t.Error("the LDAP session is still there")
	}
}

func TestDryRunListsOnly(t *testing.T) {
	t.Parallel()
	r := setup(t)
	ev := deleteEvent(sandbox.ElementAdminUser, "")
	ev.DryRun = true
	out, err := r.client.Handle(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	if r.sim.CallsTo("DeleteAuthSessionsByUsername") != 0 || r.sim.CallsTo("ListAuthSessionsByUsername") != 1 {
		t.Errorf("calls: delete %d, list %d; want 0 and 1",
			r.sim.CallsTo("DeleteAuthSessionsByUsername"), r.sim.CallsTo("ListAuthSessionsByUsername"))
	}
	if n := r.sim.Sessions(sandbox.ElementAdminUser); n != 2 {
		t.Errorf("admin has %d sessions after a dry run, want 2", n)
	}
	if out.Noop || out.Details["count"] != 2 || out.Details["method"] != "ListAuthSessionsByUsername" ||
		!strings.Contains(out.Message, "dry run") {
		t.Errorf("outcome %+v", out)
	}
}

func TestSandboxFaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		fault  sandbox.ElementFault
		kind   string
		reason handlers.Reason
		after  time.Duration
	}{
		{"version mismatch", sandbox.ElementFault{Name: "xDBVersionMismatch"}, "retry", handlers.ReasonTransient, 0},
		{"not ready for IO", sandbox.ElementFault{Name: "xNotReadyForIO"}, "retry", handlers.ReasonTransient, 0},
		{"unavailable", sandbox.ElementFault{HTTPStatus: 503, RetryAfter: "2"}, "retry", handlers.ReasonServer, 2 * time.Second},
		{"permission denied", sandbox.ElementFault{Name: "xPermissionDenied"}, "down", "", 0},
		{"unknown account", sandbox.ElementFault{Name: "xUnknownAccount"}, "permanent", "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := setup(t)
			r.sim.FailNext(1, tc.fault)
			_, err := r.client.Handle(context.Background(), deleteEvent(sandbox.ElementAdminUser, ""))
			kind, re, _, _ := handlers.Classify(err)
			if kind.String() != tc.kind {
				t.Fatalf("Handle = %v, want %s", err, tc.kind)
			}
			if re != nil && (re.Reason != tc.reason || re.After != tc.after) {
				t.Errorf("retryable %q after %v, want %q after %v", re.Reason, re.After, tc.reason, tc.after)
			}
			if r.sim.Sessions(sandbox.ElementAdminUser) != 2 {
				t.Error("a failed call deleted sessions")
			}
		})
	}
}

func TestWrongPasswordIsTargetDown(t *testing.T) {
	t.Parallel()
	r := setup(t)
	r.sim.SetPassword("rotated")
	_, err := r.client.Handle(context.Background(), deleteEvent(sandbox.ElementAdminUser, ""))
	var de *handlers.TargetDownError
	if !errors.As(err, &de) || de.HTTPStatus != 401 {
		t.Fatalf("Handle = %v (%T), want TargetDownError with HTTP 401", err, err)
	}
	if r.sim.Sessions(sandbox.ElementAdminUser) != 2 {
		t.Error("sessions deleted with a refused password")
	}
}

func TestAttemptTimeout(t *testing.T) {
	t.Parallel()
	r := setup(t)
	r.sim.SetLatency(2 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	t.Cleanup(cancel)
	_, err := r.client.Handle(ctx, deleteEvent(sandbox.ElementAdminUser, ""))
	var re *handlers.RetryableError
	if !errors.As(err, &re) || re.Reason != handlers.ReasonTimeout {
		t.Fatalf("Handle = %v (%T), want a retryable timeout", err, err)
	}
}

func TestOtherActionsAreRejected(t *testing.T) {
	t.Parallel()
	r := setup(t)
	_, err := r.client.Handle(context.Background(), events.Event{Action: events.SessionDrop, SessionID: "s"})
	var rej *events.Rejection
	if !errors.As(err, &rej) || rej.Code != events.CodeUnknownAction {
		t.Fatalf("Handle = %v, want unknown_action", err)
	}
	if r.sim.Calls() != 0 {
		t.Errorf("calls = %d", r.sim.Calls())
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	pw := handlers.NewSecret("pw")
	tests := []struct {
		name string
		cfg  element.Config
		ok   bool
	}{
		{"valid", element.Config{URL: "https://mvip.example.com/json-rpc/12.0", Username: "admin", Password: pw}, true},
		{"no URL", element.Config{Username: "admin", Password: pw}, false},
		{"relative URL", element.Config{URL: "/json-rpc/12.0", Username: "admin", Password: pw}, false},
		{"ftp", element.Config{URL: "ftp://mvip/json-rpc/12.0", Username: "admin", Password: pw}, false},
		{"credentials in URL", element.Config{URL: "https://admin:pw@mvip/json-rpc/12.0", Username: "admin", Password: pw}, false},
		{"fragment", element.Config{URL: "https://mvip/json-rpc/12.0#x", Username: "admin", Password: pw}, false},
		{"no username", element.Config{URL: "https://mvip/json-rpc/12.0", Password: pw}, false},
		{"no password", element.Config{URL: "https://mvip/json-rpc/12.0", Username: "admin"}, false},
	}
	for _, tc := range tests {
		c, err := element.New(tc.cfg)
		if (err == nil) != tc.ok {
			t.Errorf("%s: New = %v", tc.name, err)
		}
		if err != nil && strings.Contains(err.Error(), "pw@") {
			t.Errorf("%s: error shows the password: %v", tc.name, err)
		}
		if c != nil {
			if s := fmt.Sprintf("%+v %v %#v", c, c, c); strings.Contains(s, "pw") && !strings.Contains(tc.cfg.URL, "pw") {
				t.Errorf("%s: printing the client shows the password: %s", tc.name, s)
			}
		}
	}
}

func TestRegister(t *testing.T) {
	t.Parallel()
	t.Run("no targets", func(t *testing.T) {
		t.Parallel()
		reg := handlers.NewRegistry()
		if err := element.Register(reg, nil); err != nil {
			t.Fatal(err)
		}
		h, ok := reg.Lookup(events.ElementSessionsDelete)
		if !ok {
			t.Fatal("not registered")
		}
		_, err := h.Handle(context.Background(), deleteEvent("admin", ""))
		var rej *events.Rejection
		if !errors.As(err, &rej) || rej.Code != events.CodeTargetNotConfigured || !strings.Contains(rej.Message, "PAMWORKER_ELEMENT_URL") {
			t.Errorf("Handle = %v, want target_not_configured naming PAMWORKER_ELEMENT_URL", err)
		}
		if _, ok := reg.Lookup(events.SessionDrop); ok {
			t.Error("a Segura action is registered by Element")
		}
		if err := element.Register(reg, nil); err == nil {
			t.Error("a second Register succeeded")
		}
	})
	t.Run("targets by name", func(t *testing.T) {
		t.Parallel()
		lab, prod := setup(t), setup(t)
		reg := handlers.NewRegistry()
		if err := element.Register(reg, handlers.Targets[*element.Client]{"default": prod.client, "lab": lab.client}); err != nil {
			t.Fatal(err)
		}
		h, _ := reg.Lookup(events.ElementSessionsDelete)
		ev := deleteEvent(sandbox.ElementOperatorUser, "")
		ev.Target = "lab"
		if _, err := h.Handle(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
		if lab.sim.Sessions(sandbox.ElementOperatorUser) != 0 || prod.sim.Sessions(sandbox.ElementOperatorUser) != 1 {
			t.Error("the event did not act on its target only")
		}
		ev.Target = "nowhere"
		_, err := h.Handle(context.Background(), ev)
		var rej *events.Rejection
		if !errors.As(err, &rej) || rej.Code != events.CodeTargetNotConfigured {
			t.Errorf("unknown target: %v", err)
		}
	})
}
