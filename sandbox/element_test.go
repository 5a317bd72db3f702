package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// seedElementSession is the session object of the vendor's example (seed 004).
const seedElementSession = `{
	"accessGroupList": ["administrator"],
	"authMethod": "Cluster",
	"clusterAdminIDs": [1],
	"finalTimeout": "2020-03-14T19:21:24Z",
	"idpConfigVersion": 0,
	"lastAccessTimeout": "2020-03-11T19:51:24Z",
	"sessionCreationTime": "2020-03-11T19:21:24Z",
	"sessionID": "b12bfc64-f233-44df-8b9f-6fb6c011abf7",
	"username": "admin"
}`

const (
	testElementUser     = "admin"
	testElementPassword = "pa55:word"
)

type elementRig struct {
	sim *Element
	srv *httptest.Server
	url string
}

func setupElement(t *testing.T) *elementRig {
	t.Helper()
	sim := NewElement(ElementOptions{Username: testElementUser, Password: testElementPassword})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return &elementRig{sim: sim, srv: srv, url: srv.URL + ElementEndpointPath}
}

// post sends body to url as the configured admin, with Content-Type application/json-rpc.
func (g *elementRig) post(t *testing.T, body string) (int, http.Header, []byte) {
	t.Helper()
	return g.send(t, "POST", g.url, "application/json-rpc", testElementUser, testElementPassword, body)
}

func (g *elementRig) send(t *testing.T, method, url, contentType, user, pass, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	return do(t, req)
}

// rpc calls method with params and returns the decoded response.
func (g *elementRig) rpc(t *testing.T, method string, params any) rpcResult {
	t.Helper()
	body, err := json.Marshal(map[string]any{"method": method, "params": params, "id": 1})
	if err != nil {
		t.Fatal(err)
	}
	status, _, resp := g.post(t, string(body))
	if status != 200 {
		t.Fatalf("%s: HTTP %d %s", method, status, resp)
	}
	var r rpcResult
	if err := json.Unmarshal(resp, &r); err != nil {
		t.Fatalf("%s: %v\n%s", method, err, resp)
	}
	r.raw = resp
	return r
}

type rpcResult struct {
	ID     json.RawMessage `json:"id"`
	Result *struct {
		Sessions []json.RawMessage `json:"sessions"`
	} `json:"result"`
	Error *rpcError `json:"error"`
	raw   []byte
}

func (r rpcResult) sessionIDs(t *testing.T) []string {
	t.Helper()
	if r.Error != nil || r.Result == nil || r.Result.Sessions == nil {
		t.Fatalf("want a sessions result, got %s", r.raw)
	}
	ids := []string{}
	for _, s := range r.Result.Sessions {
		var v elementSession
		if err := json.Unmarshal(s, &v); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, v.SessionID)
	}
	return ids
}

func TestElementDeleteMatchesSeed(t *testing.T) {
	t.Parallel()
	g := setupElement(t)
	r := g.rpc(t, "DeleteAuthSessionsByUsername", map[string]any{"authMethod": "Cluster", "username": "admin"})
	if string(r.ID) != "1" || len(r.Result.Sessions) != 2 {
		t.Fatalf("response: %s", r.raw)
	}
	assertJSON(t, r.Result.Sessions[0], seedElementSession)
	var second map[string]any
	if err := json.Unmarshal(r.Result.Sessions[1], &second); err != nil {
		t.Fatal(err)
	}
	var first map[string]any
	_ = json.Unmarshal([]byte(seedElementSession), &first)
	if !reflect.DeepEqual(keys(second), keys(first)) {
		t.Errorf("session fields %v, want %v", keys(second), keys(first))
	}
	if n := g.sim.Sessions("admin"); n != 0 {
		t.Errorf("Sessions(admin) = %d after delete", n)
	}
	if n := g.sim.Sessions(ElementOperatorUser); n != 1 {
		t.Errorf("delete touched other users: Sessions(operator) = %d", n)
	}
}

func keys(m map[string]any) []string { return slices.Sorted(maps.Keys(m)) }

