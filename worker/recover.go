package worker

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

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
// outside a handler, logs it and hands the event back to JetStream rather than losing it or
// the process.
func (w *Worker) runSafely(ctx context.Context, e *entry) {
	defer func() {
		if p := recover(); p != nil {
			w.log.Error("processing panicked; event handed back to JetStream", "subject", e.msg.Subject(),
				"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			w.handBack(e, w.cfg.RedeliveryDelay, deferRetry)
		}
	}()
	w.settle(ctx, e, w.run(ctx, e))
}
