// Package worker consumes action events from a JetStream durable consumer, runs each through
// its handler with bounded concurrency and in-process retries, and answers every event with
// exactly one result event. Ack decisions — ack, term, nak with delay — are made here and only
// here; handlers return outcomes and typed errors and know nothing of NATS.
package worker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/guard"
	"github.com/pamworker/pamworker/handlers"
)

// Config tunes the worker. Zero values take the defaults in withDefaults.
type Config struct {
	Concurrency      int             // events processed at once (default 32)
	AttemptTimeout   time.Duration   // one API attempt (default 10s)
	MaxEventBytes    int             // larger events are rejected (default 64 KiB)
	MaxDeliveries    int             // exhausted retry budgets before an event fails (default 5)
	RetryInitial     time.Duration   // first in-process backoff (default 200ms)
	RetryMaxInterval time.Duration   // longest in-process backoff (default 5s)
	RetryMaxElapsed  time.Duration   // in-process retry budget per delivery (default 30s)
	RedeliveryDelay  time.Duration   // nak delay after a spent budget, times the count (default 10s)
	TargetDownDelay  time.Duration   // nak delay while a target refuses the worker (default 15s)
	AckWait          time.Duration   // consumer ack wait; InProgress is sent every third (default 30s)
	ShutdownTimeout  time.Duration   // grace for in-flight events on shutdown (default 20s)
	StallTimeout     time.Duration   // no decision for this long while events wait: not ready (default 2m)
	MaxEventAge      time.Duration   // older events are rejected stale_event (default 1h; <0: never)
	BreakerThreshold int             // consecutive failed attempts that open a target's breaker (default 5; <0: no breaker)
	BreakerCooldown  time.Duration   // first open period; doubles per failed probe (default 5s)
	BreakerMaxCool   time.Duration   // longest open period (default 2m)
	Protected        guard.Protected // objects no event may act on
	Signatures       *guard.Verifier // subjects whose events must be signed; nil: none
	Limits           guard.Limits    // blast-radius limits by action
	Topology         Topology
	Targets          []string // configured target labels ("segura/default" ...), for target_up
}

func (c Config) withDefaults() Config {
	c.Concurrency = cmp.Or(c.Concurrency, 32)
	c.AttemptTimeout = cmp.Or(c.AttemptTimeout, 10*time.Second)
	c.MaxEventBytes = cmp.Or(c.MaxEventBytes, events.DefaultMaxEventBytes)
	c.MaxDeliveries = cmp.Or(c.MaxDeliveries, 5)
	c.RetryInitial = cmp.Or(c.RetryInitial, 200*time.Millisecond)
	c.RetryMaxInterval = cmp.Or(c.RetryMaxInterval, 5*time.Second)
	c.RetryMaxElapsed = cmp.Or(c.RetryMaxElapsed, 30*time.Second)
	c.RedeliveryDelay = cmp.Or(c.RedeliveryDelay, 10*time.Second)
	c.TargetDownDelay = cmp.Or(c.TargetDownDelay, 15*time.Second)
	c.AckWait = cmp.Or(c.AckWait, 30*time.Second)
	c.ShutdownTimeout = cmp.Or(c.ShutdownTimeout, 20*time.Second)
	c.StallTimeout = cmp.Or(c.StallTimeout, 2*time.Minute)
	c.MaxEventAge = cmp.Or(c.MaxEventAge, time.Hour)
	c.BreakerThreshold = cmp.Or(c.BreakerThreshold, 5)
	c.BreakerCooldown = cmp.Or(c.BreakerCooldown, 5*time.Second)
	c.BreakerMaxCool = cmp.Or(c.BreakerMaxCool, 2*time.Minute)
	if c.Topology == (Topology{}) {
		c.Topology = DefaultTopology()
	}
	return c
}

// Worker is one replica of the consumer.
type Worker struct {
	cfg     Config
	nc      *nats.Conn
	js      jetstream.JetStream
	reg     *handlers.Registry
	m       *Metrics
	log     *slog.Logger
	targets *targetState
	newID   func() string
	recover handlers.Middleware

	ledger    *ledger
	consuming atomic.Bool
	paused    atomic.Pointer[time.Time] // until when an operator paused consumption; nil if not
	progress  *progress
	stalled   atomic.Pointer[string] // why the worker counts as stalled; nil if it does not
	lanes     map[string]bool        // configured target labels, each with its lanes
}

