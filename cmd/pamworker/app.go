package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pamworker/pamworker/broker"
	"github.com/pamworker/pamworker/config"
	"github.com/pamworker/pamworker/guard"
	"github.com/pamworker/pamworker/handlers"
	"github.com/pamworker/pamworker/handlers/element"
	"github.com/pamworker/pamworker/handlers/segura"
	"github.com/pamworker/pamworker/ingress"
	"github.com/pamworker/pamworker/sandbox"
	"github.com/pamworker/pamworker/telemetry"
	"github.com/pamworker/pamworker/worker"
)

func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level}))
}

func newEventID() string { return ulid.Make().String() }

// runWorker wires configuration, broker, vendor clients, metrics and the worker, and runs until
// ctx is done. Every failure to start is one clear line on stderr and exit status 1.
func runWorker(ctx context.Context, withSandbox bool, getenv func(string) string, environ []string, stderr io.Writer) int {
	sandboxToken := ""
	if withSandbox {
		var err error
		if sandboxToken, err = newToken(); err != nil {
			fmt.Fprintln(stderr, "pamworker:", err)
			return exitFailed
		}
		getenv = sandboxEnv(getenv, sandboxToken)
	}
	cfg, err := config.Load(getenv, environ)
	if err != nil {
		fmt.Fprintln(stderr, "pamworker: configuration:", err)
		return exitFailed
	}
	log := newLogger(stderr, cfg.LogLevel)
	stopTracing, err := telemetry.Setup(ctx, getenv, "pamworker", version)
	if err != nil {
		fmt.Fprintln(stderr, "pamworker:", err)
		return exitFailed
	}
	defer flushTraces(stopTracing, log)
	if telemetry.Enabled() {
		log.Info("tracing on (OTEL_* variables)")
	}
	if err := serve(ctx, cfg, withSandbox, sandboxToken, log); err != nil {
		log.Error("pamworker stopped", "error", err.Error())
		fmt.Fprintln(stderr, "pamworker:", err)
		return exitFailed
	}
	return exitOK
}

func serve(ctx context.Context, cfg config.Config, withSandbox bool, sandboxToken string, log *slog.Logger) error {
	sandboxAddr := false // the ingress is on the sandbox's own address, not one the user chose
	if withSandbox {
		env, err := sandbox.Start(ctx, log)
		if err != nil {
			return fmt.Errorf("sandbox: %w", err)
		}
		defer env.Close()
		simulate(&cfg, env, log)
		sandboxAddr = cfg.Ingress.Addr == sandboxIngressAddr
		path, err := writeSandboxToken(cfg.DataDir, sandboxToken)
		if err != nil {
			return fmt.Errorf("sandbox ingress token: %w", err)
		}
		log.Info("sandbox: the HTTP ingress takes actions with this demo token (also in "+path+")", "addr", cfg.Ingress.Addr, "token", sandboxToken,
			"try", `curl -H "Authorization: Bearer $(cat `+path+`)" -d '{"session_id":"<id>"}' http://`+cfg.Ingress.Addr+`/v1/actions/pam.session.drop`)
	}
	for _, t := range cfg.Insecure() {
		log.Warn("target is reached over plain http on a non-loopback host: its credentials cross the network unencrypted", "target", t)
	}

	urls := cfg.NATSURL.Reveal()
	if urls == "" {
		dir, err := filepath.Abs(cfg.DataDir)
		if err != nil {
			return fmt.Errorf("PAMWORKER_DATA_DIR: %w", err)
		}
		ns, err := broker.Start(broker.Embedded{Listen: cfg.NATSListen, DataDir: dir})
		if err != nil {
			return err
		}
		defer func() {
			ns.Shutdown()
			ns.WaitForShutdown()
		}()
		urls = ns.ClientURL()
		log.Info("embedded NATS server with JetStream started", "url", urls, "data_dir", dir)
	}
	auth, err := natsOptions(cfg, log)
	if err != nil {
		return err
	}
	nc, err := broker.Connect(urls, "pamworker", log, auth...)
	if err != nil {
		return err
	}
	defer nc.Close()
	log.Info("connected to NATS", "url", nc.ConnectedUrlRedacted())

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := worker.NewMetrics(reg)

	prot := protected(cfg)
	registry, targets, err := buildHandlers(cfg, prot, metrics, log)
	if err != nil {
		return err
	}
	verifier, err := guard.NewVerifier(guard.Signing{
		Subjects:  cfg.SignedSubjects,
		Keys:      strings.FieldsFunc(cfg.SigningKeys.Reveal(), func(r rune) bool { return r == ';' || unicode.IsSpace(r) }),
		Tolerance: cfg.SignatureAge,
	})
	if err != nil {
		return fmt.Errorf("PAMWORKER_SIGNING_KEYS: %w", err)
	}
	if len(cfg.SignedSubjects) > 0 {
		log.Info("events on these subjects must be signed", "subjects", cfg.SignedSubjects)
	}
	limits := cfg.Limits
	if len(limits) > 0 {
		log.Info("blast-radius limits: events over them are held in the stream", "limits", cfg.Limits)
	}
	w, err := worker.New(nc, registry, metrics, log, newEventID, worker.Config{
		Signatures:      verifier,
		Limits:          limits,
		Concurrency:     cfg.Concurrency,
		AttemptTimeout:  cfg.HTTPTimeout,
		MaxEventBytes:   cfg.MaxEventBytes,
		MaxDeliveries:   cfg.MaxDeliveries,
		RetryMaxElapsed: cfg.RetryMaxElapsed,
		AckWait:         cfg.AckWait,
		ShutdownTimeout: cfg.ShutdownTimeout,
		StallTimeout:    cfg.StallTimeout,
		MaxEventAge:     cfg.MaxEventAge, // 0: no limit
		Partitions:      cfg.Partitions,
		Protected:       prot,
		Topology:        topology(cfg),
		Targets:         targets,
	})
	if err != nil {
		return err
	}

	if cfg.Ingress.Addr != "" {
		stop, err := startIngress(cfg, nc, reg, log)
		switch {
		case err == nil:
			defer stop()
			context.AfterFunc(ctx, stop) // no new requests once shutting down
		case sandboxAddr && errors.Is(err, syscall.EADDRINUSE):
			// The walk-through must not fail for an optional part: say so and go on.
			log.Warn("sandbox: the HTTP ingress's address is taken; running without it (set PAMWORKER_INGRESS_ADDR to another address)",
				"addr", cfg.Ingress.Addr)
		default:
			return err
		}
	}

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("PAMWORKER_HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
	}
	hs := &http.Server{Handler: worker.HealthHandler(reg, w), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "error", err.Error())
		}
	}()
	log.Info("serving /metrics, /healthz and /readyz", "addr", ln.Addr().String(), "targets", targets)

	runErr := w.Run(ctx)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = hs.Shutdown(shutdownCtx)
	if err := nc.Drain(); err != nil && !errors.Is(err, context.Canceled) {
		log.Warn("draining NATS connection", "error", err.Error())
	}
	return runErr
}

