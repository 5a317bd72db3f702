package sandbox

import (
	"cmp"
	"crypto/subtle"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// SeguraTokenPath is where the simulator issues OAuth2 tokens, whatever the API prefixes.
const SeguraTokenPath = "/iso/oauth2/token"

// The seed state of every new Segura. Credential ids 1..SeguraCredentialCount are svcNN@hostNN
// (id 7 is svc07@host07), active and not in custody, except the two ids named below.
const (
	SeguraCredentialCount = 100
	CustodyCredentialID   = 94  // root@db01: active and in custody, so a custody release succeeds
	AdminCredentialID     = 95  // admin@web01: active
	NoAccessCredentialID  = 403 // a credential this client may not touch: "1009"
	NotCredentialID       = 500 // an item that is not a credential: "1010"
)

// SandboxSessions returns the ids of the remote sessions open in a new Segura.
func SandboxSessions() []string {
	ids := make([]string, len(seedSessions))
	for i, s := range seedSessions {
		ids[i] = s.id
	}
	return ids
}

// SandboxSessionOwner returns the user who opened seed session id, "" if there is none.
func SandboxSessionOwner(id string) string {
	for _, s := range seedSessions {
		if s.id == id {
			return s.user
		}
	}
	return ""
}

// seedSessions are the remote sessions open in a new Segura; the last is a break-glass user's.
var seedSessions = []struct{ id, user, credential, device, protocol string }{
	{"e95d6160bbfbe6f1594bd0ff29d102dc", "alice", "root", "10.0.0.11:22", "ssh"},
	{"8bcd50c58395644230b804ba12703242", "bob", "svc07", "10.0.0.12:22", "ssh"},
	{"8a68d2b3ccff4c29a5b4303f2f402aaf", "carol", "admin", "10.0.0.13:3389", "rdp"},
	{"f2ed5cbd586154dd6ad78026b0d6cfcf", "alice", "svc12", "10.0.0.14:22", "ssh"},
	{"b43df09bb56675bc203c95134e7ef129", "breakglass", "root", "10.0.0.11:22", "ssh"},
}

// SessionUser is who opens the sessions AddSession creates.
const SessionUser = "operator"

// The vendor's texts, as the documentation spells them.
const (
	msgNoAuthHeader   = "No route matched with those values"
	msgAuthFailed     = "Client authentication failed"
	msgNotAuthorized  = "You are not authorized to access this resource."
	msgUnexpected     = "Unexpected error."
	msgNotFound       = "Resource sub not found"
	msgDropError      = "An error occurred while dropping session"
	msgTimedOut       = "Request timed out"
	msgNotFound1007   = "1007: Credential not found"
	msgInactive1008   = "1008: Credential inactive"
	msgNoAccess1009   = "1009: No access to credential"
	msgNotCred1010    = "1010: The item is not a credential"
	msgNoCustody1018  = "1018: The credential is not in the user custody"
	msgAlreadyOn1043  = "1043: Credential already activated"
	msgDropped        = "Session dropped successfully"
	msgDroppedPT      = "Sessão encerrada com sucesso"
	msgDeactivated    = "Credential successfully deactivated"
	msgActivated      = "Credential successfully activated"
	msgCredentialRead = "OK"
)

// maxLoggedRequests bounds the request log so a benchmark cannot grow it without limit.
const maxLoggedRequests = 4096

// SeguraOptions configures a Segura simulator; zero values take the defaults noted.
type SeguraOptions struct {
	ClientID, ClientSecret string
	Credentials            int           // seeded svcNN@hostNN credentials; default SeguraCredentialCount
	TokenTTL               time.Duration // default 1h; sent as expires_in seconds
	Prefixes               []string      // default {"/api", "/iso"}; the API is served under each
}

// Fault replaces the handling of an API call; see Segura.FailNext.
type Fault struct {
	Status        int           // HTTP status to answer; 0 = handle normally (after Delay)
	RetryAfter    string        // Retry-After header, if set
	Message       string        // envelope message; default by status ("Unexpected error." for 500)
	Delay         time.Duration // wait first; a client that gives up meanwhile sees no change applied
	ApplyThenFail bool          // apply the change, then answer Status anyway
}

// Request is one API call as the simulator saw it.
type Request struct {
	Method        string
	EscapedPath   string
	Authorization bool // an Authorization header was present
}

// Segura simulates Segura PAM Core: the OAuth2 token endpoint and the session drop, credential
// disable/enable and custody routes. It is safe for concurrent use.
type Segura struct {
	clientID string
	ttl      time.Duration
	prefixes []string
	now      func() time.Time // replaced by tests to expire tokens without sleeping

	mu            sync.Mutex
	clientSecret  string
	tokens        map[string]time.Time // token -> issue time
	items         map[int]*seguraItem
	byName        map[string]int // "username@hostname" -> id
	sessions      map[string]*seguraSession
	sessionSeq    int
	revoked       bool
	latency       time.Duration
	faults        faultQueue[Fault]
	chaos         Chaos
	chaosRand     *rand.Rand
	chaosCounts   map[chaosKind]int64
	calls         int64
	tokenRequests int64
	log           []loggedRequest // ring of the last maxLoggedRequests API calls
	logNext       int
}

type loggedRequest struct {
	Request
	sub string // escaped path after the API prefix, for CallsTo
}

type itemKind int

const (
	kindCredential itemKind = iota
	kindNoAccess
	kindNotCredential
)

// seguraSession is one remote session: open until dropped, then kept (and listed) with its end.
type seguraSession struct {
	seq                                int // Segura's own numeric id, not the session_id hash
	user, credential, device, protocol string
	start, end                         time.Time
}

type seguraItem struct {
	kind               itemKind
	username, hostname string
	active, custody    bool
}

// NewSegura returns a Segura holding the seed state (see Describe).
func NewSegura(opts SeguraOptions) *Segura {
	prefixes := opts.Prefixes
	if len(prefixes) == 0 {
		prefixes = []string{"/api", "/iso"}
	}
	s := &Segura{
		clientID:     opts.ClientID,
		clientSecret: opts.ClientSecret,
		ttl:          cmp.Or(opts.TokenTTL, time.Hour),
		now:          time.Now,
		tokens:       map[string]time.Time{},
		items:        map[int]*seguraItem{},
		byName:       map[string]int{},
		sessions:     map[string]*seguraSession{},
	}
	for _, p := range prefixes {
		if p = strings.Trim(p, "/"); p != "" {
			p = "/" + p
		}
		s.prefixes = append(s.prefixes, p) // "" serves the API at the root
	}
	for id := 1; id <= max(opts.Credentials, SeguraCredentialCount); id++ {
		s.addItem(id, &seguraItem{username: fmt.Sprintf("svc%02d", id), hostname: fmt.Sprintf("host%02d", id), active: true})
	}
	s.addItem(CustodyCredentialID, &seguraItem{username: "root", hostname: "db01", active: true, custody: true})
	s.addItem(AdminCredentialID, &seguraItem{username: "admin", hostname: "web01", active: true})
	s.addItem(NoAccessCredentialID, &seguraItem{kind: kindNoAccess, username: "restricted", hostname: "vault01", active: true})
	s.addItem(NotCredentialID, &seguraItem{kind: kindNotCredential})
	for _, ss := range seedSessions {
		s.openSessionLocked(ss.id, ss.user, ss.credential, ss.device, ss.protocol)
	}
	return s
}

func (s *Segura) openSessionLocked(id, user, credential, device, protocol string) {
	s.sessionSeq++
	s.sessions[id] = &seguraSession{seq: s.sessionSeq, user: user, credential: credential,
		device: device, protocol: protocol, start: s.now()}
}

func (s *Segura) addItem(id int, it *seguraItem) {
	if old, ok := s.items[id]; ok {
		delete(s.byName, old.username+"@"+old.hostname)
	}
	s.items[id] = it
	if it.kind != kindNotCredential {
		s.byName[it.username+"@"+it.hostname] = id
	}
}

// Describe explains the seed state, for a README walk-through or a --sandbox banner. It names
// no secret.
func (s *Segura) Describe() string {
	return fmt.Sprintf(`Segura PAM Core sandbox
  token:       POST %s  grant_type=client_credentials (Basic auth or client_id/client_secret), tokens live %s
  API under:   %s
  credentials: ids 1-%d are svcNN@hostNN (7 = svc07@host07), active, not in custody
               %d = root@db01, active and in custody
               %d = admin@web01, active
               %d = restricted@vault01, no access (1009)
               %d = not a credential (1010)
  sessions:    %s
               (listed by GET <prefix>/pam/session/remotesessions)`,
		SeguraTokenPath, s.ttl, strings.Join(s.prefixes, ", "), SeguraCredentialCount,
		CustodyCredentialID, AdminCredentialID, NoAccessCredentialID, NotCredentialID,
		describeSessions())
}

func describeSessions() string {
	var b strings.Builder
	for i, ss := range seedSessions {
		if i > 0 {
			b.WriteString("\n               ")
		}
		fmt.Fprintf(&b, "%s (%s)", ss.id, ss.user)
	}
	return b.String()
}

// ServeHTTP answers one request. Order: token endpoint; count and latency; unknown prefix (404);
// lock-out (500); authentication (401); injected fault; routing.
func (s *Segura) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.EscapedPath()
	if path == SeguraTokenPath {
		s.serveToken(w, r)
		return
	}
	sub, underPrefix := s.trimPrefix(path)
	// Drain any body: net/http notices a client hanging up, and cancels the context the delays
	// below wait on, only once the body is consumed.
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))

	s.mu.Lock()
	s.calls++
	s.logRequestLocked(loggedRequest{
		Request: Request{Method: r.Method, EscapedPath: path, Authorization: r.Header.Get("Authorization") != ""},
		sub:     sub,
	})
	latency := s.latency
	s.mu.Unlock()

	ctx := r.Context()
	if !sleepCtx(ctx, latency) {
		return
	}
	if !underPrefix {
		writeSegura(w, failure(http.StatusNotFound, msgNotFound))
		return
	}
	f, refused := s.admit(r)
	if refused != nil {
		writeSegura(w, *refused)
		return
	}
	if f == nil {
		if c, ok := s.chaosRoll(); ok {
			switch c {
			case chaosError:
				writeFault(w, Fault{Status: http.StatusServiceUnavailable})
				return
			case chaosHang:
				if sleepCtx(ctx, s.chaosHangFor()) {
					writeFault(w, Fault{Status: http.StatusGatewayTimeout, Message: "Request timed out"})
				}
				return
			case chaosDrop:
				// Apply the change, then cut the connection: the client never learns it worked.
				s.route(&discardWriter{}, r, sub)
				if hj, ok := w.(http.Hijacker); ok {
					if conn, _, err := hj.Hijack(); err == nil {
						_ = conn.Close()
						return
					}
				}
				writeFault(w, Fault{Status: http.StatusBadGateway})
				return
			}
		}
	}
	if f != nil {
		if !sleepCtx(ctx, f.Delay) {
			return
		}
		if f.Status != 0 {
			if f.ApplyThenFail {
				s.route(&discardWriter{}, r, sub)
			}
			writeFault(w, *f)
			return
		}
	}
	s.route(w, r, sub)
}

