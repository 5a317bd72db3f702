package events_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/pamworker/pamworker/events"
)

const generatedID = "generated-id"

func newID() string { return generatedID }

// decodeCase is one event that Decode must accept, and the Event it must produce.
type decodeCase struct {
	name    string
	subject string
	data    string
	msgID   string
	want    events.Event
}

// ev builds the expected Event: the defaults Decode fills in, then the fields of the case.
func ev(action string, set func(*events.Event)) events.Event {
	e := events.Event{ID: generatedID, Action: action, Target: events.DefaultTarget}
	if set != nil {
		set(&e)
	}
	return e
}

var (
	long256 = strings.Repeat("a", events.MaxIDBytes)
	long257 = strings.Repeat("a", events.MaxIDBytes+1)
	ceTime  = time.Date(2026, 11, 22, 10, 0, 0, 123000000, time.UTC)
)

var validCases = []decodeCase{
	{
		name: "session drop", subject: events.SessionDrop,
		data: `{"session_id": "e95d6160bbfbe6f1594bd0ff29d102dc"}`,
		want: ev(events.SessionDrop, func(e *events.Event) { e.SessionID = "e95d6160bbfbe6f1594bd0ff29d102dc" }),
	},
	{
		name: "session id of 256 bytes", subject: events.SessionDrop,
		data: `{"session_id": "` + long256 + `"}`,
		want: ev(events.SessionDrop, func(e *events.Event) { e.SessionID = long256 }),
	},
	{
		name: "session id with slash, query and unicode", subject: events.SessionDrop,
		data: `{"session_id": "a/b?c#d é"}`,
		want: ev(events.SessionDrop, func(e *events.Event) { e.SessionID = "a/b?c#d é" }),
	},
	{
		name: "disable by numeric credential_id", subject: events.CredentialDisable,
		data: `{"credential_id": 94}`,
		want: ev(events.CredentialDisable, func(e *events.Event) { e.CredentialID = 94 }),
	},
	{
		name: "disable by credential_id as a numeric string", subject: events.CredentialDisable,
		data: `{"credential_id": "94"}`,
		want: ev(events.CredentialDisable, func(e *events.Event) { e.CredentialID = 94 }),
	},
	{
		name: "disable by username and hostname", subject: events.CredentialDisable,
		data: `{"username": "root", "hostname": "db01"}`,
		want: ev(events.CredentialDisable, func(e *events.Event) { e.Username, e.Hostname = "root", "db01" }),
	},
	{
		name: "disable with null credential_id and a name", subject: events.CredentialDisable,
		data: `{"credential_id": null, "username": "root", "hostname": "db01.example.com"}`,
		want: ev(events.CredentialDisable, func(e *events.Event) { e.Username, e.Hostname = "root", "db01.example.com" }),
	},
	{
		name: "enable", subject: events.CredentialEnable,
		data: `{"credential_id": 5}`,
		want: ev(events.CredentialEnable, func(e *events.Event) { e.CredentialID = 5 }),
	},
	{
		name: "enable with the largest accepted id", subject: events.CredentialEnable,
		data: `{"credential_id": 999999999999999999}`,
		want: ev(events.CredentialEnable, func(e *events.Event) { e.CredentialID = 999999999999999999 }),
	},
	{
		name: "custody release", subject: events.CustodyRelease,
		data: `{"credential_id": "94"}`,
		want: ev(events.CustodyRelease, func(e *events.Event) { e.CredentialID = 94 }),
	},
	{
		name: "element without auth_method", subject: events.ElementSessionsDelete,
		data: `{"username": "admin"}`,
		want: ev(events.ElementSessionsDelete, func(e *events.Event) { e.Username = "admin" }),
	},
	{
		name: "element auth_method lower case", subject: events.ElementSessionsDelete,
		data: `{"username": "admin", "auth_method": "cluster"}`,
		want: ev(events.ElementSessionsDelete, func(e *events.Event) { e.Username, e.AuthMethod = "admin", "Cluster" }),
	},
	{
		name: "element auth_method upper case", subject: events.ElementSessionsDelete,
		data: `{"username": "CN=Jane Doe,OU=Ops,DC=example,DC=com", "auth_method": "LDAP"}`,
		want: ev(events.ElementSessionsDelete, func(e *events.Event) {
			e.Username, e.AuthMethod = "CN=Jane Doe,OU=Ops,DC=example,DC=com", "Ldap"
		}),
	},
	{
		name: "element auth_method mixed case", subject: events.ElementSessionsDelete,
		data: `{"username": "jane", "auth_method": "iDp"}`,
		want: ev(events.ElementSessionsDelete, func(e *events.Event) { e.Username, e.AuthMethod = "jane", "Idp" }),
	},
	{
		// Element names users freely; only Segura's username@hostname path forbids '@'.
		name: "element username holding @", subject: events.ElementSessionsDelete,
		data: `{"username": "jane@example.com", "auth_method": "Idp"}`,
		want: ev(events.ElementSessionsDelete, func(e *events.Event) { e.Username, e.AuthMethod = "jane@example.com", "Idp" }),
	},
	{
		name: "every common field", subject: events.CredentialDisable,
		data: `{"credential_id": 94, "event_id": "01JEVENT", "target": "dr-site_2", "reason": "incident response",
			"requested_by": "soar", "correlation_id": "INC-4711", "dry_run": true, "reply_to": "_INBOX.abc.def",
			"time": "2026-11-22T10:00:00.123Z"}`,
		want: ev(events.CredentialDisable, func(e *events.Event) {
			e.ID, e.Target, e.Reason, e.RequestedBy, e.CorrelationID = "01JEVENT", "dr-site_2", "incident response", "soar", "INC-4711"
			e.DryRun, e.ReplyTo, e.Time, e.CredentialID = true, "_INBOX.abc.def", ceTime, 94
		}),
	},
	{
		name: "dry_run false and null target fields", subject: events.SessionDrop,
		data: `{"session_id": "s1", "dry_run": false, "reason": null}`,
		want: ev(events.SessionDrop, func(e *events.Event) { e.SessionID = "s1" }),
	},
	{
		name: "CloudEvents envelope", subject: events.SessionDrop,
		data: `{"specversion": "1.0", "id": "ce-1", "source": "/soar", "type": "pam.session.drop",
			"time": "2026-11-22T10:00:00.123Z", "datacontenttype": "application/json",
			"data": {"session_id": "s1", "correlation_id": "INC-1"}}`,
		msgID: "nats-1",
		want: ev(events.SessionDrop, func(e *events.Event) {
			e.ID, e.Time, e.SessionID, e.CorrelationID = "ce-1", ceTime, "s1", "INC-1"
		}),
	},
	{
		name: "CloudEvents with extension attribute and agreeing event_id", subject: events.CredentialEnable,
		data: `{"specversion": "1.0", "id": "ce-2", "source": "/soar", "type": "pam.credential.enable",
			"soarincident": "INC-9", "data": {"credential_id": "7", "event_id": "ce-2"}}`,
		want: ev(events.CredentialEnable, func(e *events.Event) { e.ID, e.CredentialID = "ce-2", 7 }),
	},
}