func TestElementListAndDelete(t *testing.T) {
	t.Parallel()
	g := setupElement(t)
	adminIDs := g.sim.SessionIDs("admin")
	if len(adminIDs) != 2 || g.sim.Sessions(ElementOperatorUser) != 1 || g.sim.Sessions(ElementLDAPUser) != 1 {
		t.Fatalf("seed: admin %v, operator %d, ldap %d", adminIDs, g.sim.Sessions(ElementOperatorUser), g.sim.Sessions(ElementLDAPUser))
	}

	// List previews without deleting.
	for range 2 {
		got := g.rpc(t, "ListAuthSessionsByUsername", map[string]any{"username": "admin"}).sessionIDs(t)
		if !reflect.DeepEqual(got, adminIDs) {
			t.Fatalf("list admin = %v, want %v", got, adminIDs)
		}
	}
	// The auth method filters; it is matched case-insensitively.
	if got := g.rpc(t, "DeleteAuthSessionsByUsername", map[string]any{"username": ElementLDAPUser, "authMethod": "Cluster"}).sessionIDs(t); len(got) != 0 {
		t.Fatalf("Cluster filter deleted LDAP sessions: %v", got)
	}
	if got := g.rpc(t, "ListAuthSessionsByUsername", map[string]any{"username": ElementLDAPUser, "authMethod": "LDAP"}).sessionIDs(t); len(got) != 1 {
		t.Fatalf("LDAP list = %v", got)
	}
	if got := g.rpc(t, "DeleteAuthSessionsByUsername", map[string]any{"username": ElementLDAPUser, "authMethod": "Ldap"}).sessionIDs(t); len(got) != 1 {
		t.Fatalf("LDAP delete = %v", got)
	}
	// Zero matches answer an empty list, not null.
	r := g.rpc(t, "DeleteAuthSessionsByUsername", map[string]any{"username": ElementLDAPUser})
	assertJSON(t, r.raw, `{"id":1,"result":{"sessions":[]}}`)
	r = g.rpc(t, "ListAuthSessionsByUsername", map[string]any{"username": "nobody", "authMethod": nil})
	assertJSON(t, r.raw, `{"id":1,"result":{"sessions":[]}}`)

	id := g.sim.AddSession("svc-backup", "idp")
	got := g.rpc(t, "DeleteAuthSessionsByUsername", map[string]any{"username": "svc-backup", "authMethod": "Idp"})
	if ids := got.sessionIDs(t); !reflect.DeepEqual(ids, []string{id}) {
		t.Fatalf("delete added session = %v, want [%s]", ids, id)
	}
	var s elementSession
	_ = json.Unmarshal(got.Result.Sessions[0], &s)
	if s.AuthMethod != AuthIdp || s.Username != "svc-backup" || len(s.SessionID) != 36 || s.SessionCreationTime == "" {
		t.Errorf("added session: %+v", s)
	}
}

func TestElementErrors(t *testing.T) {
	t.Parallel()
	g := setupElement(t)
	cases := []struct {
		name, body, errName string
	}{
		{"unknown method", `{"method":"ListVolumes","params":{},"id":1}`, "xUnknownAPIMethod"},
		{"no method", `{"params":{"username":"admin"},"id":1}`, "xUnknownAPIMethod"},
		{"missing username", `{"method":"DeleteAuthSessionsByUsername","params":{"authMethod":"Cluster"},"id":1}`, "xInvalidParameter"},
		{"null username", `{"method":"DeleteAuthSessionsByUsername","params":{"username":null},"id":1}`, "xInvalidParameter"},
		{"empty username", `{"method":"DeleteAuthSessionsByUsername","params":{"username":""},"id":1}`, "xInvalidParameter"},
		{"numeric username", `{"method":"DeleteAuthSessionsByUsername","params":{"username":7},"id":1}`, "xInvalidParameter"},
		{"no params", `{"method":"ListAuthSessionsByUsername","id":1}`, "xInvalidParameter"},
		{"params not an object", `{"method":"ListAuthSessionsByUsername","params":["admin"],"id":1}`, "xInvalidParameter"},
		{"unknown authMethod", `{"method":"DeleteAuthSessionsByUsername","params":{"username":"admin","authMethod":"Kerberos"},"id":1}`, "xInvalidParameter"},
		{"numeric authMethod", `{"method":"DeleteAuthSessionsByUsername","params":{"username":"admin","authMethod":1},"id":1}`, "xInvalidParameter"},
	}
	for _, tc := range cases {
		status, h, body := g.post(t, tc.body)
		var r rpcResult
		if err := json.Unmarshal(body, &r); err != nil || status != 200 || h.Get("Content-Type") != "application/json" {
			t.Errorf("%s: HTTP %d %q %s", tc.name, status, h.Get("Content-Type"), body)
			continue
		}
		if r.Error == nil || r.Error.Code != 500 || r.Error.Name != tc.errName || r.Error.Message == "" || r.Result != nil || string(r.ID) != "1" {
			t.Errorf("%s: %s, want error %s", tc.name, body, tc.errName)
		}
	}
	if n := g.sim.Sessions("admin"); n != 2 {
		t.Errorf("a failed call deleted sessions: %d left", n)
	}

	status, _, body := g.post(t, `{"method":`)
	if !strings.Contains(string(body), `"name":"xInvalidJSON"`) || status != 200 {
		t.Errorf("malformed JSON: %d %s", status, body)
	}
}

