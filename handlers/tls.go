package handlers

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// TLSFiles is how a target's TLS is configured: a CA bundle that replaces the system roots, an
// optional client certificate for mutual TLS, and the escape hatch that turns verification off.
type TLSFiles struct {
	CAFile             string // PEM bundle; empty: the system roots
	CertFile, KeyFile  string // PEM client certificate and key; both or neither
	InsecureSkipVerify bool   // never the default; logged loudly at every start
}

// TLSConfig builds the client TLS configuration: TLS 1.2 at least, hostname verification on
// unless InsecureSkipVerify.
func TLSConfig(f TLSFiles) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: f.InsecureSkipVerify} //nolint:gosec // only when configured, and logged
	if f.CAFile != "" {
		pem, err := os.ReadFile(f.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", f.CAFile)
		}
		c.RootCAs = pool
	}
	switch {
	case f.CertFile != "" && f.KeyFile != "":
		cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	case f.CertFile != "" || f.KeyFile != "":
		return nil, errors.New("a client certificate needs both its certificate and its key file")
	}
	return c, nil
}

// isTLSFailure reports whether err is a failed TLS handshake or verification: an unknown CA, a
// wrong host name, an expired certificate, a refused client certificate. These say the worker
// is pointed at the wrong place or is not trusted, not that the call may pass later.
func isTLSFailure(err error) bool {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		verify   *tls.CertificateVerificationError
		alert    tls.AlertError
		rhe      tls.RecordHeaderError
	)
	if errors.As(err, &unknown) || errors.As(err, &hostname) || errors.As(err, &invalid) ||
		errors.As(err, &verify) || errors.As(err, &alert) || errors.As(err, &rhe) {
		return true
	}
	// The server's alerts (certificate required, bad certificate ...) arrive as a net.OpError
	// "remote error" around an unexported type; with TLS 1.3 that happens on the first read,
	// after the client's side of the handshake has finished.
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error" && strings.HasPrefix(op.Err.Error(), "tls: ")
}
