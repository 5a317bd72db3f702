package sandbox

import (
	"cmp"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The users holding sessions in a new Element.
const (
	ElementAdminUser    = "admin"                                // 2 Cluster sessions
	ElementOperatorUser = "operator"                             // 1 Cluster session
	ElementLDAPUser     = "CN=Jane Doe,OU=Ops,DC=example,DC=com" // 1 Ldap session
)

// Element's authentication methods, as sessions report them.
const (
	AuthCluster = "Cluster"
	AuthLdap    = "Ldap"
	AuthIdp     = "Idp"
)

// maxCountedMethods bounds the per-method counters against clients inventing method names.
const maxCountedMethods = 64

// ElementOptions configures an Element simulator: the cluster admin it accepts over Basic auth.
type ElementOptions struct {
	Username, Password string
}

// ElementFault replaces the handling of a JSON-RPC call; see Element.FailNext.
type ElementFault struct {
	Name       string        // JSON-RPC error name, e.g. "xDBVersionMismatch", "xNotReadyForIO"
	Message    string        // error message; a default is derived from Name
	HTTPStatus int           // answer this status with an empty body instead (e.g. 503)
	RetryAfter string        // Retry-After header with HTTPStatus, if set
	Delay      time.Duration // wait first; with neither Name nor HTTPStatus, then handle normally
}

// Element simulates the NetApp Element JSON-RPC API for its auth-session methods. It is safe for
// concurrent use.
type Element struct {
	username string
	now      func() time.Time

	mu       sync.Mutex
	password string
	sessions []elementSession
	latency  time.Duration
	faults   faultQueue[ElementFault]
	calls    int64
	callsTo  map[string]int64
}

// elementSession has the fields, in the order, of the vendor's session object.
type elementSession struct {
	AccessGroupList     []string `json:"accessGroupList"`
	AuthMethod          string   `json:"authMethod"`
	ClusterAdminIDs     []int    `json:"clusterAdminIDs"`
	FinalTimeout        string   `json:"finalTimeout"`
	IdpConfigVersion    int      `json:"idpConfigVersion"`
	LastAccessTimeout   string   `json:"lastAccessTimeout"`
	SessionCreationTime string   `json:"sessionCreationTime"`
	SessionID           string   `json:"sessionID"`
	Username            string   `json:"username"`
}

// NewElement returns an Element holding the seed sessions (see Describe).
func NewElement(opts ElementOptions) *Element {
	e := &Element{
		username: opts.Username,
		password: opts.Password,
		now:      time.Now,
		callsTo:  map[string]int64{},
	}
	// The first session is the documentation's example, so a walk-through can compare.
	created := time.Date(2020, 3, 11, 19, 21, 24, 0, time.UTC)
	e.sessions = []elementSession{
		newElementSession("b12bfc64-f233-44df-8b9f-6fb6c011abf7", ElementAdminUser, AuthCluster, []string{"administrator"}, 1, created),
		newElementSession("64eb8795-fa2f-4ffe-b69e-799d3bc9dc35", ElementAdminUser, AuthCluster, []string{"administrator"}, 1, created.Add(time.Hour)),
		newElementSession("584a8a99-76ba-4c0d-8aa6-c542edbd60ad", ElementOperatorUser, AuthCluster, []string{"read"}, 2, created.Add(2*time.Hour)),
		newElementSession("752e0771-4a38-45d8-9bc8-c7fbb703f606", ElementLDAPUser, AuthLdap, []string{"administrator"}, 3, created.Add(3*time.Hour)),
	}
	return e
}

func newElementSession(id, username, authMethod string, groups []string, adminID int, created time.Time) elementSession {
	const stamp = "2006-01-02T15:04:05Z"
	return elementSession{
		AccessGroupList:     groups,
		AuthMethod:          authMethod,
		ClusterAdminIDs:     []int{adminID},
		FinalTimeout:        created.Add(72 * time.Hour).Format(stamp),
		LastAccessTimeout:   created.Add(30 * time.Minute).Format(stamp),
		SessionCreationTime: created.Format(stamp),
		SessionID:           id,
		Username:            username,
	}
}

// Describe explains the seed state. It names no secret.
func (e *Element) Describe() string {
	return fmt.Sprintf(`NetApp Element sandbox
  endpoint: POST /json-rpc/12.0 (any /json-rpc/<version>), Basic auth as %q, Content-Type application/json-rpc
  methods:  ListAuthSessionsByUsername, DeleteAuthSessionsByUsername (username, authMethod Cluster|Ldap|Idp)
  sessions: %s: 2 Cluster; %s: 1 Cluster; %s: 1 Ldap`,
		e.username, ElementAdminUser, ElementOperatorUser, ElementLDAPUser)
}

type rpcRequest struct {
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	ID     json.RawMessage `json:"id"`
}

type rpcResponse struct {
	ID     json.RawMessage `json:"id"` // nil marshals as null
	Result any             `json:"result,omitempty"`
	Error  *rpcError       `json:"error,omitempty"`
}

type rpcError struct {
	Code    int    `json:"code"`
	Name    string `json:"name"`
	Message string `json:"message"`
}

type sessionsResult struct {
	Sessions []elementSession `json:"sessions"`
}

// ServeHTTP answers one request. HTTP-level refusals (404, 405, 401, 415) come with plain
// bodies, as Element's web server answers them before JSON-RPC; everything after is HTTP 200.
func (e *Element) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Read the body first: net/http notices a client hanging up, and cancels the context the
	// delays below wait on, only once the body is consumed.
	body, readErr := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))

	e.mu.Lock()
	e.calls++
	latency := e.latency
	e.mu.Unlock()
	ctx := r.Context()
	if !sleepCtx(ctx, latency) {
		return
	}

	version, ok := strings.CutPrefix(r.URL.Path, "/json-rpc/")
	if !ok || version == "" || strings.Contains(version, "/") {
		http.Error(w, "404 page not found", http.StatusNotFound)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "405 method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !e.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Basic realm="SolidFire"`)
		http.Error(w, "401 Unauthorized", http.StatusUnauthorized)
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil ||
		(mt != "application/json-rpc" && mt != "application/json") {
		http.Error(w, "415 unsupported media type: use application/json-rpc", http.StatusUnsupportedMediaType)
		return
	}

	if readErr != nil {
		http.Error(w, "413 request body too large or unreadable", http.StatusRequestEntityTooLarge)
		return
	}
	var req rpcRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeRPC(w, rpcResponse{Error: &rpcError{Code: 500, Name: "xInvalidJSON", Message: "could not parse the request as JSON-RPC: " + err.Error()}})
		return
	}

	e.mu.Lock()
	if _, counted := e.callsTo[req.Method]; counted || len(e.callsTo) < maxCountedMethods {
		e.callsTo[req.Method]++
	}
	f, faulted := e.faults.pop()
	e.mu.Unlock()
	if faulted {
		if !sleepCtx(ctx, f.Delay) {
			return
		}
		switch {
		case f.HTTPStatus != 0:
			if f.RetryAfter != "" {
				w.Header().Set("Retry-After", f.RetryAfter)
			}
			w.WriteHeader(f.HTTPStatus)
			return
		case f.Name != "":
			writeRPC(w, rpcResponse{ID: req.ID, Error: &rpcError{Code: 500, Name: f.Name, Message: cmp.Or(f.Message, f.Name+" (injected by the sandbox)")}})
			return
		}
	}

	var result any
	var rpcErr *rpcError
	switch req.Method {
	case "ListAuthSessionsByUsername":
		result, rpcErr = e.sessionsByUsername(req.Params, false)
	case "DeleteAuthSessionsByUsername":
		result, rpcErr = e.sessionsByUsername(req.Params, true)
	default:
		rpcErr = &rpcError{Code: 500, Name: "xUnknownAPIMethod", Message: fmt.Sprintf("Unknown method %q", req.Method)}
	}
	if rpcErr != nil {
		writeRPC(w, rpcResponse{ID: req.ID, Error: rpcErr})
		return
	}
	writeRPC(w, rpcResponse{ID: req.ID, Result: result})
}

