package worker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.opentelemetry.io/otel/trace"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/guard"
	"github.com/pamworker/pamworker/handlers"
)

// call makes one attempt of the event's action and decides what follows: an answer, or a wait
// in memory before the next attempt — a backoff with jitter honouring Retry-After, a longer
// pause once a retry budget is spent, or the target's return. A waiting event holds no runner.
// After MaxDeliveries spent budgets the event fails.
func (w *Worker) call(ctx context.Context, e *entry) verdict {
	tgt := handlers.TargetLabel(e.ev.Action, e.ev.Target)
	if e.try == nil {
		b := backoff.NewExponentialBackOff()
		b.InitialInterval, b.MaxInterval, b.MaxElapsedTime = w.cfg.RetryInitial, w.cfg.RetryMaxInterval, 0
		b.Reset()
		e.try = &tryState{b: b, start: time.Now()}
	}
	t := e.try
	t.attempts++
	// The transport bounds each request by AttemptTimeout once the target's rate limit lets
	// it go (handlers.Pacer): only calls that reach the vendor wait for its rate.
	callCtx := handlers.WithCall(ctx, handlers.Call{Target: tgt, Action: e.ev.Action, Timeout: w.cfg.AttemptTimeout})
	if e.span != nil {
		callCtx = trace.ContextWithSpan(callCtx, e.span) // each request is a child span (handlers.Traced)
	}
	out, err := w.handler.Handle(callCtx, e.ev)
	if ctx.Err() != nil && err != nil {
		// Cut short by the end of the shutdown grace: the call may or may not have reached the
		// vendor; the next owner runs it (the actions are idempotent). A call that came back
		// with an answer is kept.
		return verdict{kind: verdictHandBack, reason: deferShutdown}
	}
	kind, re, pe, de := handlers.Classify(err)
	var rej *events.Rejection
	if errors.As(err, &rej) {
		kind = handlers.Refused
	}
	accepted := (err == nil && out.HTTPStatus != 0) || (pe != nil && pe.HTTPStatus != 0)
	refusedBy := ""
	if de != nil {
		refusedBy = de.Error()
	}
	if w.targets.attempted(tgt, kind == handlers.Retry) {
		e.logger().Error("target keeps failing; its circuit is open and its events wait", "target", tgt, "error", err.Error())
		w.reportChange()
	}
	if w.targets.done(tgt, e.probe, accepted, refusedBy, kind == handlers.Retry) {
		w.reportChange()
		if refusedBy != "" {
			e.logger().Error("target refuses the worker; its events wait until it accepts the worker again", "target", tgt, "error", refusedBy)
		} else if accepted {
			e.logger().Info("target accepts the worker again", "target", tgt)
			w.sched.wakeTarget(tgt)
		}
	}
	e.probe = false

	res := events.NewResult(e.ev)
	res.Attempts = t.attempts
	switch kind {
	case handlers.OK:
		res.Status, res.Message, res.Noop = events.Succeeded, out.Message, out.Noop
		if out.Details != nil {
			res.Details = out.Details
		}
		return answerWith(res, true)
	case handlers.Refused:
		// The handler refused after a look (a session's owner): nothing was changed.
		res = rejected(e.ev, rej)
		res.Attempts = t.attempts
		if rej.Code == guard.CodeProtected {
			return w.refuseProtected(e, res)
		}
		return answerWith(res, true)
	case handlers.Permanent:
		res.Status, res.Message = events.Failed, cmp.Or(pe.Message, pe.Error())
		res.Error = &events.ErrorInfo{Code: pe.Code, Message: pe.Message, HTTPStatus: pe.HTTPStatus}
		return answerWith(res, true)
	case handlers.Down:
		return verdict{kind: verdictWait, until: time.Now().Add(w.cfg.ProbeInterval), reason: deferTargetDown, target: tgt}
	}
	// Retryable.
	if w.targets.isOpen(tgt) {
		_, _, wait := w.targets.admit(tgt) // not a probe: see when the next may go
		return verdict{kind: verdictWait, until: time.Now().Add(max(wait, 50*time.Millisecond)), reason: deferCircuitOpen, target: tgt}
	}
	delay := max(t.b.NextBackOff(), re.After)
	if time.Since(t.start)+delay <= w.cfg.RetryMaxElapsed {
		w.m.retries.WithLabelValues(e.ev.Action, string(re.Reason)).Inc()
		if s := err.Error(); s != t.lastErr {
			e.logger().Warn("attempt failed; retrying", "attempt", t.attempts, "error", s, "wait", delay.String())
			t.lastErr = s
		}
		return waitUntil(time.Now().Add(delay), deferRetry)
	}
	// This budget is spent.
	n, lerr := w.ledger.spend(ctx, e.ev.ID)
	if lerr != nil {
		e.logger().Warn("ledger unavailable; event waits", "error", lerr)
		return waitUntil(time.Now().Add(time.Second), deferLedger)
	}
	if n < w.cfg.MaxDeliveries {
		e.logger().Warn("retries spent; the event waits and tries again", "budgets_spent", n,
			"max_deliveries", w.cfg.MaxDeliveries, "error", err.Error())
		e.try = nil // a fresh budget after the wait
		return waitUntil(time.Now().Add(max(re.After, w.cfg.RedeliveryDelay*time.Duration(n))), deferRetriesSpent)
	}
	res.Status = events.Failed
	res.Message = fmt.Sprintf("gave up after %d retry budgets: %s", n, re.Error())
	res.Error = &events.ErrorInfo{Code: cmp.Or(re.Code, string(re.Reason)), Message: re.Error(), HTTPStatus: re.HTTPStatus, Retryable: true}
	return answerWith(res, true)
}
