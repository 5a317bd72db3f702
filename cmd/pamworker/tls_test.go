package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/sandbox"
)

// pki is a throwaway certificate authority for the TLS tests.
type pki struct {
	t    *testing.T
	dir  string
	ca   *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // the CA's PEM file
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	p := &pki{t: t, dir: t.TempDir(), ca: ca, key: key}
	p.file = p.write(name+"-ca.pem", "CERTIFICATE", der)
	return p
}

func (p *pki) write(name, kind string, der []byte) string {
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		p.t.Fatal(err)
	}
	return path
}

// issue makes a leaf certificate for hosts (IP addresses or names), valid until notAfter.
func (p *pki) issue(cn string, hosts []string, notAfter time.Time, usage x509.ExtKeyUsage) (tls.Certificate, string, string) {
	p.t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		p.t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile := p.write(cn+".pem", "CERTIFICATE", der)
	keyFile := p.write(cn+"-key.pem", "EC PRIVATE KEY", kder)
	// The first line of the key file's PEM body: a key printed anywhere would show it.
	registerCanary(p.t, "TLS private key of "+cn, base64.StdEncoding.EncodeToString(kder)[:64])
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		p.t.Fatal(err)
	}
	return cert, certFile, keyFile
}

// TestTLSTargets: with its CA configured the worker calls a TLS target (and, with a client
// certificate, a mutual-TLS one); an unknown CA, a wrong host name, an expired certificate or a
// missing client certificate stop it before any request — no credential leaves the worker —
// and mark the target down while the event waits.
func TestTLSTargets(t *testing.T) {
	t.Parallel()
	serverCA, clientCA := newPKI(t, "server-ca"), newPKI(t, "client-ca")
	good, _, _ := serverCA.issue("good", []string{"127.0.0.1"}, time.Now().Add(time.Hour), x509.ExtKeyUsageServerAuth)
	wrongHost, _, _ := serverCA.issue("wrong-host", []string{"segura.example.com"}, time.Now().Add(time.Hour), x509.ExtKeyUsageServerAuth)
	expired, _, _ := serverCA.issue("expired", []string{"127.0.0.1"}, time.Now().Add(-time.Hour), x509.ExtKeyUsageServerAuth)
	_, clientCert, clientKey := clientCA.issue("pamworker", []string{"pamworker"}, time.Now().Add(time.Hour), x509.ExtKeyUsageClientAuth)
	clientPool := x509.NewCertPool()
	clientPool.AddCert(clientCA.ca)

	for _, tc := range []struct {
		name     string
		cert     tls.Certificate
		mutual   bool
		env      []string
		succeeds bool
	}{
		{"trusted CA", good, false, []string{"PAMWORKER_SEGURA_CA_FILE=" + serverCA.file}, true},
		{"unknown CA", good, false, nil, false},
		{"wrong host name", wrongHost, false, []string{"PAMWORKER_SEGURA_CA_FILE=" + serverCA.file}, false},
		{"expired certificate", expired, false, []string{"PAMWORKER_SEGURA_CA_FILE=" + serverCA.file}, false},
		{"mutual TLS without a client certificate", good, true, []string{"PAMWORKER_SEGURA_CA_FILE=" + serverCA.file}, false},
		{"mutual TLS with a client certificate", good, true, []string{"PAMWORKER_SEGURA_CA_FILE=" + serverCA.file,
			"PAMWORKER_SEGURA_CLIENT_CERT_FILE=" + clientCert, "PAMWORKER_SEGURA_CLIENT_KEY_FILE=" + clientKey}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t)
			seg := sandbox.NewSegura(sandbox.SeguraOptions{ClientID: "e2e", ClientSecret: canarySecret})
			srv := httptest.NewUnstartedServer(canaryTap("Segura", seg))
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{tc.cert}, MinVersion: tls.VersionTLS12}
			if tc.mutual {
				srv.TLS.ClientAuth, srv.TLS.ClientCAs = tls.RequireAndVerifyClientCert, clientPool
			}
			srv.StartTLS()
			t.Cleanup(srv.Close)
			env := []string{}
			for _, kv := range r.env {
				if !strings.HasPrefix(kv, "PAMWORKER_SEGURA_URL=") {
					env = append(env, kv)
				}
			}
			env = append(append(env, "PAMWORKER_SEGURA_URL="+srv.URL), tc.env...)
			w := startWorker(t, env)

			stdout, _, code := send(t, env, events.CredentialDisable, `{"credential_id":7}`, "--wait", "5s")
			if tc.succeeds {
				if code != 0 || !strings.Contains(stdout, `"status": "succeeded"`) {
					t.Fatalf("exit %d: %s\n%s", code, stdout, redact(w.logs.String()))
				}
				return
			}
			if code != 2 {
				t.Errorf("send: exit %d (%s), want 2: the event must wait, not fail", code, stdout)
			}
			if n, tok := seg.Calls(), seg.TokenRequests(); n != 0 || tok != 0 {
				t.Errorf("%d API calls and %d token requests reached the server: credentials were sent", n, tok)
			}
			ready := w.get(t, "/readyz")
			if !strings.Contains(ready, "segura/default") || !strings.Contains(ready, "tls") {
				t.Errorf("/readyz does not name the target and the TLS failure:\n%s", ready)
			}
			if m := w.get(t, "/metrics"); !strings.Contains(m, `pamworker_target_up{target="segura/default"} 0`) {
				t.Error("target_up is not 0")
			}
		})
	}
}

// TestInsecureSkipVerifyIsLoud: the escape hatch works only when asked for, and says so.
func TestInsecureSkipVerifyIsLoud(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	ca := newPKI(t, "ca")
	cert, _, _ := ca.issue("c", []string{"127.0.0.1"}, time.Now().Add(time.Hour), x509.ExtKeyUsageServerAuth)
	srv := httptest.NewUnstartedServer(canaryTap("Segura", sandbox.NewSegura(sandbox.SeguraOptions{ClientID: "e2e", ClientSecret: canarySecret})))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	var env []string
	for _, kv := range r.env {
		if !strings.HasPrefix(kv, "PAMWORKER_SEGURA_URL=") {
			env = append(env, kv)
		}
	}
	env = append(env, "PAMWORKER_SEGURA_URL="+srv.URL, "PAMWORKER_SEGURA_INSECURE_SKIP_VERIFY=true")
	w := startWorker(t, env)
	if !strings.Contains(w.logs.String(), "TLS VERIFICATION IS OFF") {
		t.Errorf("no loud warning at start:\n%s", redact(w.logs.String()))
	}
	if _, _, code := send(t, env, events.CredentialDisable, `{"credential_id":7}`, "--wait", "10s"); code != 0 {
		t.Errorf("exit %d", code)
	}
}
