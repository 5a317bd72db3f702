package segura_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
	"github.com/pamworker/pamworker/handlers/segura"
	"github.com/pamworker/pamworker/sandbox"
)

// recorder is a Segura that records the escaped path and query of every API call.
type recorder struct {
	mu    sync.Mutex
	paths []string
	raw   []string
}

func newRecorder(t *testing.T) (*recorder, *segura.Client) {
	t.Helper()
	rec := &recorder{}
	f := newFakeSegura(t, func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.paths = append(rec.paths, r.URL.EscapedPath())
		rec.raw = append(rec.raw, r.URL.RawQuery+"#"+r.URL.Fragment)
		rec.mu.Unlock()
		reply(200, seedDisableOK)(w, r)
	})
	return rec, newClient(t, f.srv.URL, nil)
}

// Every id becomes exactly one path segment, whatever it holds, as the server sees it.
func TestIDsAreOnePathSegment(t *testing.T) {
	t.Parallel()
	ids := []string{
		"e95d6160bbfbe6f1594bd0ff29d102dc",
		"a/b", "/", "a/../../admin", "../x", "..a", "...", "a?b=c", "?", "a#frag", "#",
		"%2e%2e", "%2E%2E%2Fadmin", "%", "100%", "%zz", "a b", " ", "+", "a+b", ";jsessionid=1", "a;b", "a,b",
		"ünïcødé", "日本語", "\u202e", "user@host", "@", ":", "~", "a\\b", "a\tb", "'\"<>`{}|^[]",
	}
	rec, c := newRecorder(t)
	for _, id := range ids {
		if _, err := c.Handle(context.Background(), events.Event{Action: events.SessionDrop, SessionID: id}); err != nil {
			t.Errorf("Handle(%q): %v", id, err)
		}
	}
	if len(rec.paths) != len(ids) {
		t.Fatalf("server saw %d requests, want %d", len(rec.paths), len(ids))
	}
	for i, id := range ids {
		checkOneSegment(t, id, "/api/pam/session/drop/", rec.paths[i], id)
		if rec.raw[i] != "#" {
			t.Errorf("id %q leaked into the query or fragment: %q", id, rec.raw[i])
		}
	}
}

func TestCredentialNameIsOnePathSegment(t *testing.T) {
	t.Parallel()
	names := [][2]string{
		{"root", "db01"},
		{"svc/backup", "db01"},
		{"root", "db01.example.com/../x"},
		{"a?b", "c#d"},
		{"%2e", "%2e"},
		{"jöhn dœ", "хост"},
	}
	rec, c := newRecorder(t)
	for _, n := range names {
		if _, err := c.Handle(context.Background(), events.Event{Action: events.CredentialDisable, Username: n[0], Hostname: n[1]}); err != nil {
			t.Errorf("Handle(%q@%q): %v", n[0], n[1], err)
		}
	}
	for i, n := range names {
		checkOneSegment(t, n[0]+"@"+n[1], "/api/pam/credential/", rec.paths[i], n[0]+"@"+n[1])
	}
}

func checkOneSegment(t *testing.T, name, prefix, escapedPath, want string) {
	t.Helper()
	rest, ok := strings.CutPrefix(escapedPath, prefix)
	if !ok {
		t.Errorf("%q: path %q does not start with %s", name, escapedPath, prefix)
		return
	}
	if strings.Contains(rest, "/") || rest == "" {
		t.Errorf("%q: became %d segments: %q", name, strings.Count(rest, "/")+1, escapedPath)
		return
	}
	if got, err := url.PathUnescape(rest); err != nil || got != want {
		t.Errorf("%q: segment %q unescapes to %q (%v)", name, rest, got, err)
	}
	if rest == "." || rest == ".." || strings.EqualFold(rest, "%2e") || strings.EqualFold(rest, "%2e%2e") {
		t.Errorf("%q: segment %q is a dot segment", name, rest)
	}
}

