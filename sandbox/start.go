package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// ElementEndpointPath is the JSON-RPC endpoint Start advertises.
const ElementEndpointPath = "/json-rpc/12.0"

// Env is a running pair of simulators, each on its own loopback HTTP server.
type Env struct {
	// SeguraURL is the base URL: the API is under SeguraURL+"/api" and SeguraURL+"/iso", tokens
	// at SeguraURL+SeguraTokenPath.
	SeguraURL          string
	SeguraClientID     string
	SeguraClientSecret string
	ElementURL         string // the full JSON-RPC endpoint, ElementEndpointPath included
	ElementUsername    string
	ElementPassword    string
	Segura             *Segura
	Element            *Element

	servers   []*http.Server
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// Start serves both simulators on 127.0.0.1 with freshly generated credentials. They stop when
// ctx ends or Close is called. logger may be nil.
func Start(ctx context.Context, logger *slog.Logger) (*Env, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	env := &Env{
		SeguraClientID:     "sandbox-" + randomHex(8),
		SeguraClientSecret: randomHex(24),
		ElementUsername:    "pamworker", // a dedicated login, as in production (and protected by the worker)
		ElementPassword:    randomHex(16),
		done:               make(chan struct{}),
	}
	env.Segura = NewSegura(SeguraOptions{ClientID: env.SeguraClientID, ClientSecret: env.SeguraClientSecret})
	env.Element = NewElement(ElementOptions{Username: env.ElementUsername, Password: env.ElementPassword})

	seguraURL, err := env.serve(env.Segura, logger)
	if err != nil {
		return nil, fmt.Errorf("sandbox: start Segura: %w", err)
	}
	elementURL, err := env.serve(env.Element, logger)
	if err != nil {
		_ = env.Close()
		return nil, fmt.Errorf("sandbox: start Element: %w", err)
	}
	env.SeguraURL = seguraURL
	env.ElementURL = elementURL + ElementEndpointPath

	go func() {
		select {
		case <-ctx.Done():
			_ = env.Close()
		case <-env.done:
		}
	}()
	logger.Info("sandbox Segura PAM Core listening", "url", env.SeguraURL, "token_url", env.SeguraURL+SeguraTokenPath)
	logger.Info("sandbox NetApp Element listening", "url", env.ElementURL)
	return env, nil
}

func (e *Env) serve(h http.Handler, logger *slog.Logger) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	e.servers = append(e.servers, srv)
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			logger.Error("sandbox server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return "http://" + ln.Addr().String(), nil
}

// Close stops both servers at once, dropping open connections. It is safe to call more than once.
func (e *Env) Close() error {
	e.closeOnce.Do(func() {
		close(e.done)
		var errs []error
		for _, srv := range e.servers {
			errs = append(errs, srv.Close())
		}
		e.closeErr = errors.Join(errs...)
	})
	return e.closeErr
}
