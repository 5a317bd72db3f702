package segura_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/guard"
	"github.com/pamworker/pamworker/handlers"
	"github.com/pamworker/pamworker/handlers/segura"
	"github.com/pamworker/pamworker/sandbox"
)

// ownerGuard protects the sandbox's break-glass user, as the worker wires it.
func ownerGuard(c *segura.Config) {
	c.OwnerCheck = guard.Protected{SessionOwners: map[string][]string{"default": {"BreakGlass"}}}.SessionOwnerCheck("default")
}

func drop(id string, dry bool) events.Event {
	return events.Event{ID: "ev-" + id, Action: events.SessionDrop, Target: events.DefaultTarget, SessionID: id, DryRun: dry}
}

// breakGlassSession is the seed session opened by the sandbox's "breakglass" user.
func breakGlassSession(t *testing.T) string {
	for _, id := range sandbox.SandboxSessions() {
		if sandbox.SandboxSessionOwner(id) == "breakglass" {
			return id
		}
	}
	t.Fatal("the sandbox has no break-glass session")
	return ""
}

func TestProtectedSessionOwner(t *testing.T) {
	t.Parallel()
	r := setup(t, sandbox.SeguraOptions{}, ownerGuard)
	bg := breakGlassSession(t)
	for _, dry := range []bool{true, false} {
		_, err := r.client.Handle(context.Background(), drop(bg, dry))
		var rej *events.Rejection
		if !errors.As(err, &rej) || rej.Code != guard.CodeProtected {
			t.Fatalf("dry=%v: drop of a break-glass session: %v, want a %s rejection", dry, err, guard.CodeProtected)
		}
	}
	if !r.sim.SessionOpen(bg) || r.sim.CallsTo("DELETE", "/pam/session/drop") != 0 {
		t.Fatalf("the protected session was touched: open %v, drops %d", r.sim.SessionOpen(bg), r.sim.CallsTo("DELETE", "/pam/session/drop"))
	}

	// Someone else's session is dropped, and the result says whose it was.
	other := sandbox.SandboxSessions()[0]
	out := mustHandle(t, r.client, drop(other, false))
	if out.Details["session_owner"] != sandbox.SandboxSessionOwner(other) || r.sim.SessionOpen(other) {
		t.Fatalf("drop of %s's session: %+v, open %v", sandbox.SandboxSessionOwner(other), out, r.sim.SessionOpen(other))
	}
	// A dry run looks the owner up too, and changes nothing.
	third := sandbox.SandboxSessions()[2]
	out = mustHandle(t, r.client, drop(third, true))
	if out.Details["session_owner"] != sandbox.SandboxSessionOwner(third) || !r.sim.SessionOpen(third) {
		t.Fatalf("dry run: %+v, open %v", out, r.sim.SessionOpen(third))
	}
	// Owners never change, so the first list answered every seed session.
	if n := r.sim.CallsTo("GET", "/pam/session/remotesessions"); n != 1 {
		t.Errorf("%d session lists fetched, want 1", n)
	}

	// A session opened after that list is looked up in a new one.
	late := r.sim.AddSessionFor("breakglass")
	if _, err := r.client.Handle(context.Background(), drop(late, false)); err == nil || !r.sim.SessionOpen(late) {
		t.Fatalf("a break-glass session opened later was dropped: %v", err)
	}
	if n := r.sim.CallsTo("GET", "/pam/session/remotesessions"); n != 2 {
		t.Errorf("%d session lists fetched, want 2", n)
	}
}

func TestSessionNotListed(t *testing.T) {
	t.Parallel()
	r := setup(t, sandbox.SeguraOptions{}, ownerGuard)
	_, err := r.client.Handle(context.Background(), drop("0123456789abcdef0123456789abcdef", false))
	var rej *events.Rejection
	if !errors.As(err, &rej) || rej.Code != segura.CodeSessionNotListed {
		t.Fatalf("drop of an unlisted session: %v, want %s", err, segura.CodeSessionNotListed)
	}
	if n := r.sim.CallsTo("DELETE", ""); n != 0 {
		t.Errorf("%d DELETEs sent", n)
	}
}

func TestNoOwnerCheckNoLookup(t *testing.T) {
	t.Parallel()
	r := setup(t, sandbox.SeguraOptions{}, nil)
	bg := breakGlassSession(t)
	out := mustHandle(t, r.client, drop(bg, false))
	if r.sim.CallsTo("GET", "") != 0 || out.Details["session_owner"] != nil || r.sim.SessionOpen(bg) {
		t.Fatalf("with no protected owner a drop must not look anything up: %d GETs, %+v", r.sim.CallsTo("GET", ""), out)
	}
}

