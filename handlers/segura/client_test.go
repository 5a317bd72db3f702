package segura_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
	"github.com/pamworker/pamworker/handlers/segura"
	"github.com/pamworker/pamworker/sandbox"
)

type rig struct {
	sim    *sandbox.Segura
	srv    *httptest.Server
	client *segura.Client
}

// setup serves a Segura simulator and returns a client of it.
func setup(t *testing.T, opts sandbox.SeguraOptions, mod func(*segura.Config)) *rig {
	t.Helper()
	opts.ClientID, opts.ClientSecret = testClientID, testClientSecret
	sim := sandbox.NewSegura(opts)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return &rig{sim: sim, srv: srv, client: newClient(t, srv.URL, mod)}
}

func mustHandle(t *testing.T, c *segura.Client, ev events.Event) handlers.Outcome {
	t.Helper()
	out, err := c.Handle(context.Background(), ev)
	if err != nil {
		t.Fatalf("Handle(%s %s): %v", ev.Action, ev.Object(), err)
	}
	return out
}

func credential(action string, id int64) events.Event {
	return events.Event{ID: fmt.Sprint("ev-", id), Action: action, Target: events.DefaultTarget, CredentialID: id}
}

func TestActionsAgainstSandbox(t *testing.T) {
	t.Parallel()
	r := setup(t, sandbox.SeguraOptions{}, nil)
	session := sandbox.SandboxSessions()[0]
	byName := events.Event{Action: events.CredentialDisable, Username: "svc08", Hostname: "host08"}
	steps := []struct {
		name       string
		ev         events.Event
		method     string
		path       string // escaped, after the host
		noop       bool
		message    string
		afterCheck func() error
	}{
		{
			name: "drop session", ev: events.Event{Action: events.SessionDrop, SessionID: session},
			method: "DELETE", path: "/api/pam/session/drop/" + session, message: "Session dropped successfully",
			afterCheck: func() error {
				if r.sim.SessionOpen(session) {
					return errors.New("session still open")
				}
				return nil
			},
		},
		{
			name: "disable by id", ev: credential(events.CredentialDisable, 7),
			method: "DELETE", path: "/api/pam/credential/7", message: "Credential successfully deactivated",
			afterCheck: func() error { return wantCredential(r.sim, 7, false, false) },
		},
		{
			name: "disable again is a noop", ev: credential(events.CredentialDisable, 7),
			method: "DELETE", path: "/api/pam/credential/7", noop: true,
		},
		{
			name: "disable by username@hostname", ev: byName,
			method: "DELETE", path: "/api/pam/credential/svc08@host08", message: "Credential successfully deactivated",
			afterCheck: func() error { return wantCredential(r.sim, 8, false, false) },
		},
		{
			name: "enable", ev: credential(events.CredentialEnable, 7),
			method: "PUT", path: "/api/pam/credential/7", message: "Credential successfully activated",
			afterCheck: func() error { return wantCredential(r.sim, 7, true, false) },
		},
		{
			name: "enable again is a noop", ev: credential(events.CredentialEnable, 7),
			method: "PUT", path: "/api/pam/credential/7", noop: true,
		},
		{
			name: "custody release", ev: credential(events.CustodyRelease, sandbox.CustodyCredentialID),
			method: "DELETE", path: "/api/pam/credential/custody/94", message: "Credential custody 94 released",
			afterCheck: func() error { return wantCredential(r.sim, sandbox.CustodyCredentialID, true, false) },
		},
		{
			name: "custody release again is a noop", ev: credential(events.CustodyRelease, sandbox.CustodyCredentialID),
			method: "DELETE", path: "/api/pam/credential/custody/94", noop: true,
		},
	}
	// The steps share the simulator's state, so they run in order.
	for i, st := range steps {
		out := mustHandle(t, r.client, st.ev)
		if out.Noop != st.noop || out.HTTPStatus == 0 {
			t.Errorf("%s: outcome %+v, want noop %v", st.name, out, st.noop)
		}
		if st.message != "" && out.Message != st.message {
			t.Errorf("%s: message %q, want %q", st.name, out.Message, st.message)
		}
		reqs := r.sim.Requests()
		if len(reqs) != i+1 {
			t.Fatalf("%s: the simulator saw %d requests in all, want %d", st.name, len(reqs), i+1)
		}
		if last := reqs[i]; last.Method != st.method || last.EscapedPath != st.path || !last.Authorization {
			t.Errorf("%s: request %+v, want %s %s with a token", st.name, last, st.method, st.path)
		}
		if st.afterCheck != nil {
			if err := st.afterCheck(); err != nil {
				t.Errorf("%s: %v", st.name, err)
			}
		}
	}
	if n := r.sim.TokenRequests(); n != 1 {
		t.Errorf("token requests = %d, want 1", n)
	}
}

