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
	sign := func(key, id string, at time.Time, b []byte, subject ...string) map[string]string {
		subj := "pam.credential.disable"
		if len(subject) > 0 {
			subj = subject[0]
		}
		h, err := Sign(key, subj, id, at, b)
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
		{"ed25519", "pam.credential.enable", sign(whsk, "e1", now, body, "pam.credential.enable"), body, "e1", ""},
		{"signed for enable, sent on disable", "pam.credential.disable", sign(secretNew, "e1", now, body, "pam.credential.enable"), body, "e1", CodeBadSignature},
		{"ed25519 signed for enable, sent on disable", "pam.credential.disable", sign(whsk, "e1", now, body, "pam.credential.enable"), body, "e1", CodeBadSignature},
		{"signed for a subject that needs none", "pam.credential.disable", sign(secretNew, "e1", now, body, "pam.session.drop"), body, "e1", CodeBadSignature},
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

// TestSigningVectors pins the signing string and the signatures of both schemes, so a
// publisher in another language can check its implementation against the README's example.
func TestSigningVectors(t *testing.T) {
	t.Parallel()
	const (
		secret  = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
		id      = "msg_p5jXN8AQM9LWM0D4loKWxJek"
		subject = "pam.credential.disable"
		body    = `{"credential_id":94}`
	)
	at := time.Unix(1614265330, 0)
	if got := string(SigningString(id, "1614265330", subject, []byte(body))); got != id+".1614265330."+subject+"."+body {
		t.Fatalf("signing string %q", got)
	}
	h, err := Sign(secret, subject, id, at, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	const wantHMAC = "v1,XVAq3v6dvEh/ImK8xYLZ8y/B7Aya5NuD2cGuISZWqk4=" // computed with Python hmac, independently
	if h[HeaderSignature] != wantHMAC || h[HeaderID] != id || h[HeaderTimestamp] != "1614265330" {
		t.Errorf("HMAC vector: %v", h)
	}
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	h, err = Sign("whsk_"+base64.StdEncoding.EncodeToString(priv), subject, id, at, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	const wantEd = "v1a,0DYP74GQXeUCZm7dyFB3FNJxD+42lKUOv4UTUPveerFH3pNntKXrHpFk62++uiPBpXumx5OH3/TjyqBWhAl+AQ==" // Python cryptography
	if h[HeaderSignature] != wantEd {
		t.Errorf("ed25519 vector: %v", h)
	}
	v, err := NewVerifier(Signing{Subjects: []string{">"}, Keys: []string{secret, "whpk_" + base64.StdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey))}})
	if err != nil {
		t.Fatal(err)
	}
	v.now = func() time.Time { return at }
	for _, sig := range []string{wantHMAC, wantEd} {
		hdr := map[string]string{HeaderID: id, HeaderTimestamp: "1614265330", HeaderSignature: sig}
		if rej := v.Check(subject, func(k string) string { return hdr[k] }, []byte(body), id); rej != nil {
			t.Errorf("%s: %v", sig, rej)
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