func TestDecodeAccepts(t *testing.T) {
	t.Parallel()
	for _, tc := range validCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := events.Decode(tc.subject, []byte(tc.data), tc.msgID, 0, newID)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !got.Time.Equal(tc.want.Time) {
				t.Errorf("Time = %v, want %v", got.Time, tc.want.Time)
			}
			got.Time, tc.want.Time = time.Time{}, time.Time{}
			if got != tc.want {
				t.Errorf("Decode\n got: %+v\nwant: %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeEventIDPrecedence(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, data, msgID, want string
	}{
		{"payload event_id wins over the header", `{"session_id":"s","event_id":"from-payload"}`, "from-header", "from-payload"},
		{"header when the payload has none", `{"session_id":"s"}`, "from-header", "from-header"},
		{"generated when neither", `{"session_id":"s"}`, "", generatedID},
		{"generated when the header is not a valid id", `{"session_id":"s"}`, "bad\x00id", generatedID},
		{"generated when the header is blank", `{"session_id":"s"}`, "  ", generatedID},
		{"CloudEvents id wins over the header", `{"specversion":"1.0","id":"ce","type":"pam.session.drop","data":{"session_id":"s"}}`, "from-header", "ce"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			calls := 0
			got, err := events.Decode(events.SessionDrop, []byte(tc.data), tc.msgID, 0, func() string {
				calls++
				return generatedID
			})
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got.ID != tc.want {
				t.Errorf("ID = %q, want %q", got.ID, tc.want)
			}
			if wantCalls := map[bool]int{true: 1, false: 0}[tc.want == generatedID]; calls != wantCalls {
				t.Errorf("newID called %d times, want %d", calls, wantCalls)
			}
		})
	}
}

// rejectCase is one event Decode must refuse: the code, and words the message must hold so
// that it names the problem.
type rejectCase struct {
	name    string
	subject string
	data    string
	code    string
	words   []string
}

func invalid(name, subject, data string, words ...string) rejectCase {
	return rejectCase{name: name, subject: subject, data: data, code: events.CodeInvalidEvent, words: words}
}