// trimPrefix returns the escaped path after the API prefix it starts with.
func (s *Segura) trimPrefix(path string) (string, bool) {
	for _, p := range s.prefixes {
		if rest, ok := strings.CutPrefix(path, p); ok && (rest == "" || rest[0] == '/') {
			return rest, true
		}
	}
	return path, false
}

// admit checks the lock-out and the bearer token and takes the next fault, all under one lock.
func (s *Segura) admit(r *http.Request) (*Fault, *reply) {
	header := r.Header.Get("Authorization")
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.revoked {
		rep := failure(http.StatusInternalServerError, msgNotAuthorized)
		return nil, &rep
	}
	if header == "" {
		rep := failure(http.StatusUnauthorized, msgNoAuthHeader)
		return nil, &rep
	}
	scheme, token, _ := strings.Cut(header, " ")
	issued, ok := s.tokens[token]
	if ok && s.now().Sub(issued) >= s.ttl {
		delete(s.tokens, token)
		ok = false
	}
	if !strings.EqualFold(scheme, "Bearer") || !ok {
		rep := failure(http.StatusUnauthorized, msgAuthFailed)
		return nil, &rep
	}
	if f, ok := s.faults.pop(); ok {
		return &f, nil
	}
	return nil, nil
}

func (s *Segura) logRequestLocked(e loggedRequest) {
	if len(s.log) < maxLoggedRequests {
		s.log = append(s.log, e)
		return
	}
	s.log[s.logNext] = e
	s.logNext = (s.logNext + 1) % maxLoggedRequests
}

