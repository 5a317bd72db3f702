package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/pamworker/pamworker/events"
)

// repeat answers a repeated event from the ledger: only when it is the same event (the
// record's digest is its digest); another event under a used id is refused, never answered as
// done. A generated id is new by construction.
func (w *Worker) repeat(ctx context.Context, e *entry) verdict {
	if e.ev.ID == e.generated {
		return next()
	}
	prior, err := w.ledger.result(ctx, e.ev.ID)
	switch {
	case err != nil:
		e.log.Warn("ledger unavailable; event waits", "error", err)
		return waitUntil(time.Now().Add(time.Second), deferLedger)
	case prior == nil:
		return next()
	case prior.Digest == e.ev.Digest():
		w.m.duplicates.WithLabelValues(actionLabel(e.ev.Action)).Inc()
		e.log.Info("duplicate event answered from the ledger; vendor not called")
		return verdict{kind: verdictAnswer, raw: prior.Result}
	}
	e.log.Warn("event refused: its id is already the id of another event", "code", events.CodeIDConflict)
	return answerWith(rejected(e.ev, idConflict(e.ev, prior.Result)), false)
}

// idConflict is the rejection of an event whose id an earlier, different event already has.
func idConflict(ev events.Event, prior []byte) *events.Rejection {
	var p events.Result
	_ = json.Unmarshal(prior, &p)
	return &events.Rejection{Code: events.CodeIDConflict, Message: fmt.Sprintf(
		"event id %q is already the id of another event (%s on target %q, %s); this event was not run: give it an id of its own",
		ev.ID, p.Action, p.Target, p.Status)}
}
