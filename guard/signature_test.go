package guard

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"testing"
	"time"
)

func TestSignatures(t *testing.T) {
	t.Parallel()
	secretOld := "whsec_" + base64.StdEncoding.EncodeToString([]byte("old-secret-0123456789"))
	secretNew := "whsec_" + base64.StdEncoding.EncodeToString([]byte("new-secret-0123456789"))
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	whpk := "whpk_" + base64.StdEncoding.EncodeToString(pub)
	whsk := "whsk_" + base64.StdEncoding.EncodeToString(priv)
	now := time.Unix(1_800_000_000, 0)
	v, err := NewVerifier(Signing{Subjects: []string{"pam.credential.>"}, Keys: []string{secretOld, secretNew, whpk}})
	if err != nil {
		t.Fatal(err)
	}
	v.now = func() time.Time { return now }
	body := []byte(`{"event_id":"e1","credential_id":94}`)
	sign := func(key, id string, at time.Time, b []byte) map[string]string {
		h, err := Sign(key, id, at, b)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	check := func(subject string, h map[string]string, b []byte, id string) string {
		if rej := v.Check(subject, func(k string) string { return h[k] }, b, id); rej != nil {
			return rej.Code
		}
		return ""
	}
	otherKey := "whsec_" + base64.StdEncoding.EncodeToString([]byte("attacker-secret-0123"))
	tampered := []byte(`{"event_id":"e1","credential_id":95}`)
	twoSigs := sign(secretNew, "e1", now, body)
	twoSigs[HeaderSignature] = sign(otherKey, "e1", now, body)[HeaderSignature] + " " + twoSigs[HeaderSignature]

	for _, tc := range []struct {
		name, subject string
		headers       map[string]string
		body          []byte
		id, want      string
	}{
		{"old key (rotation)", "pam.credential.disable", sign(secretOld, "e1", now, body), body, "e1", ""},
		{"new key", "pam.credential.disable", sign(secretNew, "e1", now, body), body, "e1", ""},
		{"ed25519", "pam.credential.enable", sign(whsk, "e1", now, body), body, "e1", ""},
		{"one good of two signatures", "pam.credential.disable", twoSigs, body, "e1", ""},
		{"subject not signed", "pam.session.drop", nil, body, "e1", ""},
		{"unsigned", "pam.credential.disable", nil, body, "e1", CodeUnsigned},
		{"unknown key", "pam.credential.disable", sign(otherKey, "e1", now, body), body, "e1", CodeBadSignature},
		{"tampered body", "pam.credential.disable", sign(secretNew, "e1", now, body), tampered, "e1", CodeBadSignature},
		{"signature of another event", "pam.credential.disable", sign(secretNew, "e2", now, body), body, "e1", CodeBadSignature},
		{"too old", "pam.credential.disable", sign(secretNew, "e1", now.Add(-6*time.Minute), body), body, "e1", CodeSignatureAge},
		{"from the future", "pam.credential.disable", sign(secretNew, "e1", now.Add(6*time.Minute), body), body, "e1", CodeSignatureAge},
	} {
		if got := check(tc.subject, tc.headers, tc.body, tc.id); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestNewVerifierErrors(t *testing.T) {
	t.Parallel()
	for name, s := range map[string]Signing{
		"subjects without keys": {Subjects: []string{"pam.>"}},
		"unknown key kind":      {Keys: []string{"secret"}},
		"short whsec":           {Keys: []string{"whsec_" + base64.StdEncoding.EncodeToString([]byte("short"))}},
		"bad whpk":              {Keys: []string{"whpk_AAAA"}},
	} {
		if _, err := NewVerifier(s); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestSubjectMatch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		p, s string
		want bool
	}{
		{"pam.>", "pam.session.drop", true}, {"pam.>", "pam", false}, {"pam.*.drop", "pam.session.drop", true},
		{"pam.*", "pam.session.drop", false}, {"element.auth_sessions.delete", "element.auth_sessions.delete", true},
		{">", "anything.at.all", true}, {"pam.credential.disable", "pam.credential.enable", false},
	} {
		if got := subjectMatch(tc.p, tc.s); got != tc.want {
			t.Errorf("subjectMatch(%q, %q) = %v", tc.p, tc.s, got)
		}
	}
}
