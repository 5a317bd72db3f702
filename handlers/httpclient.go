package handlers

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ClientOptions shapes the HTTP client shared by a vendor's API calls and its token requests.
type ClientOptions struct {
	// Timeout bounds the wait for a reply's headers, as a backstop: callers give each request
	// a context deadline. It is not http.Client.Timeout, which costs a timer goroutine per
	// request.
	Timeout      time.Duration
	MaxIdleConns int // idle keep-alive connections kept per host (≈ concurrency)
	// Wrap, if set, wraps the transport (the worker uses it to count attempts).
	Wrap func(http.RoundTripper) http.RoundTripper
	// TLS, if set, replaces the default (system roots, TLS 1.2 at least); see TLSConfig.
	TLS *tls.Config
}

// ErrRedirect is returned for any redirect: a PAM API that redirects is misconfigured or
// intercepted, and following it could carry the bearer token elsewhere.
var ErrRedirect = errors.New("the server answered with a redirect; redirects are not followed")

// NewHTTPClient returns a client with TLS verification on (TLS 1.2 at least), keep-alive
// connection reuse, a bound on the wait for a reply and no redirects.
func NewHTTPClient(o ClientOptions) *http.Client {
	idle := max(o.MaxIdleConns, 4)
	var rt http.RoundTripper = &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       cmp.Or(o.TLS, &tls.Config{MinVersion: tls.VersionTLS12}),
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          idle * 2,
		MaxIdleConnsPerHost:   idle,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
		ResponseHeaderTimeout: o.Timeout,
	}
	if o.Wrap != nil {
		rt = o.Wrap(rt)
	}
	return &http.Client{
		Transport: rt,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return ErrRedirect
		},
	}
}

// Send sends req on hc's transport itself. pamworker never follows a redirect, so it needs
// none of http.Client's redirect machinery, which copies every request's headers; a redirect
// is ErrRedirect, as with the clients NewHTTPClient makes. Errors read as http.Client's do.
func Send(hc *http.Client, req *http.Request) (*http.Response, error) {
	rt := hc.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	op := req.Method[:1] + strings.ToLower(req.Method[1:])
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return nil, &url.Error{Op: op, URL: req.URL.Redacted(), Err: err}
	}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 && resp.Header.Get("Location") != "" {
		resp.Body.Close()
		return nil, &url.Error{Op: op, URL: req.URL.Redacted(), Err: ErrRedirect}
	}
	return resp, nil
}

// Call names the API call a request belongs to, carried in its context so the transport can
// label what it observes without the vendor clients knowing about metrics.
type Call struct {
	Target  string        // TargetLabel, e.g. "segura/default"
	Action  string        // the action subject, or "oauth_token" for a token request
	Timeout time.Duration // bound of each request, from when it may go (see Pacer); 0: none
	Route   string        // the request's path with its ids as {id}, for traces (see Traced)
}

type callKey struct{}

// WithCall returns ctx carrying c.
func WithCall(ctx context.Context, c Call) context.Context {
	return context.WithValue(ctx, callKey{}, c)
}

// CallFrom returns the Call carried by ctx.
func CallFrom(ctx context.Context) (Call, bool) {
	c, ok := ctx.Value(callKey{}).(Call)
	return c, ok
}

// TransportError turns an error from http.Client.Do into a RetryableError: a timeout or a
// connection failure. A redirect means the worker is pointed at the wrong URL (http instead of
// https, a wrong path, a login page): the target is down for the worker, not the event at fault.
// A failed TLS handshake or verification marks the target down too: retrying cannot fix an
// unknown CA or a wrong host name, and no event should fail for it.
// A cancelled parent context is returned as it is, so the caller sees that it is shutting down
// rather than a vendor failure.
func TransportError(ctx context.Context, err error) error {
	if errors.Is(err, ErrRedirect) {
		return &TargetDownError{VendorError: VendorError{Code: "redirect", Message: ErrRedirect.Error()}, Err: err}
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return ctx.Err()
	}
	if isTLSFailure(err) {
		return &TargetDownError{VendorError: VendorError{Code: "tls", Message: "TLS handshake or certificate verification failed"}, Err: err}
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return &RetryableError{Reason: ReasonTimeout, Err: err}
	}
	return &RetryableError{Reason: ReasonConnection, Err: err}
}
