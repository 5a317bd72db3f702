package segura

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pamworker/pamworker/handlers"
)

// operation is what a call means, which decides which vendor codes are idempotent successes.
type operation int

const (
	opSessionDrop operation = iota
	opDisable
	opEnable
	opCustodyRelease
	opSessionList
)

// noopCode is the vendor code that means "already in the wanted state" for each operation.
var noopCode = map[operation]string{
	opDisable:        "1008", // Credential inactive
	opEnable:         "1043", // Credential already activated
	opCustodyRelease: "1018", // The credential is not in the user custody
}

// envelope is Segura's reply: {"code", "response": {...}, "exception": {...}}. Gateway errors
// in front of the API answer {"message": "..."} instead.
type envelope struct {
	Code     json.Number `json:"code"`
	Response *struct {
		Status  json.Number `json:"status"`
		Message string      `json:"message"`
		Error   bool        `json:"error"`
		Detail  any         `json:"detail"`
	} `json:"response"`
	Exception *struct {
		Code    json.Number `json:"code"`
		Message string      `json:"message"`
	} `json:"exception"`
	Message string `json:"message"`
}

// Messages that say the worker itself is refused, whatever the HTTP status they come with.
const (
	msgNotAuthorized = "You are not authorized to access this resource"
	msgClientAuth    = "Client authentication failed"
	msgNoRoute       = "No route matched with those values" // the Authorization header was missing
	msgBadSignature  = "Invalid signature"
	msgTimedOut      = "Request timed out"
)

// namedCodes gives a stable code to the documented errors that carry no number, so playbooks
// can branch on a code rather than on a message.
var namedCodes = map[string]string{
	"an error occurred while dropping session": "session_drop_error",
	"resource sub not found":                   "resource_not_found",
}

// Vendor codes that say the A2A authorization lacks a permission: the worker is misconfigured.
var lockoutCodes = map[string]bool{"1039": true}

// classify turns one HTTP reply into an Outcome or a typed error. authRefused marks replies
// that mean the bearer token was refused, so the caller refetches it once.
func classify(op operation, status int, h http.Header, body []byte, now time.Time) (out handlers.Outcome, authRefused bool, err error) {
	var env envelope
	parsed := json.Unmarshal(body, &env) == nil
	msg := strings.TrimSpace(env.Message)
	if env.Response != nil && env.Response.Message != "" {
		msg = strings.TrimSpace(env.Response.Message)
	}
	code := vendorCode(&env, msg)
	if code == "" {
		code = namedCodes[strings.ToLower(strings.TrimRight(msg, "."))]
	}
	ve := handlers.VendorError{Code: code, Message: msg, HTTPStatus: status}
	if ve.Code == "" && (status < 200 || status > 299) {
		ve.Code = "http_" + strconv.Itoa(status)
	}

	failed := status < 200 || status > 299 || (env.Response != nil && env.Response.Error)
	switch {
	case !failed && (!parsed || env.Response == nil):
		// A 2xx that is not Segura's envelope (a proxy page, a truncated reply, some other JSON)
		// proves nothing: reporting it as success would claim a change that may not have happened.
		ve.Code, ve.Message = "unexpected_reply", "2xx reply that is not a Segura JSON envelope"
		return out, false, &handlers.RetryableError{VendorError: ve, Reason: handlers.ReasonServer}
	case !failed:
		return handlers.Outcome{Message: msg, HTTPStatus: status}, false, nil
	case containsFold(msg, msgNotAuthorized) || lockoutCodes[code]:
		return out, false, &handlers.TargetDownError{VendorError: ve}
	case status == http.StatusUnauthorized || containsFold(msg, msgClientAuth) ||
		containsFold(msg, msgNoRoute) || containsFold(msg, msgBadSignature):
		return out, true, &handlers.TargetDownError{VendorError: ve}
	case code != "" && code == noopCode[op]:
		return handlers.Outcome{Message: msg, Noop: true, HTTPStatus: status}, false, nil
	case containsFold(msg, msgTimedOut):
		return out, false, &handlers.RetryableError{VendorError: ve, Reason: handlers.ReasonTimeout}
	case status == http.StatusForbidden && code == "":
		// Forbidden without a per-credential code (1009) is the authorization itself.
		return out, false, &handlers.TargetDownError{VendorError: ve}
	}
	if reason, ok := handlers.RetryableStatus(status); ok {
		return out, false, &handlers.RetryableError{
			VendorError: ve,
			Reason:      reason,
			After:       handlers.ParseRetryAfter(h.Get("Retry-After"), now),
		}
	}
	return out, false, &handlers.PermanentError{VendorError: ve}
}

// vendorCode finds Segura's numeric code: exception.code, else the "1007: ..." message prefix.
func vendorCode(env *envelope, msg string) string {
	if env.Exception != nil {
		if c := env.Exception.Code.String(); c != "" && c != "0" {
			return c
		}
	}
	if i := strings.IndexByte(msg, ':'); i >= 4 && i <= 6 {
		if _, err := strconv.Atoi(msg[:i]); err == nil {
			return msg[:i]
		}
	}
	return ""
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}
