package handlers

import (
	"context"
	"io"
	"net/http"
	"sync"

	"golang.org/x/time/rate"
)

// Pacer holds each target's rate limit and applies it where a request really leaves for the
// vendor: in the transport. So only calls that reach a vendor spend its rate — a dry run that
// calls nothing is not paced behind real work — and every call does, token requests and list
// reads included. The wait for the rate limit is not part of a request's timeout: a queue of
// requests waiting their turn is not a slow vendor, and must not open its circuit.
type Pacer struct {
	perSecond float64
	mu        sync.Mutex
	m         map[string]*rate.Limiter
}

// NewPacer allows perSecond requests a second to each target (burst: one second's worth).
// perSecond <= 0 paces nothing.
func NewPacer(perSecond float64) *Pacer {
	return &Pacer{perSecond: perSecond, m: map[string]*rate.Limiter{}}
}

func (p *Pacer) limiter(target string) *rate.Limiter {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.m[target]
	if !ok {
		l = rate.NewLimiter(rate.Limit(p.perSecond), max(1, int(p.perSecond)))
		p.m[target] = l
	}
	return l
}

// Wrap returns rt paced by the target of each request's Call and bounded by the Call's
// Timeout, which starts once the request may go. Requests without a Call go unpaced (the
// vendor clients always carry one).
func (p *Pacer) Wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(req *http.Request) (*http.Response, error) {
		c, ok := CallFrom(req.Context())
		if !ok {
			return rt.RoundTrip(req)
		}
		if p != nil && p.perSecond > 0 && c.Target != "" {
			if err := p.limiter(c.Target).Wait(req.Context()); err != nil {
				return nil, err
			}
		}
		if c.Timeout <= 0 {
			return rt.RoundTrip(req)
		}
		ctx, cancel := context.WithTimeout(req.Context(), c.Timeout)
		resp, err := rt.RoundTrip(req.WithContext(ctx))
		if err != nil {
			cancel()
			return nil, err
		}
		resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
		return resp, nil
	})
}

// cancelOnClose ends a request's timeout when its body is closed: the deadline covers reading
// the reply too.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
