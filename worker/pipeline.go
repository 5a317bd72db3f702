package worker

import (
	"context"
	"log/slog"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
	"github.com/pamworker/pamworker/telemetry"
)

// entry is one event this replica holds, from its delivery until it is settled.
type entry struct {
	msg          jetstream.Msg
	part         *partition
	seq          uint64 // stream sequence
	delivered    uint64 // deliveries of the message, this one included
	received     time.Time
	arrived      time.Time // when this replica took it; the result's duration counts from here
	ev           events.Event
	decodeErr    error
	generated    string // the id made up for an event that carries none
	key          string // its object, the unit of ordering
	digest       string // of the event, once it decodes (events.Event.Digest)
	w            *Worker
	log          *slog.Logger    // made when first needed: most events log nothing below info
	prefetched   bool            // prior was read with the event's batch, at prefetchedAt
	prefetchedAt time.Time       //
	prior        *record         // its id's ledger record then (nil: none)
	trace        context.Context // the event's trace: its span, or the context its publisher sent
	span         trace.Span      // the processing span, when tracing is on

	// Pipeline state, kept across waits.
	step      int         // the next step to run
	final     *verdict    // the answer, once decided: a failed publish retries only the answer
	counted   bool        // the blast-radius limit has counted it
	heldSince time.Time   // when the limit first held it
	marked    bool        // a crash-loop mark says this delivery started
	probe     bool        // it probes a target that is down
	try       *tryState   // retries of the call
	state     entryState  // guarded by the scheduler's lock, with the fields below
	wake      int         // invalidates the timers of earlier waits
	timer     *time.Timer // the wait's timer
	downOn    string      // the target it waits for
	kept      time.Time   // last InProgress (or arrival)
}

type entryState int

const (
	stateQueued  entryState = iota // behind an earlier event about its object
	stateReady                     // may run
	stateRunning                   // a runner has it
	stateWaiting                   // parked until a time, or until woken
	stateGone                      // settled or handed back
)

// tryState is what the call step keeps across its retries.
type tryState struct {
	b        *backoff.ExponentialBackOff
	start    time.Time // of the current retry budget
	attempts int       // in the current budget
	lastErr  string
}

// step is one stage of an event's path. The order of the steps is a security decision and is
// written once, in pipeline: the checks that decide whether an event is acceptable at all come
// before the ledger may answer it, and the ledger before anything is acted on.
type step struct {
	name string
	run  func(ctx context.Context, e *entry) verdict
}

// pipeline is the path of every event, in order. Steps from firstGate on are gates: they are
// run again whenever a waiting event wakes, because what they decide changes with time.
func (w *Worker) pipeline() []step {
	return []step{
		{"admit", w.admit},          // signature, decoding (admit.go): refusals are not recorded
		{"repeat", w.repeat},        // the ledger (repeat.go): a repeat is answered, a reused id refused
		{"protected", w.protect},    // protected objects (protect.go)
		{"crash_loop", w.crashLoop}, // gates from here on; redeliveries only (crashloop.go)
		{"stale", w.staleness},      // age (stale.go)
		{"limit", w.limit},          // blast-radius limits (limit.go)
		{"target", w.admitTarget},   // breaker and lock-out (target.go)
		{"call", w.call},            // the vendor, with retries (call.go)
	}
}

const firstGate = 3

// verdict is what a step decides. verdictProceed goes on to the next step; every other kind ends the
// run, and settle turns it into the one ack decision.
type verdict struct {
	kind     verdictKind
	res      events.Result
	record   bool   // answer: keep the result in the ledger
	raw      []byte // answer: a result recorded earlier, republished as it is
	rawMsgID string // with the message id it was published with
	until    time.Time
	reason   deferReason
	target   string // wait: the target whose return wakes it
	delay    time.Duration
}

type verdictKind int

const (
	verdictProceed  verdictKind = iota
	verdictAnswer               // publish res (or raw) and settle: ack a success, term the rest
	verdictWait                 // keep it in memory and run the gates again at until, or when woken
	verdictHandBack             // nak it to JetStream after delay
)