func wantCredential(sim *sandbox.Segura, id int, active, custody bool) error {
	a, c, ok := sim.Credential(id)
	if !ok || a != active || c != custody {
		return fmt.Errorf("credential %d: active %v custody %v (found %v), want active %v custody %v", id, a, c, ok, active, custody)
	}
	return nil
}

func TestRefusalsAgainstSandbox(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ev   events.Event
		code string
	}{
		{"unknown credential", credential(events.CredentialDisable, 9999), "1007"},
		{"unknown credential name", events.Event{Action: events.CredentialDisable, Username: "nobody", Hostname: "nowhere"}, "1007"},
		{"no access", credential(events.CredentialEnable, sandbox.NoAccessCredentialID), "1009"},
		{"not a credential", credential(events.CredentialDisable, sandbox.NotCredentialID), "1010"},
		{"custody of an unknown credential", credential(events.CustodyRelease, 9999), "1007"},
		{"unknown session", events.Event{Action: events.SessionDrop, SessionID: "0000"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := setup(t, sandbox.SeguraOptions{}, nil)
			_, err := r.client.Handle(context.Background(), tc.ev)
			var pe *handlers.PermanentError
			if !errors.As(err, &pe) || pe.Code == "" || (tc.code != "" && pe.Code != tc.code) {
				t.Fatalf("Handle = %v (%T), want a permanent %s", err, err, tc.code)
			}
			if r.sim.Calls() != 1 {
				t.Errorf("API calls = %d, want 1 (a refusal is not retried)", r.sim.Calls())
			}
		})
	}
}