// New returns a Worker that will consume through nc and dispatch through reg.
func New(nc *nats.Conn, reg *handlers.Registry, m *Metrics, log *slog.Logger, newID func() string, cfg Config) (*Worker, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	cfg = cfg.withDefaults()
	w := &Worker{
		cfg: cfg,
		nc:  nc,
		js:  js,
		reg: reg,
		m:   m,
		log: log,
		targets: newTargetState(m.targetUp, cfg.Targets, guardConfig{
			threshold:  max(cfg.BreakerThreshold, 1),
			cooldown:   cfg.BreakerCooldown,
			maxCool:    cfg.BreakerMaxCool,
			downRetry:  cfg.TargetDownDelay,
			breakerOff: cfg.BreakerThreshold < 0,
		}),
		newID:    newID,
		recover:  recoverHandler(log),
		progress: newProgress(),
		lanes:    map[string]bool{},
	}
	for _, t := range cfg.Targets {
		w.lanes[t] = true
	}
	return w, nil
}

// errShutdown ends a retry wait when the worker is asked to stop: the event goes back to the
// stream at once for another replica, instead of sleeping through the shutdown grace.
var errShutdown = errors.New("worker is shutting down")

// crashLimit is how many deliveries of one message in a row may die without an answer before
// the worker stops running it and fails it as crash_loop. It is not smaller because a worker
// killed from outside (a deploy, the OOM killer) also leaves its in-flight events unanswered,
// and an event that waits at the head of its lane is in flight for a while: the chaos test
// failed an innocent event with a limit of 3 after three SIGKILLs.
const crashLimit = 5

// errCircuitOpen ends the retries of an event that is not the probe once its target's breaker
// opens: it waits in the stream instead, without spending its retry budget.
var errCircuitOpen = errors.New("the target's circuit is open")

// Run creates what the worker needs in JetStream and consumes until ctx is done. It then stops
// fetching, lets in-flight events finish for up to ShutdownTimeout, naks what is left, and
// returns nil.
func (w *Worker) Run(ctx context.Context) error {
	kv, err := setup(ctx, w.js, w.cfg.Topology)
	if err != nil {
		return err
	}
	for _, weak := range weaknesses(ctx, w.js, w.cfg.Topology.EventsStream, w.cfg.Topology.ResultsStream) {
		w.log.Warn("weak JetStream setting for production", "warning", weak)
	}
	w.ledger = newLedger(kv)
	// Create every consumer before reporting ready, so a test or an operator that sees /readyz
	// sees a worker that can take events.
	router, err := ensureRouter(ctx, w.js, w.cfg.Topology, w.cfg.AckWait)
	if err != nil {
		return err
	}
	lanes := []string{laneSubject(invalidLane, 0)}
	for _, target := range w.cfg.Targets {
		for p := range partitions {
			lanes = append(lanes, laneSubject(target, p))
		}
	}
	lanes = append(lanes, parkLanes(w.cfg.Targets)...)
	for _, lane := range lanes {
		if _, err := ensureLane(ctx, w.js, w.cfg.Topology, lane, w.cfg.AckWait, w.lanePending(lane)); err != nil {
			return err
		}
	}

	// hard ends in-flight work; it outlives ctx by the shutdown grace.
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); w.route(ctx) }()
	sem := make(chan struct{}, w.cfg.Concurrency)
	for _, lane := range lanes {
		wg.Add(1)
		go func() { defer wg.Done(); w.consumeLane(ctx, hard, lane, sem) }()
	}
	go w.watch(ctx, router)
	w.consuming.Store(true)
	w.log.Info("consuming", "stream", w.cfg.Topology.EventsStream, "lanes", len(lanes), "concurrency", w.cfg.Concurrency)
	<-ctx.Done()
	w.consuming.Store(false)

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(w.cfg.ShutdownTimeout):
		w.log.Warn("shutdown grace over; handing in-flight events back", "grace", w.cfg.ShutdownTimeout)
		cancelHard()
		<-done
	}
	if err := w.nc.Flush(); err != nil {
		w.log.Warn("flushing acks", "error", err)
	}
	w.log.Info("stopped consuming")
	return nil
}

// lanePending is how many messages a lane's consumer hands out at once: one for an ordered
// lane, many for the lane of events that will be rejected anyway.
func (w *Worker) lanePending(lane string) int {
	if lane == laneSubject(invalidLane, 0) {
		return max(256, w.cfg.Concurrency)
	}
	return 1
}

