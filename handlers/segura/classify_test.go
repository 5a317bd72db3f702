package segura_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
	"github.com/pamworker/pamworker/handlers/segura"
)

// Envelopes as the vendor documentation shows them (seeds 000-003).
const (
	seedDropOK = `{"code": 200, "response": {"status": 200, "message": "Session dropped successfully", "error": false,
		"error_code": 0, "detail": "", "mensagem": "Sessão encerrada com sucesso", "erro": false, "cod_erro": 0},
		"tenant": "Segura"}`
	seedCustody94OK = `{"code": 200, "response": {"status": 200, "message": "Credential custody 94 released", "error": false,
		"error_code": 0, "detail": "", "mensagem": "Credential custody 94 released", "erro": false, "cod_erro": 0}}`
	seedDisableOK = `{"code": 200, "response": {"status": 200, "message": "Credential successfully deactivated", "error": false,
		"error_code": 0, "detail": "", "mensagem": "Credential successfully deactivated", "erro": false, "cod_erro": 0}}`
	seedEnableOK = `{"code": 200, "response": {"status": 200, "message": "Credential successfully activated", "error": false,
		"error_code": 0, "detail": "", "mensagem": "Credential successfully activated", "erro": false, "cod_erro": 0}}`
	seedNotFound1007 = `{"code": 400, "response": {"status": 400, "message": "1007: Credential not found", "error": true,
		"error_code": 1, "detail": "", "mensagem": "1007: Credential not found", "erro": true, "cod_erro": 1},
		"exception": {"code": 1007, "message": "1007: Credential not found", "detail": null}}`
)

// seguraError builds the documented error envelope for messages the seeds give no full example of:
// the 1007 shape, with an "exception" only when the message carries a numeric code.
func seguraError(status int, msg string) string {
	body := fmt.Sprintf(`"code": %d, "response": {"status": %d, "message": %q, "error": true, "error_code": 1,
		"detail": "", "mensagem": %q, "erro": true, "cod_erro": 1}`, status, status, msg, msg)
	if code, _, ok := strings.Cut(msg, ": "); ok && strings.Trim(code, "0123456789") == "" {
		body += fmt.Sprintf(`, "exception": {"code": %s, "message": %q, "detail": null}`, code, msg)
	}
	return "{" + body + "}"
}

const (
	testClientID     = "pamworker"
	testClientSecret = "client-s3cret"
	tokenPath        = "/iso/oauth2/token"
)

// event returns an event of action with the ids the sandbox knows.
func event(action string) events.Event {
	ev := events.Event{ID: "ev-1", Action: action, Target: events.DefaultTarget}
	switch action {
	case events.SessionDrop:
		ev.SessionID = "e95d6160bbfbe6f1594bd0ff29d102dc"
	case events.CustodyRelease:
		ev.CredentialID = 94
	default:
		ev.CredentialID = 5
	}
	return ev
}

// fakeSegura is a hand-written Segura answering every API call with one fixed reply.
type fakeSegura struct {
	srv      *httptest.Server
	apiCalls atomic.Int64
	tokens   atomic.Int64
}

