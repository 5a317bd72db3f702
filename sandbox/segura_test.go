package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// Envelopes copied from the vendor documentation (seeds 000-003).
const (
	seedDropOK = `{"code":200,"response":{"status":200,"message":"Session dropped successfully","error":false,
		"error_code":0,"detail":"","mensagem":"Sessão encerrada com sucesso","erro":false,"cod_erro":0},"tenant":"Segura"}`
	seedCustody94OK = `{"code":200,"response":{"status":200,"message":"Credential custody 94 released","error":false,
		"error_code":0,"detail":"","mensagem":"Credential custody 94 released","erro":false,"cod_erro":0}}`
	seedDisableOK = `{"code":200,"response":{"status":200,"message":"Credential successfully deactivated","error":false,
		"error_code":0,"detail":"","mensagem":"Credential successfully deactivated","erro":false,"cod_erro":0}}`
	seedEnableOK = `{"code":200,"response":{"status":200,"message":"Credential successfully activated","error":false,
		"error_code":0,"detail":"","mensagem":"Credential successfully activated","erro":false,"cod_erro":0}}`
	seedNotFound1007 = `{"code":400,"response":{"status":400,"message":"1007: Credential not found","error":true,
		"error_code":1,"detail":"","mensagem":"1007: Credential not found","erro":true,"cod_erro":1},
		"exception":{"code":1007,"message":"1007: Credential not found","detail":null}}`
)

// okEnvelope and errEnvelope build the same shapes for the messages the seeds show no example of.
func okEnvelope(msg string) string {
	return fmt.Sprintf(`{"code":200,"response":{"status":200,"message":%q,"error":false,"error_code":0,
		"detail":"","mensagem":%q,"erro":false,"cod_erro":0}}`, msg, msg)
}

func errEnvelope(status int, msg string) string {
	body := fmt.Sprintf(`"code":%d,"response":{"status":%d,"message":%q,"error":true,"error_code":1,
		"detail":"","mensagem":%q,"erro":true,"cod_erro":1}`, status, status, msg, msg)
	if code, ok := vendorCode(msg); ok {
		body += fmt.Sprintf(`,"exception":{"code":%d,"message":%q,"detail":null}`, code, msg)
	}
	return "{" + body + "}"
}

func assertJSON(t *testing.T, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("body is not JSON: %v\n%s", err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad expectation: %v\n%s", err, want)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("body mismatch\n got: %s\nwant: %s", strings.TrimSpace(string(got)), want)
	}
}

type seguraRig struct {
	sim   *Segura
	srv   *httptest.Server
	token string
}

const (
	testClientID     = "pamworker"
	testClientSecret = "s3cret/+&="
)

func setupSegura(t *testing.T) *seguraRig {
	t.Helper()
	return startSegura(t, NewSegura(SeguraOptions{ClientID: testClientID, ClientSecret: testClientSecret}))
}

// startSegura serves sim and fetches a token; tweak sim before calling it.
func startSegura(t *testing.T, sim *Segura) *seguraRig {
	t.Helper()
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	g := &seguraRig{sim: sim, srv: srv}
	g.token = g.fetchToken(t)
	return g
}

func (g *seguraRig) fetchToken(t *testing.T) string {
	t.Helper()
	status, _, body := g.tokenRequest(t, http.MethodPost, url.Values{"grant_type": {"client_credentials"}}, testClientID, testClientSecret)
	if status != http.StatusOK {
		t.Fatalf("token: %d %s", status, body)
	}
	var tok tokenResponse
	if err := json.Unmarshal(body, &tok); err != nil {
		t.Fatal(err)
	}
	return tok.AccessToken
}

// tokenRequest sends form to the token endpoint, with Basic auth unless id is empty.
func (g *seguraRig) tokenRequest(t *testing.T, method string, form url.Values, id, secret string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, g.srv.URL+SeguraTokenPath, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if id != "" {
		req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	}
	return do(t, req)
}

// call sends an API request with the rig's bearer token. path is sent as given (already escaped).
func (g *seguraRig) call(t *testing.T, method, path string) (int, http.Header, []byte) {
	t.Helper()
	return g.callAuth(t, method, path, "Bearer "+g.token)
}

func (g *seguraRig) callAuth(t *testing.T, method, path, authorization string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, g.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) (int, http.Header, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, body
}