func TestPlanRefusesUnsafeIDs(t *testing.T) {
	t.Parallel()
	c := newClient(t, "https://segura.example.com", nil)
	tests := []struct {
		name string
		ev   events.Event
	}{
		{"empty session id", events.Event{Action: events.SessionDrop}},
		{"session id .", events.Event{Action: events.SessionDrop, SessionID: "."}},
		{"session id ..", events.Event{Action: events.SessionDrop, SessionID: ".."}},
		{"disable without id or name", events.Event{Action: events.CredentialDisable}},
		{"disable with username only", events.Event{Action: events.CredentialDisable, Username: "root"}},
		{"disable with @ in username", events.Event{Action: events.CredentialDisable, Username: "a@b", Hostname: "db"}},
		{"disable with @ in hostname", events.Event{Action: events.CredentialDisable, Username: "a", Hostname: "d@b"}},
		{"disable with username ..", events.Event{Action: events.CredentialDisable, Username: "..", Hostname: "db"}},
		{"disable with hostname .", events.Event{Action: events.CredentialDisable, Username: "root", Hostname: "."}},
		{"enable without id", events.Event{Action: events.CredentialEnable}},
		{"enable with a negative id", events.Event{Action: events.CredentialEnable, CredentialID: -1}},
		{"enable by name", events.Event{Action: events.CredentialEnable, Username: "root", Hostname: "db"}},
		{"custody without id", events.Event{Action: events.CustodyRelease}},
		{"Element action", events.Event{Action: events.ElementSessionsDelete, Username: "admin"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if req, _, err := c.Plan(tc.ev); err == nil {
				t.Errorf("Plan = %+v, want an error", req)
			}
			// Handle answers such an event as invalid, without a call (the host does not exist).
			_, err := c.Handle(context.Background(), tc.ev)
			var rej *events.Rejection
			if !errors.As(err, &rej) || rej.Code != events.CodeInvalidEvent {
				t.Errorf("Handle = %v, want an invalid_event rejection", err)
			}
		})
	}
}

func TestPlan(t *testing.T) {
	t.Parallel()
	c := newClient(t, "https://segura.example.com/", func(c *segura.Config) { c.APIPrefix = "/iso" })
	tests := []struct {
		ev   events.Event
		want segura.Request
	}{
		{events.Event{Action: events.SessionDrop, SessionID: "abc"}, segura.Request{Method: "DELETE", URL: "https://segura.example.com/iso/pam/session/drop/abc"}},
		{events.Event{Action: events.CredentialDisable, CredentialID: 94}, segura.Request{Method: "DELETE", URL: "https://segura.example.com/iso/pam/credential/94"}},
		{events.Event{Action: events.CredentialDisable, Username: "root", Hostname: "db01"}, segura.Request{Method: "DELETE", URL: "https://segura.example.com/iso/pam/credential/root@db01"}},
		{events.Event{Action: events.CredentialEnable, CredentialID: 5}, segura.Request{Method: "PUT", URL: "https://segura.example.com/iso/pam/credential/5"}},
		{events.Event{Action: events.CustodyRelease, CredentialID: 94}, segura.Request{Method: "DELETE", URL: "https://segura.example.com/iso/pam/credential/custody/94"}},
	}
	for _, tc := range tests {
		got, _, err := c.Plan(tc.ev)
		if err != nil || got.Method != tc.want.Method || got.URL != tc.want.URL {
			t.Errorf("Plan(%s %s) = %+v, %v; want %+v", tc.ev.Action, tc.ev.Object(), got, err, tc.want)
		}
	}
}

