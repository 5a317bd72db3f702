package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// DefaultMaxEventBytes is the largest event accepted when no limit is configured.
const DefaultMaxEventBytes = 64 << 10

// MaxIDBytes bounds every id that reaches a URL or a header.
const MaxIDBytes = 256

// payload is the JSON shape of an action event. Pointers tell absent from empty.
type payload struct {
	EventID       *string         `json:"event_id"`
	Target        *string         `json:"target"`
	Reason        *string         `json:"reason"`
	RequestedBy   *string         `json:"requested_by"`
	CorrelationID *string         `json:"correlation_id"`
	DryRun        *bool           `json:"dry_run"`
	ReplyTo       *string         `json:"reply_to"`
	Time          *string         `json:"time"`
	SessionID     *string         `json:"session_id"`
	CredentialID  json.RawMessage `json:"credential_id"`
	Username      *string         `json:"username"`
	Hostname      *string         `json:"hostname"`
	AuthMethod    *string         `json:"auth_method"`
}

// cloudEvent is a CloudEvents 1.0 structured-mode envelope. Extension attributes are allowed.
type cloudEvent struct {
	SpecVersion string          `json:"specversion"`
	ID          string          `json:"id"`
	Type        string          `json:"type"`
	Time        string          `json:"time"`
	Data        json.RawMessage `json:"data"`
	DataBase64  json.RawMessage `json:"data_base64"`
}

// Decode turns the bytes of one message on subject into an Event. msgID is the message's
// Nats-Msg-Id header (may be empty) and newID makes an id when the event carries none.
//
// On error the returned Event still carries what could be learned (ID, Action, ReplyTo,
// CorrelationID, RequestedBy ...) so the rejection can be answered and correlated; the error is
// always a *Rejection.
func Decode(subject string, data []byte, msgID string, maxBytes int, newID func() string) (Event, error) {
	ev := Event{Action: subject, Target: DefaultTarget}
	if validID(msgID) == nil {
		ev.ID = msgID
	}
	fill := func() {
		if ev.ID == "" {
			ev.ID = newID()
		}
	}
	if maxBytes <= 0 {
		maxBytes = DefaultMaxEventBytes
	}
	if len(data) > maxBytes {
		fill()
		return ev, rejectf(CodeEventTooLarge, "event is %d bytes, the limit is %d", len(data), maxBytes)
	}
	if !IsAction(subject) {
		fill()
		return ev, rejectf(CodeUnknownAction, "no action is bound to subject %q", subject)
	}
	err := decode(&ev, data)
	fill()
	return ev, err
}

func decode(ev *Event, data []byte) error {
	if !utf8.Valid(data) {
		return rejectf(CodeInvalidEvent, "payload is not valid UTF-8")
	}
	if !json.Valid(data) {
		var v any
		return rejectf(CodeInvalidEvent, "payload is not a JSON object: %s", jsonProblem(json.Unmarshal(data, &v)))
	}
	fields, rej := members(data)
	if rej != nil {
		return rej
	}
	body, isCE := data, has(fields, "specversion")
	if isCE {
		ce, rej := cloudEventFrom(fields)
		// The envelope's id answers the rejection too, and so does the metadata in its data.
		if validID(ce.ID) == nil {
			ev.ID = ce.ID
		}
		if rej == nil {
			rej = checkCloudEvent(ev, &ce)
		}
		if rej == nil {
			body = ce.Data
			fields, rej = members(body)
		}
		if rej != nil {
			salvage(ev, ce.Data, true)
			return rej
		}
	}
	p, rej := payloadFrom(fields)
	if rej != nil {
		salvage(ev, body, isCE)
		return rej
	}
	if err := takeMeta(ev, &p, isCE, true); err != nil {
		// One bad field must not hide the valid ones (id, reply_to ...) the rejection needs.
		_ = takeMeta(ev, &p, isCE, false)
		return err
	}
	return takeParams(ev, &p)
}

// checkCloudEvent validates a CloudEvents 1.0 envelope and takes its time.
func checkCloudEvent(ev *Event, ce *cloudEvent) *Rejection {
	if ce.SpecVersion != "1.0" {
		return rejectf(CodeInvalidEvent, "CloudEvents specversion %q is not supported (want 1.0)", ce.SpecVersion)
	}
	if err := validID(ce.ID); err != nil {
		return rejectf(CodeInvalidEvent, "CloudEvents id %v", err)
	}
	if IsAction(ce.Type) && ce.Type != ev.Action {
		return rejectf(CodeInvalidEvent, "CloudEvents type %q does not match subject %q", ce.Type, ev.Action)
	}
	if len(ce.DataBase64) > 0 {
		return rejectf(CodeInvalidEvent, "CloudEvents data_base64 is not supported; send the payload as a JSON object in data")
	}
	if len(ce.Data) == 0 || bytes.Equal(ce.Data, []byte("null")) {
		return rejectf(CodeInvalidEvent, "CloudEvents envelope has no data")
	}
	if ce.Time != "" {
		t, err := time.Parse(time.RFC3339Nano, ce.Time)
		if err != nil {
			return rejectf(CodeInvalidEvent, "CloudEvents time %q is not RFC 3339", ce.Time)
		}
		ev.Time = t
	}
	return nil
}

