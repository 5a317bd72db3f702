// Package element is the client of NetApp Element's JSON-RPC API and the handler of the action
// it serves: deleting a user's authentication sessions (DeleteAuthSessionsByUsername). Element
// reports every error as code 500 told apart by its name; those names are classified here.
package element

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/pamworker/pamworker/handlers"
)

// Config describes one Element cluster.
type Config struct {
	Name       string // the target's name
	URL        string // JSON-RPC endpoint, e.g. https://mvip/json-rpc/12.0
	Username   string // cluster admin, sent with HTTP Basic
	Password   handlers.Secret
	HTTPClient *http.Client
}

// Client calls one Element cluster.
type Client struct {
	name     string
	url      string
	path     string // of url: holds no id, so traces show it
	username string
	password handlers.Secret
	hc       *http.Client
	nextID   atomic.Int64
}

// New checks cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.URL)
	switch {
	case err != nil:
		return nil, fmt.Errorf("element: URL: %w", err)
	case u.Scheme != "https" && u.Scheme != "http", u.Host == "":
		return nil, fmt.Errorf("element: URL %q must be an http(s) URL with a host", cfg.URL)
	case u.User != nil || u.Fragment != "":
		return nil, errors.New("element: URL must not carry credentials or a fragment")
	case cfg.Username == "" || cfg.Password.IsZero():
		return nil, errors.New("element: username and password are required")
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = handlers.NewHTTPClient(handlers.ClientOptions{Timeout: 10 * time.Second})
	}
	name := cfg.Name
	if name == "" {
		name = "default"
	}
	return &Client{name: name, url: cfg.URL, path: u.EscapedPath(), username: cfg.Username, password: cfg.Password, hc: hc}, nil
}

type rpcRequest struct {
	Method string `json:"method"`
	Params any    `json:"params"`
	ID     int64  `json:"id"`
}

type rpcError struct {
	Code    int    `json:"code"`
	Name    string `json:"name"`
	Message string `json:"message"`
}

type rpcResponse struct {
	ID     json.RawMessage `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *rpcError       `json:"error"`
}

// call invokes method with params and decodes its result into out.
func (c *Client) call(ctx context.Context, method string, params, out any) (int, error) {
	body, err := json.Marshal(rpcRequest{Method: method, Params: params, ID: c.nextID.Add(1)})
	if err != nil {
		return 0, &handlers.PermanentError{VendorError: handlers.VendorError{Code: "bad_request", Message: err.Error()}}
	}
	if call, ok := handlers.CallFrom(ctx); ok { // the endpoint holds no id: traces show its path
		call.Route = c.path
		ctx = handlers.WithCall(ctx, call)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return 0, &handlers.PermanentError{VendorError: handlers.VendorError{Code: "bad_request", Message: err.Error()}}
	}
	req.Header.Set("Content-Type", "application/json-rpc")
	req.Header.Set("Accept", "application/json")
	req.SetBasicAuth(c.username, c.password.Reveal())
	resp, err := handlers.Send(c.hc, req)
	if err != nil {
		return 0, handlers.TransportError(ctx, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return resp.StatusCode, handlers.TransportError(ctx, err)
	}
	return resp.StatusCode, classify(resp.StatusCode, resp.Header, raw, out, time.Now())
}

// Transient error names: the cluster is busy or electing; the same call will pass later.
var transient = map[string]bool{"xDBVersionMismatch": true, "xNotReadyForIO": true}

// Names that say the worker's own account may not do this: it is misconfigured, not the event.
var lockout = map[string]bool{"xPermissionDenied": true, "xNotAuthorized": true, "xAuthenticationFailed": true}

// classify interprets one reply: a JSON-RPC error by name, else by HTTP status, else decodes the
// result into out.
func classify(status int, h http.Header, raw []byte, out any, now time.Time) error {
	var r rpcResponse
	parsed := json.Unmarshal(raw, &r) == nil
	if parsed && r.Error != nil && r.Error.Name != "" {
		ve := handlers.VendorError{Code: r.Error.Name, Message: r.Error.Message, HTTPStatus: status}
		switch {
		case transient[r.Error.Name]:
			return &handlers.RetryableError{VendorError: ve, Reason: handlers.ReasonTransient,
				After: handlers.ParseRetryAfter(h.Get("Retry-After"), now)}
		case lockout[r.Error.Name]:
			return &handlers.TargetDownError{VendorError: ve}
		}
		return &handlers.PermanentError{VendorError: ve}
	}
	ve := handlers.VendorError{Code: "http_" + strconv.Itoa(status), Message: http.StatusText(status), HTTPStatus: status}
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		ve.Message = "the cluster refused the worker's credentials"
		return &handlers.TargetDownError{VendorError: ve}
	case status < 200 || status > 299:
		if reason, ok := handlers.RetryableStatus(status); ok {
			return &handlers.RetryableError{VendorError: ve, Reason: reason,
				After: handlers.ParseRetryAfter(h.Get("Retry-After"), now)}
		}
		return &handlers.PermanentError{VendorError: ve}
	case !parsed || r.Result == nil:
		ve.Code, ve.Message = "unexpected_reply", "2xx reply that is not a JSON-RPC result"
		return &handlers.RetryableError{VendorError: ve, Reason: handlers.ReasonServer}
	}
	if err := json.Unmarshal(r.Result, out); err != nil {
		ve.Code, ve.Message = "unexpected_reply", "result does not have the documented shape: "+err.Error()
		return &handlers.RetryableError{VendorError: ve, Reason: handlers.ReasonServer}
	}
	return nil
}
