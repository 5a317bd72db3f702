package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
)

// repeat answers a repeated event from the ledger: only when it is the same event (the
// record's digest is its digest); another event under a used id is refused, never answered as
// done. Every event with an id of its own is looked up: neither its first delivery nor the
// stream's duplicate window proves it new (a consumer created later starts back in the
// stream; a stream recreated forgets its window; the window counts from the publish and the
// ledger from the answer). Only a generated id is new by construction.
func (w *Worker) repeat(ctx context.Context, e *entry) verdict {
	if e.ev.ID == e.generated {
		return next()
	}
	var prior *record
	var err error
	if e.prefetched && time.Since(e.prefetchedAt) < prefetchValid {
		prior = e.prior // read with its batch (prefetch), no other event with its id held since
	} else {
		prior, err = w.ledger.result(ctx, e.ev.ID)
	}
	e.prefetched, e.prior = false, nil
	switch {
	case err != nil:
		e.logger().Warn("ledger unavailable; event waits", "error", err)
		return waitUntil(time.Now().Add(time.Second), deferLedger)
	case prior == nil:
		return next()
	case prior.Digest == e.digest:
		w.m.duplicates.WithLabelValues(actionLabel(e.ev.Action)).Inc()
		e.logger().Info("duplicate event answered from the ledger; vendor not called")
		return verdict{kind: verdictAnswer, raw: prior.Result, rawMsgID: prior.resultMsgID(e.ev.ID)}
	}
	e.logger().Warn("event refused: its id is already the id of another event", "code", events.CodeIDConflict)
	return answerWith(rejected(e.ev, idConflict(e.ev, prior.Result)), false)
}

// strict reports whether the event's id is its Nats-Msg-Id (or generated): the stream's
// duplicate detection then applies to the id itself.
func (e *entry) strict() bool {
	return e.ev.ID == e.generated || e.ev.ID == e.msg.Headers().Get(jetstream.MsgIDHeader)
}

// idConflict is the rejection of an event whose id an earlier, different event already has.
func idConflict(ev events.Event, prior []byte) *events.Rejection {
	var p events.Result
	_ = json.Unmarshal(prior, &p)
	return &events.Rejection{Code: events.CodeIDConflict, Message: fmt.Sprintf(
		"event id %q is already the id of another event (%s on target %q, %s); this event was not run: give it an id of its own",
		ev.ID, p.Action, p.Target, p.Status)}
}