// consumeLane processes one lane's events one at a time until ctx ends, taking a slot of the
// shared concurrency for each. It recreates the lane's consumer if it disappears, and on
// shutdown hands back what it fetched but did not start.
func (w *Worker) consumeLane(ctx, hard context.Context, lane string, sem chan struct{}) {
	fetchErrs, lastErr := 0, ""
	for ctx.Err() == nil {
		cons, err := ensureLane(ctx, w.js, w.cfg.Topology, lane, w.cfg.AckWait, w.lanePending(lane))
		var iter jetstream.MessagesContext
		if err == nil {
			// A pull for many messages stays open while the server hands them out one at a
			// time (MaxAckPending 1): no pull request per message.
			iter, err = cons.Messages(jetstream.PullMaxMessages(max(16, w.lanePending(lane))))
		}
		if err != nil {
			if err.Error() != lastErr {
				w.log.Warn("lane unavailable", "lane", lane, "error", err)
				lastErr = err.Error()
			}
			fetchErrs++
			select {
			case <-time.After(min(time.Duration(fetchErrs)*200*time.Millisecond, 2*time.Second)):
			case <-ctx.Done():
			}
			continue
		}
		stop := context.AfterFunc(ctx, func() { iter.Drain() })
		w.drainLane(ctx, hard, iter, sem)
		stop()
		iter.Stop()
	}
}

// drainLane runs the messages of one iterator until it closes or fails.
func (w *Worker) drainLane(ctx, hard context.Context, iter jetstream.MessagesContext, sem chan struct{}) {
	errs := 0
	for {
		msg, err := iter.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
			errors.Is(err, jetstream.ErrConsumerNotFound) {
			return
		}
		if err != nil {
			// The iterator recovers from most errors by itself (missed heartbeats, a reconnect).
			errs++
			select {
			case <-time.After(min(time.Duration(errs)*100*time.Millisecond, 2*time.Second)):
			case <-ctx.Done():
			}
			continue
		}
		errs = 0
		if ctx.Err() == nil {
			select {
			case sem <- struct{}{}:
				w.processSafely(ctx, hard, msg)
				<-sem
				continue
			case <-ctx.Done():
			}
		}
		// Fetched but shutting down: hand it to another replica now rather than after AckWait.
		subject, _, _ := origin(msg)
		w.postpone(msg, events.Event{Action: subject}, "shutdown", 0)
	}
}

// watch follows the router consumer's state every 2 s: its pause state (pamworker pause /
// resume) for /readyz, the pamworker_paused gauge and one log line per change; and whether
// events wait while nothing is decided, for the stall check. A paused consumer delivers
// nothing; its events wait in the stream.
func (w *Worker) watch(ctx context.Context, cons jetstream.Consumer) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		waiting := false
		if info, err := cons.Info(ctx); err == nil {
			was := w.paused.Load() != nil
			if info.Paused && info.Config.PauseUntil != nil {
				w.paused.Store(info.Config.PauseUntil)
				w.m.paused.Set(1)
				if !was {
					w.log.Warn("consumption paused by an operator; events wait in the stream", "until", info.Config.PauseUntil.UTC())
				}
			} else {
				w.paused.Store(nil)
				w.m.paused.Set(0)
				if was {
					w.log.Info("consumption resumed")
				}
				waiting = info.NumPending > 0 || info.NumAckPending > 0
			}
		}
		w.checkStall(waiting)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// checkStall updates the stalled state from the progress made.
func (w *Worker) checkStall(waiting bool) {
	stalled, since := w.progress.stalled(w.cfg.StallTimeout, waiting)
	was := w.stalled.Load() != nil
	if !stalled {
		w.stalled.Store(nil)
		w.m.stalled.Set(0)
		if was {
			w.log.Info("progress again: events are being decided")
		}
		return
	}
	why := fmt.Sprintf("stalled: no event decided for %s while events wait or internal publishes fail; see the log", since.Round(time.Second))
	w.stalled.Store(&why)
	w.m.stalled.Set(1)
	if !was {
		w.log.Error("worker is making no progress", "for", since.Round(time.Second).String(), "stall_timeout", w.cfg.StallTimeout.String())
	}
}

// Ready reports whether the worker is connected and consuming, with the reasons it is not and
// the targets that currently refuse it.
func (w *Worker) Ready() (bool, []string) {
	var why []string
	if !w.nc.IsConnected() {
		why = append(why, "not connected to NATS")
	}
	if !w.consuming.Load() {
		why = append(why, "not consuming")
	}
	if s := w.stalled.Load(); s != nil {
		why = append(why, *s)
	}
	ready := len(why) == 0
	if until := w.paused.Load(); until != nil {
		why = append(why, "paused by an operator until "+until.UTC().Format(time.RFC3339)+"; run pamworker resume")
	}
	for t, desc := range w.targets.downList() {
		why = append(why, "target "+t+" "+desc)
	}
	return ready, why
}

