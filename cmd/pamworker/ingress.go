package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pamworker/pamworker/broker"
	"github.com/pamworker/pamworker/config"
	"github.com/pamworker/pamworker/ingress"
	"github.com/pamworker/pamworker/telemetry"
	"github.com/pamworker/pamworker/worker"
)

// sandboxIngressAddr is where --sandbox serves the ingress unless PAMWORKER_INGRESS_ADDR says
// otherwise; the demo token is written to sandboxTokenFile in the data directory.
const (
	sandboxIngressAddr = "127.0.0.1:9465"
	sandboxTokenFile   = "sandbox-ingress-token"
)

// runIngressCommand is `pamworker ingress` (the ingress as its own process) and
// `pamworker ingress hash-token [TOKEN]`.
func runIngressCommand(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer, stdin io.Reader) int {
	if len(args) > 0 && args[0] == "hash-token" {
		return hashToken(args[1:], stdout, stderr, stdin)
	}
	if len(args) > 0 {
		fmt.Fprintf(stderr, "pamworker ingress: unknown argument %q\n%s", args[0], usage)
		return exitUsage
	}
	cfg, err := config.Load(getenv, environ)
	if err != nil {
		fmt.Fprintln(stderr, "pamworker: configuration:", err)
		return exitFailed
	}
	if cfg.Ingress.Addr == "" {
		fmt.Fprintln(stderr, "pamworker ingress: set PAMWORKER_INGRESS_ADDR (and PAMWORKER_INGRESS_CALLERS)")
		return exitUsage
	}
	log := newLogger(stderr, cfg.LogLevel)
	stopTracing, err := telemetry.Setup(ctx, getenv, "pamworker-ingress", version)
	if err != nil {
		fmt.Fprintln(stderr, "pamworker:", err)
		return exitFailed
	}
	defer flushTraces(stopTracing, log)
	urls := cfg.NATSURL.Reveal()
	if urls == "" {
		urls = "nats://" + cfg.NATSListen
	}
	auth, err := natsOptions(cfg, log)
	if err != nil {
		fmt.Fprintln(stderr, "pamworker ingress:", err)
		return exitFailed
	}
	nc, err := broker.Connect(urls, "pamworker-ingress", log, auth...)
	if err != nil {
		fmt.Fprintln(stderr, "pamworker ingress:", err)
		return exitFailed
	}
	defer nc.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	stop, err := startIngress(cfg, nc, reg, log)
	if err != nil {
		fmt.Fprintln(stderr, "pamworker ingress:", err)
		return exitFailed
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		stop()
		fmt.Fprintf(stderr, "pamworker ingress: PAMWORKER_HTTP_ADDR %s: %v\n", cfg.HTTPAddr, err)
		return exitFailed
	}
	hs := &http.Server{Handler: worker.HealthHandler(reg, natsReady{nc}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	log.Info("serving /metrics, /healthz and /readyz", "addr", ln.Addr().String())
	<-ctx.Done()
	stop()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	_ = nc.Drain()
	return exitOK
}

// natsReady is the ingress process's readiness: connected to NATS.
type natsReady struct{ nc *nats.Conn }

func (r natsReady) Ready() (bool, []string) {
	if r.nc.IsConnected() {
		return true, nil
	}
	return false, []string{"not connected to NATS"}
}

// startIngress serves the ingress on cfg.Ingress.Addr and returns the function that stops it,
// letting requests in progress finish for a moment.
func startIngress(cfg config.Config, nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (func(), error) {
	in := cfg.Ingress
	callers := make([]ingress.Caller, len(in.Callers))
	for i, c := range in.Callers {
		callers[i] = ingress.Caller(c)
	}
	srv, err := ingress.New(nc, ingress.Config{MaxEventBytes: cfg.MaxEventBytes, MaxWait: in.MaxWait, Rate: in.Rate,
		Callers: callers, NewID: newEventID}, log, reg)
	if err != nil {
		return nil, err
	}
	hs := &http.Server{
		Handler:           srv.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      in.MaxWait + 30*time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if in.CertFile != "" {
		if hs.TLSConfig, err = ingressTLS(in); err != nil {
			srv.Close()
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", in.Addr)
	if err != nil {
		srv.Close()
		return nil, fmt.Errorf("PAMWORKER_INGRESS_ADDR %s: %w", in.Addr, err)
	}
	if hs.TLSConfig != nil {
		ln = tls.NewListener(ln, hs.TLSConfig)
	} else if host, _, _ := net.SplitHostPort(in.Addr); !loopback(host) {
		log.Warn("the ingress serves plain HTTP on a non-loopback address: bearer tokens cross the network unencrypted; set PAMWORKER_INGRESS_TLS_CERT_FILE and _KEY_FILE",
			"addr", in.Addr)
	}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("ingress server", "error", err.Error())
		}
	}()
	names := make([]string, len(callers))
	for i, c := range callers {
		names[i] = c.Name
	}
	log.Info("ingress: serving POST /v1/actions/{subject}, GET /v1/results/{event_id}, GET /v1/openapi.json",
		"addr", ln.Addr().String(), "tls", hs.TLSConfig != nil, "client_certificates", in.ClientCAFile != "", "callers", names)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
		srv.Close()
	}, nil
}

// ingressTLS is the ingress's TLS: its certificate, TLS 1.2 at least and, with a client CA,
// client certificates verified when given (callers named by cert_cn need one; callers with a
// token need none).
func ingressTLS(in config.Ingress) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(in.CertFile, in.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("PAMWORKER_INGRESS_TLS_CERT_FILE / _KEY_FILE: %w", err)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if in.ClientCAFile != "" {
		pem, err := os.ReadFile(in.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("PAMWORKER_INGRESS_CLIENT_CA_FILE: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("PAMWORKER_INGRESS_CLIENT_CA_FILE: %s holds no PEM certificate", in.ClientCAFile)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.VerifyClientCertIfGiven
	}
	return tc, nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// newToken makes a bearer token: 32 random bytes, base64url.
func newToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// writeSandboxToken writes the sandbox's demo token where the walk-through reads it.
func writeSandboxToken(dataDir, token string) (string, error) {
	path := filepath.Join(dataDir, sandboxTokenFile)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", err
	}
	return path, os.WriteFile(path, []byte(token+"\n"), 0o600)
}

// hashToken prints the SHA-256 of a bearer token as the configuration holds it. The token is
// read from stdin unless given (a token on the command line lands in the shell's history);
// --generate makes a new random one and prints both.
func hashToken(args []string, stdout, stderr io.Writer, stdin io.Reader) int {
	var token string
	switch {
	case len(args) == 1 && args[0] == "--generate":
		var err error
		if token, err = newToken(); err != nil {
			fmt.Fprintln(stderr, "pamworker ingress hash-token:", err)
			return exitFailed
		}
		fmt.Fprintf(stdout, "token:        %s\ntoken_sha256: %s\n", token, ingress.HashToken(token))
		return exitOK
	case len(args) == 1 && !strings.HasPrefix(args[0], "-"):
		token = args[0]
	case len(args) == 0:
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			fmt.Fprintln(stderr, "pamworker ingress hash-token:", err)
			return exitFailed
		}
		token = strings.TrimRight(line, "\r\n")
	default:
		fmt.Fprintf(stderr, "pamworker ingress hash-token: usage: pamworker ingress hash-token [TOKEN | --generate] (the token is read from stdin if not given)\n")
		return exitUsage
	}
	if strings.TrimSpace(token) == "" {
		fmt.Fprintln(stderr, "pamworker ingress hash-token: the token is empty")
		return exitUsage
	}
	if token != strings.TrimSpace(token) {
		fmt.Fprintln(stderr, "pamworker ingress hash-token: the token begins or ends with white space; callers' tokens are compared trimmed")
		return exitUsage
	}
	fmt.Fprintln(stdout, ingress.HashToken(token))
	return exitOK
}

// flushTraces stops tracing, sending the spans still buffered.
func flushTraces(stop func(context.Context) error, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := stop(ctx); err != nil {
		log.Warn("flushing traces", "error", err.Error())
	}
}
