package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/guard"
	"github.com/pamworker/pamworker/worker"
)

// The attack tests replay, through the real binary, what an adversary with publish rights did
// to an earlier build (issue 8): each finding, the way it was found.

// streamResults returns the results of event id held by the results stream, in order.
func streamResults(t *testing.T, js jetstream.JetStream, id string) []events.Result {
	t.Helper()
	var out []events.Result
	for _, line := range strings.Split(strings.TrimSpace(allResults(t, js)), "\n") {
		var res events.Result
		if json.Unmarshal([]byte(line), &res) == nil && res.EventID == id {
			out = append(out, res)
		}
	}
	return out
}

// signer signs events with a whsec_ key the worker is configured with.
type signer struct{ key string }

func (s signer) msg(t *testing.T, subject, id, msgID string, body string) *nats.Msg {
	t.Helper()
	h, err := guard.Sign(s.key, subject, id, time.Now(), []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	m := &nats.Msg{Subject: subject, Data: []byte(body), Header: nats.Header{}}
	if msgID != "" {
		m.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	for k, v := range h {
		m.Header.Set(k, v)
	}
	return m
}

// attackRig is a worker with signed credential subjects and protection lists, as a careful
// deployment would run it, and the key its playbooks sign with.
func attackRig(t *testing.T, extra ...string) (*rig, *proc, []string, signer, *resultsOf) {
	t.Helper()
	r := newRig(t)
	res := collect(t, r.nc)
	key := "whsec_" + base64.StdEncoding.EncodeToString([]byte("attack-test-signing-key"))
	registerCanary(t, "attack signing key", key)
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(append([]string(nil), r.env...),
		"PAMWORKER_SIGNED_SUBJECTS=pam.credential.>", "PAMWORKER_SIGNING_KEYS_FILE="+keyFile,
		"PAMWORKER_SEGURA_PROTECTED_CREDENTIALS=94;root@db01",
		"PAMWORKER_ELEMENT_PROTECTED_USERS=CN=Jane Doe,OU=Ops,DC=example,DC=com")
	env = append(env, extra...)
	return r, startWorker(t, env), env, signer{key}, res
}

// TestAttackHeaders (finding 1): no header an event carries can stop the processing of any
// other event. Each header JetStream acts on is sent with a value the events stream accepts
// but a copy elsewhere would fail on; and the worker's own header names, forged. Every event
// is answered, as if the header were not there, and everything published after runs.
func TestAttackHeaders(t *testing.T) {
	t.Parallel()
	r, w, _, sign, results := attackRig(t)
	ctx := context.Background()
	last := func() (uint64, string) {
		info, err := r.js.Stream(ctx, "PAMWORKER_EVENTS")
		if err != nil {
			t.Fatal(err)
		}
		st := info.CachedInfo().State
		return st.LastSeq, strconv.FormatUint(st.LastSeq, 10)
	}
	// Values a copy would fail on: the events stream's own name, last sequence and last id.
	headers := []func() (string, string){
		func() (string, string) { return "Nats-Expected-Stream", "PAMWORKER_EVENTS" },
		func() (string, string) { _, s := last(); return "Nats-Expected-Last-Sequence", s },
		func() (string, string) { return "Nats-Expected-Last-Msg-Id", "hdr-prev" },
		func() (string, string) { return "Nats-Expected-Last-Subject-Sequence", "0" },
		func() (string, string) { return "Nats-Rollup", "sub" },
		func() (string, string) { return "Nats-TTL", "1s" },
		func() (string, string) { return "Nats-Marker-Reason", "MaxAge" },
		func() (string, string) { return "Nats-Schedule", "@at 2000-01-01T00:00:00Z" },
		func() (string, string) { return "Nats-Expected-Last-Subject-Sequence-Subject", "pam.>" },
		func() (string, string) { return "Pamworker-Subject", events.CredentialEnable },
		func() (string, string) { return "Pamworker-Msg-Id", "someone-else" },
		func() (string, string) { return "Pamworker-Received", "1970-01-01T00:00:00Z" },
		func() (string, string) { return "Pamworker-Park-Key", "park.0000" },
		func() (string, string) { return "Pamworker-Park-Id", "1" },
		func() (string, string) { return worker.DigestHeader, "0000" },
		func() (string, string) { return "Nats-Pin-Id", "forged-pin" }, // the server appends its own
		func() (string, string) {
			return "traceparent", "00-" + strings.Repeat("f", 32) + "-" + strings.Repeat("f", 16) + "-01"
		},
	}
	var sent []string
	for i, hdr := range headers {
		id := fmt.Sprintf("hdr-%02d", i)
		// A plain event to sit before the attack, whose id the Expected-Last-Msg-Id names.
		prev := &nats.Msg{Subject: events.SessionDrop, Data: []byte(`{"session_id":"` + r.segura.AddSession() + `"}`),
			Header: nats.Header{jetstream.MsgIDHeader: []string{"hdr-prev"}}}
		if i == 2 {
			if _, err := r.js.PublishMsg(ctx, prev); err != nil {
				t.Fatal(err)
			}
		}
		name, value := hdr()
		m := sign.msg(t, events.CredentialDisable, id, id, fmt.Sprintf(`{"event_id":%q,"credential_id":%d}`, id, 200+i))
		m.Header.Set(name, value)
		if _, err := r.js.PublishMsg(ctx, m); err != nil {
			t.Logf("%s: %s is refused by the events stream itself (%v); it never reaches the worker", id, name, err)
			continue
		}
		sent = append(sent, id)
	}
	// Ordinary events after the attacks.
	for i := range 5 {
		id := fmt.Sprintf("after-%d", i)
		if _, err := r.js.PublishMsg(ctx, sign.msg(t, events.CredentialDisable, id, id, fmt.Sprintf(`{"event_id":%q,"credential_id":%d}`, id, 300+i))); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, id)
	}
	if len(sent) < 12 {
		t.Fatalf("only %d events entered the stream", len(sent))
	}
	for _, id := range sent {
		res := results.wait(t, id, 1)
		if len(res) != 1 || res[0].Status != events.Succeeded || res[0].Action != events.CredentialDisable {
			t.Errorf("%s: %+v, want one succeeded disable", id, res)
		}
		if stored := streamResults(t, r.js, id); len(stored) != 1 {
			t.Errorf("%s: the results stream holds %d results", id, len(stored))
		}
	}
	// The forged Pamworker-Subject did not turn the disable into an enable.
	if active, _, _ := r.segura.Credential(200 + 9); active {
		t.Error("credential 209 is active: a forged Pamworker-Subject header changed the action")
	}
	if body := w.get(t, "/readyz"); !strings.HasPrefix(body, "ready") {
		t.Errorf("/readyz: %s", body)
	}
}

// TestAttackIDReuse (finding 2): an event id decides nothing by itself. An event that reuses
// the id of an earlier, different event — any other action, object or field — is rejected
// event_id_conflict, never answered with the earlier result, and the results stream keeps
// both answers; a repeat of the same event is answered from the record.
func TestAttackIDReuse(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	results := collect(t, r.nc)
	wk := startWorker(t, r.env)
	ctx := context.Background()
	publish := func(subject, msgID, body string) {
		t.Helper()
		m := &nats.Msg{Subject: subject, Data: []byte(body), Header: nats.Header{jetstream.MsgIDHeader: []string{msgID}}}
		if _, err := r.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}

	// The reported case: a disable of credential 19 reusing an enable's id.
	publish(events.CredentialEnable, "reuse-19", `{"event_id":"reuse-19","credential_id":19}`)
	if res := results.wait(t, "reuse-19", 1); res[0].Status != events.Succeeded {
		t.Fatalf("the enable: %+v", res[0])
	}
	calls := r.segura.Calls()
	publish(events.CredentialDisable, "other-msg-id", `{"event_id":"reuse-19","credential_id":19}`)
	if got := results.wait(t, "reuse-19", 2)[1]; got.Status != events.Rejected || got.Error == nil || got.Error.Code != events.CodeIDConflict ||
		got.Action != events.CredentialDisable || !strings.Contains(got.Message, events.CredentialEnable) {
		t.Errorf("the disable reusing the enable's id: %+v, want rejected %s naming the enable", got, events.CodeIDConflict)
	}
	if n := r.segura.Calls() - calls; n != 0 {
		t.Errorf("%d vendor calls for the conflicting event", n)
	}
	if stored := streamResults(t, r.js, "reuse-19"); len(stored) != 2 {
		t.Errorf("the results stream holds %d results for reuse-19, want the enable's and the refusal", len(stored))
	}
	// The same through `send`, whose Nats-Msg-Id makes the stream drop it: send says so.
	stdout, stderr, code := send(t, r.env, events.CredentialDisable, `{"event_id":"reuse-19","credential_id":19}`, "--wait", "20s")
	if code != 1 || !strings.Contains(stdout, `"code": "event_id_conflict"`) {
		t.Errorf("send of a disable under the enable's id: exit %d, want 1 with event_id_conflict\n%s\n%s", code, stdout, stderr)
	}
	if active, _, _ := r.segura.Credential(19); !active {
		t.Error("credential 19 was disabled by an event answered as a conflict")
	}

	// Every pair of actions, and the other ways one event differs from another.
	bodies := map[string]string{
		events.SessionDrop:           `{"event_id":"%s","session_id":"no-such-session"}`,
		events.CredentialDisable:     `{"event_id":"%s","credential_id":41}`,
		events.CredentialEnable:      `{"event_id":"%s","credential_id":41}`,
		events.CustodyRelease:        `{"event_id":"%s","credential_id":41}`,
		events.ElementSessionsDelete: `{"event_id":"%s","username":"nobody"}`,
	}
	type pair struct{ a, b, bodyB string }
	var pairs []pair
	for a := range bodies {
		for b, body := range bodies {
			if a != b {
				pairs = append(pairs, pair{a, b, body})
			}
		}
	}
	pairs = append(pairs,
		pair{events.CredentialDisable, events.CredentialDisable, `{"event_id":"%s","credential_id":42}`},
		pair{events.CredentialDisable, events.CredentialDisable, `{"event_id":"%s","credential_id":41,"dry_run":true}`},
		pair{events.CredentialDisable, events.CredentialDisable, `{"event_id":"%s","credential_id":41,"target":"default","reason":"other"}`},
		pair{events.ElementSessionsDelete, events.ElementSessionsDelete, `{"event_id":"%s","username":"nobody","auth_method":"Ldap"}`},
	)
	for i, p := range pairs {
		id := fmt.Sprintf("pair-%02d", i)
		publish(p.a, id, fmt.Sprintf(bodies[p.a], id))
		first := results.wait(t, id, 1)[0]
		publish(p.b, id+"-b", fmt.Sprintf(p.bodyB, id))
		if second := results.wait(t, id, 2)[1]; second.Error == nil || second.Error.Code != events.CodeIDConflict || second.Action != p.b {
			t.Errorf("%s: %s after %s (%s): %+v, want %s", id, p.b, p.a, first.Status, second, events.CodeIDConflict)
		}
	}
	// The same event again (another message id, so the stream lets it through, and another
	// reply inbox) is a repeat, answered from the record.
	publish(events.CredentialEnable, "third-msg-id", `{"event_id":"reuse-19","credential_id":19,"reply_to":"_INBOX.x.y"}`)
	if got := results.wait(t, "reuse-19", 3)[2]; got.Status != events.Succeeded || got.Action != events.CredentialEnable {
		t.Errorf("the repeat: %+v, want the enable's result", got)
	}
	if !strings.Contains(wk.get(t, "/metrics"), `pamworker_duplicates_total{action="pam.credential.enable"} 1`) {
		t.Error("the repeat was not answered from the ledger")
	}
}

// TestAttackUnsignedClaim (finding 2): an unsigned event cannot claim an id on a subject that
// requires signatures: a signed event sent later with that id runs.
func TestAttackUnsignedClaim(t *testing.T) {
	t.Parallel()
	r, _, _, sign, results := attackRig(t)
	ctx := context.Background()
	unsigned := &nats.Msg{Subject: events.CredentialDisable, Data: []byte(`{"event_id":"claimed","credential_id":43}`),
		Header: nats.Header{jetstream.MsgIDHeader: []string{"claimed-by-attacker"}}}
	if _, err := r.js.PublishMsg(ctx, unsigned); err != nil {
		t.Fatal(err)
	}
	if got := results.wait(t, "claimed", 1)[0]; got.Error == nil || got.Error.Code != guard.CodeUnsigned {
		t.Fatalf("the unsigned event: %+v", got)
	}
	if _, err := r.js.PublishMsg(ctx, sign.msg(t, events.CredentialDisable, "claimed", "claimed", `{"event_id":"claimed","credential_id":43}`)); err != nil {
		t.Fatal(err)
	}
	if got := results.wait(t, "claimed", 2)[1]; got.Status != events.Succeeded {
		t.Errorf("the signed event after an unsigned one with its id: %+v, want it run", got)
	}
	if active, _, _ := r.segura.Credential(43); active {
		t.Error("credential 43 is still active")
	}
	if stored := streamResults(t, r.js, "claimed"); len(stored) != 2 {
		t.Errorf("the results stream holds %d results for the claimed id, want the refusal and the real result", len(stored))
	}
}

func writeKey(t *testing.T, key string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sign.key")
	if err := os.WriteFile(path, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestAttackForgedReply (finding 3): `send --wait` prints only its own event's result. While
// it waits, messages that are not — a result for another event, one claiming its id but
// answering another event (its digest says so), one with no digest — arrive on its inbox
// first; it ignores them and prints the real answer (a refusal: exit 1), not the forged
// success. (That no other identity can read or write the inbox is TestNATSIdentities'.)
func TestAttackForgedReply(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	startWorker(t, r.env)
	r.segura.SetLatency(1500 * time.Millisecond) // the real answer comes late
	const id, inbox = "forged-reply", "_INBOX.forge.1"
	forged := func(eventID, digest string) *nats.Msg {
		m := &nats.Msg{Subject: inbox, Header: nats.Header{},
			Data: []byte(`{"event_id":"` + eventID + `","action":"pam.credential.disable","target":"default","status":"succeeded","message":"forged"}`)}
		if digest != "" {
			m.Header.Set(worker.DigestHeader, digest)
		}
		return m
	}
	other, _ := events.Decode(events.CredentialEnable, []byte(`{"credential_id":403}`), id, 0, nil)
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				for _, m := range []*nats.Msg{forged("another-event", ""), forged(id, ""), forged(id, other.Digest())} {
					_ = r.nc.PublishMsg(m)
				}
			}
		}
	}()
	stdout, stderr, code := send(t, r.env, events.CredentialDisable, `{"event_id":"`+id+`","credential_id":403,"reply_to":"`+inbox+`"}`, "--wait", "20s")
	close(done)
	if code != 1 || strings.Contains(stdout, `"message": "forged"`) || !strings.Contains(stdout, `"code": "1009"`) {
		t.Errorf("send printed a forged reply or no real one: exit %d\n%s", code, stdout)
	}
	if !strings.Contains(stderr, "ignored a message on the reply inbox") {
		t.Errorf("send did not say it ignored the forged replies: %s", stderr)
	}
}

