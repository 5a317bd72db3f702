package worker

import (
	"context"

	"github.com/pamworker/pamworker/events"
)

// protect refuses an event against a protected object, loudly. (A session drop's owner is
// known only once the handler looks it up; the call step refuses those the same way.)
func (w *Worker) protect(_ context.Context, e *entry) verdict {
	if rej := w.cfg.Protected.Check(e.ev); rej != nil {
		return w.refuseProtected(e, rejected(e.ev, rej))
	}
	return next()
}

// refuseProtected answers an event against a protected object: rejected, logged and counted.
func (w *Worker) refuseProtected(e *entry, res events.Result) verdict {
	e.logger().Warn("event against a protected object refused", "target", e.ev.Target, "reason", res.Message,
		"requested_by", e.ev.RequestedBy, "correlation_id", e.ev.CorrelationID)
	w.m.protected.WithLabelValues(actionLabel(e.ev.Action)).Inc()
	return answerWith(res, true)
}
