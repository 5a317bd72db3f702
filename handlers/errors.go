package handlers

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Reason is why an attempt will be retried. It is a closed set: metrics use it as a label.
type Reason string

// The retry reasons.
const (
	ReasonTimeout    Reason = "timeout"     // the attempt ran out of time
	ReasonConnection Reason = "connection"  // dialing, TLS, or a reset connection
	ReasonRateLimit  Reason = "rate_limit"  // HTTP 429
	ReasonServer     Reason = "server"      // HTTP 500, 502, 503, 504
	ReasonTransient  Reason = "transient"   // the vendor said so (Element xDBVersionMismatch ...)
	ReasonToken      Reason = "token_fetch" // the token endpoint failed transiently
	ReasonInternal   Reason = "internal"    // the handler panicked (a bug); logged with its stack
)

// VendorError is what the vendor said: its code, its message, and the HTTP status.
type VendorError struct {
	Code       string // vendor's code: "1007", an Element error name, or "http_503"
	Message    string
	HTTPStatus int
}

func (e VendorError) describe() string {
	var b strings.Builder
	if e.Code != "" {
		b.WriteString(e.Code)
	}
	if e.Message != "" && e.Message != e.Code {
		if b.Len() > 0 {
			b.WriteString(": ")
		}
		b.WriteString(strings.TrimPrefix(e.Message, e.Code+": "))
	}
	if e.HTTPStatus != 0 {
		fmt.Fprintf(&b, " (HTTP %d)", e.HTTPStatus)
	}
	return b.String()
}

// PermanentError is a vendor refusal: retrying cannot help, the event fails now.
type PermanentError struct {
	VendorError
}

func (e *PermanentError) Error() string { return "refused: " + e.describe() }

// RetryableError is a failure that may pass: the worker retries with backoff.
type RetryableError struct {
	VendorError
	Reason Reason
	After  time.Duration // the vendor's Retry-After, 0 if none
	Err    error         // underlying transport error, if any
}

func (e *RetryableError) Error() string {
	s := "retryable " + string(e.Reason)
	if d := e.describe(); d != "" {
		s += ": " + d
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *RetryableError) Unwrap() error { return e.Err }

// TargetDownError means the worker itself is misconfigured or locked out of the target (bad
// client credentials, an A2A authorization without the needed permission). No event is at
// fault: events wait and the target is reported down until it accepts the worker again.
type TargetDownError struct {
	VendorError
	Err error
}

func (e *TargetDownError) Error() string {
	s := "target refuses the worker: " + e.describe()
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *TargetDownError) Unwrap() error { return e.Err }

// Kind is what should happen after an attempt.
type Kind int

// The kinds of outcome.
const (
	OK        Kind = iota // it worked
	Retry                 // it may work later: retry with backoff
	Permanent             // the vendor refused: the event fails now
	Down                  // the target refuses the worker: events wait until it accepts it again
	Refused               // the handler refused the event after a look (an *events.Rejection)
)

// String names the kind, for logs and tests: "" (OK), "retry", "permanent", "down", "refused".
func (k Kind) String() string {
	return [...]string{OK: "", Retry: "retry", Permanent: "permanent", Down: "down", Refused: "refused"}[k]
}

// Classify reports what should happen after err, with the matching typed error. A plain error
// (a bug, an unexpected reply) is retryable: the event is kept rather than lost. (A rejection,
// which the worker tests for itself, classifies as Retry here.)
func Classify(err error) (kind Kind, re *RetryableError, pe *PermanentError, de *TargetDownError) {
	switch {
	case err == nil:
		return OK, nil, nil, nil
	case errors.As(err, &de):
		return Down, nil, nil, de
	case errors.As(err, &pe):
		return Permanent, nil, pe, nil
	case errors.As(err, &re):
		return Retry, re, nil, nil
	}
	return Retry, &RetryableError{Reason: ReasonServer, Err: err}, nil, nil
}

// RetryableStatus reports whether an HTTP status is worth retrying, and why.
func RetryableStatus(status int) (Reason, bool) {
	switch status {
	case 429:
		return ReasonRateLimit, true
	case 500, 502, 503, 504:
		return ReasonServer, true
	}
	return "", false
}

// ParseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date. It is capped so a
// hostile or broken server cannot park the worker for a day.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	const maxRetryAfter = 10 * time.Minute
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseUint(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		// Cap before converting: a large count of seconds overflows a Duration into the negative.
		if secs >= uint64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil { // IMF-fixdate and the two obsolete forms
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}
