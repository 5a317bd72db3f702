package segura

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/pamworker/pamworker/handlers"
)

// tokens caches the A2A access token. It refreshes it before expires_in runs out and can be
// told a token was refused (a 401), so the next caller fetches a new one. oauth2's own
// ReuseTokenSource cannot be invalidated, which is why this small cache exists.
type tokens struct {
	cc     clientcredentials.Config
	hc     *http.Client
	target string
	now    func() time.Time

	mu      sync.Mutex
	tok     *oauth2.Token
	fetched time.Time
}

// get returns a valid token, fetching one if needed. Concurrent callers wait for one fetch.
func (t *tokens) get(ctx context.Context) (*oauth2.Token, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tok != nil && t.fresh() {
		return t.tok, nil
	}
	// The token request goes through the same client (timeout, TLS, no redirects) as API calls.
	ctx = context.WithValue(ctx, oauth2.HTTPClient, t.hc)
	call, _ := handlers.CallFrom(ctx) // keeps the attempt's timeout
	call.Target, call.Action, call.Route = t.target, "oauth_token", "/iso/oauth2/token"
	ctx = handlers.WithCall(ctx, call)
	tok, err := t.cc.Token(ctx)
	if err != nil {
		return nil, tokenError(ctx, err)
	}
	t.tok, t.fetched = tok, t.now()
	return tok, nil
}

// fresh reports whether the cached token has enough life left. The margin is a quarter of its
// lifetime, at most 30 s, so short-lived tokens are not refetched on every call.
func (t *tokens) fresh() bool {
	if t.tok.Expiry.IsZero() {
		return true // no expires_in: valid until the API refuses it
	}
	margin := min(t.tok.Expiry.Sub(t.fetched)/4, 30*time.Second)
	return t.now().Add(margin).Before(t.tok.Expiry)
}

// invalidate drops tok if it is still the cached one.
func (t *tokens) invalidate(tok *oauth2.Token) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tok == tok {
		t.tok = nil
	}
}

// tokenError classifies a failed token request. A refusal of the client (4xx: invalid_client,
// unauthorized_client ...) means the worker is misconfigured; anything else may pass.
func tokenError(ctx context.Context, err error) error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.Response == nil {
		return handlers.TransportError(ctx, err)
	}
	ve := handlers.VendorError{
		Code:       re.ErrorCode,
		Message:    re.ErrorDescription,
		HTTPStatus: re.Response.StatusCode,
	}
	if ve.Code == "" {
		ve.Code = "token_http_" + strconv.Itoa(re.Response.StatusCode)
	}
	if reason, ok := handlers.RetryableStatus(re.Response.StatusCode); ok {
		if reason == handlers.ReasonServer {
			reason = handlers.ReasonToken
		}
		return &handlers.RetryableError{
			VendorError: ve,
			Reason:      reason,
			After:       handlers.ParseRetryAfter(re.Response.Header.Get("Retry-After"), time.Now()),
		}
	}
	if ve.Message == "" {
		ve.Message = "the token endpoint refused the client credentials"
	}
	return &handlers.TargetDownError{VendorError: ve}
}