// salvage takes the valid metadata of a payload that is being rejected, ignoring the rest.
func salvage(ev *Event, body []byte, isCE bool) {
	var loose payload
	_ = json.Unmarshal(body, &loose)
	_ = takeMeta(ev, &loose, isCE, false)
}

// payloadKeys are the payload's field names, spelled exactly.
var payloadKeys = func() map[string]bool {
	m := map[string]bool{}
	t := reflect.TypeFor[payload]()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		m[name] = true
	}
	return m
}()

// takeMeta copies the fields common to every action. With strict it validates them; without,
// it takes only what is valid (to answer a rejection). In a CloudEvents envelope the id is the
// event id, and an event_id in data must agree with it.
func takeMeta(ev *Event, p *payload, isCE, strict bool) error {
	str := func(v *string) string {
		if v == nil {
			return ""
		}
		return *v
	}
	if p.EventID != nil {
		err := validID(*p.EventID)
		switch {
		case err != nil && strict:
			return rejectf(CodeInvalidEvent, "event_id %v", err)
		case err != nil:
		case isCE && *p.EventID != ev.ID:
			if strict {
				return rejectf(CodeInvalidEvent, "event_id %q differs from the CloudEvents id %q", *p.EventID, ev.ID)
			}
		default:
			ev.ID = *p.EventID
		}
	}
	for _, f := range []struct {
		name string
		v    *string
		dst  *string
	}{
		{"reason", p.Reason, &ev.Reason},
		{"requested_by", p.RequestedBy, &ev.RequestedBy},
		{"correlation_id", p.CorrelationID, &ev.CorrelationID},
	} {
		s := str(f.v)
		if err := validText(s, 1024); err != nil {
			if strict {
				return rejectf(CodeInvalidEvent, "%s %v", f.name, err)
			}
			continue
		}
		*f.dst = s
	}
	if p.ReplyTo != nil {
		if err := validReplyTo(*p.ReplyTo); err != nil {
			if strict {
				return rejectf(CodeInvalidEvent, "reply_to %v", err)
			}
		} else {
			ev.ReplyTo = *p.ReplyTo
		}
	}
	if !strict {
		return nil
	}
	if p.Target != nil {
		if err := validTargetName(*p.Target); err != nil {
			return rejectf(CodeInvalidEvent, "target %v", err)
		}
		ev.Target = *p.Target
	}
	if p.DryRun != nil {
		ev.DryRun = *p.DryRun
	}
	if p.Time != nil {
		t, err := time.Parse(time.RFC3339Nano, *p.Time)
		if err != nil {
			return rejectf(CodeInvalidEvent, "time %q is not RFC 3339", *p.Time)
		}
		ev.Time = t
	}
	return nil
}

// takeParams copies and validates the action's own parameters, refusing fields that belong to
// another action so a misrouted event cannot be half-understood.
func takeParams(ev *Event, p *payload) error {
	present := map[string]bool{
		"session_id":    p.SessionID != nil,
		"credential_id": len(p.CredentialID) > 0 && !bytes.Equal(p.CredentialID, []byte("null")),
		"username":      p.Username != nil,
		"hostname":      p.Hostname != nil,
		"auth_method":   p.AuthMethod != nil,
	}
	allowed := map[string][]string{
		SessionDrop:           {"session_id"},
		CredentialDisable:     {"credential_id", "username", "hostname"},
		CredentialEnable:      {"credential_id"},
		CustodyRelease:        {"credential_id"},
		ElementSessionsDelete: {"username", "auth_method"},
	}[ev.Action]
	for _, name := range []string{"session_id", "credential_id", "username", "hostname", "auth_method"} {
		if present[name] && !contains(allowed, name) {
			return rejectf(CodeInvalidEvent, "field %s is not valid for %s (it takes %s)", name, ev.Action, strings.Join(allowed, ", "))
		}
	}

	switch ev.Action {
	case SessionDrop:
		if p.SessionID == nil {
			return rejectf(CodeInvalidEvent, "session_id is required")
		}
		if err := validSegment(*p.SessionID); err != nil {
			return rejectf(CodeInvalidEvent, "session_id %v", err)
		}
		ev.SessionID = *p.SessionID
	case CredentialEnable, CustodyRelease:
		if !present["credential_id"] {
			return rejectf(CodeInvalidEvent, "credential_id is required")
		}
		return takeCredentialID(ev, p.CredentialID)
	case CredentialDisable:
		byID, byName := present["credential_id"], present["username"] || present["hostname"]
		switch {
		case byID && byName:
			return rejectf(CodeInvalidEvent, "give either credential_id or username and hostname, not both")
		case byID:
			return takeCredentialID(ev, p.CredentialID)
		case !byName:
			return rejectf(CodeInvalidEvent, "credential_id, or username and hostname, is required")
		case p.Username == nil || p.Hostname == nil:
			return rejectf(CodeInvalidEvent, "username and hostname must be given together")
		}
		if err := validSegment(*p.Username); err != nil {
			return rejectf(CodeInvalidEvent, "username %v", err)
		}
		if strings.Contains(*p.Username, "@") {
			return rejectf(CodeInvalidEvent, "username %q contains @, which Segura's username@hostname path cannot express; use credential_id", *p.Username)
		}
		if err := validSegment(*p.Hostname); err != nil {
			return rejectf(CodeInvalidEvent, "hostname %v", err)
		}
		if strings.Contains(*p.Hostname, "@") {
			return rejectf(CodeInvalidEvent, "hostname %q contains @, which Segura's username@hostname path cannot express", *p.Hostname)
		}
		ev.Username, ev.Hostname = *p.Username, *p.Hostname
		// The pair becomes one path segment; keep it within the id bound too.
		if len(ev.Username)+1+len(ev.Hostname) > MaxIDBytes {
			return rejectf(CodeInvalidEvent, "username@hostname is longer than %d bytes", MaxIDBytes)
		}
	case ElementSessionsDelete:
		if p.Username == nil {
			return rejectf(CodeInvalidEvent, "username is required")
		}
		if err := validSegment(*p.Username); err != nil {
			return rejectf(CodeInvalidEvent, "username %v", err)
		}
		ev.Username = *p.Username
		if p.AuthMethod != nil {
			m, ok := authMethods[strings.ToLower(*p.AuthMethod)]
			if !ok {
				return rejectf(CodeInvalidEvent, "auth_method %q is not one of Cluster, Ldap, Idp", *p.AuthMethod)
			}
			ev.AuthMethod = m
		}
	}
	return nil
}