// route dispatches on the escaped path, each segment unescaped once, so an escaped "/" stays
// inside its id instead of creating a new segment.
func (s *Segura) route(w http.ResponseWriter, r *http.Request, sub string) {
	seg := strings.Split(strings.TrimPrefix(sub, "/"), "/")
	for i, raw := range seg {
		v, err := url.PathUnescape(raw)
		if err != nil {
			writeSegura(w, failure(http.StatusNotFound, msgNotFound))
			return
		}
		seg[i] = v
	}
	var act func(string) reply
	var allow string
	switch {
	case len(seg) == 3 && seg[0] == "pam" && seg[1] == "session" && seg[2] == "remotesessions":
		allow = http.MethodGet
		if r.Method == http.MethodGet {
			act = s.listSessions
		}
	case len(seg) == 4 && seg[0] == "pam" && seg[1] == "session" && seg[2] == "drop" && seg[3] != "":
		allow = http.MethodDelete
		if r.Method == http.MethodDelete {
			act = s.dropSession
		}
	case len(seg) == 4 && seg[0] == "pam" && seg[1] == "credential" && seg[2] == "custody" && seg[3] != "":
		allow = http.MethodDelete
		if r.Method == http.MethodDelete {
			act = s.releaseCustody
		}
	case len(seg) == 3 && seg[0] == "pam" && seg[1] == "credential" && seg[2] != "":
		allow = "GET, PUT, DELETE"
		switch r.Method {
		case http.MethodGet:
			act = s.checkOut
		case http.MethodPut:
			act = s.enable
		case http.MethodDelete:
			act = s.disable
		}
	default:
		writeSegura(w, failure(http.StatusNotFound, msgNotFound))
		return
	}
	if act == nil {
		w.Header().Set("Allow", allow)
		writeSegura(w, failure(http.StatusMethodNotAllowed, "Method not allowed"))
		return
	}
	writeSegura(w, act(seg[len(seg)-1]))
}