func newFakeSegura(t *testing.T, api http.HandlerFunc) *fakeSegura {
	t.Helper()
	f := &fakeSegura{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == tokenPath {
			n := f.tokens.Add(1)
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"access_token": "tok-%d", "token_type": "Bearer", "expires_in": 3600}`, n)
			return
		}
		f.apiCalls.Add(1)
		api(w, r)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func newClient(t *testing.T, baseURL string, mod func(*segura.Config)) *segura.Client {
	t.Helper()
	cfg := segura.Config{BaseURL: baseURL, ClientID: testClientID, ClientSecret: handlers.NewSecret(testClientSecret)}
	if mod != nil {
		mod(&cfg)
	}
	c, err := segura.New(cfg)
	if err != nil {
		t.Fatalf("segura.New: %v", err)
	}
	return c
}

func reply(status int, body string, header ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		if strings.HasPrefix(strings.TrimSpace(body), "{") {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}
}

type outcomeKind string

const (
	success   outcomeKind = "success"
	noop      outcomeKind = "noop"
	permanent outcomeKind = "permanent"
	retry     outcomeKind = "retry"
	down      outcomeKind = "down"
)

func TestClassification(t *testing.T) {
	t.Parallel()
	inThirty := time.Now().Add(30 * time.Second).UTC().Format(http.TimeFormat)
	tests := []struct {
		name     string
		action   string
		status   int
		body     string
		header   []string
		kind     outcomeKind
		code     string          // vendor code of an error
		reason   handlers.Reason // of a retryable error
		after    time.Duration   // of a retryable error; -1 for "about 30s"
		message  string          // of an outcome, or contained in an error's message
		apiCalls int64           // 0 means 1
	}{
		{name: "session dropped", action: events.SessionDrop, status: 200, body: seedDropOK, kind: success, message: "Session dropped successfully"},
		{name: "credential disabled", action: events.CredentialDisable, status: 200, body: seedDisableOK, kind: success, message: "Credential successfully deactivated"},
		{name: "credential enabled", action: events.CredentialEnable, status: 200, body: seedEnableOK, kind: success, message: "Credential successfully activated"},
		{name: "custody released", action: events.CustodyRelease, status: 200, body: seedCustody94OK, kind: success, message: "Credential custody 94 released"},

		{name: "disable of an inactive credential (1008)", action: events.CredentialDisable, status: 400, body: seguraError(400, "1008: Credential inactive"), kind: noop, message: "1008: Credential inactive"},
		{name: "enable of an active credential (1043)", action: events.CredentialEnable, status: 400, body: seguraError(400, "1043: Credential already activated"), kind: noop, message: "1043: Credential already activated"},
		{name: "custody release when not in custody (1018)", action: events.CustodyRelease, status: 400, body: seguraError(400, "1018: The credential is not in the user custody"), kind: noop, message: "1018: The credential is not in the user custody"},
		{name: "1008 from a message prefix without exception", action: events.CredentialDisable, status: 400,
			body: `{"code": 400, "response": {"status": 400, "message": "1008: Credential inactive", "error": true}}`, kind: noop},

		{name: "custody release of an inactive credential (1008) is no noop", action: events.CustodyRelease, status: 400, body: seguraError(400, "1008: Credential inactive"), kind: permanent, code: "1008"},
		{name: "1043 on disable is no noop", action: events.CredentialDisable, status: 400, body: seguraError(400, "1043: Credential already activated"), kind: permanent, code: "1043"},
		{name: "1008 on enable is no noop", action: events.CredentialEnable, status: 400, body: seguraError(400, "1008: Credential inactive"), kind: permanent, code: "1008"},
		{name: "1018 on disable is no noop", action: events.CredentialDisable, status: 400, body: seguraError(400, "1018: The credential is not in the user custody"), kind: permanent, code: "1018"},
		{name: "credential not found (1007, documented envelope)", action: events.CredentialDisable, status: 400, body: seedNotFound1007, kind: permanent, code: "1007", message: "Credential not found"},
		{name: "1007 on enable", action: events.CredentialEnable, status: 400, body: seedNotFound1007, kind: permanent, code: "1007"},
		{name: "1007 on custody release", action: events.CustodyRelease, status: 400, body: seedNotFound1007, kind: permanent, code: "1007"},
		{name: "no access to credential (1009)", action: events.CredentialDisable, status: 400, body: seguraError(400, "1009: No access to credential"), kind: permanent, code: "1009", message: "No access to credential"},
		{name: "not a credential (1010)", action: events.CredentialDisable, status: 400, body: seguraError(400, "1010: The item is not a credential"), kind: permanent, code: "1010"},
		{name: "1009 with HTTP 403 is still the credential's refusal", action: events.CredentialEnable, status: 403, body: seguraError(403, "1009: No access to credential"), kind: permanent, code: "1009"},
		{name: "resource sub not found", action: events.SessionDrop, status: 404, body: seguraError(404, "Resource sub not found"), kind: permanent, message: "Resource sub not found"},
		{name: "session drop error", action: events.SessionDrop, status: 400, body: seguraError(400, "An error occurred while dropping session"), kind: permanent, message: "An error occurred while dropping session"},
		{name: "error envelope with HTTP 200", action: events.CredentialDisable, status: 200,
			body: `{"code": 200, "response": {"status": 200, "message": "1007: Credential not found", "error": true}}`, kind: permanent, code: "1007"},

		{name: "unexpected error (500)", action: events.SessionDrop, status: 500, body: seguraError(500, "Unexpected error."), kind: retry, code: "http_500", reason: handlers.ReasonServer, message: "Unexpected error."},
		{name: "bad gateway without body", action: events.CredentialDisable, status: 502, body: "", kind: retry, code: "http_502", reason: handlers.ReasonServer},
		{name: "gateway timeout", action: events.CredentialDisable, status: 504, body: `<html>504</html>`, kind: retry, reason: handlers.ReasonServer},
		{name: "request timed out", action: events.SessionDrop, status: 408, body: `{"message": "Request timed out"}`, kind: retry, reason: handlers.ReasonTimeout},
		{name: "rate limited with Retry-After seconds", action: events.CredentialEnable, status: 429, body: seguraError(429, "Too Many Requests"), header: []string{"Retry-After", "2"},
			kind: retry, code: "http_429", reason: handlers.ReasonRateLimit, after: 2 * time.Second},
		{name: "unavailable with Retry-After seconds", action: events.CustodyRelease, status: 503, body: "", header: []string{"Retry-After", "2"},
			kind: retry, code: "http_503", reason: handlers.ReasonServer, after: 2 * time.Second},
		{name: "unavailable with Retry-After date", action: events.SessionDrop, status: 503, body: "", header: []string{"Retry-After", inThirty},
			kind: retry, reason: handlers.ReasonServer, after: -1},
		{name: "2xx that is not JSON", action: events.SessionDrop, status: 200, body: `<html><body>Welcome to the proxy</body></html>`, kind: retry, code: "unexpected_reply", reason: handlers.ReasonServer},
		{name: "2xx with an empty body", action: events.CredentialDisable, status: 200, body: "", kind: retry, code: "unexpected_reply"},
		{name: "2xx truncated JSON", action: events.CredentialDisable, status: 200, body: seedDisableOK[:40], kind: retry, code: "unexpected_reply"},
		{name: "2xx JSON that is no Segura envelope", action: events.CredentialDisable, status: 200, body: `{"status": "ok"}`, kind: retry, code: "unexpected_reply"},

		{name: "without PAM configuration access (1039)", action: events.CredentialDisable, status: 400, body: seguraError(400, "1039: Without PAM Configuration Access permission"), kind: down, code: "1039"},
		{name: "not authorized with HTTP 500", action: events.SessionDrop, status: 500, body: seguraError(500, "You are not authorized to access this resource."), kind: down, message: "not authorized"},
		{name: "not authorized as a gateway message", action: events.CustodyRelease, status: 403, body: `{"message": "You are not authorized to access this resource."}`, kind: down},
		{name: "forbidden without a vendor code", action: events.CredentialEnable, status: 403, body: "", kind: down, code: "http_403"},
		{name: "401 refetches the token once, then the target is down", action: events.SessionDrop, status: 401, body: seguraError(401, "Client authentication failed"), kind: down, code: "http_401", apiCalls: 2},
		{name: "missing authorization header", action: events.CredentialDisable, status: 401, body: `{"message": "No route matched with those values"}`, kind: down, apiCalls: 2},
		{name: "no route matched with 404", action: events.CredentialDisable, status: 404, body: `{"message": "No route matched with those values"}`, kind: down, apiCalls: 2},
		{name: "invalid signature", action: events.CredentialDisable, status: 400, body: `{"message": "Invalid signature"}`, kind: down, apiCalls: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeSegura(t, reply(tc.status, tc.body, tc.header...))
			c := newClient(t, f.srv.URL, nil)
			out, err := c.Handle(context.Background(), event(tc.action))

			wantCalls := max(tc.apiCalls, 1)
			if n := f.apiCalls.Load(); n != wantCalls {
				t.Errorf("API calls = %d, want %d", n, wantCalls)
			}
			if n := f.tokens.Load(); n != wantCalls {
				t.Errorf("token requests = %d, want %d", n, wantCalls)
			}
			switch tc.kind {
			case success, noop:
				if err != nil {
					t.Fatalf("Handle error = %v, want success", err)
				}
				if out.Noop != (tc.kind == noop) || out.HTTPStatus != tc.status {
					t.Errorf("outcome = %+v, want noop %v and HTTP %d", out, tc.kind == noop, tc.status)
				}
				if tc.message != "" && out.Message != tc.message {
					t.Errorf("message = %q, want %q", out.Message, tc.message)
				}
				return
			}
			kind, re, pe, de := handlers.Classify(err)
			if outcomeKind(kind.String()) != tc.kind {
				t.Fatalf("Handle = %+v, %v (%T); want %s", out, err, err, tc.kind)
			}
			var ve handlers.VendorError
			switch {
			case pe != nil:
				ve = pe.VendorError
			case de != nil:
				ve = de.VendorError
			case re != nil:
				ve = re.VendorError
				if tc.reason != "" && re.Reason != tc.reason {
					t.Errorf("reason = %q, want %q", re.Reason, tc.reason)
				}
				switch {
				case tc.after == -1 && (re.After <= 25*time.Second || re.After > 30*time.Second):
					t.Errorf("After = %v, want about 30s", re.After)
				case tc.after >= 0 && re.After != tc.after:
					t.Errorf("After = %v, want %v", re.After, tc.after)
				}
			}
			if ve.Code == "" {
				t.Errorf("error %v has no code", err)
			}
			if tc.code != "" && ve.Code != tc.code {
				t.Errorf("code = %q, want %q (%v)", ve.Code, tc.code, err)
			}
			if ve.HTTPStatus != tc.status {
				t.Errorf("HTTP status = %d, want %d", ve.HTTPStatus, tc.status)
			}
			if tc.message != "" && !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error %q does not mention %q", err, tc.message)
			}
		})
	}
}

// The client never turns a refusal into a rejection: only invalid events are rejected.
func TestClassificationIsNeverARejection(t *testing.T) {
	t.Parallel()
	f := newFakeSegura(t, reply(400, seedNotFound1007))
	_, err := newClient(t, f.srv.URL, nil).Handle(context.Background(), event(events.CredentialDisable))
	var rej *events.Rejection
	if errors.As(err, &rej) {
		t.Fatalf("vendor refusal returned as a rejection: %v", err)
	}
}