func TestFaultsAgainstSandbox(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		fault  sandbox.Fault
		reason handlers.Reason
		after  time.Duration
	}{
		{"unexpected error", sandbox.Fault{Status: 500}, handlers.ReasonServer, 0},
		{"unavailable with Retry-After", sandbox.Fault{Status: 503, RetryAfter: "2"}, handlers.ReasonServer, 2 * time.Second},
		{"rate limited with Retry-After", sandbox.Fault{Status: 429, RetryAfter: "2"}, handlers.ReasonRateLimit, 2 * time.Second},
		{"gateway timeout", sandbox.Fault{Status: 504}, handlers.ReasonTimeout, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := setup(t, sandbox.SeguraOptions{}, nil)
			r.sim.FailNext(1, tc.fault)
			_, err := r.client.Handle(context.Background(), credential(events.CredentialDisable, 3))
			var re *handlers.RetryableError
			if !errors.As(err, &re) || re.Reason != tc.reason || re.After != tc.after {
				t.Fatalf("Handle = %#v, want retryable %s after %v", err, tc.reason, tc.after)
			}
			if err := wantCredential(r.sim, 3, true, false); err != nil {
				t.Error(err)
			}
			// The fault is spent: the next attempt goes through.
			mustHandle(t, r.client, credential(events.CredentialDisable, 3))
			if err := wantCredential(r.sim, 3, false, false); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestRevokedAuthorizationIsTargetDown(t *testing.T) {
	t.Parallel()
	r := setup(t, sandbox.SeguraOptions{}, nil)
	r.sim.SetRevoked(true)
	_, err := r.client.Handle(context.Background(), credential(events.CredentialDisable, 3))
	var de *handlers.TargetDownError
	if !errors.As(err, &de) {
		t.Fatalf("Handle = %v (%T), want TargetDownError", err, err)
	}
	if r.sim.Calls() != 1 {
		t.Errorf("API calls = %d, want 1: a lock-out is not a token problem", r.sim.Calls())
	}
	r.sim.SetRevoked(false)
	mustHandle(t, r.client, credential(events.CredentialDisable, 3))
}

func TestTokenFetchedOnceAndReused(t *testing.T) {
	t.Parallel()
	r := setup(t, sandbox.SeguraOptions{}, nil)
	const n = 24
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 1; i <= n; i++ {
		wg.Go(func() {
			if _, err := r.client.Handle(context.Background(), credential(events.CredentialDisable, int64(i))); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := r.sim.TokenRequests(); got != 1 {
		t.Errorf("token requests = %d, want 1", got)
	}
	if got := r.sim.Calls(); got != n {
		t.Errorf("API calls = %d, want %d", got, n)
	}
}

func TestTokenRefreshedBeforeItExpires(t *testing.T) {
	t.Parallel()
	r := setup(t, sandbox.SeguraOptions{TokenTTL: time.Second}, nil)
	mustHandle(t, r.client, credential(events.CredentialDisable, 1))
	mustHandle(t, r.client, credential(events.CredentialDisable, 2))
	if got := r.sim.TokenRequests(); got != 1 {
		t.Fatalf("token requests = %d, want 1 while the token is fresh", got)
	}
	time.Sleep(800 * time.Millisecond) // past the refresh margin, before the simulator's expiry
	mustHandle(t, r.client, credential(events.CredentialDisable, 3))
	if got := r.sim.TokenRequests(); got != 2 {
		t.Errorf("token requests = %d, want 2", got)
	}
	if got := r.sim.Calls(); got != 3 {
		t.Errorf("API calls = %d, want 3: no call should have been refused", got)
	}
}

func TestTokenRefetchedOnceAfter401(t *testing.T) {
	t.Parallel()
	r := setup(t, sandbox.SeguraOptions{}, nil)
	mustHandle(t, r.client, credential(events.CredentialDisable, 1))
	r.sim.ExpireTokens()
	out := mustHandle(t, r.client, credential(events.CredentialDisable, 2))
	if out.Noop {
		t.Errorf("outcome %+v", out)
	}
	if got := r.sim.TokenRequests(); got != 2 {
		t.Errorf("token requests = %d, want 2", got)
	}
	if got := r.sim.Calls(); got != 3 {
		t.Errorf("API calls = %d, want 3 (ok, refused, ok)", got)
	}
	if err := wantCredential(r.sim, 2, false, false); err != nil {
		t.Error(err)
	}
}

func TestPersistent401IsTargetDown(t *testing.T) {
	t.Parallel()
	r := setup(t, sandbox.SeguraOptions{}, nil)
	mustHandle(t, r.client, credential(events.CredentialDisable, 1))
	r.sim.SetClientSecret("rotated-elsewhere")
	r.sim.ExpireTokens()
	_, err := r.client.Handle(context.Background(), credential(events.CredentialDisable, 2))
	kind, _, _, de := handlers.Classify(err)
	if kind.String() != "down" {
		t.Fatalf("Handle = %v (%T), want target down", err, err)
	}
	if de.Code != "invalid_client" {
		t.Errorf("code = %q, want invalid_client", de.Code)
	}
	if got := r.sim.Calls(); got != 2 {
		t.Errorf("API calls = %d, want 2: one refused, none with a token the endpoint refused", got)
	}
	if err := wantCredential(r.sim, 2, true, false); err != nil {
		t.Error(err)
	}
	// Once the secret is fixed on the server side, the same client recovers.
	r.sim.SetClientSecret(testClientSecret)
	mustHandle(t, r.client, credential(events.CredentialDisable, 2))
}

func TestBadClientSecretIsTargetDown(t *testing.T) {
	t.Parallel()
	r := setup(t, sandbox.SeguraOptions{}, func(c *segura.Config) { c.ClientSecret = handlers.NewSecret("wrong") })
	_, err := r.client.Handle(context.Background(), credential(events.CredentialDisable, 1))
	var de *handlers.TargetDownError
	var re *handlers.RetryableError
	if !errors.As(err, &de) || errors.As(err, &re) {
		t.Fatalf("Handle = %v (%T), want TargetDownError and not retryable", err, err)
	}
	if de.HTTPStatus != http.StatusUnauthorized || de.Code != "invalid_client" {
		t.Errorf("error = %+v", de.VendorError)
	}
	if strings.Contains(err.Error(), "wrong") {
		t.Errorf("the error shows the secret: %v", err)
	}
	if got := r.sim.Calls(); got != 0 {
		t.Errorf("API calls = %d, want none without a token", got)
	}
}

func TestTokenEndpointFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
		header []string
		body   string
		kind   outcomeKind
		reason handlers.Reason
		after  time.Duration
	}{
		{"unavailable", 503, []string{"Retry-After", "3"}, "", retry, handlers.ReasonToken, 3 * time.Second},
		{"server error", 500, nil, `{"error": "server_error"}`, retry, handlers.ReasonToken, 0},
		{"rate limited", 429, []string{"Retry-After", "1"}, "", retry, handlers.ReasonRateLimit, time.Second},
		{"not JSON", 200, nil, "<html>login</html>", retry, handlers.ReasonConnection, 0},
		{"unauthorized client", 400, nil, `{"error": "unauthorized_client"}`, down, "", 0},
		{"forbidden", 403, nil, "", down, "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sim := sandbox.NewSegura(sandbox.SeguraOptions{ClientID: testClientID, ClientSecret: testClientSecret})
			mux := http.NewServeMux()
			mux.Handle(tokenPath, reply(tc.status, tc.body, append([]string{"Content-Type", "application/json"}, tc.header...)...))
			mux.Handle("/", sim)
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)
			_, err := newClient(t, srv.URL, nil).Handle(context.Background(), credential(events.CredentialDisable, 1))
			kind, re, _, _ := handlers.Classify(err)
			if outcomeKind(kind.String()) != tc.kind {
				t.Fatalf("Handle = %v (%T), want %s", err, err, tc.kind)
			}
			if re != nil && (re.Reason != tc.reason || re.After != tc.after) {
				t.Errorf("retryable %q after %v, want %q after %v", re.Reason, re.After, tc.reason, tc.after)
			}
			if sim.Calls() != 0 {
				t.Errorf("API calls = %d, want none without a token", sim.Calls())
			}
		})
	}
}

func TestTokenEndpointUnreachable(t *testing.T) {
	t.Parallel()
	closed := httptest.NewServer(http.NotFoundHandler())
	tokenURL := closed.URL + tokenPath
	closed.Close()
	r := setup(t, sandbox.SeguraOptions{}, func(c *segura.Config) { c.TokenURL = tokenURL })
	_, err := r.client.Handle(context.Background(), credential(events.CredentialDisable, 1))
	var re *handlers.RetryableError
	if !errors.As(err, &re) || re.Reason != handlers.ReasonConnection {
		t.Fatalf("Handle = %v (%T), want a retryable connection error", err, err)
	}
}

func TestTokenURL(t *testing.T) {
	t.Parallel()
	// A token endpoint on another server than the API.
	sim := sandbox.NewSegura(sandbox.SeguraOptions{ClientID: testClientID, ClientSecret: testClientSecret})
	idp := httptest.NewServer(sim)
	t.Cleanup(idp.Close)
	var apiAuth atomic.Value
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		apiAuth.Store(r.Header.Get("Authorization"))
		reply(200, seedDisableOK)(w, r)
	}))
	t.Cleanup(api.Close)
	c := newClient(t, api.URL, func(c *segura.Config) { c.TokenURL = idp.URL + "/iso/oauth2/token" })
	mustHandle(t, c, credential(events.CredentialDisable, 1))
	if sim.TokenRequests() != 1 {
		t.Errorf("token requests at TokenURL = %d, want 1", sim.TokenRequests())
	}
	if got, _ := apiAuth.Load().(string); !strings.HasPrefix(got, "Bearer ") || len(got) <= len("Bearer ") {
		t.Errorf("Authorization = %q", got)
	}
}

