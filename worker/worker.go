// Package worker consumes action events from JetStream and answers every one with exactly one
// result event. Events are read straight from the events stream by a pinned consumer (one
// replica at a time per partition, the others on standby), held in memory in one queue per
// object — the unit of ordering — and run through a short pipeline of named steps
// (pipeline.go) with bounded concurrency. An event waits only for earlier events about its own
// object, and for its target's rate limit, breaker, pause or hold; it never waits behind an
// unrelated one. Ack decisions are made in one place (settle); handlers return outcomes and
// typed errors and know nothing of NATS.
package worker

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/config"
	"github.com/pamworker/pamworker/guard"
	"github.com/pamworker/pamworker/handlers"
)

// Config tunes the worker. The settings operators set come resolved from package config; the
// zero value of each of the others takes the default named in withDefaults.
type Config struct {
	Concurrency      int             // events processed at once, vendor calls in flight
	AttemptTimeout   time.Duration   // one API request
	MaxEventBytes    int             // larger events are rejected
	MaxDeliveries    int             // exhausted retry budgets before an event fails
	RetryMaxElapsed  time.Duration   // in-process retry budget
	AckWait          time.Duration   // consumer ack wait; held events are kept alive with InProgress
	ShutdownTimeout  time.Duration   // grace for in-flight events on shutdown
	StallTimeout     time.Duration   // no decision for this long while events wait: not ready
	MaxEventAge      time.Duration   // older events are rejected stale_event; 0: no limit
	Partitions       int             // partition consumers; a replica owns some of them
	MaxHeld          int             // events one partition may hold in memory (MaxAckPending)
	Protected        guard.Protected // objects no event may act on
	Signatures       *guard.Verifier // subjects whose events must be signed; nil: none
	Limits           guard.Limits    // blast-radius limits by action
	Topology         Topology
	Targets          []string // configured target labels ("segura/default" ...), for target_up
	RetryInitial     time.Duration
	RetryMaxInterval time.Duration
	RedeliveryDelay  time.Duration // wait after a spent budget, times the count
	ProbeInterval    time.Duration // how often a target that refuses the worker is probed
	BreakerThreshold int           // consecutive failed attempts that open a target's breaker; <0: none
	BreakerCooldown  time.Duration // first open period; doubles per failed probe
	BreakerMaxCool   time.Duration // longest open period
}

// withDefaults fills in what is not set: the operators' settings with package config's
// defaults (the one place they are chosen), the tuning knobs operators do not set with the
// worker's own.
func (c Config) withDefaults() Config {
	or := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	ori := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	ori(&c.Concurrency, config.DefaultConcurrency)
	ori(&c.MaxEventBytes, config.DefaultMaxEventBytes)
	ori(&c.MaxDeliveries, config.DefaultMaxDeliveries)
	ori(&c.Partitions, config.DefaultPartitions)
	or(&c.AttemptTimeout, config.DefaultHTTPTimeout)
	or(&c.RetryMaxElapsed, config.DefaultRetryMaxElapsed)
	or(&c.AckWait, config.DefaultAckWait)
	or(&c.ShutdownTimeout, config.DefaultShutdownTimeout)
	or(&c.StallTimeout, config.DefaultStallTimeout)
	ori(&c.MaxHeld, 4096)
	ori(&c.BreakerThreshold, 5)
	or(&c.RetryInitial, 200*time.Millisecond)
	or(&c.RetryMaxInterval, 5*time.Second)
	or(&c.RedeliveryDelay, 10*time.Second)
	or(&c.ProbeInterval, 2*time.Second)
	or(&c.BreakerCooldown, 5*time.Second)
	or(&c.BreakerMaxCool, 2*time.Minute)
	if c.Topology == (Topology{}) {
		c.Topology = DefaultTopology()
	}
	return c
}

// publishAckTimeout bounds the wait for JetStream's acknowledgement of a result or record.
const publishAckTimeout = 10 * time.Second

// Worker is one replica.
type Worker struct {
	cfg     Config
	nc      *nats.Conn
	js      jetstream.JetStream
	m       *Metrics
	log     *slog.Logger
	targets *targetState
	newID   func() string
	handler handlers.Handler // the registry behind the handler middleware, built once
	steps   []step

	ledger    *ledger
	holds     *holds
	members   *members
	sched     *scheduler
	consuming atomic.Bool
	paused    atomic.Pointer[time.Time] // until when an operator paused consumption; nil if not
	progress  *progress
	stalled   atomic.Pointer[string] // why the worker counts as stalled; nil if it does not
}

// New returns a Worker that will consume through nc and dispatch through reg.
func New(nc *nats.Conn, reg *handlers.Registry, m *Metrics, log *slog.Logger, newID func() string, cfg Config) (*Worker, error) {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(publishAckTimeout))
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	cfg = cfg.withDefaults()
	w := &Worker{
		cfg:   cfg,
		nc:    nc,
		js:    js,
		m:     m,
		log:   log,
		newID: newID,
		targets: newTargetState(m.targetUp, cfg.Targets, guardConfig{
			threshold:  max(cfg.BreakerThreshold, 1),
			cooldown:   cfg.BreakerCooldown,
			maxCool:    cfg.BreakerMaxCool,
			probeEvery: cfg.ProbeInterval,
			breakerOff: cfg.BreakerThreshold < 0,
		}),
		handler:  handlers.Chain(reg, recoverHandler(log)),
		progress: newProgress(),
	}
	w.steps = w.pipeline()
	return w, nil
}