func (g *seguraRig) expect(t *testing.T, method, path string, wantStatus int, wantBody string) http.Header {
	t.Helper()
	status, h, body := g.call(t, method, path)
	if status != wantStatus {
		t.Errorf("%s %s: status %d, want %d (%s)", method, path, status, wantStatus, body)
	}
	if ct := h.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	assertJSON(t, body, wantBody)
	return h
}

// TestSeguraRoutes checks each route's first answer against a fresh seed.
func TestSeguraRoutes(t *testing.T) {
	t.Parallel()
	session := SandboxSessions()[0]
	cases := []struct {
		name, method, path string
		status             int
		body               string
	}{
		{"drop session", "DELETE", "/api/pam/session/drop/" + session, 200, seedDropOK},
		{"drop session iso", "DELETE", "/iso/pam/session/drop/" + session, 200, seedDropOK},
		{"drop unknown session", "DELETE", "/api/pam/session/drop/00000000000000000000000000000000", 400, errEnvelope(400, msgDropError)},
		{"drop escaped slash stays in id", "DELETE", "/api/pam/session/drop/" + session + "%2Fx", 400, errEnvelope(400, msgDropError)},
		{"disable by id", "DELETE", "/api/pam/credential/5", 200, seedDisableOK},
		{"disable by id iso", "DELETE", "/iso/pam/credential/5", 200, seedDisableOK},
		{"disable by name", "DELETE", "/api/pam/credential/svc07@host07", 200, seedDisableOK},
		{"disable by escaped name", "DELETE", "/api/pam/credential/root%40db01", 200, seedDisableOK},
		{"disable unknown id", "DELETE", "/api/pam/credential/9999", 400, seedNotFound1007},
		{"disable unknown name", "DELETE", "/api/pam/credential/nobody@nowhere", 400, seedNotFound1007},
		{"disable name with two @", "DELETE", "/api/pam/credential/svc07@x@host07", 400, seedNotFound1007},
		{"disable escaped slash stays in id", "DELETE", "/api/pam/credential/7%2F", 400, seedNotFound1007},
		{"disable no access", "DELETE", "/api/pam/credential/403", 400, errEnvelope(400, msgNoAccess1009)},
		{"disable not a credential", "DELETE", "/api/pam/credential/500", 400, errEnvelope(400, msgNotCred1010)},
		{"enable active", "PUT", "/api/pam/credential/5", 400, errEnvelope(400, msgAlreadyOn1043)},
		{"enable unknown", "PUT", "/iso/pam/credential/9999", 400, seedNotFound1007},
		{"release custody", "DELETE", "/api/pam/credential/custody/94", 200, seedCustody94OK},
		{"release custody by name", "DELETE", "/api/pam/credential/custody/root@db01", 200, seedCustody94OK},
		{"release not in custody", "DELETE", "/api/pam/credential/custody/5", 400, errEnvelope(400, msgNoCustody1018)},
		{"release unknown", "DELETE", "/api/pam/credential/custody/9999", 400, seedNotFound1007},
		{"release no access", "DELETE", "/api/pam/credential/custody/403", 400, errEnvelope(400, msgNoAccess1009)},
		{"unknown route", "GET", "/api/pam/device/1", 404, errEnvelope(404, msgNotFound)},
		{"escaped slash in fixed segment", "DELETE", "/api/pam%2Fcredential/5", 404, errEnvelope(404, msgNotFound)},
		{"trailing slash", "DELETE", "/api/pam/credential/5/", 404, errEnvelope(404, msgNotFound)},
		{"empty id", "DELETE", "/api/pam/credential/", 404, errEnvelope(404, msgNotFound)},
		{"empty session id", "DELETE", "/api/pam/session/drop/", 404, errEnvelope(404, msgNotFound)},
		{"no prefix", "DELETE", "/pam/credential/5", 404, errEnvelope(404, msgNotFound)},
		{"prefix lookalike", "DELETE", "/apix/pam/credential/5", 404, errEnvelope(404, msgNotFound)},
		{"wrong method credential", "POST", "/api/pam/credential/5", 405, errEnvelope(405, "Method not allowed")},
		{"wrong method drop", "GET", "/api/pam/session/drop/" + session, 405, errEnvelope(405, "Method not allowed")},
		{"wrong method custody", "PUT", "/api/pam/credential/custody/94", 405, errEnvelope(405, "Method not allowed")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := setupSegura(t)
			h := g.expect(t, tc.method, tc.path, tc.status, tc.body)
			if tc.status == 405 && h.Get("Allow") == "" {
				t.Error("405 without Allow header")
			}
		})
	}
}