// process takes one message to its end: a result and an ack or term, or a nak for later.
func (w *Worker) process(soft, hard context.Context, msg jetstream.Msg) {
	start := time.Now()
	w.m.inFlight.Inc()
	defer w.m.inFlight.Dec()
	stopKeepAlive := w.keepAlive(msg)
	defer stopKeepAlive()

	subject, msgID, received := origin(msg)
	generated := ""
	ev, decodeErr := events.Decode(subject, msg.Data(), msgID, w.cfg.MaxEventBytes, func() string {
		generated = w.newID()
		return generated
	})
	log := w.log.With("event_id", ev.ID, "action", ev.Action)

	// Admission: is the event acceptable at all? These checks come first, on the bytes as they
	// arrived, and an event they refuse is answered without being recorded: nothing it
	// carries — its id least of all — may decide what happens to another event.
	if rej := w.cfg.Signatures.Check(subject, msg.Headers().Get, msg.Data(), ev.ID); rej != nil {
		log.Warn("event refused: signature", "code", rej.Code, "reason", rej.Message)
		w.refuse(hard, msg, ev, rej, start, log)
		return
	}
	var rej *events.Rejection
	if errors.As(decodeErr, &rej) {
		w.refuse(hard, msg, ev, rej, start, log)
		return
	}

	// An earlier event about this object waits in a park lane: this one follows it there. This
	// is checked whether or not limits are configured now (events parked under an earlier
	// configuration, or by another replica, still come first), and before the ledger: the park
	// lane records a parked event's result before it clears the mark, so an empty mark means a
	// redelivered lane message will find that result.
	if !ev.DryRun && ordered(msg.Subject()) {
		lane, err := w.parkedLane(hard, ev)
		if err != nil {
			log.Warn("ledger unavailable for the park check; event deferred", "error", err)
			w.postpone(msg, ev, "ledger", time.Second)
			return
		}
		if lane != "" {
			if w.park(hard, msg, ev, lane, log) {
				log.Info("event follows a held event about the same object into its park lane", "target", ev.Target, "park_lane", lane)
			}
			return
		}
	}

	// A repeated id is answered from the record only if it is the same event; another event
	// under a used id is refused, never answered as done. A generated id is new by construction.
	if ev.ID != generated {
		prior, err := w.ledger.result(hard, ev.ID)
		if err != nil {
			log.Warn("ledger unavailable; event deferred", "error", err)
			w.postpone(msg, ev, "ledger", time.Second)
			return
		}
		if prior != nil && prior.Digest == ev.Digest() {
			w.answerDuplicate(hard, msg, ev, prior.Result, log)
			return
		}
		if prior != nil {
			log.Warn("event refused: its id is already the id of another event", "code", events.CodeIDConflict)
			w.refuse(hard, msg, ev, idConflict(ev, prior.Result), start, log)
			return
		}
	}
	if w.crashLoop(hard, msg, ev, start, log) {
		return
	}
	if rej := w.stale(received, ev); rej != nil {
		w.finish(hard, msg, ev, rejected(ev, rej), start, log)
		return
	}
	if rej := w.cfg.Protected.Check(ev); rej != nil {
		w.refuseProtected(hard, msg, ev, rejected(ev, rej), start, log)
		return
	}
	switch decision, wait, err := w.blast(hard, ev, received); {
	case err != nil:
		log.Warn("ledger unavailable for the blast-radius limit; event deferred", "error", err)
		w.postpone(msg, ev, "ledger", time.Second)
		return
	case decision == holdIt:
		lim := w.cfg.Limits[ev.Action]
		log.Warn("event held: blast-radius limit reached; it waits in the stream", "target", ev.Target,
			"requested_by", ev.RequestedBy, "limit", fmt.Sprintf("%d per %s", lim.Max, lim.Window), "retry_in", wait.Round(time.Millisecond).String())
		w.m.held.WithLabelValues(actionLabel(ev.Action)).Inc()
		if w.parking(msg) {
			// Out of the lane, so that it holds up no other object while it waits.
			w.park(hard, msg, ev, parkSubject(handlers.TargetLabel(ev.Action, ev.Target), guard.CounterKey(ev)), log)
			return
		}
		w.postpone(msg, ev, "held", wait)
		return
	case decision == cancelIt:
		w.finish(hard, msg, ev, rejected(ev, heldCancelled(w.cfg.Limits[ev.Action])), start, log)
		return
	}

	h, ok := w.reg.Lookup(ev.Action)
	if !ok {
		w.finish(hard, msg, ev, rejected(ev, &events.Rejection{Code: events.CodeUnknownAction, Message: "no handler is registered for " + ev.Action}), start, log)
		return
	}
	h = w.recover(h)
	tgt := handlers.TargetLabel(ev.Action, ev.Target)
	admitted, probe, wait := w.targets.admit(tgt)
	if !admitted {
		w.postpone(msg, ev, "target_down", wait)
		return
	}
	out, attempts, err := w.attempt(soft, hard, h, ev, tgt, probe, log)

	kind, re, pe, de := handlers.Classify(err)
	accepted := (err == nil && out.HTTPStatus != 0) || (pe != nil && pe.HTTPStatus != 0)
	refused := ""
	if de != nil {
		refused = de.Error()
	}
	if w.targets.done(tgt, probe, accepted, refused, kind == "retry") {
		if refused != "" {
			log.Error("target refuses the worker; its events wait until it accepts the worker again", "target", tgt, "error", refused)
		} else {
			log.Info("target accepts the worker again", "target", tgt)
		}
	}

	res := events.NewResult(ev)
	res.Attempts = attempts
	switch {
	case errors.As(err, &rej):
		// The handler refused after a look (a session's owner): nothing was changed.
		res = rejected(ev, rej)
		res.Attempts = attempts
		if rej.Code == guard.CodeProtected {
			w.refuseProtected(hard, msg, ev, res, start, log)
		} else {
			w.finish(hard, msg, ev, res, start, log)
		}
	case err == nil:
		res.Status, res.Message, res.Noop = events.Succeeded, out.Message, out.Noop
		if out.Details != nil {
			res.Details = out.Details
		}
		w.finish(hard, msg, ev, res, start, log)
	case errors.Is(err, errShutdown) || hard.Err() != nil:
		w.postpone(msg, ev, "shutdown", 0)
	case errors.Is(err, errCircuitOpen):
		_, _, wait := w.targets.admit(tgt)
		w.postpone(msg, ev, "circuit_open", max(wait, time.Second))
	case kind == "down":
		w.postpone(msg, ev, "target_down", w.cfg.TargetDownDelay)
	case kind == "permanent":
		res.Status, res.Message = events.Failed, cmp.Or(pe.Message, pe.Error())
		res.Error = &events.ErrorInfo{Code: pe.Code, Message: pe.Message, HTTPStatus: pe.HTTPStatus}
		w.finish(hard, msg, ev, res, start, log)
	default: // retryable, and this delivery's budget is spent
		n, lerr := w.ledger.spend(hard, ev.ID)
		if lerr != nil {
			log.Warn("ledger unavailable; event deferred", "error", lerr)
			w.postpone(msg, ev, "ledger", w.cfg.RedeliveryDelay)
			return
		}
		if n < w.cfg.MaxDeliveries {
			log.Warn("retries spent for this delivery; JetStream will redeliver", "budgets_spent", n,
				"max_deliveries", w.cfg.MaxDeliveries, "error", err.Error())
			w.postpone(msg, ev, "retries_spent", max(re.After, w.cfg.RedeliveryDelay*time.Duration(n)))
			return
		}
		res.Status = events.Failed
		res.Message = fmt.Sprintf("gave up after %d deliveries: %s", n, re.Error())
		res.Error = &events.ErrorInfo{Code: cmp.Or(re.Code, string(re.Reason)), Message: re.Error(), HTTPStatus: re.HTTPStatus, Retryable: true}
		w.finish(hard, msg, ev, res, start, log)
	}
}

