package events

import (
	"encoding/json"
	"errors"
	"strings"
	"unicode"
	"unicode/utf8"
)

// member is one key and raw value of a JSON object, in document order.
type member struct {
	key string
	raw []byte
}

// members splits one JSON object into its members in a single pass, without the per-token
// allocations of json.Decoder. It refuses a key given twice, in any case: encoding/json would
// let the last one win, so two readers of one event could disagree on what it asks. data must
// already be valid JSON (json.Valid), which keeps this scanner small.
func members(data []byte) ([]member, *Rejection) {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return nil, rejectf(CodeInvalidEvent, "payload is not a JSON object: expected a JSON object, got JSON %s", kindOf(data[i:]))
	}
	out := make([]member, 0, 8)
	var seen keySet
	i = skipSpace(data, i+1)
	if data[i] == '}' {
		return out, nil
	}
	for {
		end := skipString(data, i)
		key := string(data[i+1 : end-1])
		if strings.IndexByte(key, '\\') >= 0 || !utf8.ValidString(key) {
			var k string
			if err := json.Unmarshal(data[i:end], &k); err != nil {
				return nil, rejectf(CodeInvalidEvent, "malformed key at byte %d", i)
			}
			key = k
		}
		if seen.dup(out, key) {
			return nil, rejectf(CodeInvalidEvent, "field %q is given more than once", key)
		}
		i = skipSpace(data, end)   // at ':'
		i = skipSpace(data, i+1)   // at the value
		vend := skipValue(data, i) // just past the value
		out = append(out, member{key: key, raw: data[i:vend]})
		i = skipSpace(data, vend)
		if data[i] == '}' {
			return out, nil
		}
		i = skipSpace(data, i+1) // past ',' to the next key
	}
}

// keySet tells whether a key was seen before, in any case. An object has a few keys, but a
// hostile one can have thousands: past a handful the keys go into a set, so the check stays
// linear instead of quadratic.
type keySet map[string]struct{}

// dup reports whether key is one of out's keys (the keys seen so far), in any case.
func (s *keySet) dup(out []member, key string) bool {
	if len(out) < 16 {
		for _, m := range out {
			if strings.EqualFold(m.key, key) {
				return true
			}
		}
		return false
	}
	if *s == nil {
		*s = make(keySet, 2*len(out))
		for _, m := range out {
			(*s)[foldCase(m.key)] = struct{}{}
		}
	}
	k := foldCase(key)
	if _, ok := (*s)[k]; ok {
		return true
	}
	(*s)[k] = struct{}{}
	return false
}

// foldCase maps every rune to the smallest of its simple case folding orbit, so that two
// strings are strings.EqualFold exactly when their foldCase are equal.
func foldCase(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		least := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			least = min(least, f)
		}
		b.WriteRune(least)
	}
	return b.String()
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index just past the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// skipValue returns the index just past the value starting at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return len(b)
	}
	for i < len(b) && !strings.ContainsRune(" \t\r\n,}]", rune(b[i])) {
		i++
	}
	return i
}

func kindOf(b []byte) string {
	b = b[skipSpace(b, 0):]
	if len(b) == 0 {
		return "nothing"
	}
	switch b[0] {
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	}
	return "number"
}

// unmarshalMember decodes one member's value into dst, naming the field on error.
func unmarshalMember(m member, dst any) *Rejection {
	if err := json.Unmarshal(m.raw, dst); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return rejectf(CodeInvalidEvent, "field %s: expected %s, got JSON %s", m.key, goTypeName(te.Type.String()), te.Value)
		}
		return rejectf(CodeInvalidEvent, "field %s: %s", m.key, jsonProblem(err))
	}
	return nil
}

// payloadFrom decodes the members of a payload object, refusing keys that are not exactly one
// of the documented fields (encoding/json would also accept them in another case).
func payloadFrom(ms []member) (payload, *Rejection) {
	var p payload
	for _, m := range ms {
		var dst any
		switch m.key {
		case "event_id":
			dst = &p.EventID
		case "target":
			dst = &p.Target
		case "reason":
			dst = &p.Reason
		case "requested_by":
			dst = &p.RequestedBy
		case "correlation_id":
			dst = &p.CorrelationID
		case "dry_run":
			// A request to preview must never change state: only an explicit false runs live.
			if string(m.raw) == "null" {
				return p, rejectf(CodeInvalidEvent, "dry_run is null: give true or false (leave it out for a live run)")
			}
			dst = &p.DryRun
		case "reply_to":
			dst = &p.ReplyTo
		case "time":
			dst = &p.Time
		case "session_id":
			dst = &p.SessionID
		case "credential_id":
			p.CredentialID = m.raw
			continue
		case "username":
			dst = &p.Username
		case "hostname":
			dst = &p.Hostname
		case "auth_method":
			dst = &p.AuthMethod
		default:
			if lower := strings.ToLower(m.key); payloadKeys[lower] {
				return p, rejectf(CodeInvalidEvent, "unknown field %q (fields are lower case: %q)", m.key, lower)
			}
			return p, rejectf(CodeInvalidEvent, "unknown field %q", m.key)
		}
		if rej := unmarshalMember(m, dst); rej != nil {
			return p, rej
		}
	}
	return p, nil
}

// cloudEventFrom reads the envelope attributes the worker uses; the others, extensions
// included, are allowed and ignored.
func cloudEventFrom(ms []member) (cloudEvent, *Rejection) {
	var ce cloudEvent
	for _, m := range ms {
		var rej *Rejection
		switch m.key {
		case "specversion":
			rej = unmarshalMember(m, &ce.SpecVersion)
		case "id":
			rej = unmarshalMember(m, &ce.ID)
		case "type":
			rej = unmarshalMember(m, &ce.Type)
		case "time":
			rej = unmarshalMember(m, &ce.Time)
		case "data":
			ce.Data = m.raw
		case "data_base64":
			ce.DataBase64 = m.raw
		case "source", "subject", "datacontenttype", "dataschema":
		default:
			// An extension named like a payload field (dry_run, "dryrun", target ...) would be
			// ignored, and a dry run beside data would run live: refuse it instead.
			if payloadField(m.key) {
				rej = rejectf(CodeInvalidEvent, "attribute %q belongs inside data, where the payload's fields are read; nothing outside data is", m.key)
			}
		}
		if rej != nil {
			return ce, &Rejection{Code: rej.Code, Message: "CloudEvents envelope: " + rej.Message}
		}
	}
	return ce, nil
}

// payloadField reports whether key names a payload field, in any case and with or without
// underscores and dashes (CloudEvents extension names cannot hold underscores).
func payloadField(key string) bool { return foldedPayloadKeys[foldKey(key)] }

var keyFolder = strings.NewReplacer("_", "", "-", "")

func foldKey(s string) string { return keyFolder.Replace(strings.ToLower(s)) }

var foldedPayloadKeys = func() map[string]bool {
	m := map[string]bool{}
	for name := range payloadKeys {
		m[foldKey(name)] = true
	}
	return m
}()

func has(ms []member, key string) bool {
	for _, m := range ms {
		if m.key == key {
			return true
		}
	}
	return false
}
