package handlers_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pamworker/pamworker/handlers"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestNewHTTPClientRefusesRedirects(t *testing.T) {
	t.Parallel()
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { elsewhere.Add(1) }))
	t.Cleanup(other.Close)
	for _, status := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, other.URL+"/stolen", status)
		}))
		t.Cleanup(redirector.Close)
		hc := handlers.NewHTTPClient(handlers.ClientOptions{Timeout: 5 * time.Second})
		req, err := http.NewRequest(http.MethodDelete, redirector.URL+"/api/pam/credential/1", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer secret-token")
		resp, err := hc.Do(req)
		if resp != nil {
			resp.Body.Close()
		}
		if !errors.Is(err, handlers.ErrRedirect) {
			t.Errorf("%d: Do error = %v, want ErrRedirect", status, err)
		}
		var de *handlers.TargetDownError
		if !errors.As(handlers.TransportError(req.Context(), err), &de) {
			t.Errorf("%d: TransportError of a redirect does not mark the target down", status)
		}
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("the redirect target received %d requests", n)
	}
}

func TestNewHTTPClientTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(release) })
	hc := handlers.NewHTTPClient(handlers.ClientOptions{Timeout: 50 * time.Millisecond})
	req, _ := http.NewRequest(http.MethodGet, slow.URL, nil)
	resp, err := hc.Do(req)
	if resp != nil {
		resp.Body.Close()
	}
	var re *handlers.RetryableError
	if !errors.As(handlers.TransportError(req.Context(), err), &re) || re.Reason != handlers.ReasonTimeout {
		t.Errorf("slow server: %v classified as %v, want a retryable timeout", err, handlers.TransportError(req.Context(), err))
	}
}

func TestNewHTTPClientConnectionError(t *testing.T) {
	t.Parallel()
	closed := httptest.NewServer(http.NotFoundHandler())
	addr := closed.URL
	closed.Close()
	hc := handlers.NewHTTPClient(handlers.ClientOptions{Timeout: 5 * time.Second})
	req, _ := http.NewRequest(http.MethodGet, addr, nil)
	_, err := hc.Do(req)
	var re *handlers.RetryableError
	if !errors.As(handlers.TransportError(req.Context(), err), &re) || re.Reason != handlers.ReasonConnection {
		t.Errorf("closed port: %v classified as %v, want a retryable connection error", err, handlers.TransportError(req.Context(), err))
	}
}

func TestNewHTTPClientVerifiesTLS(t *testing.T) {
	t.Parallel()
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	hc := handlers.NewHTTPClient(handlers.ClientOptions{Timeout: 5 * time.Second})
	resp, err := hc.Get(srv.URL)
	if err == nil {
		resp.Body.Close()
		t.Fatal("a self-signed certificate was accepted")
	}
}

func TestNewHTTPClientWrapAndCall(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	t.Cleanup(srv.Close)
	var seen []handlers.Call
	hc := handlers.NewHTTPClient(handlers.ClientOptions{
		Timeout: 5 * time.Second,
		Wrap: func(next http.RoundTripper) http.RoundTripper {
			return roundTripFunc(func(r *http.Request) (*http.Response, error) {
				c, _ := handlers.CallFrom(r.Context())
				seen = append(seen, c)
				return next.RoundTrip(r)
			})
		},
	})
	want := handlers.Call{Target: "segura/default", Action: "pam.session.drop"}
	ctx := handlers.WithCall(context.Background(), want)
	req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, srv.URL, nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(seen) != 1 || seen[0] != want {
		t.Errorf("the wrapped transport saw %v, want [%v]", seen, want)
	}
	if _, ok := handlers.CallFrom(context.Background()); ok {
		t.Error("CallFrom found a call in an empty context")
	}
}

func TestTLSConfigErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notPEM := dir + "/not.pem"
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]handlers.TLSFiles{
		"missing CA file":  {CAFile: dir + "/nope.pem"},
		"CA file not PEM":  {CAFile: notPEM},
		"cert without key": {CertFile: notPEM},
		"bad key pair":     {CertFile: notPEM, KeyFile: notPEM},
	} {
		if _, err := handlers.TLSConfig(f); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	c, err := handlers.TLSConfig(handlers.TLSFiles{})
	if err != nil || c.MinVersion != tls.VersionTLS12 || c.InsecureSkipVerify {
		t.Errorf("default TLS config %+v %v", c, err)
	}
}