func TestSeguraCredentialLifecycle(t *testing.T) {
	t.Parallel()
	g := setupSegura(t)
	g.expect(t, "DELETE", "/api/pam/credential/7", 200, seedDisableOK)
	if active, _, ok := g.sim.Credential(7); active || !ok {
		t.Fatalf("Credential(7) = active %v ok %v after disable", active, ok)
	}
	g.expect(t, "DELETE", "/api/pam/credential/7", 400, errEnvelope(400, msgInactive1008))
	g.expect(t, "DELETE", "/iso/pam/credential/svc07@host07", 400, errEnvelope(400, msgInactive1008))
	g.expect(t, "GET", "/api/pam/credential/7", 400, errEnvelope(400, msgInactive1008))
	g.expect(t, "PUT", "/api/pam/credential/7", 200, seedEnableOK)
	g.expect(t, "PUT", "/api/pam/credential/7", 400, errEnvelope(400, msgAlreadyOn1043))
	if active, _, _ := g.sim.Credential(7); !active {
		t.Fatal("Credential(7) inactive after enable")
	}
	// Disabling 94 leaves it in custody, and custody of an inactive credential cannot be released.
	g.expect(t, "DELETE", "/api/pam/credential/94", 200, seedDisableOK)
	g.expect(t, "DELETE", "/api/pam/credential/custody/94", 400, errEnvelope(400, msgInactive1008))
	if active, custody, _ := g.sim.Credential(94); active || !custody {
		t.Fatalf("Credential(94) = active %v custody %v", active, custody)
	}
}

