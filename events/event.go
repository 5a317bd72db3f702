// Package events holds pamworker's wire types: the action events playbooks publish, the result
// events the worker answers with, and the decoding and validation that turn untrusted bytes into
// an Event or a Rejection naming the problem. It knows nothing of NATS or of the vendors.
package events

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"
)

// The action subjects of the contract. The subject an event arrives on decides what it does.
const (
	SessionDrop           = "pam.session.drop"
	CredentialDisable     = "pam.credential.disable"
	CredentialEnable      = "pam.credential.enable"
	CustodyRelease        = "pam.credential.custody.release"
	ElementSessionsDelete = "element.auth_sessions.delete"
)

// Actions lists every action subject, in a stable order (used for metrics and docs).
var actions = []string{SessionDrop, CredentialDisable, CredentialEnable, CustodyRelease, ElementSessionsDelete}

// Actions returns the action subjects the worker understands.
func Actions() []string { return append([]string(nil), actions...) }

// IsAction reports whether subject is one of the contract's action subjects.
func IsAction(subject string) bool {
	for _, a := range actions {
		if a == subject {
			return true
		}
	}
	return false
}

// DefaultTarget is the instance an event acts on when it names none.
const DefaultTarget = "default"

// Event is one validated action event. Only the fields relevant to Action are set.
type Event struct {
	ID     string // idempotency key: event_id, CloudEvents id, Nats-Msg-Id or generated
	Action string // the subject it arrived on
	Target string // named instance; DefaultTarget when absent

	Reason        string
	RequestedBy   string
	CorrelationID string
	DryRun        bool
	ReplyTo       string    // a validated _INBOX. subject, or empty
	Time          time.Time // the event's own time (payload "time" or CloudEvents "time"); zero if absent

	// Action parameters.
	SessionID    string // pam.session.drop
	CredentialID int64  // pam.credential.*; 0 when the credential is named by Username/Hostname
	Username     string // pam.credential.disable (with Hostname) or element.auth_sessions.delete
	Hostname     string // pam.credential.disable
	AuthMethod   string // element.auth_sessions.delete: "", Cluster, Ldap or Idp
}

// Object names the thing the event acts on, for logs: "credential 94", "session <id>", etc.
// It never goes into a metric label.
func (e Event) Object() string {
	switch {
	case e.SessionID != "":
		return "session " + e.SessionID
	case e.CredentialID != 0:
		return fmt.Sprintf("credential %d", e.CredentialID)
	case e.Hostname != "":
		return "credential " + e.Username + "@" + e.Hostname
	case e.Username != "":
		return "user " + e.Username
	}
	return ""
}

// Digest identifies what the event asks for: its action, target, object, dry_run, time and
// the text fields that go into its result — everything but its id and the reply_to inbox,
// which a retrying publisher must be free to change. Two events with one id are the same
// event only if their digests are equal; the ledger answers a repeat only then.
func (e Event) Digest() string {
	h := sha256.New()
	t := ""
	if !e.Time.IsZero() {
		t = e.Time.UTC().Format(time.RFC3339Nano)
	}
	for _, f := range []string{"v1", e.Action, e.Target, e.SessionID, strconv.FormatInt(e.CredentialID, 10),
		e.Username, e.Hostname, e.AuthMethod, strconv.FormatBool(e.DryRun), t, e.Reason, e.RequestedBy, e.CorrelationID} {
		// Length-prefixed, so no two field lists encode alike.
		h.Write([]byte(strconv.Itoa(len(f)) + ":" + f))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// Rejection is the error Decode returns: a machine-readable code and a message naming the problem.
type Rejection struct {
	Code    string
	Message string
}

func (r *Rejection) Error() string { return r.Code + ": " + r.Message }

// Rejection codes of the worker's own.
const (
	CodeInvalidEvent        = "invalid_event"
	CodeEventTooLarge       = "event_too_large"
	CodeUnknownAction       = "unknown_action"
	CodeTargetNotConfigured = "target_not_configured"
	CodeStaleEvent          = "stale_event"
	// CodeIDConflict: the event reuses the id of an earlier, different event (another action,
	// object or field). It is not run, and not answered with the other event's result.
	CodeIDConflict = "event_id_conflict"
)

func rejectf(code, format string, args ...any) *Rejection {
	return &Rejection{Code: code, Message: fmt.Sprintf(format, args...)}
}