// TestAttackDryRun (finding 4): a request to preview never changes state, wherever and however
// dry_run is written: beside a CloudEvents envelope's data, or null.
func TestAttackDryRun(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	startWorker(t, r.env)
	for _, payload := range []string{
		`{"specversion":"1.0","id":"ce-dry-1","type":"pam.credential.disable","dry_run":true,"data":{"credential_id":51}}`,
		`{"specversion":"1.0","id":"ce-dry-2","type":"pam.credential.disable","dryrun":true,"data":{"credential_id":51}}`,
		`{"specversion":"1.0","id":"ce-dry-3","type":"pam.credential.disable","dry_run":null,"data":{"credential_id":51,"dry_run":null}}`,
		`{"credential_id":51,"dry_run":null}`,
		`{"credential_id":51,"dry_run":"true"}`,
		`{"credential_id":51,"Dry_Run":true}`,
	} {
		stdout, _, code := send(t, r.env, events.CredentialDisable, payload, "--wait", "20s")
		if code != 1 || !strings.Contains(stdout, `"code": "invalid_event"`) {
			t.Errorf("%s: exit %d, want invalid_event\n%s", payload, code, stdout)
		}
	}
	stdout, _, code := send(t, r.env, events.CredentialDisable,
		`{"specversion":"1.0","id":"ce-dry-ok","type":"pam.credential.disable","data":{"credential_id":51,"dry_run":true}}`, "--wait", "20s")
	if code != 0 || !strings.Contains(stdout, `"dry_run": true`) {
		t.Errorf("a dry run inside data: exit %d\n%s", code, stdout)
	}
	if active, _, _ := r.segura.Credential(51); !active || r.segura.Calls() != 0 {
		t.Errorf("a dry run changed state: active %v, %d calls", active, r.segura.Calls())
	}
}