var rejectCases = []rejectCase{
	// Not JSON, or not an object.
	invalid("empty", events.SessionDrop, ``, "JSON"),
	invalid("truncated", events.SessionDrop, `{"session_id":`, "JSON"),
	invalid("unquoted key", events.SessionDrop, `{session_id: "x"}`, "malformed JSON"),
	invalid("trailing garbage", events.SessionDrop, `{"session_id":"x"} x`, "JSON"),
	invalid("second object", events.SessionDrop, `{"session_id":"x"}{"session_id":"y"}`, "JSON"),
	invalid("array", events.SessionDrop, `[{"session_id":"x"}]`, "JSON object", "array"),
	invalid("string", events.SessionDrop, `"x"`, "JSON object", "string"),
	invalid("number", events.CredentialEnable, `94`, "JSON object", "number"),
	invalid("null", events.SessionDrop, `null`, "JSON object"),

	// Wrong types and fields.
	invalid("session_id as a number", events.SessionDrop, `{"session_id": 123}`, "session_id", "string", "number"),
	invalid("dry_run as a string", events.SessionDrop, `{"session_id": "s", "dry_run": "true"}`, "dry_run", "true or false"),
	invalid("reply_to as an object", events.SessionDrop, `{"session_id": "s", "reply_to": {}}`, "reply_to"),
	invalid("credential_id as a bool", events.CredentialEnable, `{"credential_id": true}`, "credential_id", "positive integer"),
	invalid("credential_id as an array", events.CredentialEnable, `{"credential_id": [94]}`, "credential_id", "positive integer"),
	invalid("unknown field dryrun", events.SessionDrop, `{"session_id": "s", "dryrun": true}`, "unknown field", "dryrun"),
	invalid("not UTF-8", events.SessionDrop, "{\"session_id\": \"\xff\xfe\"}", "UTF-8"),
	invalid("key given twice", events.CredentialDisable, `{"credential_id": 5, "credential_id": 6}`, "credential_id", "more than once"),
	invalid("key given twice in another case", events.CredentialDisable, `{"credential_id": 5, "CREDENTIAL_ID": 6}`, "more than once"),
	invalid("key in the wrong case", events.SessionDrop, `{"Session_ID": "s"}`, "unknown field", "lower case"),
	invalid("dry_run in the wrong case", events.SessionDrop, `{"session_id": "s", "DRY_RUN": true}`, "unknown field", "dry_run"),
	invalid("CloudEvents data with a key twice", events.SessionDrop, `{"specversion":"1.0","id":"c1","source":"s","type":"t","data":{"session_id":"a","session_id":"b"}}`, "more than once"),
	invalid("CloudEvents envelope with data twice", events.SessionDrop, `{"specversion":"1.0","id":"c1","source":"s","type":"t","data":{"session_id":"a"},"data":{"session_id":"b"}}`, "data", "more than once"),
	invalid("unknown field id outside CloudEvents", events.SessionDrop, `{"session_id": "s", "id": "x"}`, "unknown field", `"id"`),
	invalid("credential_id on session drop", events.SessionDrop, `{"session_id": "s", "credential_id": 1}`, "credential_id", "not valid for pam.session.drop"),
	invalid("session_id on disable", events.CredentialDisable, `{"credential_id": 1, "session_id": "s"}`, "session_id", "not valid for pam.credential.disable"),
	invalid("username on enable", events.CredentialEnable, `{"credential_id": 1, "username": "root"}`, "username", "not valid for pam.credential.enable"),
	invalid("hostname on custody release", events.CustodyRelease, `{"credential_id": 1, "hostname": "db"}`, "hostname", "not valid for pam.credential.custody.release"),
	invalid("auth_method on disable", events.CredentialDisable, `{"username": "u", "hostname": "h", "auth_method": "Cluster"}`, "auth_method", "not valid"),
	invalid("hostname on element", events.ElementSessionsDelete, `{"username": "admin", "hostname": "db"}`, "hostname", "not valid for element.auth_sessions.delete"),
	invalid("credential_id on element", events.ElementSessionsDelete, `{"username": "admin", "credential_id": 3}`, "credential_id", "not valid"),

	// Missing ids.
	invalid("drop without session_id", events.SessionDrop, `{}`, "session_id is required"),
	invalid("drop with null session_id", events.SessionDrop, `{"session_id": null}`, "session_id is required"),
	invalid("enable without credential_id", events.CredentialEnable, `{"reason": "x"}`, "credential_id is required"),
	invalid("custody without credential_id", events.CustodyRelease, `{}`, "credential_id is required"),
	invalid("disable without any id", events.CredentialDisable, `{}`, "credential_id", "username and hostname"),
	invalid("disable with username only", events.CredentialDisable, `{"username": "root"}`, "username and hostname", "together"),
	invalid("disable with hostname only", events.CredentialDisable, `{"hostname": "db01"}`, "username and hostname", "together"),
	invalid("disable with id and name", events.CredentialDisable, `{"credential_id": 1, "username": "u", "hostname": "h"}`, "either", "not both"),
	invalid("element without username", events.ElementSessionsDelete, `{"auth_method": "Cluster"}`, "username is required"),

	// credential_id values.
	invalid("credential_id 0", events.CredentialEnable, `{"credential_id": 0}`, "credential_id", "positive integer"),
	invalid("credential_id -1", events.CredentialEnable, `{"credential_id": -1}`, "credential_id", "positive integer"),
	invalid("credential_id 1.5", events.CredentialDisable, `{"credential_id": 1.5}`, "credential_id", "positive integer"),
	invalid("credential_id 1.0", events.CredentialDisable, `{"credential_id": 1.0}`, "credential_id", "positive integer"),
	invalid("credential_id 1e3", events.CredentialDisable, `{"credential_id": 1e3}`, "credential_id", "positive integer"),
	invalid(`credential_id "1e3"`, events.CustodyRelease, `{"credential_id": "1e3"}`, "credential_id", "positive integer"),
	invalid(`credential_id "007"`, events.CustodyRelease, `{"credential_id": "007"}`, "credential_id", "positive integer"),
	invalid(`credential_id "0"`, events.CustodyRelease, `{"credential_id": "0"}`, "credential_id", "positive integer"),
	invalid(`credential_id "-1"`, events.CustodyRelease, `{"credential_id": "-1"}`, "credential_id", "positive integer"),
	invalid(`credential_id "+1"`, events.CustodyRelease, `{"credential_id": "+1"}`, "credential_id", "positive integer"),
	invalid(`credential_id " 1"`, events.CustodyRelease, `{"credential_id": " 1"}`, "credential_id", "positive integer"),
	invalid(`credential_id ""`, events.CustodyRelease, `{"credential_id": ""}`, "credential_id", "positive integer"),
	invalid("credential_id huge number", events.CredentialEnable, `{"credential_id": 99999999999999999999999}`, "credential_id", "positive integer"),
	invalid("credential_id huge string", events.CredentialEnable, `{"credential_id": "9223372036854775808"}`, "credential_id", "positive integer"),

	// ids that would misbehave in a URL.
	invalid(`session_id "."`, events.SessionDrop, `{"session_id": "."}`, "session_id", ". or .."),
	invalid(`session_id ".."`, events.SessionDrop, `{"session_id": ".."}`, "session_id", ". or .."),
	invalid(`username ".." on disable`, events.CredentialDisable, `{"username": "..", "hostname": "db01"}`, "username", ". or .."),
	invalid(`hostname "." on disable`, events.CredentialDisable, `{"username": "root", "hostname": "."}`, "hostname", ". or .."),
	invalid(`username "." on element`, events.ElementSessionsDelete, `{"username": "."}`, "username", ". or .."),
	invalid("empty session_id", events.SessionDrop, `{"session_id": ""}`, "session_id", "empty"),
	invalid("blank session_id", events.SessionDrop, `{"session_id": "  "}`, "session_id", "empty"),
	invalid("empty hostname", events.CredentialDisable, `{"username": "root", "hostname": ""}`, "hostname", "empty"),
	invalid("session_id with NUL", events.SessionDrop, `{"session_id": "a\u0000b"}`, "session_id", "control character"),
	invalid("session_id with newline", events.SessionDrop, `{"session_id": "a\nb"}`, "session_id", "control character"),
	invalid("session_id with DEL", events.SessionDrop, `{"session_id": "a\u007fb"}`, "session_id", "control character"),
	invalid("session_id with C1 control", events.SessionDrop, `{"session_id": "a\u0085b"}`, "session_id", "control character"),
	invalid("username with tab", events.ElementSessionsDelete, `{"username": "ad\tmin"}`, "username", "control character"),
	invalid("hostname with CR", events.CredentialDisable, `{"username": "root", "hostname": "db\r01"}`, "hostname", "control character"),
	invalid("session_id of 257 bytes", events.SessionDrop, `{"session_id": "`+long257+`"}`, "session_id", "longer than 256"),
	invalid("element username of 257 bytes", events.ElementSessionsDelete, `{"username": "`+long257+`"}`, "username", "longer than 256"),
	invalid("username@hostname over 256 bytes", events.CredentialDisable,
		`{"username": "`+strings.Repeat("u", 128)+`", "hostname": "`+strings.Repeat("h", 128)+`"}`, "username@hostname", "256"),
	invalid("username with @ on disable", events.CredentialDisable, `{"username": "a@b", "hostname": "db01"}`, "username", "@"),
	invalid("hostname with @ on disable", events.CredentialDisable, `{"username": "root", "hostname": "db@01"}`, "hostname", "@"),

	// Common fields.
	invalid("reply_to not an inbox", events.SessionDrop, `{"session_id": "s", "reply_to": "results.pam.session.drop"}`, "reply_to", "_INBOX."),
	invalid("reply_to bare prefix", events.SessionDrop, `{"session_id": "s", "reply_to": "_INBOX."}`, "reply_to", "_INBOX."),
	invalid("reply_to lower case", events.SessionDrop, `{"session_id": "s", "reply_to": "_inbox.abc"}`, "reply_to", "_INBOX."),
	invalid("reply_to with *", events.SessionDrop, `{"session_id": "s", "reply_to": "_INBOX.*"}`, "reply_to", "literal"),
	invalid("reply_to with >", events.SessionDrop, `{"session_id": "s", "reply_to": "_INBOX.abc.>"}`, "reply_to", "literal"),
	invalid("reply_to with * inside a token", events.SessionDrop, `{"session_id": "s", "reply_to": "_INBOX.0*"}`, "reply_to", "literal"),
	invalid("reply_to with > inside a token", events.SessionDrop, `{"session_id": "s", "reply_to": "_INBOX.a>b"}`, "reply_to", "literal"),
	invalid("reply_to with empty token", events.SessionDrop, `{"session_id": "s", "reply_to": "_INBOX..abc"}`, "reply_to", "literal"),
	invalid("reply_to with space", events.SessionDrop, `{"session_id": "s", "reply_to": "_INBOX.a b"}`, "reply_to", "whitespace"),
	invalid("reply_to too long", events.SessionDrop, `{"session_id": "s", "reply_to": "_INBOX.`+long256+`"}`, "reply_to", "longer than 256"),
	invalid("event_id empty", events.SessionDrop, `{"session_id": "s", "event_id": ""}`, "event_id", "empty"),
	invalid("event_id with control character", events.SessionDrop, `{"session_id": "s", "event_id": "a\u0001"}`, "event_id", "control character"),
	invalid("event_id too long", events.SessionDrop, `{"session_id": "s", "event_id": "`+long257+`"}`, "event_id", "longer than 256"),
	invalid("target with a dot", events.SessionDrop, `{"session_id": "s", "target": "a.b"}`, "target"),
	invalid("target empty", events.SessionDrop, `{"session_id": "s", "target": ""}`, "target"),
	invalid("reason with control character", events.SessionDrop, `{"session_id": "s", "reason": "x\u0007"}`, "reason", "control character"),
	invalid("correlation_id too long", events.SessionDrop, `{"session_id": "s", "correlation_id": "`+strings.Repeat("c", 1025)+`"}`, "correlation_id", "longer than 1024"),
	invalid("time not RFC 3339", events.SessionDrop, `{"session_id": "s", "time": "yesterday"}`, "time", "RFC 3339"),
	invalid("auth_method unknown", events.ElementSessionsDelete, `{"username": "admin", "auth_method": "Kerberos"}`, "auth_method", "Cluster, Ldap, Idp"),
	invalid("auth_method empty", events.ElementSessionsDelete, `{"username": "admin", "auth_method": ""}`, "auth_method"),

	// CloudEvents.
	invalid("CloudEvents specversion 0.3", events.SessionDrop,
		`{"specversion": "0.3", "id": "ce", "type": "pam.session.drop", "data": {"session_id": "s"}}`, "specversion", "0.3"),
	invalid("CloudEvents specversion as a number", events.SessionDrop,
		`{"specversion": 1.0, "id": "ce", "type": "pam.session.drop", "data": {"session_id": "s"}}`, "CloudEvents", "specversion"),
	invalid("CloudEvents data_base64", events.SessionDrop,
		`{"specversion": "1.0", "id": "ce", "type": "pam.session.drop", "data_base64": "eyJzZXNzaW9uX2lkIjoicyJ9"}`, "data_base64"),
	invalid("CloudEvents without data", events.SessionDrop,
		`{"specversion": "1.0", "id": "ce", "type": "pam.session.drop"}`, "CloudEvents", "no data"),
	invalid("CloudEvents with null data", events.SessionDrop,
		`{"specversion": "1.0", "id": "ce", "type": "pam.session.drop", "data": null}`, "CloudEvents", "no data"),
	invalid("CloudEvents data as a string", events.SessionDrop,
		`{"specversion": "1.0", "id": "ce", "type": "pam.session.drop", "data": "{\"session_id\":\"s\"}"}`, "JSON object"),
	invalid("CloudEvents type of another action", events.SessionDrop,
		`{"specversion": "1.0", "id": "ce", "type": "pam.credential.disable", "data": {"session_id": "s"}}`, "type", "pam.credential.disable", "does not match", "pam.session.drop"),
	invalid("CloudEvents event_id differing from id", events.SessionDrop,
		`{"specversion": "1.0", "id": "ce", "type": "pam.session.drop", "data": {"session_id": "s", "event_id": "other"}}`, "event_id", "other", "differs", "ce"),
	invalid("CloudEvents without id", events.SessionDrop,
		`{"specversion": "1.0", "type": "pam.session.drop", "data": {"session_id": "s"}}`, "CloudEvents id", "empty"),
	invalid("CloudEvents bad time", events.SessionDrop,
		`{"specversion": "1.0", "id": "ce", "type": "pam.session.drop", "time": "noon", "data": {"session_id": "s"}}`, "CloudEvents time", "RFC 3339"),
	invalid("CloudEvents data with unknown field", events.SessionDrop,
		`{"specversion": "1.0", "id": "ce", "type": "pam.session.drop", "data": {"session_id": "s", "sessionid": "t"}}`, "unknown field", "sessionid"),

	// The worker's own codes.
	{name: "unknown subject", subject: "pam.session.kill", data: `{"session_id": "s"}`, code: events.CodeUnknownAction, words: []string{"pam.session.kill"}},
	{name: "result subject", subject: "results.pam.session.drop", data: `{"session_id": "s"}`, code: events.CodeUnknownAction, words: []string{"results.pam.session.drop"}},
	{name: "too large", subject: events.SessionDrop, data: `{"session_id": "` + strings.Repeat("x", events.DefaultMaxEventBytes) + `"}`,
		code: events.CodeEventTooLarge, words: []string{"65536"}},
	{name: "too large and not JSON", subject: events.SessionDrop, data: strings.Repeat("{", events.DefaultMaxEventBytes+1),
		code: events.CodeEventTooLarge, words: []string{"bytes"}},
	{name: "too large on an unknown subject", subject: "nope", data: strings.Repeat(" ", events.DefaultMaxEventBytes+1),
		code: events.CodeEventTooLarge},
}

