package events_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pamworker/pamworker/events"
)

// TestDryRunIsUnambiguous: a request to preview never runs live. Whatever dry_run holds and
// wherever it stands, the event is a dry run, a live run only for an explicit false or no
// dry_run at all, or a rejection.
func TestDryRunIsUnambiguous(t *testing.T) {
	t.Parallel()
	type want int
	const (
		live want = iota
		dry
		refused
	)
	values := map[string]want{
		`true`: dry, `false`: live, `null`: refused, `"true"`: refused, `"false"`: refused, `"yes"`: refused,
		`1`: refused, `0`: refused, `[]`: refused, `{}`: refused, `[true]`: refused, `""`: refused, `"null"`: refused,
	}
	// Where a dry_run may be written: the payload's own field, beside a CloudEvents envelope's
	// data (as an extension attribute, under any spelling), or in a mis-cased key.
	places := map[string]func(v string) string{
		"payload": func(v string) string { return `{"credential_id":94,"dry_run":` + v + `}` },
		"data": func(v string) string {
			return `{"specversion":"1.0","id":"ce-1","type":"pam.credential.disable","data":{"credential_id":94,"dry_run":` + v + `}}`
		},
		"envelope dry_run": func(v string) string {
			return `{"specversion":"1.0","id":"ce-1","type":"pam.credential.disable","dry_run":` + v + `,"data":{"credential_id":94}}`
		},
		"envelope dryrun": func(v string) string {
			return `{"specversion":"1.0","id":"ce-1","type":"pam.credential.disable","dryrun":` + v + `,"data":{"credential_id":94}}`
		},
		"envelope DryRun": func(v string) string {
			return `{"specversion":"1.0","id":"ce-1","type":"pam.credential.disable","DryRun":` + v + `,"data":{"credential_id":94}}`
		},
		"envelope dry-run": func(v string) string {
			return `{"specversion":"1.0","id":"ce-1","type":"pam.credential.disable","dry-run":` + v + `,"data":{"credential_id":94}}`
		},
		"mis-cased key": func(v string) string { return `{"credential_id":94,"Dry_Run":` + v + `}` },
		"twice":         func(v string) string { return `{"credential_id":94,"dry_run":true,"dry_run":` + v + `}` },
	}
	for place, build := range places {
		for v, w := range values {
			data := build(v)
			if place != "data" && place != "payload" {
				w = refused // outside the payload's own field, any value is refused
			}
			ev, err := events.Decode(events.CredentialDisable, []byte(data), "", 0, newID)
			var got want
			switch {
			case err != nil:
				got = refused
			case ev.DryRun:
				got = dry
			default:
				got = live
			}
			if got != w {
				t.Errorf("%s = %s: got %d, want %d (0 live, 1 dry, 2 refused); %v\n%s", place, v, got, w, err, data)
			}
		}
	}
}

// TestEnvelopeFieldsBelongInData: every payload field set beside a CloudEvents envelope's data
// is refused, so no attribute there is silently ignored (a target that would be ignored
// redirects the action to the default target).
func TestEnvelopeFieldsBelongInData(t *testing.T) {
	t.Parallel()
	for _, field := range []string{"dry_run", "target", "reply_to", "event_id", "requested_by", "reason", "correlation_id",
		"credential_id", "session_id", "username", "hostname", "auth_method", "Target", "replyto"} {
		data := fmt.Sprintf(`{"specversion":"1.0","id":"ce-1","type":"pam.session.drop",%q:"x","data":{"session_id":"s"}}`, field)
		_, err := events.Decode(events.SessionDrop, []byte(data), "", 0, newID)
		if err == nil || !strings.Contains(err.Error(), "belongs inside data") {
			t.Errorf("%s beside data: %v", field, err)
		}
	}
	// CloudEvents' own attributes and extensions of other names are fine.
	data := `{"specversion":"1.0","id":"ce-1","type":"pam.session.drop","source":"/soar","subject":"s","datacontenttype":"application/json","traceparent":"00-x","incident":"INC-1","data":{"session_id":"s"}}`
	if _, err := events.Decode(events.SessionDrop, []byte(data), "", 0, newID); err != nil {
		t.Errorf("plain envelope: %v", err)
	}
}

