package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/broker"
	"github.com/pamworker/pamworker/events"
)

// natsTLS is the PKI of the NATS TLS tests: one CA for the server, one for clients.
type natsTLS struct {
	serverCA, clientCA *pki
	clientPool         *x509.CertPool
	server             tls.Certificate // for 127.0.0.1, signed by serverCA
	client             tls.Certificate // client auth, signed by clientCA
	clientCert         string
	clientKey          string
}

func newNATSTLS(t *testing.T) *natsTLS {
	t.Helper()
	p := &natsTLS{serverCA: newPKI(t, "nats-server-ca"), clientCA: newPKI(t, "nats-client-ca")}
	p.server, _, _ = p.serverCA.issue("nats", []string{"127.0.0.1"}, time.Now().Add(time.Hour), x509.ExtKeyUsageServerAuth)
	p.client, p.clientCert, p.clientKey = p.clientCA.issue("pamworker", []string{"pamworker"}, time.Now().Add(time.Hour), x509.ExtKeyUsageClientAuth)
	p.clientPool = x509.NewCertPool()
	p.clientPool.AddCert(p.clientCA.ca)
	return p
}

// startTLSNATS starts a nats-server with JetStream that requires TLS (1.2 or later) and a client
// certificate signed by clientCAs.
func startTLSNATS(t *testing.T, cert tls.Certificate, clientCAs *x509.CertPool) *server.Server {
	t.Helper()
	opts := &server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    clientCAs,
			MinVersion:   tls.VersionTLS12,
		},
		TLSVerify:  true,
		TLSTimeout: 2,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("TLS NATS server not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if u := ns.ClientURL(); !strings.HasPrefix(u, "tls://") {
		t.Fatalf("server URL %s is not tls://", u)
	}
	return ns
}

// natsEnv is the rig's settings with PAMWORKER_NATS_URL replaced by url, plus extra.
func natsEnv(r *rig, url string, extra ...string) []string {
	var env []string
	for _, kv := range r.env {
		if !strings.HasPrefix(kv, "PAMWORKER_NATS_URL=") {
			env = append(env, kv)
		}
	}
	return append(append(env, "PAMWORKER_NATS_URL="+url), extra...)
}