func TestDecodeRejects(t *testing.T) {
	t.Parallel()
	for _, tc := range rejectCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := events.Decode(tc.subject, []byte(tc.data), "", 0, newID)
			var rej *events.Rejection
			if !errors.As(err, &rej) {
				t.Fatalf("Decode error = %v (%T), want a *events.Rejection; event %+v", err, err, got)
			}
			if rej.Code != tc.code {
				t.Errorf("Code = %q, want %q (message %q)", rej.Code, tc.code, rej.Message)
			}
			for _, w := range tc.words {
				if !strings.Contains(rej.Message, w) {
					t.Errorf("message %q does not mention %q", rej.Message, w)
				}
			}
			if got.ID == "" || got.Action != tc.subject {
				t.Errorf("rejected event has ID %q and Action %q; want an id and %q", got.ID, got.Action, tc.subject)
			}
			if err.Error() != rej.Code+": "+rej.Message {
				t.Errorf("Error() = %q", err.Error())
			}
		})
	}
}

func TestDecodeMaxBytes(t *testing.T) {
	t.Parallel()
	data := []byte(`{"session_id": "s"}`)
	tests := []struct {
		name     string
		maxBytes int
		wantErr  bool
	}{
		{"exactly the limit", len(data), false},
		{"one byte over", len(data) - 1, true},
		{"zero means the default", 0, false},
		{"negative means the default", -1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := events.Decode(events.SessionDrop, data, "", tc.maxBytes, newID)
			var rej *events.Rejection
			switch {
			case tc.wantErr && (!errors.As(err, &rej) || rej.Code != events.CodeEventTooLarge):
				t.Errorf("Decode error = %v, want event_too_large", err)
			case !tc.wantErr && err != nil:
				t.Errorf("Decode error = %v, want none", err)
			}
		})
	}
}

