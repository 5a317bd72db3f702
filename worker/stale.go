package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/pamworker/pamworker/events"
)

// staleness rejects an event older than MaxEventAge, so a backlog replayed after an outage
// cannot undo what people did meanwhile (re-disable an account someone re-enabled). Age counts
// from the earlier of the event's own time and the moment the stream took it, so a
// clock-skewed or future-dated time cannot make an old event look new. It is a gate: an event
// that waits (held by a limit, behind a target that is down) turns stale while it waits.
func (w *Worker) staleness(_ context.Context, e *entry) verdict {
	if w.cfg.MaxEventAge <= 0 {
		return next()
	}
	born := e.ev.Time
	if !e.received.IsZero() && (born.IsZero() || e.received.Before(born)) {
		born = e.received
	}
	if born.IsZero() {
		return next()
	}
	if age := time.Since(born); age > w.cfg.MaxEventAge {
		return answerWith(rejected(e.ev, &events.Rejection{Code: events.CodeStaleEvent, Message: fmt.Sprintf(
			"event is %s old, older than the %s limit (PAMWORKER_MAX_EVENT_AGE); it was not executed",
			age.Round(time.Second), w.cfg.MaxEventAge)}), true)
	}
	return next()
}