func TestAuthorizationHeader(t *testing.T) {
	t.Parallel()
	var got []string
	var mu sync.Mutex
	f := newFakeSegura(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("Authorization"))
		mu.Unlock()
		reply(200, seedDropOK)(w, r)
	})
	c := newClient(t, f.srv.URL, nil)
	mustHandle(t, c, event(events.SessionDrop))
	mustHandle(t, c, event(events.CredentialEnable))
	if want := []string{"Bearer tok-1", "Bearer tok-1"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Authorization headers = %q, want %q", got, want)
	}
}

func TestTokenRequestUsesClientCredentials(t *testing.T) {
	t.Parallel()
	type seen struct {
		user, pass, grant string
		ok                bool
	}
	var mu sync.Mutex
	var reqs []seen
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != tokenPath {
			reply(200, seedDisableOK)(w, r)
			return
		}
		_ = r.ParseForm()
		u, p, ok := r.BasicAuth()
		mu.Lock()
		reqs = append(reqs, seen{u, p, r.PostForm.Get("grant_type"), ok})
		mu.Unlock()
		reply(200, `{"access_token": "t", "token_type": "Bearer", "expires_in": 60}`)(w, r)
	}))
	t.Cleanup(srv.Close)
	mustHandle(t, newClient(t, srv.URL, nil), credential(events.CredentialDisable, 1))
	if len(reqs) != 1 {
		t.Fatalf("token requests = %d, want 1", len(reqs))
	}
	if r := reqs[0]; r.grant != "client_credentials" || !r.ok || r.user != testClientID || r.pass != testClientSecret {
		t.Errorf("token request %+v", r)
	}
}

