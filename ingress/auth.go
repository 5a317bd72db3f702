package ingress

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"math"
	"net/http"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/pamworker/pamworker/guard"
)

// Caller is one client of the ingress: a SOAR tool, or one of its playbooks.
type Caller struct {
	Name        string   // becomes requested_by when an event names none
	TokenSHA256 string   // hex SHA-256 of its bearer token; the token itself is never stored
	CertCN      string   // or the common name of its verified client certificate
	Subjects    []string // action subjects it may post, NATS patterns
}

type caller struct {
	Caller
	hash    []byte // decoded TokenSHA256
	limiter *rate.Limiter
}

// may reports whether the caller may post subject.
func (c *caller) may(subject string) bool {
	for _, p := range c.Subjects {
		if guard.SubjectMatch(p, subject) {
			return true
		}
	}
	return false
}

// HashToken returns what the configuration holds for token: the hex of its SHA-256.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// authFailure is why a request was not let in; metrics use it as a label (a closed set).
type authFailure string

const (
	authMissing     authFailure = "missing"       // no token and no client certificate
	authBadToken    authFailure = "invalid_token" // a token no caller has
	authUnknownCert authFailure = "unknown_certificate"
)

// authenticate finds the caller of r: by its bearer token (compared, in constant time, as a
// hash with every caller's, so that neither the token nor which caller is near it leaks
// through timing), or else by the common name of its verified client certificate.
func (s *Server) authenticate(r *http.Request) (*caller, authFailure) {
	if token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && token != "" {
		sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
		var found *caller
		for _, c := range s.callers {
			if c.hash != nil && subtle.ConstantTimeCompare(sum[:], c.hash) == 1 && found == nil {
				found = c
			}
		}
		if found == nil {
			return nil, authBadToken
		}
		return found, ""
	}
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		cn := r.TLS.VerifiedChains[0][0].Subject.CommonName
		for _, c := range s.callers {
			if c.CertCN != "" && c.CertCN == cn {
				return c, ""
			}
		}
		return nil, authUnknownCert
	}
	return nil, authMissing
}

// retryAfter is how many whole seconds a caller over its rate should wait.
func retryAfter(l *rate.Limiter) int {
	r := l.Reserve()
	defer r.Cancel()
	return max(1, int(math.Ceil(r.Delay().Seconds()+float64(time.Millisecond)/float64(time.Second))))
}