// Run creates what the worker needs in JetStream and consumes until ctx is done. It then stops
// taking events, lets running ones finish for up to ShutdownTimeout, hands everything else
// back to JetStream, and returns nil.
func (w *Worker) Run(ctx context.Context) error {
	kv, err := setup(ctx, w.js, w.cfg.Topology)
	if err != nil {
		return err
	}
	for _, weak := range weaknesses(ctx, w.js, w.cfg.Topology.EventsStream, w.cfg.Topology.ResultsStream) {
		w.log.Warn("weak JetStream setting for production", "warning", weak)
	}
	w.ledger = newLedger(kv)
	w.holds = newHolds(kv)
	// Create every consumer before reporting ready, so a test or an operator that sees /readyz
	// sees a worker that can take events.
	parts, err := w.partitions(ctx)
	if err != nil {
		return err
	}
	id := w.newID()
	if w.members, err = newMembers(ctx, w.js, w.cfg.Topology, id, w.cfg.Partitions, w.report(id)); err != nil {
		return fmt.Errorf("members bucket %s: %w", w.cfg.Topology.MembersBucket, err)
	}

	// hard ends running work; it outlives ctx by the shutdown grace. life ends after that,
	// once everything is handed back: until then held events are kept alive and the leases
	// renewed, so no other replica takes an event this one still runs.
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()
	life, endLife := context.WithCancel(context.WithoutCancel(ctx))
	defer endLife()
	w.sched = newScheduler()
	var runners sync.WaitGroup
	for range w.cfg.Concurrency {
		runners.Add(1)
		go func() { defer runners.Done(); w.runEntries(hard) }()
	}
	var feeds sync.WaitGroup
	for _, p := range parts {
		feeds.Add(1)
		go func() { defer feeds.Done(); p.run(ctx) }()
	}
	go w.members.run(life)
	go w.keepAlive(life, parts)
	go w.holds.watch(ctx, w.log, w.sched.wakeHeld)
	go w.watch(ctx, parts)
	w.consuming.Store(true)
	w.log.Info("consuming", "stream", w.cfg.Topology.EventsStream, "partitions", len(parts), "concurrency", w.cfg.Concurrency)
	<-ctx.Done()
	w.consuming.Store(false)

	// Start nothing more, stop taking events, let running ones finish within the grace, hand
	// back the rest.
	w.sched.close()
	feeds.Wait()
	done := make(chan struct{})
	go func() { runners.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(w.cfg.ShutdownTimeout):
		w.log.Warn("shutdown grace over; handing in-flight events back", "grace", w.cfg.ShutdownTimeout)
		cancelHard()
		<-done
	}
	held := w.sched.drain()
	for _, p := range parts {
		held = append(held, p.dropFence()...)
	}
	for _, e := range held {
		w.handBack(e, 0, deferShutdown)
	}
	if err := w.nc.Flush(); err != nil {
		w.log.Warn("flushing acks", "error", err)
	}
	// Everything is settled or handed back: the leases can go, and the next owner need not
	// wait for them to lapse.
	endLife()
	for _, p := range parts {
		if !p.lapsed() {
			w.members.release(p.k)
		}
	}
	w.members.leave()
	w.log.Info("stopped consuming")
	return nil
}

// runEntries is one of the Concurrency runners: it takes ready events and runs them through
// the pipeline until the scheduler closes.
func (w *Worker) runEntries(ctx context.Context) {
	for {
		e := w.sched.next()
		if e == nil {
			return
		}
		w.runSafely(ctx, e)
	}
}

// keepAlive tells JetStream every third of AckWait that the events this replica holds are
// still being worked on — running, or waiting in memory for their turn — so none is
// redelivered while it is held.
func (w *Worker) keepAlive(ctx context.Context, parts []*partition) {
	every := max(w.cfg.AckWait/3, 100*time.Millisecond)
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		kept := w.sched.stale(every)
		for _, p := range parts {
			kept = append(kept, p.keptAlive(every)...)
		}
		for _, e := range kept {
			_ = e.msg.InProgress()
		}
	}
}

// watch follows each partition consumer every second — pause state, whether events wait in
// the stream — and the stall check.
func (w *Worker) watch(ctx context.Context, parts []*partition) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		waiting, paused := false, false
		var until *time.Time
		for _, p := range parts {
			info, err := p.info(ctx)
			if err != nil {
				continue
			}
			if info.Paused && info.Config.PauseUntil != nil {
				paused, until = true, info.Config.PauseUntil
			} else {
				waiting = waiting || info.NumPending > 0
			}
		}
		w.setPaused(paused, until)
		w.checkStall(waiting)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// setPaused follows an operator's pause (pamworker pause / resume): the scheduler starts
// nothing while paused, and running events finish.
func (w *Worker) setPaused(paused bool, until *time.Time) {
	was := w.paused.Load() != nil
	if paused {
		w.paused.Store(until)
		w.m.paused.Set(1)
		if !was {
			w.log.Warn("consumption paused by an operator; events wait", "until", until.UTC())
		}
	} else {
		w.paused.Store(nil)
		w.m.paused.Set(0)
		if was {
			w.log.Info("consumption resumed")
		}
	}
	w.sched.setPaused(paused)
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