// TestInvisibleCharactersInIDs: an id holding a character a person cannot see is refused, so
// that "ad<ZWSP>min" cannot pass for another name than it reads as.
func TestInvisibleCharactersInIDs(t *testing.T) {
	t.Parallel()
	for _, r := range []rune{0x200b, 0x200c, 0x200d, 0x00ad, 0xfeff, 0x202e, 0x2066, 0x2028, 0x2029, 0x061c} {
		for _, tc := range []struct{ subject, data string }{
			{events.ElementSessionsDelete, fmt.Sprintf(`{"username":"ad%cmin"}`, r)},
			{events.CredentialDisable, fmt.Sprintf(`{"username":"root","hostname":"db01%c"}`, r)},
			{events.SessionDrop, fmt.Sprintf(`{"session_id":"s%c1"}`, r)},
			{events.SessionDrop, fmt.Sprintf(`{"session_id":"s1","event_id":"e%c1"}`, r)},
		} {
			_, err := events.Decode(tc.subject, []byte(tc.data), "", 0, newID)
			if err == nil || !strings.Contains(err.Error(), "invisible") {
				t.Errorf("%U in %s: %v", r, tc.data, err)
			}
		}
	}
	// Visible non-ASCII names stay valid.
	if _, err := events.Decode(events.ElementSessionsDelete, []byte(`{"username":"José Müller"}`), "", 0, newID); err != nil {
		t.Error(err)
	}
}

// TestDigest: the digest tells two events with one id apart by everything they ask, and only
// by that: not by the reply inbox, the envelope or the key order.
func TestDigest(t *testing.T) {
	t.Parallel()
	digest := func(subject, data string) string {
		t.Helper()
		ev, err := events.Decode(subject, []byte(data), "", 0, newID)
		if err != nil {
			t.Fatalf("%s: %v", data, err)
		}
		return ev.Digest()
	}
	base := digest(events.CredentialEnable, `{"event_id":"x","credential_id":19}`)
	same := map[string][2]string{
		"key order":       {events.CredentialEnable, `{"credential_id":19,"event_id":"x"}`},
		"numeric string":  {events.CredentialEnable, `{"event_id":"x","credential_id":"19"}`},
		"another inbox":   {events.CredentialEnable, `{"event_id":"x","credential_id":19,"reply_to":"_INBOX.abc"}`},
		"CloudEvents":     {events.CredentialEnable, `{"specversion":"1.0","id":"x","type":"pam.credential.enable","data":{"credential_id":19}}`},
		"explicit target": {events.CredentialEnable, `{"event_id":"x","credential_id":19,"target":"default"}`},
	}
	for name, c := range same {
		if d := digest(c[0], c[1]); d != base {
			t.Errorf("%s: digest differs", name)
		}
	}
	other := map[string][2]string{
		"another action":   {events.CredentialDisable, `{"event_id":"x","credential_id":19}`},
		"another object":   {events.CredentialEnable, `{"event_id":"x","credential_id":20}`},
		"a dry run":        {events.CredentialEnable, `{"event_id":"x","credential_id":19,"dry_run":true}`},
		"another target":   {events.CredentialEnable, `{"event_id":"x","credential_id":19,"target":"branch"}`},
		"another reason":   {events.CredentialEnable, `{"event_id":"x","credential_id":19,"reason":"r"}`},
		"another time":     {events.CredentialEnable, `{"event_id":"x","credential_id":19,"time":"2026-12-01T00:00:00Z"}`},
		"another incident": {events.CredentialEnable, `{"event_id":"x","credential_id":19,"correlation_id":"INC-2"}`},
	}
	seen := map[string]string{base: "base"}
	for name, c := range other {
		d := digest(c[0], c[1])
		if prev, dup := seen[d]; dup {
			t.Errorf("%s: digest equals that of %s", name, prev)
		}
		seen[d] = name
	}
	// Fields cannot be shifted into each other to forge a collision.
	a := events.Event{Action: events.CredentialDisable, Username: "ro", Hostname: "ot@db"}
	b := events.Event{Action: events.CredentialDisable, Username: "root", Hostname: "@db"}
	if a.Digest() == b.Digest() {
		t.Error("shifted fields collide")
	}
	if len(base) != 32 {
		t.Errorf("digest %q is not 16 bytes in hex", base)
	}
}
