package worker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
)

// crashLimit is how many deliveries of one message in a row may die without an answer before
// the worker stops running it and fails it as crash_loop. It is not smaller because a worker
// killed from outside (a deploy, the OOM killer) also leaves its running events unanswered.
const crashLimit = 5

// crashLoop fails a message whose deliveries keep dying without an answer, instead of letting
// it take down a worker once more. Only redeliveries pay for the check: every run of a
// redelivered event marks its start in the ledger (by stream sequence), and its decision — an
// answer, a wait, a hand-back — marks it decided. A redelivery that finds the previous one started and never decided
// knows it died on the event; a decision starts the count again. (The first delivery writes
// no mark, so a redelivery that finds none counts the death of the first, which may have been
// an event that merely waited in memory when the process died: one spurious count at most.)
func (w *Worker) crashLoop(ctx context.Context, e *entry) verdict {
	if e.delivered < 2 || e.marked {
		return next()
	}
	deaths, err := w.ledger.started(ctx, e.seq)
	if err != nil {
		e.logger().Warn("ledger unavailable for the crash-loop check; going on", "error", err)
		return next()
	}
	e.marked = true
	if deaths < crashLimit {
		return next()
	}
	e.logger().Error("event keeps killing or hanging the worker; failing it without running it again",
		"deliveries", e.delivered, "unanswered_deliveries", deaths)
	res := events.NewResult(e.ev)
	res.Status = events.Failed
	res.Message = fmt.Sprintf("delivered %d times; %d deliveries ended without an answer (the worker crashed or hung on it); not run again",
		e.delivered, deaths)
	res.Error = &events.ErrorInfo{Code: "crash_loop", Message: res.Message}
	return answerWith(res, true)
}

// Delivery marks, kept by stream sequence: "started:<deaths>" or "decided:0".
const (
	markStarted = "started"
	markDecided = "decided"
)

func markKey(streamSeq uint64) string { return "try." + strconv.FormatUint(streamSeq, 10) }

// started records that a redelivery of streamSeq is starting and returns how many deliveries
// of it have died without an answer so far, this one excluded.
func (l *ledger) started(ctx context.Context, streamSeq uint64) (int, error) {
	e, err := l.kv.Get(ctx, markKey(streamSeq))
	state, deaths := "", 0
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return 0, err
	default:
		var n string
		state, n, _ = strings.Cut(string(e.Value()), ":")
		deaths, _ = strconv.Atoi(n)
	}
	if state != markDecided {
		deaths++
	}
	_, err = l.kv.Put(ctx, markKey(streamSeq), []byte(markStarted+":"+strconv.Itoa(deaths)))
	return deaths, err
}

// decided records that a redelivered event reached a decision (an answer, a wait, a hand-back):
// the worker survived it, so the count of unanswered deliveries starts again.
func (l *ledger) decided(e *entry) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := l.kv.Put(ctx, markKey(e.seq), []byte(markDecided+":0")); err != nil {
		e.logger().Warn("could not mark a decided delivery", "error", err)
	}
	e.marked = false
}