func (s *Segura) dropSession(id string) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.sessions[id]
	if !ok || !ss.end.IsZero() {
		return failure(http.StatusBadRequest, msgDropError)
	}
	ss.end = s.now()
	rep := success(msgDropped)
	rep.mensagem = msgDroppedPT
	rep.tenant = "Segura"
	return rep
}

func (s *Segura) disable(ref string) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, it, fail := s.lookupLocked(ref)
	switch {
	case fail != nil:
		return *fail
	case !it.active:
		return failure(http.StatusBadRequest, msgInactive1008)
	}
	it.active = false
	return success(msgDeactivated)
}

func (s *Segura) enable(ref string) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, it, fail := s.lookupLocked(ref)
	switch {
	case fail != nil:
		return *fail
	case it.active:
		return failure(http.StatusBadRequest, msgAlreadyOn1043)
	}
	it.active = true
	return success(msgActivated)
}

func (s *Segura) releaseCustody(ref string) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, it, fail := s.lookupLocked(ref)
	switch {
	case fail != nil:
		return *fail
	case !it.active:
		return failure(http.StatusBadRequest, msgInactive1008)
	case !it.custody:
		return failure(http.StatusBadRequest, msgNoCustody1018)
	}
	it.custody = false
	return success(fmt.Sprintf("Credential custody %d released", id))
}

// checkOut is GET credential: reading the password grants custody (the vendor's check-in).
func (s *Segura) checkOut(ref string) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, it, fail := s.lookupLocked(ref)
	switch {
	case fail != nil:
		return *fail
	case !it.active:
		return failure(http.StatusBadRequest, msgInactive1008)
	}
	it.custody = true
	rep := success(msgCredentialRead)
	rep.credential = &seguraCredential{ID: id, Username: it.username, Hostname: it.hostname, Password: "sandbox-" + randomHex(8)}
	return rep
}