// A rejection is answered: its result must carry the id and reach the reply_to inbox and the
// incident of the event whenever those were themselves valid.
func TestDecodeRejectionKeepsMetadata(t *testing.T) {
	t.Parallel()
	const meta = `"event_id": "ev-1", "reply_to": "_INBOX.r1", "correlation_id": "INC-1", "requested_by": "soar"`
	tests := []struct {
		name                                      string
		subject, data, msgID                      string
		wantID, wantReplyTo, wantCorr, wantReqsBy string
	}{
		{
			name: "wrong type", subject: events.SessionDrop, data: `{"session_id": 5, ` + meta + `}`,
			wantID: "ev-1", wantReplyTo: "_INBOX.r1", wantCorr: "INC-1", wantReqsBy: "soar",
		},
		{
			name: "unknown field", subject: events.SessionDrop, data: `{"session_id": "s", "dryrun": true, ` + meta + `}`,
			wantID: "ev-1", wantReplyTo: "_INBOX.r1", wantCorr: "INC-1", wantReqsBy: "soar",
		},
		{
			name: "missing id", subject: events.SessionDrop, data: `{` + meta + `}`,
			wantID: "ev-1", wantReplyTo: "_INBOX.r1", wantCorr: "INC-1", wantReqsBy: "soar",
		},
		{
			name: "bad credential_id", subject: events.CredentialEnable, data: `{"credential_id": 0, ` + meta + `}`,
			wantID: "ev-1", wantReplyTo: "_INBOX.r1", wantCorr: "INC-1", wantReqsBy: "soar",
		},
		{
			name: "invalid target", subject: events.SessionDrop, data: `{"session_id": "s", "target": "a b", ` + meta + `}`,
			wantID: "ev-1", wantReplyTo: "_INBOX.r1", wantCorr: "INC-1", wantReqsBy: "soar",
		},
		{
			name: "invalid reason", subject: events.SessionDrop, data: `{"session_id": "s", "reason": "\u0000", ` + meta + `}`,
			wantID: "ev-1", wantReplyTo: "_INBOX.r1", wantCorr: "INC-1", wantReqsBy: "soar",
		},
		{
			name: "invalid event_id falls back to the header", subject: events.SessionDrop, msgID: "hdr-1",
			data:   `{"session_id": "s", "event_id": "", "reply_to": "_INBOX.r1", "correlation_id": "INC-1"}`,
			wantID: "hdr-1", wantReplyTo: "_INBOX.r1", wantCorr: "INC-1",
		},
		{
			name: "invalid reply_to is dropped, the rest kept", subject: events.SessionDrop,
			data:   `{"session_id": "s", "event_id": "ev-1", "reply_to": "pam.session.drop", "correlation_id": "INC-1"}`,
			wantID: "ev-1", wantCorr: "INC-1",
		},
		{
			name: "invalid correlation_id is dropped, the rest kept", subject: events.SessionDrop,
			data:   `{"session_id": "s", "event_id": "ev-1", "reply_to": "_INBOX.r1", "correlation_id": "\u0000"}`,
			wantID: "ev-1", wantReplyTo: "_INBOX.r1",
		},
		{
			name: "malformed JSON keeps the header id", subject: events.SessionDrop, msgID: "hdr-1",
			data: `{"session_id": "s", "reply_to": "_INBOX.r1"`, wantID: "hdr-1",
		},
		{
			name: "too large keeps the header id and parses nothing", subject: events.SessionDrop, msgID: "hdr-1",
			data: `{"reply_to": "_INBOX.r1", "session_id": "` + strings.Repeat("x", events.DefaultMaxEventBytes) + `"}`, wantID: "hdr-1",
		},
		{
			name: "CloudEvents type mismatch keeps the CloudEvents id and the data's metadata", subject: events.SessionDrop, msgID: "hdr-1",
			data:   `{"specversion": "1.0", "id": "ce-1", "type": "pam.credential.enable", "data": {"session_id": "s", "reply_to": "_INBOX.r1", "correlation_id": "INC-1"}}`,
			wantID: "ce-1", wantReplyTo: "_INBOX.r1", wantCorr: "INC-1",
		},
		{
			name: "CloudEvents data error keeps the CloudEvents id", subject: events.SessionDrop,
			data:   `{"specversion": "1.0", "id": "ce-1", "type": "pam.session.drop", "data": {"session_id": 1, "reply_to": "_INBOX.r1"}}`,
			wantID: "ce-1", wantReplyTo: "_INBOX.r1",
		},
		{
			name: "CloudEvents event_id mismatch keeps the CloudEvents id", subject: events.SessionDrop,
			data:   `{"specversion": "1.0", "id": "ce-1", "type": "pam.session.drop", "data": {"session_id": "s", "event_id": "other", "reply_to": "_INBOX.r1"}}`,
			wantID: "ce-1", wantReplyTo: "_INBOX.r1",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := events.Decode(tc.subject, []byte(tc.data), tc.msgID, 0, newID)
			var rej *events.Rejection
			if !errors.As(err, &rej) {
				t.Fatalf("Decode error = %v, want a rejection", err)
			}
			if got.ID != tc.wantID || got.ReplyTo != tc.wantReplyTo || got.CorrelationID != tc.wantCorr || got.RequestedBy != tc.wantReqsBy {
				t.Errorf("rejected event (%s) carries\n id=%q reply_to=%q correlation_id=%q requested_by=%q\nwant\n id=%q reply_to=%q correlation_id=%q requested_by=%q",
					rej, got.ID, got.ReplyTo, got.CorrelationID, got.RequestedBy, tc.wantID, tc.wantReplyTo, tc.wantCorr, tc.wantReqsBy)
			}
		})
	}
}