func TestElementIDEcho(t *testing.T) {
	t.Parallel()
	g := setupElement(t)
	for _, id := range []string{`"abc"`, `42`, `{"a":1}`} {
		_, _, body := g.post(t, fmt.Sprintf(`{"method":"ListAuthSessionsByUsername","params":{"username":"operator"},"id":%s}`, id))
		var r rpcResult
		_ = json.Unmarshal(body, &r)
		if string(r.ID) != id {
			t.Errorf("id %s echoed as %s", id, r.ID)
		}
	}
	_, _, body := g.post(t, `{"method":"Nope","params":{}}`)
	assertJSON(t, body, `{"id":null,"error":{"code":500,"name":"xUnknownAPIMethod","message":"Unknown method \"Nope\""}}`)
}

func TestElementHTTPRefusals(t *testing.T) {
	t.Parallel()
	g := setupElement(t)
	valid := `{"method":"ListAuthSessionsByUsername","params":{"username":"admin"},"id":1}`
	cases := []struct {
		name, method, url, contentType, user, pass string
		status                                     int
	}{
		{"no auth", "POST", g.url, "application/json-rpc", "", "", 401},
		{"wrong password", "POST", g.url, "application/json-rpc", testElementUser, "nope", 401},
		{"wrong user", "POST", g.url, "application/json-rpc", "root", testElementPassword, 401},
		{"GET", "GET", g.url, "", testElementUser, testElementPassword, 405},
		{"form body", "POST", g.url, "application/x-www-form-urlencoded", testElementUser, testElementPassword, 415},
		{"no content type", "POST", g.url, "", testElementUser, testElementPassword, 415},
		{"other path", "POST", g.srv.URL + "/api/v1", "application/json-rpc", testElementUser, testElementPassword, 404},
		{"bare json-rpc", "POST", g.srv.URL + "/json-rpc/", "application/json-rpc", testElementUser, testElementPassword, 404},
		{"json accepted", "POST", g.url, "application/json; charset=utf-8", testElementUser, testElementPassword, 200},
		{"other version", "POST", g.srv.URL + "/json-rpc/11.3", "application/json-rpc", testElementUser, testElementPassword, 200},
	}
	for _, tc := range cases {
		status, h, body := g.send(t, tc.method, tc.url, tc.contentType, tc.user, tc.pass, valid)
		if status != tc.status {
			t.Errorf("%s: %d, want %d (%s)", tc.name, status, tc.status, body)
		}
		if status == 401 && (json.Valid(body) || h.Get("WWW-Authenticate") == "") {
			t.Errorf("%s: 401 should be plain with a challenge: %q %s", tc.name, h.Get("WWW-Authenticate"), body)
		}
	}
	if n := g.sim.CallsTo("ListAuthSessionsByUsername"); n != 2 {
		t.Errorf("CallsTo counted refused requests: %d", n)
	}
	if n := g.sim.Calls(); n != int64(len(cases)) {
		t.Errorf("Calls() = %d, want %d", n, len(cases))
	}

	g.sim.SetPassword("rotated")
	if status, _, _ := g.post(t, valid); status != 401 {
		t.Errorf("old password after SetPassword: %d", status)
	}
	if status, _, _ := g.send(t, "POST", g.url, "application/json-rpc", testElementUser, "rotated", valid); status != 200 {
		t.Errorf("new password: %d", status)
	}
}