// crashLoop fails a message whose deliveries keep dying without an answer, instead of letting
// it take down a worker once more. Only redeliveries pay for the check.
func (w *Worker) crashLoop(ctx context.Context, msg jetstream.Msg, ev events.Event, start time.Time, log *slog.Logger) bool {
	md, err := msg.Metadata()
	if err != nil || md.NumDelivered < 2 {
		return false
	}
	deaths, err := w.ledger.deliveryStarted(ctx, md.Sequence.Stream)
	if err != nil {
		log.Warn("ledger unavailable for the crash-loop check; going on", "error", err)
		return false
	}
	if deaths < crashLimit {
		return false
	}
	log.Error("event keeps killing or hanging the worker; failing it without running it again",
		"deliveries", md.NumDelivered, "unanswered_deliveries", deaths)
	res := events.NewResult(ev)
	res.Status = events.Failed
	res.Message = fmt.Sprintf("delivered %d times; %d deliveries ended without an answer (the worker crashed or hung on it); not run again",
		md.NumDelivered, deaths)
	res.Error = &events.ErrorInfo{Code: "crash_loop", Message: res.Message}
	w.finish(ctx, msg, ev, res, start, log)
	return true
}

// stale rejects an event older than MaxEventAge, so a backlog replayed after an outage cannot
// undo what people did meanwhile (re-disable an account someone re-enabled). Age counts from
// the earlier of the event's own time and the moment the stream took it, so a clock-skewed or
// future-dated time cannot make an old event look new.
func (w *Worker) stale(received time.Time, ev events.Event) *events.Rejection {
	if w.cfg.MaxEventAge < 0 {
		return nil
	}
	born := ev.Time
	if !received.IsZero() && (born.IsZero() || received.Before(born)) {
		born = received
	}
	if born.IsZero() {
		return nil
	}
	if age := time.Since(born); age > w.cfg.MaxEventAge {
		return &events.Rejection{Code: events.CodeStaleEvent, Message: fmt.Sprintf(
			"event is %s old, older than the %s limit (PAMWORKER_MAX_EVENT_AGE); it was not executed",
			age.Round(time.Second), w.cfg.MaxEventAge)}
	}
	return nil
}