// natsOptions turns the configured NATS identity, inbox prefix and TLS into connection options.
func natsOptions(cfg config.Config, log *slog.Logger) ([]nats.Option, error) {
	a := cfg.NATSAuth
	// Replies to this process (JetStream API answers, results on reply_to) arrive under its
	// own prefix, which its NATS permissions may grant to it alone.
	opts := []nats.Option{nats.CustomInboxPrefix(cfg.InboxPrefix)}
	switch {
	case a.CredsFile != "":
		opts = append(opts, nats.UserCredentials(a.CredsFile))
	case a.NkeySeedFile != "":
		o, err := nats.NkeyOptionFromSeed(a.NkeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("PAMWORKER_NATS_NKEY_SEED_FILE: %w", err)
		}
		opts = append(opts, o)
	case a.User != "":
		opts = append(opts, nats.UserInfo(a.User, a.Password.Reveal()))
	case !a.Token.IsZero():
		opts = append(opts, nats.Token(a.Token.Reveal()))
	}
	if a.TLS != (handlers.TLSFiles{}) {
		tc, err := handlers.TLSConfig(a.TLS)
		if err != nil {
			return nil, fmt.Errorf("NATS TLS: %w", err)
		}
		if a.TLS.InsecureSkipVerify {
			log.Warn("TLS VERIFICATION IS OFF for the NATS connection (insecure_skip_verify)")
		}
		opts = append(opts, nats.Secure(tc))
	}
	return opts, nil
}

// protected collects the protected objects of every target. The Element account the worker logs
// in as is always protected: deleting its sessions would cut the worker off mid-incident.
func protected(cfg config.Config) guard.Protected {
	p := guard.Protected{Credentials: map[string][]string{}, ElementUsers: map[string][]string{}, SessionOwners: map[string][]string{}}
	for name, t := range cfg.Segura {
		p.Credentials[name] = t.Protected
		p.SessionOwners[name] = t.ProtectedOwners
	}
	for name, t := range cfg.Element {
		p.ElementUsers[name] = append(append([]string(nil), t.Protected...), t.Username)
	}
	return p
}

// sandboxEnv stands in for the default targets' addresses and logins when they are not set, so
// that a sandbox run may set protection lists alone (PAMWORKER_SEGURA_PROTECTED_CREDENTIALS
// ...): simulate replaces addresses and logins with the simulators' anyway.
//
// It also turns the ingress on — on sandboxIngressAddr unless PAMWORKER_INGRESS_ADDR says
// otherwise — with a caller "sandbox" that may post every action with token, beside any
// callers configured (unless they come from a file).
func sandboxEnv(getenv func(string) string, token string) func(string) string {
	stand := map[string]string{
		"PAMWORKER_SEGURA_URL": "https://sandbox.invalid", "PAMWORKER_SEGURA_CLIENT_ID": "sandbox", "PAMWORKER_SEGURA_CLIENT_SECRET": "sandbox",
		"PAMWORKER_ELEMENT_URL": "https://sandbox.invalid/json-rpc/12.0", "PAMWORKER_ELEMENT_USERNAME": "sandbox", "PAMWORKER_ELEMENT_PASSWORD": "sandbox",
		"PAMWORKER_INGRESS_ADDR": sandboxIngressAddr,
	}
	caller := "sandbox:" + ingress.HashToken(token) + ":>"
	return func(name string) string {
		if name == "PAMWORKER_INGRESS_CALLERS" && getenv(name+"_FILE") == "" {
			if v := getenv(name); v != "" {
				return v + ";" + caller
			}
			return caller
		}
		if v := getenv(name); v != "" {
			return v
		}
		if v, ok := stand[name]; ok && getenv(name+"_FILE") == "" {
			return v
		}
		return ""
	}
}