// TestAttackSignatureSubject (finding 5): a signature covers the action. A body signed for an
// enable is refused on the disable subject.
func TestAttackSignatureSubject(t *testing.T) {
	t.Parallel()
	r, _, _, sign, results := attackRig(t)
	body := `{"event_id":"moved-sig","credential_id":44}`
	m := sign.msg(t, events.CredentialEnable, "moved-sig", "moved-sig", body)
	m.Subject = events.CredentialDisable
	if _, err := r.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if got := results.wait(t, "moved-sig", 1)[0]; got.Error == nil || got.Error.Code != guard.CodeBadSignature {
		t.Errorf("an enable's signature on a disable: %+v, want %s", got, guard.CodeBadSignature)
	}
	// The Standard Webhooks string without the subject, as it was signed before: refused too.
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	mac := hmac.New(sha256.New, []byte("attack-test-signing-key"))
	mac.Write([]byte("old-scheme." + ts + ".{\"event_id\":\"old-scheme\",\"credential_id\":44}"))
	old := &nats.Msg{Subject: events.CredentialDisable, Data: []byte(`{"event_id":"old-scheme","credential_id":44}`), Header: nats.Header{
		guard.HeaderID: {"old-scheme"}, guard.HeaderTimestamp: {ts},
		guard.HeaderSignature: {"v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))}}}
	if _, err := r.js.PublishMsg(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	if got := results.wait(t, "old-scheme", 1)[0]; got.Error == nil || got.Error.Code != guard.CodeBadSignature {
		t.Errorf("a signature that does not cover the subject: %+v, want %s", got, guard.CodeBadSignature)
	}
	if active, _, _ := r.segura.Credential(44); !active || r.segura.Calls() != 0 {
		t.Errorf("credential 44 touched: active %v, %d calls", active, r.segura.Calls())
	}
}

// TestAttackSandboxKeepsProtection (finding 6): --sandbox replaces the targets' addresses and
// logins, never their protection lists: the sandbox is where people learn what protection does.
func TestAttackSandboxKeepsProtection(t *testing.T) {
	t.Parallel()
	registerCanary(t, "sandbox test secret", "sandbox-canary-secret")
	registerCanary(t, "sandbox test password", "sandbox-canary-password")
	protection := []string{"PAMWORKER_SEGURA_PROTECTED_CREDENTIALS=94;root@db01", "PAMWORKER_ELEMENT_PROTECTED_USERS=admin"}
	for name, targets := range map[string][]string{
		// As the attack ran it: real targets configured, then --sandbox.
		"with targets": {"PAMWORKER_SEGURA_URL=https://segura.invalid", "PAMWORKER_SEGURA_CLIENT_ID=x",
			"PAMWORKER_SEGURA_CLIENT_SECRET=sandbox-canary-secret", "PAMWORKER_ELEMENT_URL=https://mvip.invalid/json-rpc/12.0",
			"PAMWORKER_ELEMENT_USERNAME=x", "PAMWORKER_ELEMENT_PASSWORD=sandbox-canary-password"},
		// As a newcomer tries it: protection lists alone.
		"lists alone": nil,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			client := []string{"PAMWORKER_NATS_LISTEN=" + freeAddr(t), "PAMWORKER_DATA_DIR=" + filepath.Join(t.TempDir(), "data")}
			w := startWorker(t, append(append(append([]string{"PAMWORKER_INGRESS_ADDR=" + freeAddr(t)}, client...), protection...), targets...), "--sandbox")
			env := client // send, in another terminal, needs only the broker
			for _, tc := range []struct{ subject, payload string }{
				{events.CredentialDisable, `{"credential_id":94}`},
				{events.CredentialDisable, `{"username":"root","hostname":"db01"}`},
				{events.ElementSessionsDelete, `{"username":"admin"}`},
			} {
				stdout, _, code := send(t, env, tc.subject, tc.payload, "--wait", "20s")
				if code != 1 || !strings.Contains(stdout, `"code": "protected_object"`) {
					t.Errorf("sandbox %s %s: exit %d, want protected_object\n%s", tc.subject, tc.payload, code, stdout)
				}
			}
			// Unprotected objects still act on the simulators.
			if stdout, _, code := send(t, env, events.CredentialDisable, `{"credential_id":95}`, "--wait", "20s"); code != 0 {
				t.Errorf("credential 95: exit %d\n%s", code, stdout)
			}
			if !strings.Contains(w.logs.String(), `"protected_credentials":2`) {
				t.Error("the sandbox does not say which protection it kept")
			}
		})
	}
}

// TestAttackRequesterNames (finding 7): a blast-radius limit is a ceiling on the action and
// target whoever asks, and per-requester caps compare names as a person reads them: ten
// disables under ten spellings of "soar" — and others — run three at most.
func TestAttackRequesterNames(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	env := append(r.env, "PAMWORKER_LIMITS=pam.credential.disable=3/1m,pam.credential.enable=10/1m/2")
	startWorker(t, env)
	res := collect(t, r.nc)
	names := []string{"soar", "SOAR", "Soar", " soar ", "ѕoar", "so\u200bar", "", "someone-else", "x", "ｓｏａｒ"}
	for i, name := range names {
		id := fmt.Sprintf("who-%02d", i)
		body, _ := json.Marshal(map[string]any{"event_id": id, "credential_id": 60 + i, "requested_by": name})
		if _, err := r.js.Publish(context.Background(), events.CredentialDisable, body, jetstream.WithMsgID(id)); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 20*time.Second, func() bool { return res.count("who-", "") >= 3 })
	time.Sleep(2 * time.Second)
	if n := res.count("who-", ""); n != 3 {
		t.Errorf("%d of 10 disables ran under a ceiling of 3 a minute", n)
	}
	disabled := 0
	for i := range names {
		if active, _, _ := r.segura.Credential(60 + i); !active {
			disabled++
		}
	}
	if disabled != 3 {
		t.Errorf("%d credentials disabled, ceiling 3", disabled)
	}
	// Per requester: two enables per spelling-folded name, ten on the target.
	for i, name := range []string{"soar", "SOAR", "ѕoar", "analyst", "analyst"} {
		id := fmt.Sprintf("en-%02d", i)
		body, _ := json.Marshal(map[string]any{"event_id": id, "credential_id": 80 + i, "requested_by": name})
		if _, err := r.js.Publish(context.Background(), events.CredentialEnable, body, jetstream.WithMsgID(id)); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 20*time.Second, func() bool { return res.count("en-", "") >= 4 })
	time.Sleep(2 * time.Second)
	if n := res.count("en-", ""); n != 4 {
		t.Errorf("%d enables ran, want 2 of soar's three spellings and analyst's 2", n)
	}
}

// TestAttackListReads (finding 8): reads that could take a vendor down are shared, and only
// calls that reach a vendor spend its rate. 200 drops of sessions Segura does not list share
// a few reads of the session list (the attack used 500: 472 reads); 300 dry runs at 2 requests a second are not paced, and an
// event behind them is answered.
func TestAttackListReads(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	env := append(r.env, "PAMWORKER_SEGURA_PROTECTED_SESSION_OWNERS=breakglass", "PAMWORKER_TARGET_RATE=2")
	startWorker(t, env)
	res := collect(t, r.nc)
	start := time.Now()
	const drops = 200
	for i := range drops {
		id := fmt.Sprintf("unknown-%03d", i)
		body := fmt.Sprintf(`{"event_id":%q,"session_id":"%032x"}`, id, i)
		if _, err := r.js.PublishAsync(events.SessionDrop, []byte(body), jetstream.WithMsgID(id)); err != nil {
			t.Fatal(err)
		}
	}
	<-r.js.PublishAsyncComplete()
	waitUntil(t, 120*time.Second, func() bool { return res.count("unknown-", "") == drops })
	elapsed := time.Since(start)
	if n := res.count("unknown-", events.Rejected); n != drops {
		t.Errorf("%d of %d drops of unlisted sessions rejected", n, drops)
	}
	// An upper bound that slowness only makes easier: one read per 2 s, and the first.
	reads := r.segura.CallsTo("GET", "/pam/session/remotesessions")
	if limit := 2 + int64(elapsed/(2*time.Second)); reads > limit {
		t.Errorf("%d list reads for %d drops in %v", reads, drops, elapsed.Round(time.Millisecond))
	}
	t.Logf("%d drops of unlisted sessions: %d list reads in %v", drops, reads, elapsed.Round(time.Millisecond))

	// Dry runs of disables call nothing; at 2 requests a second, pacing 300 of them would take
	// 150 s. They and the live event behind them are answered long before.
	for i := range 300 {
		id := fmt.Sprintf("dry-%03d", i)
		body := fmt.Sprintf(`{"event_id":%q,"credential_id":%d,"dry_run":true}`, id, 1+i%100)
		if _, err := r.js.PublishAsync(events.CredentialDisable, []byte(body), jetstream.WithMsgID(id)); err != nil {
			t.Fatal(err)
		}
	}
	<-r.js.PublishAsyncComplete()
	if stdout, _, code := send(t, env, events.CredentialDisable, `{"credential_id":7}`, "--wait", "60s"); code != 0 {
		t.Errorf("the live event behind 300 dry runs: exit %d\n%s", code, stdout)
	}
	waitUntil(t, 60*time.Second, func() bool { return res.count("dry-", events.Succeeded) == 300 })
}

// TestAttackSmallerOnes (finding 9): a forged Pamworker-Replay-Of header does not reach the
// result; names that differ from a protected one by a trailing dot or DN spacing are refused
// as protected, and names holding invisible characters as invalid.
func TestAttackSmallerOnes(t *testing.T) {
	t.Parallel()
	r, _, env, sign, results := attackRig(t)
	m := sign.msg(t, events.CredentialDisable, "fake-replay", "fake-replay", `{"event_id":"fake-replay","credential_id":45}`)
	m.Header.Set(worker.ReplayOfHeader, "some-failed-event")
	if _, err := r.js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if got := results.wait(t, "fake-replay", 1)[0]; got.Details["replay_of"] != nil {
		t.Errorf("a forged replay claim reached the result: %+v", got.Details)
	}
	key := writeKey(t, sign.key)
	before := r.segura.CallsTo("DELETE", "")
	for _, tc := range []struct{ subject, payload, code string }{
		{events.CredentialDisable, `{"username":"root","hostname":"db01."}`, "protected_object"},
		{events.CredentialDisable, `{"username":"ROOT","hostname":"DB01."}`, "protected_object"},
		{events.CredentialDisable, `{"username":"ro\u200bot","hostname":"db01"}`, "invalid_event"},
		{events.CredentialDisable, `{"username":"root","hostname":"db\u00ad01"}`, "invalid_event"},
		{events.ElementSessionsDelete, `{"username":"CN=Jane Doe, OU=Ops, DC=example, DC=com"}`, "protected_object"},
		{events.ElementSessionsDelete, `{"username":"cn = jane doe ,ou=ops,dc=example,dc=com"}`, "protected_object"},
		{events.ElementSessionsDelete, `{"username":"CN=Jane Doe,OU=Ops,DC=example,DC=com\u200b"}`, "invalid_event"},
	} {
		stdout, _, code := send(t, env, tc.subject, tc.payload, "--wait", "20s", "--sign-key-file", key)
		if code != 1 || !strings.Contains(stdout, `"code": "`+tc.code+`"`) {
			t.Errorf("%s %s: exit %d, want %s\n%s", tc.subject, tc.payload, code, tc.code, stdout)
		}
	}
	if n := r.segura.CallsTo("DELETE", "") - before + r.element.CallsTo("DeleteAuthSessionsByUsername"); n != 0 {
		t.Errorf("%d changing calls for refused names", n)
	}
}

// TestStalledWorkerSaysSo: a worker whose own publishes keep failing — here the results stream
// refuses every result — decides nothing; after PAMWORKER_STALL_TIMEOUT it is not ready, says
// why and sets pamworker_stalled, instead of staying ready while no event is answered. Once
// results can be stored again it answers the event and is ready again.
func TestStalledWorkerSaysSo(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	w := startWorker(t, append(r.env, "PAMWORKER_STALL_TIMEOUT=3s"))
	ctx := context.Background()
	s, err := r.js.Stream(ctx, "PAMWORKER_RESULTS")
	if err != nil {
		t.Fatal(err)
	}
	healthy := s.CachedInfo().Config
	full := healthy
	full.MaxMsgs, full.Discard = 1, jetstream.DiscardNew
	if _, err := r.js.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"fills-the-stream", "cannot-be-answered"} {
		if _, err := r.js.Publish(ctx, events.SessionDrop, []byte(`{"event_id":"`+id+`","session_id":"`+r.segura.AddSession()+`"}`), jetstream.WithMsgID(id)); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 30*time.Second, func() bool {
		body, _ := w.fetch("/readyz")
		return strings.HasPrefix(body, "not ready") && strings.Contains(body, "stalled")
	})
	if m := w.get(t, "/metrics"); !strings.Contains(m, "pamworker_stalled 1") {
		t.Error("pamworker_stalled is not 1")
	}
	if _, err := r.js.UpdateStream(ctx, healthy); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, func() bool { return len(streamResults(t, r.js, "cannot-be-answered")) == 1 })
	waitUntil(t, 30*time.Second, func() bool {
		body, _ := w.fetch("/readyz")
		return strings.HasPrefix(body, "ready")
	})
	if m := w.get(t, "/metrics"); !strings.Contains(m, "pamworker_stalled 0") {
		t.Error("pamworker_stalled is not 0 again")
	}
}