// attempt calls h, retrying retryable errors with exponential backoff and jitter until the
// in-process budget is spent. It returns the last outcome, the number of attempts and the
// last error.
func (w *Worker) attempt(soft, hard context.Context, h handlers.Handler, ev events.Event, tgt string, probe bool, log *slog.Logger) (handlers.Outcome, int, error) {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = w.cfg.RetryInitial
	b.MaxInterval = w.cfg.RetryMaxInterval
	b.MaxElapsedTime = 0 // the budget is checked below, with Retry-After counted in
	b.Reset()
	start := time.Now()
	// The transport bounds each request by AttemptTimeout once the target's rate limit lets it
	// go (handlers.Pacer): only calls that reach the vendor wait for its rate.
	callCtx := handlers.WithCall(hard, handlers.Call{Target: tgt, Action: ev.Action, Timeout: w.cfg.AttemptTimeout})
	lastErr := ""
	for n := 1; ; n++ {
		if soft.Err() != nil {
			return handlers.Outcome{}, n - 1, errShutdown
		}
		out, err := h.Handle(callCtx, ev)
		var rej *events.Rejection
		if err == nil || errors.As(err, &rej) || hard.Err() != nil {
			if err == nil {
				w.targets.attempted(tgt, false)
			}
			return out, n, err
		}
		kind, re, _, _ := handlers.Classify(err)
		if w.targets.attempted(tgt, kind == "retry") {
			log.Error("target keeps failing; its circuit is open and its events wait in the stream", "target", tgt, "error", err.Error())
		}
		if kind != "retry" {
			return out, n, err
		}
		if !probe && w.targets.isOpen(tgt) {
			return out, n, fmt.Errorf("%w: %w", errCircuitOpen, err)
		}
		wait := max(b.NextBackOff(), re.After)
		if time.Since(start)+wait > w.cfg.RetryMaxElapsed {
			return out, n, err
		}
		w.m.retries.WithLabelValues(ev.Action, string(re.Reason)).Inc()
		if s := err.Error(); s != lastErr {
			log.Warn("attempt failed; retrying", "attempt", n, "error", s, "wait", wait.String())
			lastErr = s
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-soft.Done():
			t.Stop()
			return out, n, errShutdown
		}
	}
}

// refuseProtected answers an event against a protected object: rejected, loudly.
func (w *Worker) refuseProtected(ctx context.Context, msg jetstream.Msg, ev events.Event, res events.Result, start time.Time, log *slog.Logger) {
	log.Warn("event against a protected object refused", "target", ev.Target, "reason", res.Message,
		"requested_by", ev.RequestedBy, "correlation_id", ev.CorrelationID)
	w.m.protected.WithLabelValues(actionLabel(ev.Action)).Inc()
	w.finish(ctx, msg, ev, res, start, log)
}

func rejected(ev events.Event, rej *events.Rejection) events.Result {
	res := events.NewResult(ev)
	res.Status, res.Message = events.Rejected, rej.Message
	res.Error = &events.ErrorInfo{Code: rej.Code, Message: rej.Message}
	return res
}

// idConflict is the rejection of an event whose id an earlier, different event already has.
func idConflict(ev events.Event, prior []byte) *events.Rejection {
	var p events.Result
	_ = json.Unmarshal(prior, &p)
	return &events.Rejection{Code: events.CodeIDConflict, Message: fmt.Sprintf(
		"event id %q is already the id of another event (%s on target %q, %s); this event was not run: give it an id of its own",
		ev.ID, p.Action, p.Target, p.Status)}
}

