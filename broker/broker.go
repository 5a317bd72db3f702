// Package broker starts the embedded NATS server (the real nats-server, in-process, with
// JetStream on a file store) and opens client connections with the reconnect behaviour a
// long-running worker needs. Tests use it to get a real JetStream server on a free port.
package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Embedded describes the in-process server.
type Embedded struct {
	Listen  string // host:port for clients; port -1 picks a free one
	DataDir string // JetStream file store
}

// Start runs the server and waits until it accepts connections.
func Start(e Embedded) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(e.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS listen address %q: %w", e.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS listen port %q: %w", portStr, err)
	}
	if e.DataDir == "" {
		return nil, errors.New("embedded NATS needs a data directory")
	}
	opts := &server.Options{
		ServerName: "pamworker-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   e.DataDir,
		NoSigs:     true, // signals belong to the process, not to the library
		NoLog:      true,
		// fsync the file store every second instead of the server's default two minutes: a
		// crash of the process loses nothing either way (writes are in the OS page cache), and
		// this bounds what a power cut can take. SyncAlways would cost most of the throughput.
		SyncInterval:          time.Second,
		MaxPayload:            1 << 20,
		DisableShortFirstPing: true,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded NATS did not start listening on %s (is the port taken?)", e.Listen)
	}
	return s, nil
}

// Connect opens a client connection that reconnects forever: a worker must outlive a broker
// restart without a restart of its own.
func Connect(urls, name string, log *slog.Logger, opts ...nats.Option) (*nats.Conn, error) {
	base := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS", "error", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("reconnected to NATS", "url", c.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn("NATS error", "error", err)
		}),
	}
	nc, err := nats.Connect(urls, append(base, opts...)...)
	if err != nil {
		if certRefused(err) {
			return nil, fmt.Errorf("connect to NATS: %w: %w", ErrClientCertRefused, err)
		}
		return nil, fmt.Errorf("connect to NATS: %w", err)
	}
	return nc, nil
}

// ErrClientCertRefused is how Connect names a server that ends the connection once the
// client's side of the TLS handshake is done.
var ErrClientCertRefused = errors.New("the server refused this client's TLS certificate (none configured, expired, or not signed by a CA the server trusts)")

// certRefused reports whether err is the server turning the connection away right after the
// TLS handshake. With TLS 1.3 a server checks the client certificate after the client has
// finished its handshake, so a refusal reaches the client either as the server's alert on the
// first read ("remote error: tls: certificate required") or, when the client writes first, as a
// closed connection ("broken pipe"), which alone names nothing. (A client certificate from a
// CA the server does not list is not even sent: the server then says "certificate required".)
func certRefused(err error) bool {
	var op *net.OpError
	if !errors.Is(err, nats.ErrTLS) { // an alert after the handshake; nats.go wraps the handshake's own errors in ErrTLS
		return errors.As(err, &op) && op.Op == "remote error" && strings.HasPrefix(op.Err.Error(), "tls: ")
	}
	return strings.Contains(err.Error(), "connection closed by remote after TLS handshake") // nats.go's words
}