func TestSeguraCustody(t *testing.T) {
	t.Parallel()
	g := setupSegura(t)
	g.expect(t, "DELETE", "/api/pam/credential/custody/5", 400, errEnvelope(400, msgNoCustody1018))

	status, _, body := g.call(t, "GET", "/api/pam/credential/5")
	if status != 200 {
		t.Fatalf("GET credential: %d %s", status, body)
	}
	var got struct {
		Code       int               `json:"code"`
		Response   seguraStatus      `json:"response"`
		Credential *seguraCredential `json:"credential"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	c := got.Credential
	if got.Code != 200 || got.Response.Error || c == nil || c.ID != 5 || c.Username != "svc05" ||
		c.Hostname != "host05" || !strings.HasPrefix(c.Password, "sandbox-") {
		t.Fatalf("GET credential body: %s", body)
	}
	if _, custody, _ := g.sim.Credential(5); !custody {
		t.Fatal("GET did not grant custody")
	}
	g.expect(t, "DELETE", "/api/pam/credential/custody/5", 200, okEnvelope("Credential custody 5 released"))
	g.expect(t, "DELETE", "/api/pam/credential/custody/5", 400, errEnvelope(400, msgNoCustody1018))
	g.expect(t, "GET", "/api/pam/credential/500", 400, errEnvelope(400, msgNotCred1010))
}

func TestSeguraSessions(t *testing.T) {
	t.Parallel()
	g := setupSegura(t)
	for _, id := range SandboxSessions() {
		if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Errorf("seed session %q is not 32 hex characters", id)
		}
		if !g.sim.SessionOpen(id) {
			t.Errorf("seed session %s not open", id)
		}
	}
	id := g.sim.AddSession()
	if len(id) != 32 || !g.sim.SessionOpen(id) {
		t.Fatalf("AddSession() = %q, open %v", id, g.sim.SessionOpen(id))
	}
	g.expect(t, "DELETE", "/api/pam/session/drop/"+id, 200, seedDropOK)
	if g.sim.SessionOpen(id) {
		t.Fatal("session still open after drop")
	}
	g.expect(t, "DELETE", "/api/pam/session/drop/"+id, 400, errEnvelope(400, msgDropError))
}

func TestSeguraAuth(t *testing.T) {
	t.Parallel()
	g := setupSegura(t)
	cases := []struct{ name, header, msg string }{
		{"missing header", "", msgNoAuthHeader},
		{"unknown token", "Bearer nope", msgAuthFailed},
		{"empty bearer", "Bearer ", msgAuthFailed},
		{"basic scheme", "Basic " + g.token, msgAuthFailed},
	}
	for _, tc := range cases {
		status, _, body := g.callAuth(t, "DELETE", "/api/pam/credential/5", tc.header)
		if status != 401 {
			t.Errorf("%s: status %d", tc.name, status)
		}
		assertJSON(t, body, errEnvelope(401, tc.msg))
	}
	// The scheme is case-insensitive.
	if status, _, body := g.callAuth(t, "DELETE", "/api/pam/credential/5", "bearer "+g.token); status != 200 {
		t.Errorf("lower-case bearer: %d %s", status, body)
	}
	if active, _, _ := g.sim.Credential(6); !active {
		t.Error("a refused call changed state")
	}
}

func TestSeguraTokenEndpoint(t *testing.T) {
	t.Parallel()
	g := setupSegura(t)
	grant := url.Values{"grant_type": {"client_credentials"}}

	status, h, body := g.tokenRequest(t, "POST", grant, testClientID, testClientSecret)
	var tok map[string]any
	if err := json.Unmarshal(body, &tok); err != nil || status != 200 {
		t.Fatalf("basic auth: %d %s", status, body)
	}
	if tok["token_type"] != "Bearer" || tok["expires_in"] != float64(3600) || tok["access_token"] == "" || len(tok) != 3 {
		t.Errorf("token body: %s", body)
	}
	if h.Get("Content-Type") != "application/json" {
		t.Errorf("Content-Type %q", h.Get("Content-Type"))
	}

	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {testClientID}, "client_secret": {testClientSecret}}
	if status, _, body := g.tokenRequest(t, "POST", form, "", ""); status != 200 {
		t.Errorf("form credentials: %d %s", status, body)
	}

	badClient := `{"error":"invalid_client","error_description":"Client authentication failed"}`
	status, _, body = g.tokenRequest(t, "POST", grant, testClientID, "wrong")
	if status != 401 {
		t.Errorf("wrong secret (basic): %d", status)
	}
	assertJSON(t, body, badClient)
	form.Set("client_secret", "wrong")
	status, _, body = g.tokenRequest(t, "POST", form, "", "")
	if status != 401 {
		t.Errorf("wrong secret (form): %d", status)
	}
	assertJSON(t, body, badClient)
	status, _, body = g.tokenRequest(t, "POST", grant, "", "")
	if status != 401 {
		t.Errorf("no credentials: %d", status)
	}
	assertJSON(t, body, badClient)

	status, _, body = g.tokenRequest(t, "POST", url.Values{"grant_type": {"password"}}, testClientID, testClientSecret)
	if status != 400 {
		t.Errorf("wrong grant: %d", status)
	}
	assertJSON(t, body, `{"error":"unsupported_grant_type"}`)

	if status, _, _ := g.tokenRequest(t, "GET", nil, testClientID, testClientSecret); status != 405 {
		t.Errorf("GET token: %d", status)
	}
	if n := g.sim.TokenRequests(); n != 8 { // setup + 7 here
		t.Errorf("TokenRequests() = %d, want 8", n)
	}
	if n := g.sim.Calls(); n != 0 {
		t.Errorf("Calls() = %d after token requests only", n)
	}
}

func TestSeguraTokenTTL(t *testing.T) {
	t.Parallel()
	sim := NewSegura(SeguraOptions{ClientID: testClientID, ClientSecret: testClientSecret, TokenTTL: 90 * time.Second})
	clock := &testClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	sim.now = clock.Now
	g := startSegura(t, sim)

	_, _, body := g.tokenRequest(t, "POST", url.Values{"grant_type": {"client_credentials"}}, testClientID, testClientSecret)
	if !strings.Contains(string(body), `"expires_in":90`) {
		t.Errorf("expires_in not 90: %s", body)
	}
	clock.Advance(89 * time.Second)
	if status, _, body := g.call(t, "DELETE", "/api/pam/credential/1"); status != 200 {
		t.Fatalf("token refused before expiry: %d %s", status, body)
	}
	clock.Advance(time.Second)
	status, _, body := g.call(t, "DELETE", "/api/pam/credential/2")
	if status != 401 {
		t.Fatalf("expired token: %d", status)
	}
	assertJSON(t, body, errEnvelope(401, msgAuthFailed))
	g.token = g.fetchToken(t)
	g.expect(t, "DELETE", "/api/pam/credential/2", 200, seedDisableOK)
}

func TestSeguraExpireTokens(t *testing.T) {
	t.Parallel()
	g := setupSegura(t)
	g.sim.ExpireTokens()
	g.expect(t, "DELETE", "/api/pam/credential/1", 401, errEnvelope(401, msgAuthFailed))
	g.token = g.fetchToken(t)
	g.expect(t, "DELETE", "/api/pam/credential/1", 200, seedDisableOK)
}

func TestSeguraSetClientSecret(t *testing.T) {
	t.Parallel()
	g := setupSegura(t)
	g.sim.SetClientSecret("rotated")
	grant := url.Values{"grant_type": {"client_credentials"}}
	if status, _, _ := g.tokenRequest(t, "POST", grant, testClientID, testClientSecret); status != 401 {
		t.Errorf("old secret: %d", status)
	}
	if status, _, _ := g.tokenRequest(t, "POST", grant, testClientID, "rotated"); status != 200 {
		t.Errorf("new secret: %d", status)
	}
	g.expect(t, "DELETE", "/api/pam/credential/1", 200, seedDisableOK) // issued tokens survive
}

func TestSeguraRevoked(t *testing.T) {
	t.Parallel()
	g := setupSegura(t)
	g.sim.SetRevoked(true)
	g.expect(t, "DELETE", "/api/pam/credential/1", 500, errEnvelope(500, msgNotAuthorized))
	g.expect(t, "DELETE", "/api/pam/session/drop/"+SandboxSessions()[0], 500, errEnvelope(500, msgNotAuthorized))
	if status, _, body := g.callAuth(t, "DELETE", "/api/pam/credential/1", ""); status != 500 {
		t.Errorf("revoked without token: %d %s", status, body)
	}
	if active, _, _ := g.sim.Credential(1); !active {
		t.Error("revoked call changed state")
	}
	g.token = g.fetchToken(t) // the token endpoint keeps working
	g.sim.SetRevoked(false)
	g.expect(t, "DELETE", "/api/pam/credential/1", 200, seedDisableOK)
}

func TestSeguraFaults(t *testing.T) {
	t.Parallel()

	t.Run("status and retry-after", func(t *testing.T) {
		t.Parallel()
		g := setupSegura(t)
		g.sim.FailNext(2, Fault{Status: 503, RetryAfter: "7"})
		g.sim.FailNext(1, Fault{Status: 429, RetryAfter: "Wed, 21 Oct 2015 07:28:00 GMT"})
		for range 2 {
			h := g.expect(t, "DELETE", "/api/pam/credential/1", 503, errEnvelope(503, "Service Unavailable"))
			if h.Get("Retry-After") != "7" {
				t.Errorf("Retry-After %q", h.Get("Retry-After"))
			}
		}
		h := g.expect(t, "DELETE", "/api/pam/credential/1", 429, errEnvelope(429, "Too Many Requests"))
		if h.Get("Retry-After") != "Wed, 21 Oct 2015 07:28:00 GMT" {
			t.Errorf("Retry-After %q", h.Get("Retry-After"))
		}
		if active, _, _ := g.sim.Credential(1); !active {
			t.Fatal("a failed call changed state")
		}
		g.expect(t, "DELETE", "/api/pam/credential/1", 200, seedDisableOK)
	})

	t.Run("default and custom messages", func(t *testing.T) {
		t.Parallel()
		g := setupSegura(t)
		g.sim.FailNext(1, Fault{Status: 500})
		g.sim.FailNext(1, Fault{Status: 504})
		g.sim.FailNext(1, Fault{Status: 400, Message: "1039: Without PAM Configuration Access permission"})
		g.expect(t, "DELETE", "/api/pam/credential/1", 500, errEnvelope(500, msgUnexpected))
		g.expect(t, "DELETE", "/api/pam/credential/1", 504, errEnvelope(504, msgTimedOut))
		g.expect(t, "DELETE", "/api/pam/credential/1", 400, `{"code":400,"response":{"status":400,
			"message":"1039: Without PAM Configuration Access permission","error":true,"error_code":1,"detail":"",
			"mensagem":"1039: Without PAM Configuration Access permission","erro":true,"cod_erro":1},
			"exception":{"code":1039,"message":"1039: Without PAM Configuration Access permission","detail":null}}`)
	})

	t.Run("apply then fail", func(t *testing.T) {
		t.Parallel()
		g := setupSegura(t)
		g.sim.FailNext(1, Fault{Status: 500, ApplyThenFail: true})
		g.expect(t, "DELETE", "/api/pam/credential/8", 500, errEnvelope(500, msgUnexpected))
		if active, _, _ := g.sim.Credential(8); active {
			t.Fatal("ApplyThenFail did not apply")
		}
		g.expect(t, "DELETE", "/api/pam/credential/8", 400, errEnvelope(400, msgInactive1008))
	})

	t.Run("delay then handle", func(t *testing.T) {
		t.Parallel()
		g := setupSegura(t)
		g.sim.FailNext(1, Fault{Delay: 10 * time.Millisecond})
		g.expect(t, "DELETE", "/api/pam/credential/8", 200, seedDisableOK)
	})

	t.Run("client gives up during delay", func(t *testing.T) {
		t.Parallel()
		g := setupSegura(t)
		g.sim.FailNext(1, Fault{Delay: time.Hour})
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "DELETE", g.srv.URL+"/api/pam/credential/8", nil)
		req.Header.Set("Authorization", "Bearer "+g.token)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("want a client timeout, got %d", resp.StatusCode)
		}
		g.expect(t, "DELETE", "/api/pam/credential/8", 200, seedDisableOK) // fault used up, change not applied
	})

	t.Run("refused calls keep the fault", func(t *testing.T) {
		t.Parallel()
		g := setupSegura(t)
		g.sim.FailNext(1, Fault{Status: 503})
		g.sim.FailNext(0, Fault{Status: 500}) // n <= 0 queues nothing
		if status, _, _ := g.callAuth(t, "DELETE", "/api/pam/credential/8", ""); status != 401 {
			t.Fatalf("unauthenticated: %d", status)
		}
		g.expect(t, "DELETE", "/api/pam/credential/8", 503, errEnvelope(503, "Service Unavailable"))
		g.expect(t, "DELETE", "/api/pam/credential/8", 200, seedDisableOK)
	})
}

func TestSeguraLatency(t *testing.T) {
	t.Parallel()
	g := setupSegura(t)
	g.sim.SetLatency(time.Hour)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	// A body must not keep the server from noticing that the client gave up.
	req, _ := http.NewRequestWithContext(ctx, "DELETE", g.srv.URL+"/api/pam/credential/9", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+g.token)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("want a client timeout, got %d", resp.StatusCode)
	}
	if active, _, _ := g.sim.Credential(9); !active {
		t.Fatal("abandoned call changed state")
	}
	g.sim.SetLatency(20 * time.Millisecond)
	start := time.Now()
	g.expect(t, "DELETE", "/api/pam/credential/9", 200, seedDisableOK)
	if elapsed := time.Since(start); elapsed < 20*time.Millisecond {
		t.Errorf("latency not applied: %v", elapsed)
	}
}

func TestSeguraCounters(t *testing.T) {
	t.Parallel()
	g := setupSegura(t)
	g.call(t, "DELETE", "/api/pam/credential/1")
	g.call(t, "DELETE", "/iso/pam/credential/1")
	g.call(t, "PUT", "/api/pam/credential/1")
	g.call(t, "DELETE", "/api/pam/session/drop/a%2Fb")
	g.callAuth(t, "DELETE", "/api/pam/credential/custody/94", "")
	g.call(t, "DELETE", "/elsewhere")

	if n := g.sim.Calls(); n != 6 {
		t.Errorf("Calls() = %d, want 6", n)
	}
	for _, tc := range []struct {
		method, prefix string
		want           int64
	}{
		{"DELETE", "/pam/credential/1", 2},
		{"DELETE", "/pam/credential/", 3},
		{"PUT", "/pam/credential/", 1},
		{"DELETE", "/pam/session/drop/a%2Fb", 1},
		{"DELETE", "/pam/", 4},
		{"DELETE", "/elsewhere", 1},
		{"GET", "/", 0},
	} {
		if got := g.sim.CallsTo(tc.method, tc.prefix); got != tc.want {
			t.Errorf("CallsTo(%s, %s) = %d, want %d", tc.method, tc.prefix, got, tc.want)
		}
	}
	want := []Request{
		{"DELETE", "/api/pam/credential/1", true},
		{"DELETE", "/iso/pam/credential/1", true},
		{"PUT", "/api/pam/credential/1", true},
		{"DELETE", "/api/pam/session/drop/a%2Fb", true},
		{"DELETE", "/api/pam/credential/custody/94", false},
		{"DELETE", "/elsewhere", true},
	}
	if got := g.sim.Requests(); !reflect.DeepEqual(got, want) {
		t.Errorf("Requests() =\n%v\nwant\n%v", got, want)
	}
}

func TestSeguraRequestLogIsBounded(t *testing.T) {
	t.Parallel()
	sim := NewSegura(SeguraOptions{})
	const n = maxLoggedRequests + 10
	for i := range n {
		sim.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("DELETE", fmt.Sprintf("/api/pam/session/drop/s%d", i), nil))
	}
	reqs := sim.Requests()
	if len(reqs) != maxLoggedRequests || sim.Calls() != n {
		t.Fatalf("len(Requests()) = %d, Calls() = %d", len(reqs), sim.Calls())
	}
	if first, last := reqs[0].EscapedPath, reqs[len(reqs)-1].EscapedPath; first != "/api/pam/session/drop/s10" ||
		last != fmt.Sprintf("/api/pam/session/drop/s%d", n-1) {
		t.Errorf("log window %s .. %s", first, last)
	}
	if got := sim.CallsTo("DELETE", "/pam/session/drop/"); got != maxLoggedRequests {
		t.Errorf("CallsTo over the window = %d", got)
	}
}

func TestSeguraPrefixes(t *testing.T) {
	t.Parallel()
	sim := NewSegura(SeguraOptions{ClientID: testClientID, ClientSecret: testClientSecret, Prefixes: []string{"custom/"}})
	g := startSegura(t, sim) // the token endpoint stays at /iso/oauth2/token
	g.expect(t, "DELETE", "/custom/pam/credential/1", 200, seedDisableOK)
	g.expect(t, "DELETE", "/api/pam/credential/2", 404, errEnvelope(404, msgNotFound))

	root := startSegura(t, NewSegura(SeguraOptions{ClientID: testClientID, ClientSecret: testClientSecret, Prefixes: []string{"/"}}))
	root.expect(t, "DELETE", "/pam/credential/1", 200, seedDisableOK)
}

func TestSeguraDescribe(t *testing.T) {
	t.Parallel()
	d := NewSegura(SeguraOptions{ClientID: "id", ClientSecret: "hush"}).Describe()
	for _, want := range append([]string{"svc07@host07", "root@db01", "admin@web01", "/iso/oauth2/token", "/api, /iso"}, SandboxSessions()...) {
		if !strings.Contains(d, want) {
			t.Errorf("Describe() lacks %q:\n%s", want, d)
		}
	}
	if strings.Contains(d, "hush") {
		t.Error("Describe() leaks the client secret")
	}
	sim := NewSegura(SeguraOptions{})
	for id, want := range map[int]bool{1: true, 93: true, 94: true, 95: true, 100: true, 403: true, 0: false, 101: false, 500: false} {
		if _, _, ok := sim.Credential(id); ok != want {
			t.Errorf("Credential(%d) ok = %v", id, ok)
		}
	}
}

// TestSeguraWithOAuth2Library checks that golang.org/x/oauth2's client-credentials flow gets a
// token with every auth style, including its auto-detection, and reuses it.
func TestSeguraWithOAuth2Library(t *testing.T) {
	t.Parallel()
	for _, style := range []oauth2.AuthStyle{oauth2.AuthStyleAutoDetect, oauth2.AuthStyleInHeader, oauth2.AuthStyleInParams} {
		t.Run(fmt.Sprint(style), func(t *testing.T) {
			t.Parallel()
			sim := NewSegura(SeguraOptions{ClientID: testClientID, ClientSecret: testClientSecret})
			srv := httptest.NewServer(sim)
			t.Cleanup(srv.Close)
			cfg := clientcredentials.Config{ClientID: testClientID, ClientSecret: testClientSecret, TokenURL: srv.URL + SeguraTokenPath, AuthStyle: style}
			client := cfg.Client(t.Context())
			for _, id := range []string{"1", "2"} {
				req, _ := http.NewRequest("DELETE", srv.URL+"/api/pam/credential/"+id, nil)
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("status %d", resp.StatusCode)
				}
			}
			if n := sim.TokenRequests(); n != 1 {
				t.Errorf("TokenRequests() = %d, want 1 (token reused)", n)
			}
		})
	}
}

func TestSeguraConcurrent(t *testing.T) {
	t.Parallel()
	g := setupSegura(t)
	// call may not t.Fatal off the test goroutine, so it reports transport errors as status 0.
	call := func(method, path string) int {
		req, _ := http.NewRequest(method, g.srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+g.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return 0
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	const workers = 20
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range 5 {
				id := w*5 + i + 1 // 1..100, each worker its own ids
				path := fmt.Sprintf("/api/pam/credential/%d", id)
				if status := call("DELETE", path); status != 200 {
					t.Errorf("disable %d: %d", id, status)
				}
				if status := call("PUT", path); status != 200 {
					t.Errorf("enable %d: %d", id, status)
				}
				sid := g.sim.AddSession()
				if status := call("DELETE", "/iso/pam/session/drop/"+sid); status != 200 {
					t.Errorf("drop %s: %d", sid, status)
				}
			}
		})
		wg.Go(func() { // readers and fault injection racing the calls
			for range 5 {
				g.sim.Requests()
				g.sim.CallsTo("DELETE", "/pam/")
				g.sim.Credential(w + 1)
				g.sim.FailNext(1, Fault{}) // status 0, no delay: handled normally
				g.sim.SetLatency(0)
			}
		})
	}
	wg.Wait()
	if n := g.sim.Calls(); n != workers*5*3 {
		t.Errorf("Calls() = %d, want %d", n, workers*5*3)
	}
	for id := 1; id <= SeguraCredentialCount; id++ {
		if active, _, _ := g.sim.Credential(id); !active {
			t.Errorf("credential %d left inactive", id)
		}
	}
}

// testClock is a settable time source for token expiry.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// BenchmarkSeguraServeHTTP measures the simulator's own cost per call, without a network.
func BenchmarkSeguraServeHTTP(b *testing.B) {
	sim := NewSegura(SeguraOptions{ClientID: testClientID, ClientSecret: testClientSecret})
	rec := httptest.NewRecorder()
	tokReq := httptest.NewRequest("POST", SeguraTokenPath, strings.NewReader("grant_type=client_credentials"))
	tokReq.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	tokReq.SetBasicAuth(testClientID, url.QueryEscape(testClientSecret))
	sim.ServeHTTP(rec, tokReq)
	var tok tokenResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &tok); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest("PUT", "/api/pam/credential/7", nil)
			req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
			sim.ServeHTTP(httptest.NewRecorder(), req)
		}
	})
}

// TestSeguraSessionList checks "List all remote sessions": every seed session with its user,
// open ones without an end, a dropped one still listed with its end.
func TestSeguraSessionList(t *testing.T) {
	t.Parallel()
	g := setupSegura(t)
	dropped := SandboxSessions()[1]
	g.expect(t, "DELETE", "/api/pam/session/drop/"+dropped, 200, seedDropOK)
	added := g.sim.AddSessionFor("dave")

	status, _, body := g.call(t, "GET", "/api/pam/session/remotesessions")
	if status != 200 {
		t.Fatalf("list: %d %s", status, body)
	}
	var env struct {
		Code     int `json:"code"`
		Response struct {
			Error bool `json:"error"`
		} `json:"response"`
		Sessions []map[string]any `json:"remote_sessions"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		t.Fatal(err)
	}
	if env.Code != 200 || env.Response.Error || len(env.Sessions) != len(SandboxSessions())+1 {
		t.Fatalf("list envelope: %s", body)
	}
	// The fields the vendor's page documents, each present.
	fields := []string{"id", "user", "origin_ip", "credential", "device", "protocol", "proxy",
		"session_id", "start", "end", "time", "prevent_purge", "request", "ITSM"}
	owners := map[string]string{}
	for i, s := range env.Sessions {
		for _, f := range fields {
			if _, ok := s[f]; !ok {
				t.Errorf("session %d has no %q: %v", i, f, s)
			}
		}
		if s["id"] != fmt.Sprint(i+1) {
			t.Errorf("session %d has id %v, want them in opening order", i, s["id"])
		}
		id, _ := s["session_id"].(string)
		owners[id], _ = s["user"].(string)
		ended := s["end"] != ""
		if ended != (id == dropped) {
			t.Errorf("session %s: end %q", id, s["end"])
		}
	}
	for _, id := range SandboxSessions() {
		if owners[id] != SandboxSessionOwner(id) || owners[id] == "" {
			t.Errorf("session %s listed as %q's, want %q's", id, owners[id], SandboxSessionOwner(id))
		}
	}
	if owners[added] != "dave" {
		t.Errorf("added session listed as %q's", owners[added])
	}
	if status, _, _ := g.call(t, "DELETE", "/api/pam/session/remotesessions"); status != http.StatusMethodNotAllowed {
		t.Errorf("DELETE on the list: %d", status)
	}
	if status, _, _ := g.call(t, "GET", "/iso/pam/session/remotesessions"); status != 200 {
		t.Errorf("list under /iso: %d", status)
	}
}