func (e *Element) authorized(r *http.Request) bool {
	user, pass, ok := r.BasicAuth()
	if !ok {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return subtle.ConstantTimeCompare([]byte(user), []byte(e.username)) == 1 &&
		subtle.ConstantTimeCompare([]byte(pass), []byte(e.password)) == 1
}

// sessionsByUsername lists, and with remove deletes, the sessions matching the params.
func (e *Element) sessionsByUsername(raw json.RawMessage, remove bool) (any, *rpcError) {
	username, authMethod, msg := parseSessionParams(raw)
	if msg != "" {
		return nil, &rpcError{Code: 500, Name: "xInvalidParameter", Message: msg}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	matched := []elementSession{} // an empty list, never null
	kept := e.sessions[:0:0]
	for _, s := range e.sessions {
		if s.Username == username && (authMethod == "" || s.AuthMethod == authMethod) {
			matched = append(matched, s)
		} else if remove {
			kept = append(kept, s)
		}
	}
	if remove {
		e.sessions = kept
	}
	return sessionsResult{Sessions: matched}, nil
}

// parseSessionParams validates {username, authMethod}; msg is empty when they are valid.
// authMethod is matched case-insensitively because the documentation writes both "Ldap" and
// "LDAP".
func parseSessionParams(raw json.RawMessage) (username, authMethod, msg string) {
	var params map[string]json.RawMessage
	if len(raw) == 0 || json.Unmarshal(raw, &params) != nil || params == nil {
		return "", "", "params must be an object holding username"
	}
	u, ok := params["username"]
	if !ok || string(u) == "null" {
		return "", "", "missing required parameter username"
	}
	if json.Unmarshal(u, &username) != nil || username == "" {
		return "", "", "username must be a non-empty string"
	}
	if a, ok := params["authMethod"]; ok && string(a) != "null" {
		var s string
		if json.Unmarshal(a, &s) != nil {
			return "", "", "authMethod must be a string"
		}
		if authMethod = normalizeAuthMethod(s); authMethod == "" {
			return "", "", fmt.Sprintf("authMethod %q is not one of Cluster, Ldap, Idp", s)
		}
	}
	return username, authMethod, ""
}

func normalizeAuthMethod(s string) string {
	for _, m := range []string{AuthCluster, AuthLdap, AuthIdp} {
		if strings.EqualFold(s, m) {
			return m
		}
	}
	return ""
}

func writeRPC(w http.ResponseWriter, resp rpcResponse) {
	writeJSON(w, http.StatusOK, resp)
}

// AddSession opens a session for username (authMethod defaults to Cluster) and returns its id.
func (e *Element) AddSession(username, authMethod string) string {
	id := randomUUID()
	method := cmp.Or(normalizeAuthMethod(authMethod), authMethod, AuthCluster)
	s := newElementSession(id, username, method, []string{"administrator"}, 1, e.now().UTC().Truncate(time.Second))
	e.mu.Lock()
	e.sessions = append(e.sessions, s)
	e.mu.Unlock()
	return id
}

// Sessions counts username's open sessions.
func (e *Element) Sessions(username string) int {
	return len(e.SessionIDs(username))
}

// SessionIDs returns the ids of username's open sessions, oldest first.
func (e *Element) SessionIDs(username string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var ids []string
	for _, s := range e.sessions {
		if s.Username == username {
			ids = append(ids, s.SessionID)
		}
	}
	return ids
}

// Calls counts every HTTP request, refused ones included.
func (e *Element) Calls() int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.calls
}

// CallsTo counts the authenticated, well-formed JSON-RPC calls of method.
func (e *Element) CallsTo(method string) int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.callsTo[method]
}

// FailNext makes the next n authenticated, well-formed calls answer f instead of being handled.
func (e *Element) FailNext(n int, f ElementFault) {
	e.mu.Lock()
	e.faults.push(n, f)
	e.mu.Unlock()
}

// ClearFaults drops every queued fault: the simulated outage ends.
func (e *Element) ClearFaults() {
	e.mu.Lock()
	e.faults.runs = nil
	e.mu.Unlock()
}

// SetLatency delays every request by d, honouring the request's context.
func (e *Element) SetLatency(d time.Duration) {
	e.mu.Lock()
	e.latency = d
	e.mu.Unlock()
}

// SetPassword changes the password Basic auth must present.
func (e *Element) SetPassword(password string) {
	e.mu.Lock()
	e.password = password
	e.mu.Unlock()
}