// refuse answers an event that was not admitted — undecodable, unsigned, or reusing another
// event's id — with a rejection that is published but not recorded: a later, acceptable event
// with the same id must still be judged on its own. Its result's message id names the stream
// message it answers, so it cannot take the place of that later event's result either.
func (w *Worker) refuse(ctx context.Context, msg jetstream.Msg, ev events.Event, rej *events.Rejection, start time.Time, log *slog.Logger) {
	w.answer(ctx, msg, ev, rejected(ev, rej), start, log, false)
}

// finish records res in the ledger, publishes it on results.<action> and the reply inbox, and
// then acks (success) or terms (failure, rejection) the message. If the result cannot be
// stored, the message is naked so that the event is answered later rather than never.
func (w *Worker) finish(ctx context.Context, msg jetstream.Msg, ev events.Event, res events.Result, start time.Time, log *slog.Logger) {
	w.answer(ctx, msg, ev, res, start, log, true)
}

// answer publishes res as the result of msg, recorded in the ledger or not, and settles msg.
func (w *Worker) answer(ctx context.Context, msg jetstream.Msg, ev events.Event, res events.Result, start time.Time, log *slog.Logger, record bool) {
	elapsed := time.Since(start)
	res.DurationMS = float64(elapsed.Microseconds()) / 1000
	res.FinishedAt = events.Timestamp(time.Now())
	if of := msg.Headers().Get(ReplayOfHeader); of != "" && record {
		// Trusted only as far as the operator's mark in the ledger confirms it.
		if marked, err := w.ledger.replayOf(ctx, ev.ID); err == nil && marked == of {
			res.Details["replay_of"] = of
		} else {
			log.Warn("Pamworker-Replay-Of header not confirmed by a replay mark; ignored", "claimed_replay_of", of)
		}
	}
	data, err := res.Marshal()
	if err != nil { // details from a vendor that cannot be encoded: keep the verdict, drop them
		res.Details = map[string]any{"error": "details could not be encoded"}
		data, _ = res.Marshal()
	}
	var keep []*nats.Msg
	if res.Status == events.Failed {
		keep = append(keep, failedRecordMsg(msg, ev, data))
	}
	out := resultMsg{ev: ev, data: data, msgID: events.ResultMsgID(ev.ID)}
	if record {
		out.record = encodeRecord(ev.Digest(), data)
	} else if md, err := msg.Metadata(); err == nil {
		out.msgID = unrecordedMsgID(md.Sequence.Stream, ev.ID)
	}
	if err := w.publishResult(ctx, out, keep...); err != nil {
		log.Error("result could not be stored; event will be redelivered", "error", err)
		w.postpone(msg, ev, "result_publish", time.Second)
		return
	}
	if err := w.unpark(ctx, msg); err != nil {
		log.Warn("park mark could not be cleared; the event will be redelivered and answered from the ledger", "error", err)
		w.postpone(msg, ev, "ledger", time.Second)
		return
	}
	if res.Status == events.Succeeded {
		_ = msg.Ack()
	} else {
		_ = msg.TermWithReason(string(res.Status))
	}
	w.progress.made()
	action := actionLabel(ev.Action)
	w.m.processed.WithLabelValues(action, string(res.Status)).Inc()
	w.m.duration.WithLabelValues(action).Observe(elapsed.Seconds())

	attrs := []any{"status", res.Status, "noop", res.Noop, "dry_run", res.DryRun, "attempts", res.Attempts,
		"duration_ms", res.DurationMS, "target", res.Target, "message", res.Message}
	if res.Error != nil {
		attrs = append(attrs, "error_code", res.Error.Code)
	}
	if res.CorrelationID != "" {
		attrs = append(attrs, "correlation_id", res.CorrelationID)
	}
	if res.Status == events.Succeeded {
		log.Info("event finished", attrs...)
	} else {
		log.Warn("event finished", attrs...)
	}
}

// resultMsg is one result to publish: its JSON, the record to keep in the ledger (nil: none)
// and the results stream's message id.
type resultMsg struct {
	ev     events.Event
	data   []byte
	record []byte
	msgID  string
}

// DigestHeader carries, on every result, the digest of the event it answers (see
// events.Event.Digest), so a client can tell its own event's result from another's.
const DigestHeader = "Pamworker-Digest"

// unrecordedMsgID is the results stream's message id of a result that is not recorded: it
// names the stream message it answers, so it is kept once however often that message is
// answered, and never stands in for the result of another message with the same event id.
func unrecordedMsgID(seq uint64, eventID string) string {
	return "result@" + strconv.FormatUint(seq, 10) + ":" + eventID
}