func TestRedirectsAreNotFollowed(t *testing.T) {
	t.Parallel()
	var stolen atomic.Int64
	var stolenAuth atomic.Value
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stolen.Add(1)
		stolenAuth.Store(r.Header.Get("Authorization"))
		reply(200, seedDisableOK)(w, r)
	}))
	t.Cleanup(elsewhere.Close)
	redirect := func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+r.URL.Path, http.StatusFound)
	}

	t.Run("API call", func(t *testing.T) {
		f := newFakeSegura(t, redirect)
		_, err := newClient(t, f.srv.URL, nil).Handle(context.Background(), credential(events.CredentialDisable, 1))
		if err == nil {
			t.Fatal("a redirected call succeeded")
		}
		if !errors.Is(err, handlers.ErrRedirect) && !strings.Contains(err.Error(), "redirect") {
			t.Errorf("error %v does not say redirect", err)
		}
		if f.apiCalls.Load() != 1 {
			t.Errorf("API calls = %d, want 1", f.apiCalls.Load())
		}
	})
	t.Run("token request", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(redirect))
		t.Cleanup(srv.Close)
		_, err := newClient(t, srv.URL, nil).Handle(context.Background(), credential(events.CredentialDisable, 1))
		if err == nil {
			t.Fatal("a redirected token request succeeded")
		}
	})
	if n := stolen.Load(); n != 0 {
		t.Errorf("the redirect target received %d requests (Authorization %q)", n, stolenAuth.Load())
	}
}

