package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/worker"
)

// epoch is the zero of every timestamp the bench records.
var epoch = time.Now()

func now() time.Duration { return time.Since(epoch) }

// bench is what every run shares: one broker, one fake API, one publisher and one result
// subscriber, so both workers are measured with the same overhead around them.
type bench struct {
	opts     options
	natsURL  string
	api      *fakeSegura
	pub      *nats.Conn // events are published here
	js       jetstream.JetStream
	pubErrs  atomic.Int64
	sub      *nats.Conn // results are received here
	pamBin   string
	self     string
	tmp      string
	topology worker.Topology
}

// runResult is what one run measured.
type runResult struct {
	worker        string
	run           int
	n             int
	elapsed       time.Duration // first timed publish to last result
	publish       time.Duration // first to last timed publish
	p50, p99, max time.Duration // publish to result
	cpu           time.Duration // worker process CPU during the timed part
	benchCPU      time.Duration // bench process CPU (broker, fake API, publisher) in the same span
	otherCPU      time.Duration // CPU used by the rest of the machine in the same span: noise
	peakRSS, rss  int64
	syscalls      int64       // worker read and write syscalls during the timed part
	api           apiCounters // during the timed part
	connsRun      int64       // API connections over the whole run, start-up and warm-up included
	dups          int
}

func (r runResult) rate() float64           { return float64(r.n) / r.elapsed.Seconds() }
func (r runResult) cpuPer10k() float64      { return ms(r.cpu) * 10000 / float64(r.n) }
func (r runResult) benchCPUPer10k() float64 { return ms(r.benchCPU) * 10000 / float64(r.n) }

// busy is the share of the machine's CPUs that cpu is of the timed part.
func (r runResult) busy(cpu time.Duration) float64 {
	return max(0, cpu.Seconds()/r.elapsed.Seconds()/float64(runtime.NumCPU()))
}

// reset deletes everything both workers use, so every run starts from empty streams.
func (b *bench) reset(ctx context.Context) error {
	t := b.topology
	for _, name := range []string{t.EventsStream, t.ResultsStream, "PAMWORKER_WORK", t.FailedStream, "KV_" + t.Bucket} {
		if err := b.js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("delete stream %s: %w", name, err)
		}
	}
	return nil
}

// runOnce measures one worker: start it, warm it up, time N events, stop it.
func (b *bench) runOnce(ctx context.Context, kind string, run int) (runResult, error) {
	res := runResult{worker: kind, run: run, n: b.opts.n}
	if err := b.reset(ctx); err != nil {
		return res, err
	}
	apiStart := b.api.snapshot()
	started := time.Now()
	w, err := b.startWorker(ctx, kind, run)
	if err != nil {
		return res, err
	}
	logf("run %d: %s ready in %v", run, kind, time.Since(started).Round(time.Millisecond))
	err = b.measure(w, run, &res)
	if stopErr := w.stop(); err == nil {
		err = stopErr
	}
	res.connsRun = b.api.snapshot().sub(apiStart).conns
	return res, err
}

func (b *bench) measure(w *workerProc, run int, res *runResult) error {
	if b.opts.warmup > 0 {
		started := time.Now()
		if _, err := b.round(fmt.Sprintf("w-%d-", run), b.opts.warmup, nil); err != nil {
			return fmt.Errorf("%s warm-up: %w", w.name, err)
		}
		logf("run %d: %s warmed up with %d events in %v", run, w.name, b.opts.warmup, time.Since(started).Round(time.Millisecond))
	}
	stopProfile, err := b.startProfiles(w, run)
	if err != nil {
		return err
	}
	apiBefore, machineBefore := b.api.snapshot(), machineCPU()
	selfBefore, err1 := procUsage("self")
	workerBefore, err2 := w.usage()
	if err := errors.Join(err1, err2); err != nil {
		return err
	}

	published := make([]time.Duration, b.opts.n)
	c, err := b.round(fmt.Sprintf("b-%d-", run), b.opts.n, published)
	if err != nil {
		return fmt.Errorf("%s: %w", w.name, err)
	}

	workerAfter, err1 := w.usage()
	selfAfter, err2 := procUsage("self")
	machineAfter := machineCPU()
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	res.api = b.api.snapshot().sub(apiBefore)
	if err := stopProfile(); err != nil {
		return err
	}

	latencies := make([]time.Duration, b.opts.n)
	last := time.Duration(0)
	for i, at := range c.arrived {
		latencies[i] = at - published[i]
		last = max(last, at)
	}
	slices.Sort(latencies)
	res.elapsed = last - c.start
	res.publish = slices.Max(published) - c.start
	res.p50, res.p99, res.max = percentile(latencies, 50), percentile(latencies, 99), latencies[len(latencies)-1]
	res.cpu = workerAfter.cpu - workerBefore.cpu
	res.benchCPU = selfAfter.cpu - selfBefore.cpu
	res.otherCPU = machineAfter - machineBefore - res.cpu - res.benchCPU
	res.peakRSS, res.rss = workerAfter.peakRSS, workerAfter.rss
	res.syscalls = workerAfter.syscr + workerAfter.syscw - workerBefore.syscr - workerBefore.syscw
	res.dups = c.dups
	if c.notOK > 0 || res.api.rejected > 0 {
		return fmt.Errorf("%s: %d results were not succeeded, the fake API refused %d requests%s",
			w.name, c.notOK, res.api.rejected, w.logTail())
	}
	return nil
}

// startProfiles starts the worker's and the bench's CPU profiles when -profile is set and
// returns what stops them.
func (b *bench) startProfiles(w *workerProc, run int) (stop func() error, err error) {
	if b.opts.profileDir == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(filepath.Join(b.opts.profileDir, fmt.Sprintf("bench-%s-%d.cpu.pprof", strings.ReplaceAll(w.name, "+", "-"), run)))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	if err := w.toggleProfile(false); err != nil {
		pprof.StopCPUProfile()
		f.Close()
		return nil, err
	}
	return func() error {
		pprof.StopCPUProfile()
		return errors.Join(f.Close(), w.toggleProfile(true))
	}, nil
}