// publishResult stores r's record in the ledger, if it has one, and publishes the result
// event, with any extra messages (the failed-event record). The JetStream publishes are
// pipelined; all must be acknowledged. The reply inbox, if any, is told last, once the result
// is durable. Only headers the worker owns are set.
func (w *Worker) publishResult(ctx context.Context, r resultMsg, extra ...*nats.Msg) error {
	var futures []jetstream.PubAckFuture
	if r.record != nil {
		rec, err := w.js.PublishAsync(w.ledger.recordSubject(r.ev.ID), r.record)
		if err != nil {
			return fmt.Errorf("record: %w", err)
		}
		futures = append(futures, rec)
	}
	pub, err := w.js.PublishMsgAsync(&nats.Msg{
		Subject: events.ResultSubject(r.ev.Action),
		Header:  nats.Header{jetstream.MsgIDHeader: []string{r.msgID}, DigestHeader: []string{r.ev.Digest()}},
		Data:    r.data,
	})
	if err != nil {
		return fmt.Errorf("result: %w", err)
	}
	futures = append(futures, pub)
	for _, m := range extra {
		f, err := w.js.PublishMsgAsync(m)
		if err != nil {
			return fmt.Errorf("%s: %w", m.Subject, err)
		}
		futures = append(futures, f)
	}
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-timeout.C:
			return errors.New("no acknowledgement from JetStream in 10s")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if r.ev.ReplyTo != "" {
		reply := &nats.Msg{Subject: r.ev.ReplyTo, Header: nats.Header{DigestHeader: []string{r.ev.Digest()}}, Data: r.data}
		if err := w.nc.PublishMsg(reply); err != nil {
			w.log.Warn("publishing to reply_to", "event_id", r.ev.ID, "error", err)
		}
	}
	return nil
}

// answerDuplicate answers an event whose id already has a result with that result, calling
// nothing. The republished result carries the same Nats-Msg-Id, so the results stream keeps one.
func (w *Worker) answerDuplicate(ctx context.Context, msg jetstream.Msg, ev events.Event, raw []byte, log *slog.Logger) {
	if err := w.publishResult(ctx, resultMsg{ev: ev, data: raw, msgID: events.ResultMsgID(ev.ID)}); err != nil {
		log.Error("recorded result could not be republished; event will be redelivered", "error", err)
		w.postpone(msg, ev, "result_publish", time.Second)
		return
	}
	if err := w.unpark(ctx, msg); err != nil {
		log.Warn("park mark could not be cleared; the event will be redelivered", "error", err)
		w.postpone(msg, ev, "ledger", time.Second)
		return
	}
	_ = msg.Ack()
	w.progress.made()
	w.m.duplicates.WithLabelValues(actionLabel(ev.Action)).Inc()
	log.Info("duplicate event answered from the ledger; vendor not called")
}

// postpone hands msg back to JetStream for delivery after delay, marking the delivery as
// answered so the crash-loop check does not count it.
func (w *Worker) postpone(msg jetstream.Msg, ev events.Event, reason string, delay time.Duration) {
	if md, err := msg.Metadata(); err == nil && w.ledger != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := w.ledger.deliveryDecided(ctx, md.Sequence.Stream); err != nil {
			w.log.Warn("could not mark a handed-back delivery", "event_id", ev.ID, "error", err)
		}
		cancel()
	}
	var err error
	if delay > 0 {
		err = msg.NakWithDelay(delay)
	} else {
		err = msg.Nak()
	}
	if err != nil {
		w.log.Warn("nak failed; JetStream will redeliver after AckWait", "event_id", ev.ID, "error", err)
	}
	switch reason {
	case "ledger", "result_publish":
		w.progress.failed() // the worker's own machinery failed; nothing was decided
	default:
		w.progress.made()
	}
	w.m.redeliver.WithLabelValues(actionLabel(ev.Action), reason).Inc()
}

// keepAlive tells JetStream the message is still being worked on every third of AckWait, so a
// slow vendor or a long retry does not get the message redelivered to another replica.
func (w *Worker) keepAlive(msg jetstream.Msg) (stop func()) {
	every := w.cfg.AckWait / 3
	var mu sync.Mutex
	stopped := false
	var t *time.Timer
	mu.Lock()
	t = time.AfterFunc(every, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		_ = msg.InProgress()
		t.Reset(every)
	})
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped = true
		mu.Unlock()
		t.Stop()
	}
}