func TestAPIPrefix(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		served     []string
		prefix     string
		wantPath   string // escaped path the simulator saw
		wantRefuse bool
	}{
		{"default /api", nil, "", "/api/pam/credential/1", false},
		{"explicit /api", []string{"/api"}, "/api", "/api/pam/credential/1", false},
		{"/iso", []string{"/iso"}, "/iso", "/iso/pam/credential/1", false},
		{"/iso with a trailing slash", []string{"/iso"}, "/iso/", "/iso/pam/credential/1", false},
		{"/api against a server serving /iso only", []string{"/iso"}, "", "/api/pam/credential/1", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := setup(t, sandbox.SeguraOptions{Prefixes: tc.served}, func(c *segura.Config) { c.APIPrefix = tc.prefix })
			_, err := r.client.Handle(context.Background(), credential(events.CredentialDisable, 1))
			var pe *handlers.PermanentError
			switch {
			case tc.wantRefuse && (!errors.As(err, &pe) || pe.HTTPStatus != 404):
				t.Errorf("Handle = %v, want a 404 refusal", err)
			case !tc.wantRefuse && err != nil:
				t.Errorf("Handle = %v", err)
			}
			if reqs := r.sim.Requests(); len(reqs) != 1 || reqs[0].EscapedPath != tc.wantPath {
				t.Errorf("requests = %+v, want one to %s", reqs, tc.wantPath)
			}
		})
	}
}