func TestElementFaults(t *testing.T) {
	t.Parallel()
	g := setupElement(t)
	del := `{"method":"DeleteAuthSessionsByUsername","params":{"username":"admin"},"id":7}`

	g.sim.FailNext(1, ElementFault{HTTPStatus: 503, RetryAfter: "3"})
	status, h, body := g.post(t, del)
	if status != 503 || h.Get("Retry-After") != "3" || len(body) != 0 {
		t.Errorf("HTTP fault: %d %q %q", status, h.Get("Retry-After"), body)
	}

	g.sim.FailNext(2, ElementFault{Name: "xDBVersionMismatch"})
	for range 2 {
		_, _, body = g.post(t, del)
		var r rpcResult
		_ = json.Unmarshal(body, &r)
		if r.Error == nil || r.Error.Name != "xDBVersionMismatch" || r.Error.Code != 500 || string(r.ID) != "7" {
			t.Errorf("named fault: %s", body)
		}
	}
	g.sim.FailNext(1, ElementFault{Name: "xPermissionDenied", Message: "Permission denied"})
	_, _, body = g.post(t, del)
	assertJSON(t, body, `{"id":7,"error":{"code":500,"name":"xPermissionDenied","message":"Permission denied"}}`)
	if n := g.sim.Sessions("admin"); n != 2 {
		t.Fatalf("faulted calls deleted sessions: %d left", n)
	}

	// A bare delay is served normally afterwards.
	g.sim.FailNext(1, ElementFault{Delay: 10 * time.Millisecond})
	if got := g.rpc(t, "DeleteAuthSessionsByUsername", map[string]any{"username": "admin"}).sessionIDs(t); len(got) != 2 {
		t.Fatalf("after delay: %v", got)
	}
	if n := g.sim.CallsTo("DeleteAuthSessionsByUsername"); n != 5 {
		t.Errorf("CallsTo(Delete) = %d, want 5", n)
	}
	// Refused requests do not use up a fault.
	g.sim.FailNext(1, ElementFault{Name: "xNotReadyForIO"})
	if status, _, _ := g.send(t, "POST", g.url, "application/json-rpc", "", "", del); status != 401 {
		t.Fatalf("unauthenticated: %d", status)
	}
	if r := g.rpc(t, "ListAuthSessionsByUsername", map[string]any{"username": "operator"}); r.Error == nil || r.Error.Name != "xNotReadyForIO" {
		t.Errorf("fault not kept for the next real call: %s", r.raw)
	}
}

func TestElementLatency(t *testing.T) {
	t.Parallel()
	g := setupElement(t)
	g.sim.SetLatency(time.Hour)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", g.url, strings.NewReader(`{"method":"DeleteAuthSessionsByUsername","params":{"username":"admin"},"id":1}`))
	req.Header.Set("Content-Type", "application/json-rpc")
	req.SetBasicAuth(testElementUser, testElementPassword)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("want a client timeout, got %d", resp.StatusCode)
	}
	if n := g.sim.Sessions("admin"); n != 2 {
		t.Errorf("abandoned call deleted sessions: %d left", n)
	}
}

func TestElementDescribe(t *testing.T) {
	t.Parallel()
	d := NewElement(ElementOptions{Username: "admin", Password: "hush"}).Describe()
	for _, want := range []string{"/json-rpc/12.0", "DeleteAuthSessionsByUsername", ElementLDAPUser} {
		if !strings.Contains(d, want) {
			t.Errorf("Describe() lacks %q:\n%s", want, d)
		}
	}
	if strings.Contains(d, "hush") {
		t.Error("Describe() leaks the password")
	}
}

func TestElementConcurrent(t *testing.T) {
	t.Parallel()
	g := setupElement(t)
	const workers = 20
	var wg sync.WaitGroup
	deleted := make([]int, workers)
	for w := range workers {
		wg.Go(func() {
			user := fmt.Sprintf("user%02d", w)
			for range 3 {
				g.sim.AddSession(user, "")
			}
			body := fmt.Sprintf(`{"method":"DeleteAuthSessionsByUsername","params":{"username":%q},"id":1}`, user)
			req, _ := http.NewRequest("POST", g.url, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json-rpc")
			req.SetBasicAuth(testElementUser, testElementPassword)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var r rpcResult
			if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Result == nil {
				t.Errorf("worker %d: %v", w, err)
				return
			}
			deleted[w] = len(r.Result.Sessions)
		})
		wg.Go(func() {
			g.sim.Sessions("admin")
			g.sim.CallsTo("DeleteAuthSessionsByUsername")
			g.sim.FailNext(1, ElementFault{}) // no fault at all: handled normally
		})
	}
	wg.Wait()
	for w, n := range deleted {
		if n != 3 {
			t.Errorf("worker %d deleted %d sessions, want 3", w, n)
		}
	}
	if n := g.sim.CallsTo("DeleteAuthSessionsByUsername"); n != workers {
		t.Errorf("CallsTo = %d, want %d", n, workers)
	}
}