// simulate points every configured target, and the default ones, at the sandbox's simulators.
// Only where the requests go and how the worker logs in change: the protection lists stay, so
// the sandbox shows what protection does.
func simulate(cfg *config.Config, env *sandbox.Env, log *slog.Logger) {
	if _, ok := cfg.Segura["default"]; !ok {
		cfg.Segura["default"] = config.Segura{}
	}
	if _, ok := cfg.Element["default"]; !ok {
		cfg.Element["default"] = config.Element{}
	}
	for name, t := range cfg.Segura {
		cfg.Segura[name] = config.Segura{URL: env.SeguraURL, ClientID: env.SeguraClientID,
			ClientSecret: handlers.NewSecret(env.SeguraClientSecret), Protected: t.Protected, ProtectedOwners: t.ProtectedOwners}
		log.Info("sandbox: segura target is the in-process simulator", "target", name,
			"protected_credentials", len(t.Protected), "protected_session_owners", len(t.ProtectedOwners))
	}
	for name, t := range cfg.Element {
		cfg.Element[name] = config.Element{URL: env.ElementURL, Username: env.ElementUsername,
			Password: handlers.NewSecret(env.ElementPassword), Protected: t.Protected}
		log.Info("sandbox: element target is the in-process simulator", "target", name, "protected_users", len(t.Protected))
	}
}

// traced makes each vendor request a span when tracing is on.
func traced(rt http.RoundTripper) http.RoundTripper {
	if telemetry.Enabled() {
		return handlers.Traced(rt)
	}
	return rt
}

func topology(cfg config.Config) worker.Topology {
	t := worker.DefaultTopology()
	t.LedgerTTL, t.DedupWindow = cfg.DedupTTL, cfg.DedupTTL
	t.Replicas = cfg.StreamReplicas
	return t
}

// buildHandlers creates one client per configured target, each with an HTTP client whose
// transport counts attempts, and registers the vendors' actions.
func buildHandlers(cfg config.Config, prot guard.Protected, m *worker.Metrics, log *slog.Logger) (*handlers.Registry, []string, error) {
	// One rate limit per target, applied where requests leave (handlers.Pacer).
	pacer := handlers.NewPacer(cfg.TargetRate)
	client := func(target string, t handlers.TLSFiles) (*http.Client, error) {
		tc, err := handlers.TLSConfig(t)
		if err != nil {
			return nil, fmt.Errorf("%s TLS: %w", target, err)
		}
		if t.InsecureSkipVerify {
			log.Warn("TLS VERIFICATION IS OFF for this target (insecure_skip_verify): anyone on the path can impersonate it and receive its credentials",
				"target", target)
		}
		return handlers.NewHTTPClient(handlers.ClientOptions{
			Timeout:      cfg.HTTPTimeout, // a backstop: the pacer bounds each request from when it may go
			MaxIdleConns: cfg.Concurrency,
			Wrap:         func(rt http.RoundTripper) http.RoundTripper { return pacer.Wrap(m.InstrumentTransport(traced(rt))) },
			TLS:          tc,
		}), nil
	}
	var labels []string
	seguras := handlers.Targets[*segura.Client]{}
	for name, t := range cfg.Segura {
		hc, err := client("segura/"+name, t.TLS)
		if err != nil {
			return nil, nil, err
		}
		c, err := segura.New(segura.Config{Name: name, BaseURL: t.URL, APIPrefix: t.APIPrefix, TokenURL: t.TokenURL,
			ClientID: t.ClientID, ClientSecret: t.ClientSecret, HTTPClient: hc,
			OwnerCheck: prot.SessionOwnerCheck(name)})
		if err != nil {
			return nil, nil, fmt.Errorf("segura target %q: %w", name, err)
		}
		seguras[name] = c
		labels = append(labels, "segura/"+name)
	}
	elements := handlers.Targets[*element.Client]{}
	for name, t := range cfg.Element {
		hc, err := client("element/"+name, t.TLS)
		if err != nil {
			return nil, nil, err
		}
		c, err := element.New(element.Config{Name: name, URL: t.URL, Username: t.Username, Password: t.Password, HTTPClient: hc})
		if err != nil {
			return nil, nil, fmt.Errorf("element target %q: %w", name, err)
		}
		elements[name] = c
		labels = append(labels, "element/"+name)
	}
	sort.Strings(labels)
	reg := handlers.NewRegistry()
	if err := segura.Register(reg, seguras); err != nil {
		return nil, nil, err
	}
	if err := element.Register(reg, elements); err != nil {
		return nil, nil, err
	}
	return reg, labels, nil
}