var authMethods = map[string]string{"cluster": "Cluster", "ldap": "Ldap", "idp": "Idp"}

func takeCredentialID(ev *Event, raw json.RawMessage) error {
	var s string
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return rejectf(CodeInvalidEvent, "credential_id is not a valid string")
		}
	} else {
		s = string(raw)
	}
	// Digits only: no sign, exponent, fraction, spaces or leading zeros.
	if s == "" || len(s) > 18 || strings.TrimLeft(s, "0123456789") != "" || s[0] == '0' {
		return rejectf(CodeInvalidEvent, "credential_id must be a positive integer, got %s", truncate(string(raw), 40))
	}
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return rejectf(CodeInvalidEvent, "credential_id must be a positive integer, got %s", truncate(string(raw), 40))
	}
	ev.CredentialID = id
	return nil
}

// validSegment checks an id that becomes one URL path segment.
func validSegment(s string) error {
	if err := validID(s); err != nil {
		return err
	}
	if s == "." || s == ".." {
		return errors.New("must not be . or ..")
	}
	return nil
}

// validID checks an identifier: non-empty, bounded, valid UTF-8, no control characters and
// nothing invisible. An id that holds a zero-width space, a soft hyphen or a bidi override
// reads as another id than it is: to a person checking a result, and to a protection list.
func validID(s string) error {
	if strings.TrimSpace(s) == "" {
		return errors.New("must not be empty")
	}
	if err := validText(s, MaxIDBytes); err != nil {
		return err
	}
	for _, r := range s {
		if unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) {
			return fmt.Errorf("contains the invisible character %U", r)
		}
	}
	return nil
}

func validText(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("is longer than %d bytes", max)
	}
	if !utf8.ValidString(s) {
		return errors.New("is not valid UTF-8")
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("contains the control character %U", r)
		}
	}
	return nil
}

func validTargetName(s string) error {
	if s == "" || len(s) > 64 {
		return errors.New("must be 1 to 64 characters")
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("%q may hold only letters, digits, - and _", s)
		}
	}
	return nil
}

// validReplyTo accepts only inbox subjects: a result can never be steered onto an action subject.
func validReplyTo(s string) error {
	if !strings.HasPrefix(s, "_INBOX.") || len(s) <= len("_INBOX.") {
		return fmt.Errorf("%q must begin with _INBOX.", truncate(s, 64))
	}
	if len(s) > MaxIDBytes {
		return fmt.Errorf("is longer than %d bytes", MaxIDBytes)
	}
	for _, tok := range strings.Split(s, ".") {
		// NATS reserves * and > for wildcards: they cannot be part of a literal token either.
		if tok == "" || strings.ContainsAny(tok, "*>") {
			return fmt.Errorf("%q is not a literal subject", truncate(s, 64))
		}
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f || r > 0x7e {
			return fmt.Errorf("%q contains whitespace or non-ASCII characters", truncate(s, 64))
		}
	}
	return nil
}

// jsonProblem rewords encoding/json errors so they name the field and the expected type.
func jsonProblem(err error) string {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		if te.Field != "" {
			return fmt.Sprintf("field %s: expected %s, got JSON %s", te.Field, goTypeName(te.Type.String()), te.Value)
		}
		return fmt.Sprintf("expected a JSON object, got JSON %s", te.Value)
	case errors.As(err, &se):
		return fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "empty or truncated JSON"
	}
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return "unknown field " + rest
	}
	return strings.TrimPrefix(msg, "json: ")
}

func goTypeName(t string) string {
	switch t {
	case "*string", "string":
		return "a string"
	case "*bool", "bool":
		return "true or false"
	}
	return t
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