// lookupLocked resolves an id or "username@hostname". Like the vendor, a username holding an
// "@" cannot be addressed by name (it simply is not found).
func (s *Segura) lookupLocked(ref string) (int, *seguraItem, *reply) {
	id, err := strconv.Atoi(ref)
	if err != nil {
		var ok bool
		if id, ok = s.byName[ref]; !ok {
			rep := failure(http.StatusBadRequest, msgNotFound1007)
			return 0, nil, &rep
		}
	}
	it, ok := s.items[id]
	var rep reply
	switch {
	case !ok:
		rep = failure(http.StatusBadRequest, msgNotFound1007)
	case it.kind == kindNotCredential:
		rep = failure(http.StatusBadRequest, msgNotCred1010)
	case it.kind == kindNoAccess:
		rep = failure(http.StatusBadRequest, msgNoAccess1009)
	default:
		return id, it, nil
	}
	return 0, nil, &rep
}

func (s *Segura) serveToken(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.tokenRequests++
	s.mu.Unlock()

	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, oauthError{Error: "invalid_request"})
		return
	}
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, oauthError{Error: "invalid_request"})
		return
	}
	id, secret, basic := r.BasicAuth()
	if basic {
		// RFC 6749 2.3.1: clients form-encode id and secret before Basic auth
		// (golang.org/x/oauth2 does).
		id, secret = formUnescape(id), formUnescape(secret)
	} else {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	s.mu.Lock()
	known := subtle.ConstantTimeCompare([]byte(id), []byte(s.clientID)) == 1 &&
		subtle.ConstantTimeCompare([]byte(secret), []byte(s.clientSecret)) == 1
	s.mu.Unlock()
	if !known {
		writeJSON(w, http.StatusUnauthorized, oauthError{Error: "invalid_client", Description: msgAuthFailed})
		return
	}
	if r.PostForm.Get("grant_type") != "client_credentials" {
		writeJSON(w, http.StatusBadRequest, oauthError{Error: "unsupported_grant_type"})
		return
	}

	token := randomHex(16)
	s.mu.Lock()
	now := s.now()
	if len(s.tokens) >= 1024 { // forget expired tokens so token storms don't grow the map forever
		for t, issued := range s.tokens {
			if now.Sub(issued) >= s.ttl {
				delete(s.tokens, t)
			}
		}
	}
	s.tokens[token] = now
	s.mu.Unlock()
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, tokenResponse{AccessToken: token, TokenType: "Bearer", ExpiresIn: int64(s.ttl / time.Second)})
}

func formUnescape(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}

// Credential reports the state of credential id; ok is false for an unknown id and for the
// seeded non-credential item.
func (s *Segura) Credential(id int) (active, inCustody, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, found := s.items[id]
	if !found || it.kind == kindNotCredential {
		return false, false, false
	}
	return it.active, it.custody, true
}

// listSessions answers GET pam/session/remotesessions: every session, open or ended, in the
// order they were opened, as the vendor's "List all remote sessions" page shows them.
func (s *Segura) listSessions(string) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := make([]seguraRemoteSession, 0, len(s.sessions))
	for id, ss := range s.sessions {
		rs := seguraRemoteSession{
			ID: strconv.Itoa(ss.seq), User: ss.user, OriginIP: "172.16.20.158", Credential: ss.credential,
			Device: ss.device, Protocol: ss.protocol, Proxy: "Web Proxy", SessionID: id,
			Start: ss.start.Format(seguraTime), PreventPurge: "No",
		}
		if !ss.end.IsZero() {
			rs.End = ss.end.Format(seguraTime)
			rs.Time = time.Time{}.Add(ss.end.Sub(ss.start)).Format(time.TimeOnly)
		}
		list = append(list, rs)
	}
	slices.SortFunc(list, func(a, b seguraRemoteSession) int {
		x, _ := strconv.Atoi(a.ID)
		y, _ := strconv.Atoi(b.ID)
		return cmp.Compare(x, y)
	})
	rep := success("")
	rep.sessions = &list
	return rep
}

// seguraTime is how Segura writes times in session lists.
const seguraTime = "2006-01-02 15:04:05"

// SessionOpen reports whether remote session id is open.
func (s *Segura) SessionOpen(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.sessions[id]
	return ok && ss.end.IsZero()
}

// AddSession opens a new remote session of SessionUser and returns its id (32 hex characters).
func (s *Segura) AddSession() string { return s.AddSessionFor(SessionUser) }

// AddSessionFor opens a new remote session of user and returns its id (32 hex characters).
func (s *Segura) AddSessionFor(user string) string {
	id := randomHex(16)
	s.mu.Lock()
	s.openSessionLocked(id, user, "svc01", "10.0.0.21:22", "ssh")
	s.mu.Unlock()
	return id
}