// runToExit runs `pamworker run`, which is expected to stop at start, and returns its output
// and exit status.
func runToExit(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), append([]string{"run"}, args...)...)
	cmd.Env = append(append(baseEnv(), env...), "PAMWORKER_HTTP_ADDR="+freeAddr(t))
	out, err := cmd.CombinedOutput()
	scanForSecrets(t, "pamworker run", string(out))
	if ctx.Err() != nil {
		t.Fatalf("the worker was still running after 20s; want it to stop at start:\n%s", out)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// TestNATSTLS: the real binary and `pamworker send` reach a nats-server that requires TLS and a
// client certificate, with the CA and client certificate from PAMWORKER_NATS_*; events are
// processed and answered over that connection.
func TestNATSTLS(t *testing.T) {
	t.Parallel()
	p := newNATSTLS(t)
	ns := startTLSNATS(t, p.server, p.clientPool)
	url := ns.ClientURL()
	r := newRig(t)
	env := natsEnv(r, url, "PAMWORKER_NATS_CA_FILE="+p.serverCA.file,
		"PAMWORKER_NATS_CLIENT_CERT_FILE="+p.clientCert, "PAMWORKER_NATS_CLIENT_KEY_FILE="+p.clientKey)
	w := startWorker(t, env)
	if !strings.Contains(w.logs.String(), `"msg":"connected to NATS","url":"`+url+`"`) {
		t.Errorf("no connection to %s in the logs:\n%s", url, w.logs.String())
	}
	// The server sees the worker's connection as TLS 1.2 or later, with its client certificate.
	cz, err := ns.Connz(&server.ConnzOptions{Username: true})
	if err != nil {
		t.Fatal(err)
	}
	seen := false
	for _, c := range cz.Conns {
		if c.Name == "pamworker" {
			seen = true
			if (c.TLSVersion != "1.2" && c.TLSVersion != "1.3") || len(c.TLSPeerCerts) == 0 || !strings.Contains(c.TLSPeerCerts[0].Subject, "CN=pamworker") {
				t.Errorf("worker connection: TLS %q, peer certificates %+v", c.TLSVersion, c.TLSPeerCerts)
			}
		}
	}
	if !seen {
		t.Error("the server has no connection named pamworker")
	}

	// An event published by a TLS client of our own is processed and answered.
	roots := x509.NewCertPool()
	roots.AddCert(p.serverCA.ca)
	nc, err := nats.Connect(url, nats.Secure(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{p.client}, MinVersion: tls.VersionTLS12}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	res := collect(t, nc)
	js, _ := jetstream.New(nc)
	if _, err := js.Publish(context.Background(), events.CredentialDisable,
		[]byte(`{"event_id":"natstls-1","credential_id":7}`), jetstream.WithMsgID("natstls-1")); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, func() bool { return res.count("natstls-1", "") == 1 })
	if n := res.count("natstls-1", events.Succeeded); n != 1 {
		t.Errorf("event natstls-1 did not succeed\n%s", w.logs.String())
	}
	if active, _, _ := r.segura.Credential(7); active {
		t.Error("credential 7 is still active")
	}

	// `pamworker send --wait` over the same TLS settings.
	stdout, stderr, code := send(t, env, events.CredentialDisable, `{"credential_id":8}`, "--wait", "20s")
	if code != 0 || !strings.Contains(stdout, `"status": "succeeded"`) {
		t.Fatalf("send: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if n := r.segura.CallsTo("DELETE", "/pam/credential/8"); n != 1 {
		t.Errorf("credential 8: %d vendor calls, want 1", n)
	}
}

// TestNATSTLSRefused: a worker that cannot verify the NATS server, or that the server does not
// accept, stops at start with exit status 1 and one line naming the problem, and calls no
// vendor. `pamworker send` with the same settings fails the same way.
func TestNATSTLSRefused(t *testing.T) {
	t.Parallel()
	p := newNATSTLS(t)
	other := newPKI(t, "other-ca")
	strangerCert, _, _ := other.issue("stranger", []string{"127.0.0.1"}, time.Now().Add(time.Hour), x509.ExtKeyUsageServerAuth)
	wrongHost, _, _ := p.serverCA.issue("wrong-host", []string{"other.example"}, time.Now().Add(time.Hour), x509.ExtKeyUsageServerAuth)
	expiredServer, _, _ := p.serverCA.issue("expired-server", []string{"127.0.0.1"}, time.Now().Add(-time.Hour), x509.ExtKeyUsageServerAuth)
	_, expiredCert, expiredKey := p.clientCA.issue("expired-client", []string{"pamworker"}, time.Now().Add(-time.Hour), x509.ExtKeyUsageClientAuth)
	_, strangerClientCert, strangerClientKey := other.issue("stranger-client", []string{"pamworker"}, time.Now().Add(time.Hour), x509.ExtKeyUsageClientAuth)

	ca := "PAMWORKER_NATS_CA_FILE=" + p.serverCA.file
	cert, key := "PAMWORKER_NATS_CLIENT_CERT_FILE="+p.clientCert, "PAMWORKER_NATS_CLIENT_KEY_FILE="+p.clientKey
	refused := broker.ErrClientCertRefused.Error()
	for _, tc := range []struct {
		name   string
		server tls.Certificate
		env    []string
		want   string // in the one line
	}{
		{"server certificate from an unknown CA", strangerCert, []string{ca, cert, key}, "x509: certificate signed by unknown authority"},
		// Hostname verification stays on: a certificate of the right CA for another name is refused.
		{"server certificate for another host", wrongHost, []string{ca, cert, key}, "x509: cannot validate certificate for 127.0.0.1"},
		{"expired server certificate", expiredServer, []string{ca, cert, key}, "x509: certificate has expired"},
		// The server's verdict on the client certificate comes after the client's handshake:
		// depending on timing as its alert or as a closed connection. Either way one line names it.
		{"no client certificate", p.server, []string{ca}, refused},
		{"expired client certificate", p.server, []string{ca, "PAMWORKER_NATS_CLIENT_CERT_FILE=" + expiredCert, "PAMWORKER_NATS_CLIENT_KEY_FILE=" + expiredKey}, refused},
		{"client certificate from an unknown CA", p.server, []string{ca, "PAMWORKER_NATS_CLIENT_CERT_FILE=" + strangerClientCert, "PAMWORKER_NATS_CLIENT_KEY_FILE=" + strangerClientKey}, refused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			url := startTLSNATS(t, tc.server, p.clientPool).ClientURL()
			r := newRig(t)
			env := natsEnv(r, url, tc.env...)
			out, code := runToExit(t, env)
			t.Logf("worker output:\n%s", out)
			if code != 1 {
				t.Errorf("exit status %d, want 1", code)
			}
			var plain []string
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				if !strings.HasPrefix(line, "{") { // JSON log lines are the structured copy
					plain = append(plain, line)
				}
			}
			if len(plain) != 1 || !strings.Contains(plain[0], "NATS") || !strings.Contains(plain[0], tc.want) {
				t.Errorf("want one line naming NATS and %q, got %q", tc.want, plain)
			}

			stdout, stderr, code := send(t, env, events.CredentialDisable, `{"credential_id":7}`, "--wait", "5s")
			t.Logf("send stderr:\n%s", stderr)
			line := strings.TrimSpace(stderr)
			if code == 0 || stdout != "" || strings.Contains(line, "\n") || !strings.Contains(line, tc.want) {
				t.Errorf("send: exit %d, stdout %q; want a failure with one line naming %q", code, stdout, tc.want)
			}
			if strings.Contains(line, "running?") {
				t.Error("send asks whether the server runs: it does, the TLS connection is what failed")
			}
			if n, tok := r.segura.Calls(), r.segura.TokenRequests(); n != 0 || tok != 0 {
				t.Errorf("%d vendor calls and %d token requests", n, tok)
			}
		})
	}
}

