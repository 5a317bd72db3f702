// Package segura is the client of Segura (formerly senhasegura) PAM Core's A2A API and the
// handlers of the actions it serves: session drop, credential disable and enable, custody
// release. Vendor replies are classified here, once, into handlers' error types.
package segura

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/pamworker/pamworker/handlers"
)

// Config describes one Segura instance.
type Config struct {
	Name         string // the target's name, "default" unless configured otherwise
	BaseURL      string // e.g. https://segura.example.com
	APIPrefix    string // "/api" (default) or "/iso"
	TokenURL     string // default BaseURL + /iso/oauth2/token
	ClientID     string
	ClientSecret handlers.Secret
	HTTPClient   *http.Client // shared by API and token requests
	// OwnerCheck, when set, makes every session drop look up who opened the session first and
	// refuse it if the check says so. Nil: drops make no lookup.
	OwnerCheck OwnerCheck
	// MinListRefresh is the shortest time between two reads of the session list (default 2s).
	MinListRefresh time.Duration
}

// Client calls one Segura instance.
type Client struct {
	name   string
	root   string // scheme://host[/path] + API prefix, no trailing slash
	hc     *http.Client
	tokens *tokens

	ownerCheck OwnerCheck
	owners     *owners
}

// New checks cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	root, err := BaseEndpoint(cfg.BaseURL, cfg.APIPrefix)
	if err != nil {
		return nil, err
	}
	if cfg.ClientID == "" || cfg.ClientSecret.IsZero() {
		return nil, errors.New("segura: client id and client secret are required")
	}
	tokenURL := cfg.TokenURL
	if tokenURL == "" {
		tokenURL = strings.TrimRight(cfg.BaseURL, "/") + "/iso/oauth2/token"
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = handlers.NewHTTPClient(handlers.ClientOptions{Timeout: 10 * time.Second})
	}
	name := cfg.Name
	if name == "" {
		name = "default"
	}
	return &Client{
		name:       name,
		root:       root,
		hc:         hc,
		ownerCheck: cfg.OwnerCheck,
		owners:     newOwners(cmp.Or(cfg.MinListRefresh, minListRefresh)),
		tokens: &tokens{
			cc: clientcredentials.Config{
				ClientID:     cfg.ClientID,
				ClientSecret: cfg.ClientSecret.Reveal(),
				TokenURL:     tokenURL,
			},
			hc:     hc,
			target: "segura/" + name,
			now:    time.Now,
		},
	}, nil
}

// BaseEndpoint validates a base URL and API prefix and joins them.
func BaseEndpoint(base, prefix string) (string, error) {
	u, err := url.Parse(base)
	switch {
	case err != nil:
		return "", fmt.Errorf("segura: base URL: %w", err)
	case u.Scheme != "https" && u.Scheme != "http":
		return "", fmt.Errorf("segura: base URL %q must be http(s)", base)
	case u.Host == "":
		return "", fmt.Errorf("segura: base URL %q has no host", base)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		return "", fmt.Errorf("segura: base URL must not carry credentials, a query or a fragment")
	}
	if prefix == "" {
		prefix = "/api"
	}
	if !strings.HasPrefix(prefix, "/") || strings.ContainsAny(prefix, "?#%") {
		return "", fmt.Errorf("segura: API prefix %q must be a path like /api", prefix)
	}
	return strings.TrimRight(u.Scheme+"://"+u.Host+u.EscapedPath(), "/") + strings.TrimRight(prefix, "/"), nil
}

// Request is one API call: its method and exact URL.
type Request struct {
	Method string `json:"method"`
	URL    string `json:"url"`
	route  string // the URL's path with its ids as {id}, for traces
}

// route is the path of root+path followed by one {id} per id segment.
func route(root, path string, ids int) string {
	if u, err := url.Parse(root); err == nil {
		root = u.Path
	}
	return root + path + strings.Repeat("/{id}", ids)
}

// endpoint appends path (fixed, trusted) and one escaped segment per id to the API root. Each
// id becomes exactly one path segment: '/', '?', '#', '%' and the rest are escaped, and '.' and
// '..' are refused because clients and proxies resolve them as path steps.
func endpoint(root, path string, ids ...string) (string, error) {
	var b strings.Builder
	b.WriteString(root)
	b.WriteString(path)
	for _, id := range ids {
		if id == "" || id == "." || id == ".." {
			return "", fmt.Errorf("segura: %q cannot be a path segment", id)
		}
		b.WriteByte('/')
		b.WriteString(url.PathEscape(id))
	}
	return b.String(), nil
}

// credentialSegment is the one segment naming a credential: its id, or username@hostname.
func credentialSegment(id int64, username, hostname string) (string, error) {
	if id > 0 {
		return fmt.Sprint(id), nil
	}
	if username == "" || hostname == "" || strings.Contains(username, "@") || strings.Contains(hostname, "@") {
		return "", errors.New("segura: a credential is named by its id or by username@hostname, neither holding @")
	}
	if username == "." || username == ".." || hostname == "." || hostname == ".." {
		return "", errors.New("segura: username and hostname must not be . or ..")
	}
	return username + "@" + hostname, nil
}

// do sends one API call with the bearer token and classifies the reply.
func (c *Client) do(ctx context.Context, op operation, req Request) (handlers.Outcome, error) {
	out, _, err := c.call(ctx, op, req, maxReply)
	return out, err
}

// Largest replies read: an action's envelope, and the remote session list, which the vendor
// warns "can be very long".
const (
	maxReply       = 1 << 20
	maxSessionList = 64 << 20
)

// call sends one API call with the bearer token and classifies the reply, which it returns
// too. A token refused by the API is dropped and refetched once before the refusal counts.
func (c *Client) call(ctx context.Context, op operation, req Request, limit int64) (handlers.Outcome, []byte, error) {
	for try := 0; ; try++ {
		tok, err := c.tokens.get(ctx)
		if err != nil {
			return handlers.Outcome{}, nil, err
		}
		out, body, authRefused, err := c.send(ctx, op, req, tok, limit)
		if authRefused && try == 0 {
			c.tokens.invalidate(tok)
			continue
		}
		return out, body, err
	}
}

// send makes one HTTP request. authRefused reports a reply that means the token was refused.
func (c *Client) send(ctx context.Context, op operation, r Request, tok *oauth2.Token, limit int64) (out handlers.Outcome, body []byte, authRefused bool, err error) {
	if call, ok := handlers.CallFrom(ctx); ok && r.route != "" {
		call.Route = r.route
		ctx = handlers.WithCall(ctx, call)
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, r.URL, nil)
	if err != nil {
		return out, nil, false, &handlers.PermanentError{VendorError: handlers.VendorError{Code: "bad_request", Message: err.Error()}}
	}
	req.Header["Authorization"] = []string{"Bearer " + tok.AccessToken}
	req.Header["Accept"] = []string{"application/json"}
	resp, err := handlers.Send(c.hc, req)
	if err != nil {
		return out, nil, false, handlers.TransportError(ctx, err)
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(io.LimitReader(resp.Body, limit)) // a longer reply is cut, and fails to parse
	if err != nil {
		return out, nil, false, handlers.TransportError(ctx, err)
	}
	out, authRefused, err = classify(op, resp.StatusCode, resp.Header, body, time.Now())
	return out, body, authRefused, err
}