// Calls counts API calls (every request but the token endpoint's), refused ones included.
func (s *Segura) Calls() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// TokenRequests counts requests to the token endpoint, refused ones included.
func (s *Segura) TokenRequests() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokenRequests
}

// CallsTo counts, among the last 4096 API calls, those with method whose escaped path after the
// API prefix starts with pathPrefix, e.g. CallsTo("DELETE", "/pam/credential/7").
func (s *Segura) CallsTo(method, pathPrefix string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, e := range s.log {
		if e.Method == method && strings.HasPrefix(e.sub, pathPrefix) {
			n++
		}
	}
	return n
}

// Requests returns the last 4096 API calls, oldest first.
func (s *Segura) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, 0, len(s.log))
	for i := range s.log {
		out = append(out, s.log[(s.logNext+i)%len(s.log)].Request)
	}
	return out
}

// ExpireTokens invalidates every token issued so far.
func (s *Segura) ExpireTokens() {
	s.mu.Lock()
	clear(s.tokens)
	s.mu.Unlock()
}

// SetRevoked simulates the vendor's lock-out: while true every API call answers HTTP 500
// "You are not authorized to access this resource.". The token endpoint keeps working.
func (s *Segura) SetRevoked(revoked bool) {
	s.mu.Lock()
	s.revoked = revoked
	s.mu.Unlock()
}

// SetClientSecret rotates the client secret. Tokens already issued stay valid until they expire.
func (s *Segura) SetClientSecret(secret string) {
	s.mu.Lock()
	s.clientSecret = secret
	s.mu.Unlock()
}

// FailNext makes the next n authenticated API calls answer f instead of being handled.
// Calls refused earlier (lock-out, 401) do not use up a fault.
func (s *Segura) FailNext(n int, f Fault) {
	s.mu.Lock()
	s.faults.push(n, f)
	s.mu.Unlock()
}

// ClearFaults drops every queued fault: the simulated outage ends.
func (s *Segura) ClearFaults() {
	s.mu.Lock()
	s.faults.runs = nil
	s.mu.Unlock()
}

// Chaos makes a share of API calls fail at random, for fault tests: ServerErrors answer 503
// without applying anything; Hangs wait HangFor (or until the client gives up) and answer 504
// without applying; DropReplies apply the change and then cut the connection, so the client
// never learns that it worked. Shares are fractions of calls; queued faults go first.
type Chaos struct {
	ServerErrors, Hangs, DropReplies float64
	HangFor                          time.Duration
	Seed                             int64
}

type chaosKind int

const (
	chaosNone chaosKind = iota
	chaosError
	chaosHang
	chaosDrop
)

// SetChaos turns random failures on (a zero Chaos turns them off).
func (s *Segura) SetChaos(c Chaos) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.chaos = c
	s.chaosRand = rand.New(rand.NewSource(c.Seed))
}

// ChaosCounts reports how many calls the chaos answered with an error, a hang, or a dropped
// reply after applying the change.
func (s *Segura) ChaosCounts() (errors, hangs, drops int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.chaosCounts[chaosError], s.chaosCounts[chaosHang], s.chaosCounts[chaosDrop]
}

func (s *Segura) chaosRoll() (chaosKind, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.chaos
	if s.chaosRand == nil || c.ServerErrors+c.Hangs+c.DropReplies == 0 {
		return chaosNone, false
	}
	x := s.chaosRand.Float64()
	kind := chaosNone
	switch {
	case x < c.ServerErrors:
		kind = chaosError
	case x < c.ServerErrors+c.Hangs:
		kind = chaosHang
	case x < c.ServerErrors+c.Hangs+c.DropReplies:
		kind = chaosDrop
	default:
		return chaosNone, false
	}
	if s.chaosCounts == nil {
		s.chaosCounts = map[chaosKind]int64{}
	}
	s.chaosCounts[kind]++
	return kind, true
}

func (s *Segura) chaosHangFor() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.chaos.HangFor
}

// SetLatency delays every API call by d, honouring the request's context.
func (s *Segura) SetLatency(d time.Duration) {
	s.mu.Lock()
	s.latency = d
	s.mu.Unlock()
}