func TestEventObject(t *testing.T) {
	t.Parallel()
	tests := []struct {
		ev   events.Event
		want string
	}{
		{events.Event{SessionID: "s1"}, "session s1"},
		{events.Event{CredentialID: 94}, "credential 94"},
		{events.Event{Username: "root", Hostname: "db01"}, "credential root@db01"},
		{events.Event{Username: "admin"}, "user admin"},
		{events.Event{}, ""},
	}
	for _, tc := range tests {
		if got := tc.ev.Object(); got != tc.want {
			t.Errorf("%+v.Object() = %q, want %q", tc.ev, got, tc.want)
		}
	}
}

func TestActions(t *testing.T) {
	t.Parallel()
	got := events.Actions()
	want := []string{"pam.session.drop", "pam.credential.disable", "pam.credential.enable", "pam.credential.custody.release", "element.auth_sessions.delete"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Actions() = %v, want %v", got, want)
	}
	got[0] = "mutated"
	if events.Actions()[0] != events.SessionDrop {
		t.Error("Actions returns the package's own slice; callers can change it")
	}
	for _, a := range want {
		if !events.IsAction(a) {
			t.Errorf("IsAction(%q) = false", a)
		}
	}
	for _, s := range []string{"", "pam", "pam.session", "pam.session.drop.x", "results.pam.session.drop", "PAM.SESSION.DROP", "pam.*"} {
		if events.IsAction(s) {
			t.Errorf("IsAction(%q) = true", s)
		}
	}
}

