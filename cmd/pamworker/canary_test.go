package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pamworker/pamworker/sandbox"
)

// Canaries: every secret the end-to-end tests hand the worker or its simulators is registered
// here, and everything the tests see coming out of the binary — each worker's whole log, every
// result, every /metrics and /readyz page, every CLI command's output — is scanned for all of
// them with scanForSecrets. A hit fails the test with the line, the secret masked.

const (
	canarySecret       = "canary-client-secret-7f3a"
	canaryPassword     = "canary-element-password-91c2"
	canaryNATSPassword = "canary-nats-password-5d0e"
)

type canary struct{ what, secret string }

var canaries = struct {
	mu       sync.Mutex
	list     []canary           // longest first, so masking never leaves part of a longer one
	known    map[string]bool    // secret -> registered
	reported map[string]bool    // leaks already reported, so polling loops report each line once
	perTest  map[testing.TB]int // leaks reported per test, up to maxReports
}{known: map[string]bool{}, reported: map[string]bool{}, perTest: map[testing.TB]int{}}

// maxReports bounds the leaks reported per test: a secret in every result of a thousand-event
// test is one bug, not a thousand.
const maxReports = 10

func init() {
	addCanary("Segura client secret", canarySecret)
	addCanary("Element password", canaryPassword)
	addCanary("NATS password", canaryNATSPassword)
}

// addCanary registers secret, described by what, unless it is too short to scan for without
// false alarms; it reports whether secret is (now) a canary.
func addCanary(what, secret string) bool {
	if len(secret) < 8 {
		return false
	}
	canaries.mu.Lock()
	defer canaries.mu.Unlock()
	if !canaries.known[secret] {
		canaries.known[secret] = true
		canaries.list = append(canaries.list, canary{what, secret})
		slices.SortStableFunc(canaries.list, func(a, b canary) int { return cmp.Compare(len(b.secret), len(a.secret)) })
	}
	return true
}

// registerCanary adds a secret a test configures (a signing key, an nkey seed) to the canaries.
// The set is shared by all tests: a secret of one test is just as wrong in another's output.
func registerCanary(t testing.TB, what, secret string) {
	t.Helper()
	if !addCanary(what, secret) {
		t.Fatalf("canary %q is shorter than 8 characters: too short to scan for", what)
	}
}

func knownCanaries() []canary {
	canaries.mu.Lock()
	defer canaries.mu.Unlock()
	return slices.Clone(canaries.list)
}

// redact masks every canary in s.
func redact(s string) string {
	for _, c := range knownCanaries() {
		s = strings.ReplaceAll(s, c.secret, "[canary: "+c.what+"]")
	}
	return s
}

// scanForSecrets fails t for every line of text (output of where) that holds a canary, showing
// the line with the secret masked — never the secret itself.
func scanForSecrets(t testing.TB, where, text string) {
	t.Helper()
	var hits []canary
	for _, c := range knownCanaries() {
		if strings.Contains(text, c.secret) {
			hits = append(hits, c)
		}
	}
	if len(hits) == 0 {
		return
	}
	for i, line := range strings.Split(text, "\n") {
		var whats []string
		for _, c := range hits {
			if strings.Contains(line, c.secret) {
				whats = append(whats, c.what)
			}
		}
		if whats == nil {
			continue
		}
		switch newLeak(t, where, line) {
		case showLeak:
			t.Errorf("secret leaked (%s) in %s, line %d: %s", strings.Join(whats, ", "), where, i+1, clip(redact(line)))
		case lastLeak:
			t.Errorf("secret leaked (%s) in %s, line %d; more leaks in this test are not shown", strings.Join(whats, ", "), where, i+1)
		}
	}
}

const (
	skipLeak = iota // reported before, or past maxReports
	showLeak
	lastLeak // the one past maxReports: say that no more are shown
)

func newLeak(t testing.TB, where, line string) int {
	key := fmt.Sprintf("%p\x00%s\x00%s", t, where, line)
	canaries.mu.Lock()
	defer canaries.mu.Unlock()
	if canaries.reported[key] {
		return skipLeak
	}
	canaries.reported[key] = true
	canaries.perTest[t]++
	switch n := canaries.perTest[t]; {
	case n <= maxReports:
		return showLeak
	case n == maxReports+1:
		return lastLeak
	}
	return skipLeak
}

// clip shortens a long line to the part around its first masked secret.
func clip(line string) string {
	const width = 400
	if len(line) <= width {
		return line
	}
	at := max(0, strings.Index(line, "[canary: ")-width/4)
	end := min(len(line), at+width)
	return "…" + line[at:end] + "…"
}

// canaryTap wraps a vendor simulator: every credential the worker presents (the Authorization
// header, Basic or Bearer) and every OAuth access token the simulator issues becomes a canary,
// so a token in a log is caught like the client secret it was bought with.
func canaryTap(vendor string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, cred, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok {
			addCanary(vendor+" Authorization header", cred)
		}
		if r.URL.EscapedPath() != sandbox.SeguraTokenPath {
			h.ServeHTTP(w, r) // untouched: the chaos simulator hijacks connections
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		var tok struct {
			AccessToken string `json:"access_token"`
		}
		if json.Unmarshal(rec.Body.Bytes(), &tok) == nil {
			addCanary(vendor+" access token", tok.AccessToken)
		}
		maps.Copy(w.Header(), rec.Header())
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	})
}

// errorsOf records what scanForSecrets reports instead of failing the test.
type errorsOf struct {
	testing.TB
	errs []string
}

func (e *errorsOf) Errorf(format string, args ...any) {
	e.errs = append(e.errs, fmt.Sprintf(format, args...))
}

func TestScanForSecrets(t *testing.T) {
	t.Parallel()
	rec := &errorsOf{TB: t}
	scanForSecrets(rec, "clean text", "nothing to see\nhere")
	text := "first line\n{\"msg\":\"token\",\"secret\":\"" + canarySecret + "\"}\n"
	scanForSecrets(rec, "a log", text)
	scanForSecrets(rec, "a log", text) // polled again: reported once
	if len(rec.errs) != 1 || !strings.Contains(rec.errs[0], "a log, line 2") ||
		!strings.Contains(rec.errs[0], "[canary: Segura client secret]") || strings.Contains(rec.errs[0], canarySecret) {
		t.Errorf("reports %q, want one naming line 2 with the secret masked", rec.errs)
	}

	// A secret in every line of a long output: maxReports lines, then a note that says so.
	rec = &errorsOf{TB: t}
	var long strings.Builder
	for i := range 3 * maxReports {
		fmt.Fprintf(&long, "%d password=%s\n", i, canaryPassword)
	}
	scanForSecrets(rec, "a long log", long.String())
	if len(rec.errs) != maxReports+1 || !strings.Contains(rec.errs[maxReports], "not shown") {
		t.Errorf("%d reports, want %d and a note", len(rec.errs), maxReports+1)
	}
}
