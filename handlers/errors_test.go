package handlers_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pamworker/pamworker/handlers"
)

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	date := func(d time.Duration, layout string) string { return now.Add(d).Format(layout) }
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"2", 2 * time.Second},
		{" 2 ", 2 * time.Second},
		{"0", 0},
		{"120", 2 * time.Minute},
		{"600", 10 * time.Minute},
		{"601", 10 * time.Minute},
		{"86400", 10 * time.Minute},
		{"10000000000", 10 * time.Minute},             // seconds that overflow a Duration
		{"99999999999999999999999", 10 * time.Minute}, // seconds that overflow an int
		{"-5", 0},
		{"1.5", 0},
		{"soon", 0},
		{"2s", 0},
		{date(30*time.Second, http.TimeFormat), 30 * time.Second},
		{date(-30*time.Second, http.TimeFormat), 0},
		{date(48*time.Hour, http.TimeFormat), 10 * time.Minute},
		{date(90*time.Second, time.RFC850), 90 * time.Second}, // obsolete forms RFC 9110 still requires
		{date(90*time.Second, time.ANSIC), 90 * time.Second},
		{"Sun, 99 Nov 2026 08:49:37 GMT", 0},
	}
	for _, tc := range tests {
		if got := handlers.ParseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("ParseRetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestRetryableStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status int
		reason handlers.Reason
		ok     bool
	}{
		{429, handlers.ReasonRateLimit, true},
		{500, handlers.ReasonServer, true},
		{502, handlers.ReasonServer, true},
		{503, handlers.ReasonServer, true},
		{504, handlers.ReasonServer, true},
		{200, "", false},
		{400, "", false},
		{401, "", false},
		{403, "", false},
		{404, "", false},
		{501, "", false},
	}
	for _, tc := range tests {
		reason, ok := handlers.RetryableStatus(tc.status)
		if reason != tc.reason || ok != tc.ok {
			t.Errorf("RetryableStatus(%d) = %q, %v; want %q, %v", tc.status, reason, ok, tc.reason, tc.ok)
		}
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	perm := &handlers.PermanentError{VendorError: handlers.VendorError{Code: "1007", Message: "1007: Credential not found", HTTPStatus: 400}}
	retry := &handlers.RetryableError{Reason: handlers.ReasonRateLimit, After: time.Second}
	down := &handlers.TargetDownError{VendorError: handlers.VendorError{Code: "1039"}}
	plain := errors.New("boom")
	tests := []struct {
		name string
		err  error
		kind string
	}{
		{"nil", nil, ""},
		{"permanent", perm, "permanent"},
		{"wrapped permanent", fmt.Errorf("segura: %w", perm), "permanent"},
		{"retryable", retry, "retry"},
		{"wrapped retryable", fmt.Errorf("x: %w", retry), "retry"},
		{"target down", down, "down"},
		{"target down caused by a retryable error", &handlers.TargetDownError{Err: retry}, "down"},
		{"plain error is kept, not lost", plain, "retry"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			kind, re, pe, de := handlers.Classify(tc.err)
			if kind.String() != tc.kind {
				t.Fatalf("kind = %q, want %q", kind, tc.kind)
			}
			// Exactly the typed error matching kind is set.
			set := map[string]bool{"retry": re != nil, "permanent": pe != nil, "down": de != nil}
			for k, isSet := range set {
				if isSet != (k == tc.kind) {
					t.Errorf("typed error for %q set = %v with kind %q", k, isSet, tc.kind)
				}
			}
		})
	}
	_, re, _, _ := handlers.Classify(plain)
	if re.Reason != handlers.ReasonServer || !errors.Is(re, plain) {
		t.Errorf("plain error classified as %#v", re)
	}
	_, re, _, _ = handlers.Classify(fmt.Errorf("x: %w", retry))
	if re != retry {
		t.Errorf("Classify returned %p, want the original %p", re, retry)
	}
}

