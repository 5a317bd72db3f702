package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/guard"
	"github.com/pamworker/pamworker/ingress"
)

// TestIngressTLSAndClientCertificates: the ingress over TLS, with a caller named by its
// verified client certificate beside one with a token. A certificate from another CA with the
// same common name gets nowhere; neither does TLS 1.1.
func TestIngressTLSAndClientCertificates(t *testing.T) {
	t.Parallel()
	ca, rogue := newPKI(t, "ingress-ca"), newPKI(t, "rogue-ca")
	_, serverCert, serverKey := ca.issue("pamworker-ingress", []string{"127.0.0.1"}, time.Now().Add(24*time.Hour), x509.ExtKeyUsageServerAuth)
	client, _, _ := ca.issue("tines-prod", nil, time.Now().Add(24*time.Hour), x509.ExtKeyUsageClientAuth)
	impostor, _, _ := rogue.issue("tines-prod", nil, time.Now().Add(24*time.Hour), x509.ExtKeyUsageClientAuth)

	r := newRig(t)
	addr := freeAddr(t)
	token := "tok-tls-" + newEventID()
	addCanary("ingress token over TLS", token)
	startWorker(t, append(r.env, "PAMWORKER_INGRESS_ADDR="+addr,
		"PAMWORKER_INGRESS_TLS_CERT_FILE="+serverCert, "PAMWORKER_INGRESS_TLS_KEY_FILE="+serverKey,
		"PAMWORKER_INGRESS_CLIENT_CA_FILE="+ca.file,
		"PAMWORKER_INGRESS_CALLERS=soar:"+ingress.HashToken(token)+":>;tines:cn=tines-prod:pam.session.drop"))

	roots := x509.NewCertPool()
	roots.AddCert(ca.ca)
	do := func(certs []tls.Certificate, maxVersion uint16, subject, auth, body string) (*http.Response, string, error) {
		tc := &tls.Config{RootCAs: roots, MaxVersion: maxVersion}
		if len(certs) > 0 {
			// Sent whatever CAs the server asks for, so that the server's verification is what
			// is tested.
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &certs[0], nil }
		}
		hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		req, _ := http.NewRequest(http.MethodPost, "https://"+addr+"/v1/actions/"+subject, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b), nil
	}
	drop := func() string { return `{"session_id":"` + r.segura.AddSession() + `"}` }

	if resp, b, err := do(nil, 0, events.SessionDrop, token, drop()); err != nil || resp.StatusCode != 200 {
		t.Errorf("token caller over TLS: %v %v\n%s", err, resp, b)
	}
	resp, b, err := do([]tls.Certificate{client}, 0, events.SessionDrop, "", drop())
	if err != nil || resp.StatusCode != 200 || decodeResult(t, []byte(b)).RequestedBy != "tines" {
		t.Errorf("certificate caller: %v %v\n%s", err, resp, b)
	}
	if resp, b, err := do([]tls.Certificate{client}, 0, events.CredentialDisable, "", `{"credential_id":5}`); err != nil || resp.StatusCode != 403 {
		t.Errorf("certificate caller, a subject it may not post: %v %v\n%s", err, resp, b)
	}
	if resp, _, err := do([]tls.Certificate{impostor}, 0, events.SessionDrop, "", drop()); err == nil {
		t.Errorf("a certificate of another CA with the right name was let in: %d", resp.StatusCode)
	}
	if resp, _, err := do(nil, tls.VersionTLS11, events.SessionDrop, token, drop()); err == nil {
		t.Errorf("TLS 1.1 was accepted: %d", resp.StatusCode)
	}
	if resp, _, err := do(nil, 0, events.SessionDrop, "", drop()); err != nil || resp.StatusCode != 401 {
		t.Errorf("neither token nor certificate: %v %v", err, resp)
	}
}

// TestIngressSignedEvents: Standard Webhooks signature headers go through the ingress to the
// worker's check, untouched: a signed POST runs (its webhook-id the event id), an unsigned or
// tampered one on a signed subject is answered 422 with the worker's refusal.
func TestIngressSignedEvents(t *testing.T) {
	t.Parallel()
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("ingress-signing-secret-1"))
	registerCanary(t, "ingress signing secret", secret)
	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keys, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ir := newIngressRig(t, "PAMWORKER_SIGNED_SUBJECTS=pam.credential.>", "PAMWORKER_SIGNING_KEYS_FILE="+keys)
	startWorker(t, append(ir.rig.env, ir.env...))

	body := `{"credential_id":33,"correlation_id":"INC-9"}`
	hdr, err := guard.Sign(secret, events.CredentialDisable, "signed-1", time.Now(), []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	signed := []string{}
	for k, v := range hdr {
		signed = append(signed, k, v)
	}
	resp, b := ir.post(t, events.CredentialDisable, "soar", body, signed...)
	if res := decodeResult(t, b); resp.StatusCode != 200 || res.EventID != "signed-1" || res.Status != events.Succeeded {
		t.Errorf("signed POST: %d\n%s", resp.StatusCode, b)
	}
	if active, _, _ := ir.segura.Credential(33); active {
		t.Error("the signed disable did not run")
	}
	resp, b = ir.post(t, events.CredentialDisable, "soar", `{"credential_id":34}`)
	if res := decodeResult(t, b); resp.StatusCode != 422 || res.Error == nil || res.Error.Code != guard.CodeUnsigned {
		t.Errorf("unsigned POST on a signed subject: %d\n%s", resp.StatusCode, b)
	}
	hdr2, _ := guard.Sign(secret, events.CredentialDisable, "signed-2", time.Now(), []byte(`{"credential_id":35}`))
	tampered := []string{}
	for k, v := range hdr2 {
		tampered = append(tampered, k, v)
	}
	resp, b = ir.post(t, events.CredentialDisable, "soar", `{"credential_id":36}`, tampered...)
	if res := decodeResult(t, b); resp.StatusCode != 422 || res.Error == nil || res.Error.Code != guard.CodeBadSignature {
		t.Errorf("tampered POST: %d\n%s", resp.StatusCode, b)
	}
	for _, n := range []int{34, 35, 36} {
		if active, _, _ := ir.segura.Credential(n); !active {
			t.Errorf("credential %d was disabled by a refused event", n)
		}
	}
	ir.checkOpenAPI(t)
}
