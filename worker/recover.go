package worker

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
)

// recoverHandler turns a panic in a handler — a bug, or a vendor reply that trips one — into a
// retryable error, so one bad event is retried and, if it keeps panicking, fails after
// MaxDeliveries instead of taking the process and every in-flight event down with it.
func recoverHandler(log *slog.Logger) handlers.Middleware {
	return func(next handlers.Handler) handlers.Handler {
		return handlers.HandlerFunc(func(ctx context.Context, ev events.Event) (out handlers.Outcome, err error) {
			defer func() {
				if p := recover(); p != nil {
					log.Error("handler panicked; the event will be retried", "event_id", ev.ID, "action", ev.Action,
						"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
					err = &handlers.RetryableError{
						Reason:      handlers.ReasonInternal,
						VendorError: handlers.VendorError{Code: "internal_error", Message: "the handler panicked; see the worker's log"},
					}
				}
			}()
			return next.Handle(ctx, ev)
		})
	}
}

// runSafely runs e through the pipeline and settles it and, if the worker's own code panics
// outside a handler, logs it and lets the event wait to be run again rather than losing it or
// the process. It waits at the head of its object's queue, so no later event about the object
// overtakes it.
func (w *Worker) runSafely(ctx context.Context, e *entry) {
	defer func() {
		if p := recover(); p != nil {
			w.log.Error("processing panicked; the event waits and runs again", "subject", e.msg.Subject(),
				"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			if e.part.owned.Load() {
				w.park(e, waitUntil(time.Now().Add(w.cfg.RedeliveryDelay), deferRetry))
			} else {
				w.handBack(e, 0, deferReleased)
			}
		}
	}()
	w.settle(ctx, e, w.run(ctx, e))
}