func TestErrorMessages(t *testing.T) {
	t.Parallel()
	cause := errors.New("connection reset")
	tests := []struct {
		err   error
		want  []string
		avoid []string
	}{
		{
			err:   &handlers.PermanentError{VendorError: handlers.VendorError{Code: "1007", Message: "1007: Credential not found", HTTPStatus: 400}},
			want:  []string{"1007", "Credential not found", "400"},
			avoid: []string{"1007: 1007"},
		},
		{
			err:  &handlers.RetryableError{VendorError: handlers.VendorError{Code: "http_503", Message: "Service Unavailable", HTTPStatus: 503}, Reason: handlers.ReasonServer},
			want: []string{"retryable", "server", "http_503", "Service Unavailable", "503"},
		},
		{
			err:  &handlers.RetryableError{Reason: handlers.ReasonConnection, Err: cause},
			want: []string{"connection", "connection reset"},
		},
		{
			err:  &handlers.TargetDownError{VendorError: handlers.VendorError{Code: "1039", Message: "1039: Without PAM Configuration Access permission", HTTPStatus: 400}},
			want: []string{"1039", "Without PAM Configuration Access permission"},
		},
		{
			err:  &handlers.TargetDownError{VendorError: handlers.VendorError{Code: "invalid_client"}, Err: cause},
			want: []string{"invalid_client", "connection reset"},
		},
	}
	for _, tc := range tests {
		msg := tc.err.Error()
		for _, w := range tc.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%q does not mention %q", msg, w)
			}
		}
		for _, a := range tc.avoid {
			if strings.Contains(msg, a) {
				t.Errorf("%q repeats %q", msg, a)
			}
		}
	}
	if !errors.Is(&handlers.RetryableError{Err: cause}, cause) || !errors.Is(&handlers.TargetDownError{Err: cause}, cause) {
		t.Error("Unwrap does not reach the cause")
	}
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

func TestTransportError(t *testing.T) {
	t.Parallel()
	urlErr := func(err error) error { return &url.Error{Op: "Delete", URL: "https://segura/api/x", Err: err} }
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	t.Cleanup(cancel2)
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}

	tests := []struct {
		name       string
		ctx        context.Context
		err        error
		wantReason handlers.Reason // for a RetryableError
		wantDown   bool
		wantCtxErr error // returned as it is
	}{
		{name: "client timeout", ctx: context.Background(), err: urlErr(timeoutError{}), wantReason: handlers.ReasonTimeout},
		{name: "deadline of the attempt", ctx: expired, err: urlErr(context.DeadlineExceeded), wantReason: handlers.ReasonTimeout},
		{name: "connection refused", ctx: context.Background(), err: urlErr(refused), wantReason: handlers.ReasonConnection},
		{name: "reset", ctx: context.Background(), err: urlErr(syscall.ECONNRESET), wantReason: handlers.ReasonConnection},
		{name: "unexpected EOF", ctx: context.Background(), err: urlErr(errors.New("unexpected EOF")), wantReason: handlers.ReasonConnection},
		{name: "cancelled parent", ctx: cancelled, err: urlErr(context.Canceled), wantCtxErr: context.Canceled},
		{name: "cancelled parent wins over a timeout", ctx: cancelled, err: urlErr(timeoutError{}), wantCtxErr: context.Canceled},
		{name: "redirect", ctx: context.Background(), err: urlErr(handlers.ErrRedirect), wantDown: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := handlers.TransportError(tc.ctx, tc.err)
			var re *handlers.RetryableError
			var de *handlers.TargetDownError
			switch {
			case tc.wantCtxErr != nil:
				if !errors.Is(got, tc.wantCtxErr) || errors.As(got, &re) {
					t.Errorf("TransportError = %v (%T), want %v as it is", got, got, tc.wantCtxErr)
				}
			case tc.wantDown:
				if !errors.As(got, &de) || de.Code != "redirect" {
					t.Errorf("TransportError = %v (%T), want the target down for a redirect", got, got)
				}
			default:
				if !errors.As(got, &re) || re.Reason != tc.wantReason {
					t.Fatalf("TransportError = %v (%T), want retryable %q", got, got, tc.wantReason)
				}
				if !errors.Is(got, tc.err) {
					t.Errorf("the transport error is not kept: %v", got)
				}
			}
		})
	}
}