// deferReason says why an event waits; metrics use it as a label (a closed set).
type deferReason string

const (
	deferHeld          deferReason = "held"
	deferTargetDown    deferReason = "target_down"
	deferCircuitOpen   deferReason = "circuit_open"
	deferRetry         deferReason = "retry"
	deferRetriesSpent  deferReason = "retries_spent"
	deferShutdown      deferReason = "shutdown"
	deferLedger        deferReason = "ledger"
	deferResultPublish deferReason = "result_publish"
	deferReleased      deferReason = "released" // its partition moved to another replica
)

// internal reports whether waiting for r means the worker's own machinery failed.
func (r deferReason) internal() bool { return r == deferLedger || r == deferResultPublish }

func next() verdict { return verdict{kind: verdictProceed} }

func answerWith(res events.Result, record bool) verdict {
	return verdict{kind: verdictAnswer, res: res, record: record}
}

func waitUntil(until time.Time, reason deferReason) verdict {
	return verdict{kind: verdictWait, until: until, reason: reason}
}

// run takes e through the pipeline from the step it is at to a verdict.
func (w *Worker) run(ctx context.Context, e *entry) verdict {
	if e.final != nil {
		return *e.final // decided; only the answer is left to publish
	}
	if !e.part.owned.Load() {
		// The partition went to another replica meanwhile: nothing of it runs here now.
		return verdict{kind: verdictHandBack, reason: deferReleased}
	}
	w.m.inFlight.Inc()
	defer w.m.inFlight.Dec()
	for e.step < len(w.steps) {
		v := w.steps[e.step].run(ctx, e)
		if v.kind != verdictProceed {
			return v
		}
		e.step++
	}
	return answerWith(rejected(e.ev, &events.Rejection{Code: "internal_error", Message: "the pipeline ended without a decision"}), false)
}

// settle turns a verdict into the ack decision, the one place where events are acked,
// termed, handed back or parked.
func (w *Worker) settle(ctx context.Context, e *entry, v verdict) {
	switch v.kind {
	case verdictAnswer:
		if !w.publish(ctx, e, v) {
			e.final = &v
			w.park(e, waitUntil(time.Now().Add(time.Second), deferResultPublish))
			return
		}
		if v.res.Status == events.Succeeded || v.raw != nil {
			_ = e.msg.Ack()
		} else {
			_ = e.msg.TermWithReason(string(v.res.Status))
		}
		w.progress.made()
		e.endSpan(v)
		w.sched.done(e)
		e.part.settled(e)
	case verdictWait:
		if !e.part.owned.Load() {
			w.handBack(e, 0, deferReleased) // its partition went to another replica while it ran
			return
		}
		w.park(e, v)
	case verdictHandBack:
		w.handBack(e, v.delay, v.reason)
	}
}

// park keeps e in memory until its wait ends, and runs the gates again then.
func (w *Worker) park(e *entry, v verdict) {
	if e.final == nil && e.step > firstGate {
		e.step = firstGate
	}
	if v.reason.internal() {
		w.progress.failed()
	} else {
		w.progress.made()
	}
	if e.marked {
		w.ledger.decided(e)
	}
	w.m.redeliver.WithLabelValues(actionLabel(e.ev.Action), string(v.reason)).Inc()
	if e.span != nil {
		e.span.AddEvent("wait", trace.WithAttributes(attribute.String("pamworker.reason", string(v.reason))))
	}
	w.sched.wait(e, v.until, v.reason == deferHeld, v.target)
}