func TestDryRunCallsNothing(t *testing.T) {
	t.Parallel()
	session := sandbox.SandboxSessions()[1]
	tests := []struct {
		ev     events.Event
		method string
		path   string
	}{
		{events.Event{Action: events.SessionDrop, SessionID: session}, "DELETE", "/api/pam/session/drop/" + session},
		{events.Event{Action: events.CredentialDisable, CredentialID: 7}, "DELETE", "/api/pam/credential/7"},
		{events.Event{Action: events.CredentialDisable, Username: "svc07", Hostname: "host07"}, "DELETE", "/api/pam/credential/svc07@host07"},
		{events.Event{Action: events.CredentialEnable, CredentialID: 7}, "PUT", "/api/pam/credential/7"},
		{events.Event{Action: events.CustodyRelease, CredentialID: sandbox.CustodyCredentialID}, "DELETE", "/api/pam/credential/custody/94"},
	}
	for _, tc := range tests {
		t.Run(tc.ev.Action+" "+tc.ev.Object(), func(t *testing.T) {
			t.Parallel()
			r := setup(t, sandbox.SeguraOptions{}, nil)
			tc.ev.DryRun = true
			out := mustHandle(t, r.client, tc.ev)
			want := segura.Request{Method: tc.method, URL: r.srv.URL + tc.path}
			if got, ok := out.Details["request"].(segura.Request); !ok || got != want {
				t.Errorf("Details[request] = %#v, want %#v", out.Details["request"], want)
			}
			if !strings.Contains(out.Message, "dry run") || !strings.Contains(out.Message, want.URL) {
				t.Errorf("message %q does not tell the planned call", out.Message)
			}
			if out.Noop || out.HTTPStatus != 0 {
				t.Errorf("outcome %+v claims a call", out)
			}
			if r.sim.Calls() != 0 || r.sim.TokenRequests() != 0 {
				t.Errorf("dry run made %d API calls and %d token requests", r.sim.Calls(), r.sim.TokenRequests())
			}
			if !r.sim.SessionOpen(session) {
				t.Error("dry run dropped the session")
			}
			if err := wantCredential(r.sim, 7, true, false); err != nil {
				t.Error(err)
			}
			if err := wantCredential(r.sim, sandbox.CustodyCredentialID, true, true); err != nil {
				t.Error(err)
			}
		})
	}
}

// FuzzEndpoint checks that any session id either is refused or becomes exactly one escaped
// path segment under the fixed prefix.
func FuzzEndpoint(f *testing.F) {
	for _, seed := range []string{
		"e95d6160bbfbe6f1594bd0ff29d102dc", "", ".", "..", "...", "a/b", "../admin", "%2e%2e", "%", "?x=1", "#f",
		"a b", "ünï", "user@host", "\x00", "\xff\xfe", ";", "\\..\\", "//", strings.Repeat("é", 200),
	} {
		f.Add(seed)
	}
	c, err := segura.New(segura.Config{
		BaseURL: "https://segura.example.com:8443/proxy", ClientID: "id", ClientSecret: handlers.NewSecret("s"),
	})
	if err != nil {
		f.Fatal(err)
	}
	const prefix = "https://segura.example.com:8443/proxy/api/pam/session/drop/"
	f.Fuzz(func(t *testing.T, id string) {
		req, _, err := c.Plan(events.Event{Action: events.SessionDrop, SessionID: id})
		if id == "" || id == "." || id == ".." {
			if err == nil {
				t.Fatalf("Plan accepted id %q: %s", id, req.URL)
			}
			return
		}
		if err != nil {
			t.Fatalf("Plan(%q): %v", id, err)
		}
		if req.Method != http.MethodDelete {
			t.Fatalf("method %s", req.Method)
		}
		seg, ok := strings.CutPrefix(req.URL, prefix)
		if !ok {
			t.Fatalf("URL %q lost the prefix %s", req.URL, prefix)
		}
		if seg == "" || strings.ContainsAny(seg, "/?#") {
			t.Fatalf("id %q became %q, not one segment", id, seg)
		}
		if got, err := url.PathUnescape(seg); err != nil || got != id {
			t.Fatalf("segment %q unescapes to %q (%v), want %q", seg, got, err, id)
		}
		u, err := url.Parse(req.URL)
		if err != nil {
			t.Fatalf("URL %q does not parse: %v", req.URL, err)
		}
		if u.Host != "segura.example.com:8443" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			t.Fatalf("URL %q parses to host %q query %q fragment %q", req.URL, u.Host, u.RawQuery, u.Fragment)
		}
		if want := "/proxy/api/pam/session/drop/" + seg; u.EscapedPath() != want {
			t.Fatalf("escaped path %q, want %q", u.EscapedPath(), want)
		}
		if _, err := http.NewRequest(req.Method, req.URL, nil); err != nil {
			t.Fatalf("http.NewRequest(%q): %v", req.URL, err)
		}
	})
}
