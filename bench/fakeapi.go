package main

import (
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// fakeSegura is an instant stand-in for the Segura API: the OAuth 2.0 token endpoint and the
// credential disable/enable calls, answered with the vendor's success envelope. It counts the
// TCP connections it accepts, to show whether a worker reuses its keep-alive connections.
type fakeSegura struct {
	URL      string
	srv      *http.Server
	conns    atomic.Int64 // TCP connections accepted
	calls    atomic.Int64 // credential calls answered
	tokens   atomic.Int64 // token requests answered
	rejected atomic.Int64 // requests without the expected bearer token, or to unknown paths

	// Faults, for the scenarios: every call waits latency; one in hangEvery hangs hangFor
	// before it is answered (or until the client gives up); one in failEvery answers 503
	// without applying anything; while refusing, every call is refused as a locked-out A2A
	// application is ("You are not authorized to access this resource").
	latency, hangFor     atomic.Int64 // nanoseconds
	hangEvery, failEvery atomic.Int64
	refusing             atomic.Bool
	seen                 atomic.Int64 // credential calls received, for the fault counters
	hung, failed         atomic.Int64
}

// faults is a setting of the fake's faults.
type faults struct {
	latency, hangFor     time.Duration
	hangEvery, failEvery int64
}

func (f *fakeSegura) set(x faults) {
	f.latency.Store(int64(x.latency))
	f.hangFor.Store(int64(x.hangFor))
	f.hangEvery.Store(x.hangEvery)
	f.failEvery.Store(x.failEvery)
	f.refusing.Store(false)
}

const (
	fakeToken     = "t"
	tokenReply    = `{"access_token":"` + fakeToken + `","token_type":"Bearer","expires_in":3600}`
	disableReply  = `{"code":200,"response":{"status":200,"message":"Credential successfully deactivated","error":false,"error_code":0,"detail":"","mensagem":"Credential successfully deactivated","erro":false,"cod_erro":0}}`
	enableReply   = `{"code":200,"response":{"status":200,"message":"Credential successfully activated","error":false,"error_code":0,"detail":"","mensagem":"Credential successfully activated","erro":false,"cod_erro":0}}`
	notFoundReply = `{"message":"No route matched with those values"}`
)

func startFakeSegura() (*fakeSegura, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &fakeSegura{URL: "http://" + ln.Addr().String()}
	f.srv = &http.Server{
		Handler: http.HandlerFunc(f.serve),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				f.conns.Add(1)
			}
		},
	}
	go func() { _ = f.srv.Serve(ln) }()
	return f, nil
}

func (f *fakeSegura) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/iso/oauth2/token":
		f.tokens.Add(1)
		_, _ = w.Write([]byte(tokenReply))
		return
	case !strings.HasPrefix(r.URL.Path, "/api/pam/credential/"):
	case r.Header.Get("Authorization") != "Bearer "+fakeToken:
		f.rejected.Add(1)
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"message":"You are not authorized to access this resource"}`))
		return
	case f.refusing.Load():
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"code":403,"response":{"status":403,"message":"You are not authorized to access this resource.","error":true}}`))
		return
	case !f.fault(w, r):
		return
	case r.Method == http.MethodDelete:
		f.calls.Add(1)
		_, _ = w.Write([]byte(disableReply))
		return
	case r.Method == http.MethodPut:
		f.calls.Add(1)
		_, _ = w.Write([]byte(enableReply))
		return
	}
	f.rejected.Add(1)
	w.WriteHeader(http.StatusNotFound)
	_, _ = w.Write([]byte(notFoundReply))
}

// fault applies the configured latency, hangs and failures to one call; it reports whether
// the call should go on to be answered normally.
func (f *fakeSegura) fault(w http.ResponseWriter, r *http.Request) bool {
	n := f.seen.Add(1)
	wait := time.Duration(f.latency.Load())
	if e := f.hangEvery.Load(); e > 0 && n%e == 0 {
		f.hung.Add(1)
		wait = time.Duration(f.hangFor.Load())
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return false
		}
	}
	if e := f.failEvery.Load(); e > 0 && n%e == 1 {
		f.failed.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"message":"Service Unavailable"}`))
		return false
	}
	return true
}

// apiCounters is a snapshot of what the fake API has seen.
type apiCounters struct{ conns, calls, tokens, rejected int64 }

func (f *fakeSegura) snapshot() apiCounters {
	return apiCounters{f.conns.Load(), f.calls.Load(), f.tokens.Load(), f.rejected.Load()}
}

func (a apiCounters) sub(b apiCounters) apiCounters {
	return apiCounters{a.conns - b.conns, a.calls - b.calls, a.tokens - b.tokens, a.rejected - b.rejected}
}
