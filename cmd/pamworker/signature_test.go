package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/guard"
)

// TestSignedEvents: on subjects that require signatures, unsigned, wrongly signed, tampered and
// expired events are rejected with their reason and never reach the vendor; events signed with
// any configured key (old HMAC secret, new one, ed25519) run; `send` signs with a key file.
func TestSignedEvents(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	dir := t.TempDir()
	key := func(name, value string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(value+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	oldSecret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("old-playbook-secret-1"))
	newSecret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("new-playbook-secret-2"))
	attacker := "whsec_" + base64.StdEncoding.EncodeToString([]byte("not-a-configured-key"))
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	whsk := "whsk_" + base64.StdEncoding.EncodeToString(priv)
	for what, secret := range map[string]string{
		"old signing secret": oldSecret, "old signing secret, decoded": "old-playbook-secret-1",
		"new signing secret": newSecret, "new signing secret, decoded": "new-playbook-secret-2",
		"attacker's signing secret": attacker, "attacker's signing secret, decoded": "not-a-configured-key",
		"ed25519 signing key": whsk,
	} {
		registerCanary(t, what, secret)
	}
	keys := key("keys", oldSecret+"; "+newSecret+"; whpk_"+base64.StdEncoding.EncodeToString(pub))
	env := append(r.env, "PAMWORKER_SIGNED_SUBJECTS=pam.credential.>,element.>", "PAMWORKER_SIGNING_KEYS_FILE="+keys)
	startWorker(t, env)

	expect := func(name string, code int, stdout, wantStatus, wantCode string) {
		t.Helper()
		if !strings.Contains(stdout, `"status": "`+wantStatus+`"`) || (wantCode != "" && !strings.Contains(stdout, `"code": "`+wantCode+`"`)) {
			t.Errorf("%s: exit %d, want %s %s\n%s", name, code, wantStatus, wantCode, stdout)
		}
	}
	stdout, _, code := send(t, env, events.CredentialDisable, `{"credential_id":21}`, "--wait", "20s")
	expect("unsigned", code, stdout, "rejected", guard.CodeUnsigned)
	stdout, _, code = send(t, env, events.CredentialDisable, `{"credential_id":22}`, "--wait", "20s",
		"--sign-key-file", key("attacker", attacker))
	expect("unknown key", code, stdout, "rejected", guard.CodeBadSignature)
	before := r.segura.Calls()
	if before != 0 {
		t.Fatalf("%d vendor calls for refused events", before)
	}

	// Tampered and expired, published by hand with headers signed over something else.
	for name, tc := range map[string]struct {
		at   time.Time
		body string
		code string
	}{
		"tampered": {time.Now(), `{"event_id":"sig-t","credential_id":99}`, guard.CodeBadSignature},
		"expired":  {time.Now().Add(-10 * time.Minute), `{"event_id":"sig-e","credential_id":23}`, guard.CodeSignatureAge},
	} {
		id := map[string]string{"tampered": "sig-t", "expired": "sig-e"}[name]
		h, err := guard.Sign(newSecret, events.CredentialDisable, id, tc.at, []byte(`{"event_id":"`+id+`","credential_id":23}`))
		if err != nil {
			t.Fatal(err)
		}
		msg := &nats.Msg{Subject: events.CredentialDisable, Data: []byte(tc.body), Header: nats.Header{jetstream.MsgIDHeader: []string{id}}}
		for k, v := range h {
			msg.Header.Set(k, v)
		}
		if _, err := r.js.PublishMsg(context.Background(), msg); err != nil {
			t.Fatal(err)
		}
		res := waitResult(t, r.js, id)
		if res.Status != events.Rejected || res.Error == nil || res.Error.Code != tc.code {
			t.Errorf("%s: %+v", name, res)
		}
	}
	if n := r.segura.Calls(); n != 0 {
		t.Errorf("%d vendor calls for refused events", n)
	}

	for name, k := range map[string]string{"old secret": oldSecret, "new secret": newSecret, "ed25519": whsk} {
		stdout, _, code := send(t, env, events.CredentialDisable, `{"credential_id":`+map[string]string{"old secret": "24", "new secret": "25", "ed25519": "26"}[name]+`}`,
			"--wait", "20s", "--sign-key-file", key(strings.ReplaceAll(name, " ", "-"), k))
		expect(name, code, stdout, "succeeded", "")
	}
	// Subjects that need no signature are unaffected.
	stdout, _, code = send(t, env, events.SessionDrop, `{"session_id":"`+r.segura.AddSession()+`"}`, "--wait", "20s")
	expect("unsigned session drop", code, stdout, "succeeded", "")
	// The worker's logs are scanned for the keys, like for every canary, when it ends.
}

// waitResult reads the results stream until the result of id appears.
func waitResult(t *testing.T, js jetstream.JetStream, id string) events.Result {
	t.Helper()
	var res events.Result
	waitUntil(t, 20*time.Second, func() bool {
		for _, line := range strings.Split(strings.TrimSpace(allResults(t, js)), "\n") {
			if strings.Contains(line, `"event_id":"`+id+`"`) {
				return jsonUnmarshalResult(line, &res)
			}
		}
		return false
	})
	return res
}

func jsonUnmarshalResult(line string, res *events.Result) bool {
	return json.Unmarshal([]byte(line), res) == nil
}