// TestNATSTLSInsecureSkipVerifyIsLoud: PAMWORKER_NATS_INSECURE_SKIP_VERIFY=true connects to a
// server the worker cannot verify, and says so with a warning, in the worker and in send.
func TestNATSTLSInsecureSkipVerifyIsLoud(t *testing.T) {
	t.Parallel()
	p := newNATSTLS(t)
	url := startTLSNATS(t, p.server, p.clientPool).ClientURL() // the worker is given no CA for it
	r := newRig(t)
	env := natsEnv(r, url, "PAMWORKER_NATS_INSECURE_SKIP_VERIFY=true",
		"PAMWORKER_NATS_CLIENT_CERT_FILE="+p.clientCert, "PAMWORKER_NATS_CLIENT_KEY_FILE="+p.clientKey)
	w := startWorker(t, env)
	if !strings.Contains(w.logs.String(), `"level":"WARN","msg":"TLS VERIFICATION IS OFF for the NATS connection`) {
		t.Errorf("no warning at start:\n%s", w.logs.String())
	}
	stdout, stderr, code := send(t, env, events.CredentialDisable, `{"credential_id":7}`, "--wait", "20s")
	if code != 0 || !strings.Contains(stdout, `"status": "succeeded"`) {
		t.Fatalf("send: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stderr, "level=WARN") || !strings.Contains(stderr, "TLS VERIFICATION IS OFF for the NATS connection") {
		t.Errorf("send gave no warning:\n%s", stderr)
	}
}