// handBack naks e to JetStream, to be delivered again after delay, and forgets it. If its
// partition's lease lapsed, e is only forgotten: JetStream redelivers it once its AckWait ends,
// and a nak now could hit the delivery another replica runs.
func (w *Worker) handBack(e *entry, delay time.Duration, reason deferReason) {
	if e.marked || e.delivered > 1 {
		w.ledger.decided(e)
	}
	var err error
	switch {
	case e.part.lapsed():
	case delay > 0:
		err = e.msg.NakWithDelay(delay)
	default:
		err = e.msg.Nak()
	}
	if err != nil {
		e.logger().Warn("nak failed; JetStream will redeliver after AckWait", "error", err)
	}
	w.m.redeliver.WithLabelValues(actionLabel(e.ev.Action), string(reason)).Inc()
	e.endSpan(verdict{kind: verdictHandBack, reason: reason})
	w.sched.done(e)
	e.part.settled(e)
}

func rejected(ev events.Event, rej *events.Rejection) events.Result {
	res := events.NewResult(ev)
	res.Status, res.Message = events.Rejected, rej.Message
	res.Error = &events.ErrorInfo{Code: rej.Code, Message: rej.Message}
	return res
}

// newEntry builds the entry of a delivered message: its origin, the event as far as it
// decodes, and its object.
func (w *Worker) newEntry(msg jetstream.Msg, p *partition) *entry {
	e := &entry{msg: msg, part: p, arrived: time.Now()}
	if md, err := msg.Metadata(); err == nil {
		e.seq, e.delivered, e.received = md.Sequence.Stream, md.NumDelivered, md.Timestamp
	}
	e.ev, e.decodeErr = events.Decode(msg.Subject(), msg.Data(), msg.Headers().Get(jetstream.MsgIDHeader), w.cfg.MaxEventBytes, func() string {
		e.generated = w.newID()
		return e.generated
	})
	e.key = objectKey(e)
	e.digest = e.ev.Digest()
	e.w = w
	e.trace = telemetry.Extract(context.Background(), msg.Headers())
	if telemetry.Enabled() {
		e.trace, e.span = telemetry.Tracer().Start(e.trace, "process "+msg.Subject(), trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(semconv.MessagingSystemKey.String("nats"), semconv.MessagingDestinationName(msg.Subject()),
				semconv.MessagingOperationTypeProcess, semconv.MessagingOperationName("process"),
				semconv.MessagingMessageID(e.ev.ID), attribute.Int64("messaging.nats.stream_sequence", int64(e.seq)),
				attribute.Int64("messaging.nats.delivered", int64(e.delivered))))
	}
	return e
}

// endSpan ends the event's span with what became of it.
func (e *entry) endSpan(v verdict) {
	if e.span == nil {
		return
	}
	switch v.kind {
	case verdictAnswer:
		status := v.res.Status
		if v.raw != nil {
			status = "repeat"
		}
		e.span.SetAttributes(attribute.String("pamworker.status", string(status)), attribute.Bool("pamworker.noop", v.res.Noop))
		if v.res.Error != nil {
			e.span.SetAttributes(attribute.String("error.type", v.res.Error.Code))
		}
		if v.res.Status == events.Failed {
			e.span.SetStatus(codes.Error, v.res.Error.Code)
		}
	case verdictHandBack:
		e.span.SetAttributes(attribute.String("pamworker.handed_back", string(v.reason)))
	}
	e.span.End()
}

// logger returns the event's logger, with its id and action.
func (e *entry) logger() *slog.Logger {
	if e.log == nil {
		e.log = e.w.log.With("event_id", e.ev.ID, "action", e.ev.Action)
	}
	return e.log
}

// objectKey names what an event acts on, the unit of ordering: the same session, credential
// (by id, or by username@hostname), Element user, on the same target. An event that does not
// decode acts on nothing and is its own unit.
func objectKey(e *entry) string {
	ev := e.ev
	if e.decodeErr != nil {
		return "#" + strconv.FormatUint(e.seq, 10)
	}
	target := handlers.TargetLabel(ev.Action, ev.Target) + "|"
	switch {
	case ev.SessionID != "":
		return target + "session:" + ev.SessionID
	case ev.CredentialID > 0:
		return target + "credential:" + strconv.FormatInt(ev.CredentialID, 10)
	case ev.Hostname != "":
		return target + "credential:" + ev.Username + "@" + ev.Hostname
	}
	return target + "user:" + ev.Username
}