// FuzzDecode checks the promises Decode makes about any input: it does not panic, it refuses
// with a *Rejection, and what it accepts is safe to put into a URL.
func FuzzDecode(f *testing.F) {
	subjects := append(events.Actions(), "pam.unknown")
	index := map[string]uint8{}
	for i, s := range subjects {
		index[s] = uint8(i)
	}
	for _, tc := range validCases {
		f.Add(index[tc.subject], []byte(tc.data), tc.msgID)
	}
	for _, tc := range rejectCases {
		if len(tc.data) < 4096 {
			f.Add(index[tc.subject], []byte(tc.data), "")
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte, msgID string) {
		subject := subjects[int(which)%len(subjects)]
		got, err := events.Decode(subject, data, msgID, 4096, newID)
		if got.ID == "" {
			t.Fatalf("event has no id (err %v)", err)
		}
		if got.Action != subject {
			t.Fatalf("Action = %q, want %q", got.Action, subject)
		}
		if got.ReplyTo != "" && (!strings.HasPrefix(got.ReplyTo, "_INBOX.") || strings.ContainsAny(got.ReplyTo, "*> \t\r\n")) {
			t.Fatalf("ReplyTo %q is not a literal inbox", got.ReplyTo)
		}
		if err != nil {
			var rej *events.Rejection
			if !errors.As(err, &rej) {
				t.Fatalf("error %v is a %T, want *events.Rejection", err, err)
			}
			if rej.Code == "" || rej.Message == "" {
				t.Fatalf("rejection %#v lacks a code or message", rej)
			}
			return
		}
		if got.Target == "" {
			t.Fatal("accepted event has no target")
		}
		checkSegment := func(field, v string) {
			t.Helper()
			switch {
			case v == "", v == ".", v == "..":
				t.Fatalf("%s %q accepted", field, v)
			case len(v) > events.MaxIDBytes:
				t.Fatalf("%s of %d bytes accepted", field, len(v))
			case !utf8.ValidString(v):
				t.Fatalf("%s %q is not UTF-8", field, v)
			}
			for _, r := range v {
				if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
					t.Fatalf("%s %q holds control character %U", field, v, r)
				}
			}
		}
		switch subject {
		case events.SessionDrop:
			checkSegment("session_id", got.SessionID)
		case events.CredentialEnable, events.CustodyRelease:
			if got.CredentialID <= 0 {
				t.Fatalf("credential_id %d accepted", got.CredentialID)
			}
		case events.CredentialDisable:
			if got.CredentialID > 0 {
				if got.Username != "" || got.Hostname != "" {
					t.Fatalf("both credential_id and a name accepted: %+v", got)
				}
				break
			}
			checkSegment("username", got.Username)
			checkSegment("hostname", got.Hostname)
			if strings.Contains(got.Username, "@") || strings.Contains(got.Hostname, "@") {
				t.Fatalf("username@hostname %q@%q is ambiguous", got.Username, got.Hostname)
			}
			if len(got.Username)+1+len(got.Hostname) > events.MaxIDBytes {
				t.Fatalf("username@hostname of %d bytes accepted", len(got.Username)+1+len(got.Hostname))
			}
		case events.ElementSessionsDelete:
			checkSegment("username", got.Username)
			switch got.AuthMethod {
			case "", "Cluster", "Ldap", "Idp":
			default:
				t.Fatalf("auth_method %q accepted", got.AuthMethod)
			}
		default:
			t.Fatalf("event on unknown subject %q accepted", subject)
		}
	})
}