func TestCancelledContext(t *testing.T) {
	t.Parallel()
	r := setup(t, sandbox.SeguraOptions{}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := r.client.Handle(ctx, credential(events.CredentialDisable, 1))
	var re *handlers.RetryableError
	if !errors.Is(err, context.Canceled) || errors.As(err, &re) {
		t.Fatalf("Handle = %v (%T), want context.Canceled as it is", err, err)
	}
	if r.sim.Calls() != 0 {
		t.Errorf("API calls = %d", r.sim.Calls())
	}
}

func TestAttemptTimeout(t *testing.T) {
	t.Parallel()
	r := setup(t, sandbox.SeguraOptions{}, nil)
	mustHandle(t, r.client, credential(events.CredentialDisable, 1)) // fetch the token first
	r.sim.SetLatency(2 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	t.Cleanup(cancel)
	_, err := r.client.Handle(ctx, credential(events.CredentialDisable, 2))
	var re *handlers.RetryableError
	if !errors.As(err, &re) || re.Reason != handlers.ReasonTimeout {
		t.Fatalf("Handle = %v (%T), want a retryable timeout", err, err)
	}
	if err := wantCredential(r.sim, 2, true, false); err != nil {
		t.Error(err)
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	secret := handlers.NewSecret("s")
	tests := []struct {
		name string
		cfg  segura.Config
		want string // in the error; "" for success
	}{
		{"valid", segura.Config{BaseURL: "https://segura.example.com", ClientID: "id", ClientSecret: secret}, ""},
		{"no client id", segura.Config{BaseURL: "https://segura.example.com", ClientSecret: secret}, "client id"},
		{"no client secret", segura.Config{BaseURL: "https://segura.example.com", ClientID: "id"}, "client secret"},
		{"no URL", segura.Config{ClientID: "id", ClientSecret: secret}, "base URL"},
		{"ftp URL", segura.Config{BaseURL: "ftp://segura.example.com", ClientID: "id", ClientSecret: secret}, "http(s)"},
		{"bad prefix", segura.Config{BaseURL: "https://segura.example.com", APIPrefix: "api", ClientID: "id", ClientSecret: secret}, "prefix"},
	}
	for _, tc := range tests {
		_, err := segura.New(tc.cfg)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: New = %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: New = %v, want an error about %q", tc.name, err, tc.want)
		}
	}
}

func TestBaseEndpoint(t *testing.T) {
	t.Parallel()
	tests := []struct {
		base, prefix, want string
		wantErr            bool
	}{
		{"https://segura.example.com", "", "https://segura.example.com/api", false},
		{"https://segura.example.com/", "/api", "https://segura.example.com/api", false},
		{"https://segura.example.com", "/iso", "https://segura.example.com/iso", false},
		{"https://segura.example.com", "/iso/", "https://segura.example.com/iso", false},
		{"https://segura.example.com:8443/pam-proxy/", "/api", "https://segura.example.com:8443/pam-proxy/api", false},
		{"http://127.0.0.1:8080", "/api", "http://127.0.0.1:8080/api", false},
		{"https://segura.example.com/a%20b", "/api", "https://segura.example.com/a%20b/api", false},
		{"", "", "", true},
		{"segura.example.com", "", "", true},
		{"ftp://segura.example.com", "", "", true},
		{"https://", "", "", true},
		{"https://user:pass@segura.example.com", "", "", true},
		{"https://segura.example.com?x=1", "", "", true},
		{"https://segura.example.com#frag", "", "", true},
		{"https://segura.example.com", "api", "", true},
		{"https://segura.example.com", "/api?x", "", true},
		{"https://segura.example.com", "/api#x", "", true},
		{"https://segura.example.com", "/a%2Fb", "", true},
		{"::", "", "", true},
	}
	for _, tc := range tests {
		got, err := segura.BaseEndpoint(tc.base, tc.prefix)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("BaseEndpoint(%q, %q) = %q, %v; want %q, error %v", tc.base, tc.prefix, got, err, tc.want, tc.wantErr)
		}
		if err != nil && strings.Contains(err.Error(), "pass") && strings.Contains(tc.base, "pass@") {
			t.Errorf("BaseEndpoint error shows the URL's password: %v", err)
		}
	}
}

func TestRegister(t *testing.T) {
	t.Parallel()
	segActions := []string{events.SessionDrop, events.CredentialDisable, events.CredentialEnable, events.CustodyRelease}

	t.Run("no targets", func(t *testing.T) {
		t.Parallel()
		reg := handlers.NewRegistry()
		if err := segura.Register(reg, nil); err != nil {
			t.Fatal(err)
		}
		for _, a := range segActions {
			h, ok := reg.Lookup(a)
			if !ok {
				t.Fatalf("%s not registered", a)
			}
			_, err := h.Handle(context.Background(), event(a))
			var rej *events.Rejection
			if !errors.As(err, &rej) || rej.Code != events.CodeTargetNotConfigured {
				t.Errorf("%s: %v, want target_not_configured", a, err)
			}
		}
		if _, ok := reg.Lookup(events.ElementSessionsDelete); ok {
			t.Error("the Element action is registered by Segura")
		}
		if err := segura.Register(reg, nil); err == nil {
			t.Error("a second Register into the same registry succeeded")
		}
	})

	t.Run("targets by name", func(t *testing.T) {
		t.Parallel()
		primary := setup(t, sandbox.SeguraOptions{}, nil)
		dr := setup(t, sandbox.SeguraOptions{}, nil)
		reg := handlers.NewRegistry()
		if err := segura.Register(reg, handlers.Targets[*segura.Client]{"default": primary.client, "dr": dr.client}); err != nil {
			t.Fatal(err)
		}
		h, _ := reg.Lookup(events.CredentialDisable)
		ev := credential(events.CredentialDisable, 4)
		ev.Target = "dr"
		if _, err := h.Handle(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
		if primary.sim.Calls() != 0 || dr.sim.Calls() != 1 {
			t.Errorf("calls: default %d, dr %d; want 0 and 1", primary.sim.Calls(), dr.sim.Calls())
		}
		ev.Target = "lab"
		_, err := h.Handle(context.Background(), ev)
		var rej *events.Rejection
		if !errors.As(err, &rej) || rej.Code != events.CodeTargetNotConfigured || !strings.Contains(rej.Message, "lab") {
			t.Errorf("unknown target: %v", err)
		}
	})
}