// TestOwnerLookupsShareOneList: a burst of drops of sessions no list has answered yet fetches
// the list a few times at most, not once per drop.
func TestOwnerLookupsShareOneList(t *testing.T) {
	t.Parallel()
	r := setup(t, sandbox.SeguraOptions{}, ownerGuard)
	ids := make([]string, 40)
	for i := range ids {
		ids[i] = r.sim.AddSessionFor("alice")
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(ids))
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := r.client.Handle(context.Background(), drop(id, false)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Every drop asked before the first fetch started, or during it: at most two fetches.
	if n := r.sim.CallsTo("GET", "/pam/session/remotesessions"); n < 1 || n > 2 {
		t.Errorf("%d session lists for %d drops", n, len(ids))
	}
}

// TestUnknownSessionsShareReads: a flood of drops of sessions Segura does not list — stale ids,
// or a hostile publisher's — reads the list at most once per refresh interval, however the
// drops arrive, and every one of them is refused as not listed. (Found by attack: 500 such
// drops made 472 full reads of a list Segura warns can take minutes.)
func TestUnknownSessionsShareReads(t *testing.T) {
	t.Parallel()
	const every = 100 * time.Millisecond
	r := setup(t, sandbox.SeguraOptions{}, func(c *segura.Config) { ownerGuard(c); c.MinListRefresh = every })
	const drops, concurrency = 300, 32
	start := time.Now()
	var wg sync.WaitGroup
	var next atomic.Int32
	var notListed atomic.Int32
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= drops; i = next.Add(1) {
				_, err := r.client.Handle(context.Background(), drop(fmt.Sprintf("%032x", i), false))
				var rej *events.Rejection
				if errors.As(err, &rej) && rej.Code == segura.CodeSessionNotListed {
					notListed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if n := notListed.Load(); n != drops {
		t.Errorf("%d of %d drops refused as not listed", n, drops)
	}
	// An upper bound that slowness only makes easier: one read per interval, plus the first.
	reads := r.sim.CallsTo("GET", "/pam/session/remotesessions")
	if limit := 2 + int64(elapsed/every); reads > limit {
		t.Errorf("%d list reads for %d drops in %v, more than one per %v", reads, drops, elapsed.Round(time.Millisecond), every)
	}
	t.Logf("%d drops of unknown sessions: %d list reads in %v", drops, reads, elapsed.Round(time.Millisecond))
}

// listServer serves a token, list as the remote session list, and counts anything else (a
// drop) in sends, answering it with success.
func listServer(t *testing.T, list string, sends *atomic.Int32) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case req.URL.Path == "/iso/oauth2/token":
			_, _ = w.Write([]byte(`{"access_token":"t","token_type":"Bearer","expires_in":3600}`))
		case req.Method == http.MethodGet:
			_, _ = w.Write([]byte(list))
		default:
			sends.Add(1)
			_, _ = w.Write([]byte(`{"code":200,"response":{"status":200,"message":"Session dropped successfully","error":false}}`))
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestSessionListFailures: a list the worker cannot read never lets a drop through.
func TestSessionListFailures(t *testing.T) {
	t.Parallel()
	r := setup(t, sandbox.SeguraOptions{}, ownerGuard)
	r.sim.FailNext(1, sandbox.Fault{Status: http.StatusServiceUnavailable})
	_, err := r.client.Handle(context.Background(), drop(sandbox.SandboxSessions()[0], false))
	if kind, _, _, _ := handlers.Classify(err); kind.String() != "retry" || r.sim.CallsTo("DELETE", "") != 0 {
		t.Fatalf("list answered 503: %v (%s), %d DELETEs", err, kind, r.sim.CallsTo("DELETE", ""))
	}

	for _, tc := range []struct {
		name, body string
		kind       string
	}{
		{"not JSON", "<html>proxy</html>", "retry"},
		{"envelope without a list", `{"code":200,"response":{"status":200,"message":"","error":false}}`, "retry"},
		{"error envelope", `{"code":403,"response":{"status":403,"message":"You are not authorized to access this resource.","error":true}}`, "down"},
	} {
		var sends atomic.Int32
		url := listServer(t, tc.body, &sends)
		c := newClient(t, url, ownerGuard)
		_, err := c.Handle(context.Background(), drop("e95d6160bbfbe6f1594bd0ff29d102dc", false))
		if kind, _, _, _ := handlers.Classify(err); kind.String() != tc.kind || sends.Load() != 0 {
			t.Errorf("%s: %v (%s), want %s; %d drops sent", tc.name, err, kind, tc.kind, sends.Load())
		}
	}
}

// TestSessionWithoutOwner: a list entry without a user (the vendor renamed the field, say)
// fails closed: nothing is dropped.
func TestSessionWithoutOwner(t *testing.T) {
	t.Parallel()
	var deletes atomic.Int32
	url := listServer(t, `{"code":200,"response":{"status":200,"message":"","error":false},
		"remote_sessions":[{"id":"3","username":"breakglass","session_id":"abc123"}]}`, &deletes)
	c := newClient(t, url, ownerGuard)
	_, err := c.Handle(context.Background(), drop("abc123", false))
	var rej *events.Rejection
	if !errors.As(err, &rej) || rej.Code != segura.CodeSessionOwnerUnknown || deletes.Load() != 0 {
		t.Fatalf("session listed without a user: %v, %d deletes", err, deletes.Load())
	}
}

// TestNestedSessionList reads the shape one documentation page shows: the list inside an
// envelope of its own, inside the list.
func TestNestedSessionList(t *testing.T) {
	t.Parallel()
	const body = `{"code":200,"response":{"status":200,"message":"","error":false},"remote_sessions":[
		{"code":200,"response":{"status":200,"message":"","error":false},"tenant":"senhasegura","remote_sessions":[
			{"id":"3","user":"Admin","credential":"usrdomadm01","device":"10.66.33.15:3389","protocol":"rdp",
			 "session_id":"e7acacb6aedbab70073456da5744166939b77527","start":"2024-05-06 16:05:07","end":"","request":null,"ITSM":null}]}]}`
	var deletes atomic.Int32
	url := listServer(t, body, &deletes)
	c := newClient(t, url, func(cfg *segura.Config) {
		cfg.OwnerCheck = guard.Protected{SessionOwners: map[string][]string{"default": {"admin"}}}.SessionOwnerCheck("default")
	})
	_, err := c.Handle(context.Background(), drop("e7acacb6aedbab70073456da5744166939b77527", false))
	var rej *events.Rejection
	if !errors.As(err, &rej) || rej.Code != guard.CodeProtected || deletes.Load() != 0 {
		t.Fatalf("Admin's session in a nested list: %v, %d deletes", err, deletes.Load())
	}
}
