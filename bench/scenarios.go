package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A scenario is one situation the worker is measured in, beside the minimal worker where that
// worker can take part: what the fake API does, how the events arrive, what happens to the
// worker meanwhile. Each prints a row per worker: events/s, latency, CPU, memory, and the
// JetStream writes each event cost.
type scenario struct {
	name, about string
	n           int
	rate        int    // events per second; 0: all at once
	api         faults // what the fake API does
	concurrency int
	env         []string // for pamworker
	replicas    int      // pamworker processes
	baseline    bool     // the minimal worker runs it too
	during      func(b *bench, s *scenarioRun) error
}

// scenarioRun is one worker's run of a scenario.
type scenarioRun struct {
	worker   string
	procs    []*workerProc
	c        *collector
	start    time.Time
	notes    []string
	restarts []*workerProc // processes started during the run, stopped with the others
	extra    []string      // the environment the processes were started with
	logs     int
}

func (b *bench) scenarios() []scenario {
	n := b.opts.n
	return []scenario{
		{name: "burst", about: fmt.Sprintf("%d events at once, API instant", n), n: n, baseline: true},
		{name: "hangs", about: "200 ev/s for 20 s, API 5 ms, 0.2% of calls hang 8 s", n: 4000, rate: 200,
			api: faults{latency: 5 * time.Millisecond, hangEvery: 500, hangFor: 8 * time.Second}, baseline: true},
		{name: "slow", about: "5,000 events at once, API 50 ms, concurrency 64", n: 5000,
			api: faults{latency: 50 * time.Millisecond}, concurrency: 64, baseline: true},
		{name: "replicas", about: "5,000 events at once, API 50 ms, 2 replicas of concurrency 64, 2 partitions", n: 5000,
			api: faults{latency: 50 * time.Millisecond}, concurrency: 64, replicas: 2, env: b.partitionsEnv(2)},
		{name: "one-replica", about: "the same with 1 replica", n: 5000,
			api: faults{latency: 50 * time.Millisecond}, concurrency: 64, replicas: 1, env: b.partitionsEnv(2)},
		{name: "kill", about: "2,000 events at once, 10% of calls 503, the default rate limit (50/s), SIGKILL at 25% and 60% of the results",
			n: 2000, api: faults{failEvery: 10}, env: []string{"PAMWORKER_TARGET_RATE=50"}, during: killTwice},
		{name: "outage", about: "Segura refuses the worker for 9 s (not a multiple of the 2 s probe interval), 200 events wait, then it accepts it", n: 200, during: outage},
		{name: "resume", about: "paused; 5 events; resumed", n: 5, during: pauseResume},
	}
}

func (b *bench) partitionsEnv(n int) []string {
	if b.opts.partitions == 0 {
		return nil // a build that does not know PAMWORKER_PARTITIONS
	}
	return []string{"PAMWORKER_PARTITIONS=" + strconv.Itoa(n)}
}

// runScenarios runs the scenarios -scenarios names, each once.
func (b *bench) runScenarios(ctx context.Context) error {
	var rows []scenarioRow
	for _, s := range b.scenarios() {
		if !slices.Contains(b.opts.scenarios, s.name) && !slices.Contains(b.opts.scenarios, "all") {
			continue
		}
		workers := []string{kindPam}
		if s.baseline {
			workers = []string{kindBaseline, kindPam}
		}
		if s.name == "burst" { // the noisiest figure: alternate -rounds times, the summary takes medians
			for range b.opts.rounds - 1 {
				workers = append(workers, kindBaseline, kindPam)
			}
		}
		for _, kind := range workers {
			logf("scenario %s: %s (%s)", s.name, kind, s.about)
			row, err := b.runScenario(ctx, s, kind)
			if err != nil {
				return fmt.Errorf("scenario %s, %s: %w", s.name, kind, err)
			}
			rows = append(rows, row)
		}
	}
	if len(rows) > 0 {
		printScenarios(rows)
	}
	if slices.Contains(b.opts.scenarios, "ingress") || slices.Contains(b.opts.scenarios, "all") {
		fmt.Println()
		if err := b.runIngress(ctx); err != nil {
			return err
		}
	}
	return b.reset(ctx)
}

type scenarioRow struct {
	scenario, about, worker string
	n                       int
	elapsed                 time.Duration
	p50, p99, max           time.Duration
	cpu                     time.Duration
	peakRSS                 int64
	writes, acks            float64 // per event
	notes                   []string
}

func (b *bench) runScenario(ctx context.Context, s scenario, kind string) (scenarioRow, error) {
	row := scenarioRow{scenario: s.name, about: s.about, worker: kind, n: s.n}
	if err := b.reset(ctx); err != nil {
		return row, err
	}
	b.api.set(faults{})
	concurrency := b.opts.concurrency
	if s.concurrency > 0 {
		concurrency = s.concurrency
	}
	run := &scenarioRun{worker: kind, extra: s.env}
	start := func() (*workerProc, error) {
		run.logs++
		logPath := filepath.Join(b.tmp, fmt.Sprintf("%s-%s-%d.log", s.name, strings.ReplaceAll(kind, "+", "-"), run.logs))
		if kind == kindBaseline {
			if err := b.createBaselineTopology(ctx, kind); err != nil {
				return nil, err
			}
			return startBaseline(b.self, kind, b.natsURL, b.api.URL, b.topology.EventsStream, baselineConsumer, concurrency, logPath, "")
		}
		return startPamworker(b.pamBin, b.natsURL, b.api.URL, concurrency, logPath, "", s.env...)
	}
	for range max(1, s.replicas) {
		p, err := start()
		if err != nil {
			return row, err
		}
		run.procs = append(run.procs, p)
	}
	defer func() {
		for _, p := range append(run.procs, run.restarts...) {
			_ = p.stop()
		}
	}()
	if s.replicas > 1 {
		time.Sleep(3 * time.Second) // the replicas find each other in the members list
	}
	// Warm up: connections open, tokens fetched, code paths hot.
	if _, err := b.round(fmt.Sprintf("w-%s-%s-", s.name, kind), 200, nil); err != nil {
		return row, fmt.Errorf("warm-up: %w", err)
	}
	b.api.set(s.api)
	before, err := b.jsCounts(ctx)
	if err != nil {
		return row, err
	}
	cpuBefore := cpuOf(run.procs)
	prefix := fmt.Sprintf("s-%s-%s-", s.name, kind)
	published := make([]time.Duration, s.n)
	c := &collector{prefix: prefix, arrived: make([]time.Duration, s.n), done: make(chan struct{})}
	run.c = c
	sub, err := b.sub.Subscribe("results.>", c.onResult)
	if err != nil {
		return row, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)
	_ = b.sub.Flush()
	c.start = now()
	run.start = time.Now()
	duringErr := make(chan error, 1)
	if s.during != nil {
		go func() { duringErr <- s.during(b, run) }()
	} else {
		duringErr <- nil
	}
	if s.name != "resume" { // pauseResume publishes its own events
		if err := b.publishAt(prefix, s.n, s.rate, published); err != nil {
			return row, err
		}
	}
	select {
	case <-c.done:
	case <-time.After(b.opts.timeout):
		return row, fmt.Errorf("timeout: %d of %d results within %v%s", c.count(), s.n, b.opts.timeout, run.procs[0].logTail())
	}
	if err := <-duringErr; err != nil {
		return row, err
	}
	after, err := b.jsCounts(ctx)
	if err != nil {
		return row, err
	}
	row.cpu = cpuOf(run.procs) - cpuBefore
	if len(run.restarts) > 0 {
		row.cpu = -1 // processes came and went: their CPU is not comparable
	}
	for _, p := range run.procs {
		if u, err := p.usage(); err == nil {
			row.peakRSS = max(row.peakRSS, u.peakRSS)
		}
	}
	row.writes = float64(after.writes-before.writes) / float64(s.n)
	row.acks = float64(after.acks-before.acks) / float64(s.n)
	var lat []time.Duration
	last := time.Duration(0)
	for i, at := range c.arrived {
		if s.name == "resume" {
			published[i] = c.start
		}
		lat = append(lat, at-published[i])
		last = max(last, at)
	}
	slices.Sort(lat)
	row.elapsed = last - c.start
	row.p50, row.p99, row.max = percentile(lat, 50), percentile(lat, 99), lat[len(lat)-1]
	row.notes = run.notes
	if c.notOK > 0 {
		row.notes = append(row.notes, fmt.Sprintf("%d results not succeeded", c.notOK))
	}
	if c.dups > 0 {
		row.notes = append(row.notes, fmt.Sprintf("%d duplicate results", c.dups))
	}
	return row, nil
}

// cpuOf is the CPU time of running processes.
func cpuOf(procs []*workerProc) time.Duration {
	var total time.Duration
	for _, p := range procs {
		if u, err := p.usage(); err == nil {
			total += u.cpu
		}
	}
	return total
}

// publishAt publishes n events, all at once (rate 0) or paced at rate per second.
func (b *bench) publishAt(prefix string, n, rate int, published []time.Duration) error {
	if rate <= 0 {
		return b.publish(prefix, n, published)
	}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for i := range n {
		<-tick.C
		id := prefix + strconv.Itoa(i)
		msg := &nats.Msg{Subject: eventSubject, Header: nats.Header{jetstream.MsgIDHeader: []string{id}},
			Data: fmt.Appendf(nil, `{"event_id":%q,"credential_id":%d}`, id, 1+i%1000)}
		if _, err := b.js.PublishMsgAsync(msg); err != nil {
			return fmt.Errorf("publish %s: %w", id, err)
		}
		published[i] = now()
	}
	select {
	case <-b.js.PublishAsyncComplete():
		return nil
	case <-time.After(b.opts.timeout):
		return errors.New("publish: not acknowledged in time")
	}
}

// jsTotals counts the JetStream writes made so far: messages stored in every stream (the
// events, results, ledger records, copies of an earlier design ...) and deliveries acked by
// every consumer.
type jsTotals struct{ writes, acks uint64 }

func (b *bench) jsCounts(ctx context.Context) (jsTotals, error) {
	var t jsTotals
	names := b.js.StreamNames(ctx)
	var streams []string
	for name := range names.Name() {
		streams = append(streams, name)
	}
	if err := names.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return t, err
	}
	for _, name := range streams {
		s, err := b.js.Stream(ctx, name)
		if err != nil {
			continue
		}
		t.writes += s.CachedInfo().State.LastSeq
		infos := s.ListConsumers(ctx)
		for ci := range infos.Info() {
			t.acks += ci.AckFloor.Consumer
		}
	}
	return t, nil
}

// killTwice SIGKILLs the worker when a quarter and when 60% of the results are in, starting
// a new one at once each time, and notes how long the first result after each start took.
func killTwice(b *bench, r *scenarioRun) error {
	for _, share := range []float64{0.25, 0.60} {
		want := int(share * float64(len(r.c.arrived)))
		for r.c.count() < want {
			time.Sleep(20 * time.Millisecond)
		}
		victim := r.procs[0]
		_ = victim.cmd.Process.Kill()
		<-victim.exited
		answered := r.c.count()
		killed := time.Now()
		p, err := startPamworker(b.pamBin, b.natsURL, b.api.URL, b.opts.concurrency,
			filepath.Join(b.tmp, fmt.Sprintf("kill-%d.log", len(r.restarts))), "", r.extra...)
		if err != nil {
			return err
		}
		r.restarts = append(r.restarts, p)
		r.procs = []*workerProc{p}
		for r.c.count() == answered && r.c.count() < len(r.c.arrived) {
			time.Sleep(5 * time.Millisecond)
		}
		r.notes = append(r.notes, fmt.Sprintf("first result %.1f s after the kill", time.Since(killed).Seconds()))
	}
	return nil
}

// outage has the fake API refuse the worker for 9 s while the events arrive, then accept it,
// and notes how long after that every event was answered. (9 s, not 8: a refused target is
// probed every 2 s from its first refusal, and an outage of a multiple of that ends just as a
// probe goes, which would measure luck.)
func outage(b *bench, r *scenarioRun) error {
	b.api.refusing.Store(true)
	time.Sleep(9 * time.Second)
	if n := r.c.count(); n > 0 {
		return fmt.Errorf("%d events answered while the target refused the worker", n)
	}
	fixed := time.Now()
	b.api.refusing.Store(false)
	for r.c.count() < len(r.c.arrived) {
		time.Sleep(10 * time.Millisecond)
	}
	r.notes = append(r.notes, fmt.Sprintf("all answered %.1f s after the target accepted the worker again", time.Since(fixed).Seconds()))
	return nil
}

// pauseResume pauses consumption with `pamworker pause`, publishes the events, resumes with
// `pamworker resume` and notes how long after the resume they ran.
func pauseResume(b *bench, r *scenarioRun) error {
	cli := func(verb string) error {
		cmd := exec.Command(b.pamBin, verb)
		cmd.Env = childEnv("PAMWORKER_NATS_URL=" + b.natsURL)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("pamworker %s: %v: %s", verb, err, out)
		}
		return nil
	}
	if err := cli("pause"); err != nil {
		return err
	}
	time.Sleep(2 * time.Second) // the replicas see the pause
	prefix := r.c.prefix
	if err := b.publish(prefix, len(r.c.arrived), make([]time.Duration, len(r.c.arrived))); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	if n := r.c.count(); n > 0 {
		return fmt.Errorf("%d events ran while paused", n)
	}
	resumed := time.Now()
	r.c.start = now()
	if err := cli("resume"); err != nil {
		return err
	}
	for r.c.count() < len(r.c.arrived) {
		time.Sleep(10 * time.Millisecond)
	}
	r.notes = append(r.notes, fmt.Sprintf("all ran %.2f s after pamworker resume", time.Since(resumed).Seconds()))
	return nil
}

func printScenarios(rows []scenarioRow) {
	fmt.Println("| scenario | worker | events/s | p50 ms | p99 ms | max ms | worker CPU ms/10k | peak RSS MiB | JetStream writes/event (stored + acks) | notes |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
	for _, r := range rows {
		cpu := "—"
		if r.cpu >= 0 {
			cpu = fmt.Sprintf("%.0f", ms(r.cpu)*10000/float64(r.n))
		}
		fmt.Printf("| %s | %s | %.0f | %.1f | %.1f | %.1f | %s | %.1f | %.2f + %.2f | %s |\n", r.scenario, r.worker,
			float64(r.n)/r.elapsed.Seconds(), ms(r.p50), ms(r.p99), ms(r.max), cpu, mb(r.peakRSS), r.writes, r.acks, strings.Join(r.notes, "; "))
	}
	// The ratios the issue sets targets for, from the median row where a scenario ran several
	// times.
	find := func(scenario, worker string) *scenarioRow {
		var all []*scenarioRow
		for i := range rows {
			if rows[i].scenario == scenario && rows[i].worker == worker {
				all = append(all, &rows[i])
			}
		}
		if len(all) == 0 {
			return nil
		}
		slices.SortFunc(all, func(a, b *scenarioRow) int { return cmp.Compare(a.elapsed, b.elapsed) })
		return all[len(all)/2]
	}
	rate := func(r *scenarioRow) float64 { return float64(r.n) / r.elapsed.Seconds() }
	fmt.Println()
	if b, p := find("hangs", kindBaseline), find("hangs", kindPam); b != nil && p != nil {
		fmt.Printf("hangs: p99 %.2fx the minimal worker's (target at most 1.5x)\n", ms(p.p99)/ms(b.p99))
	}
	if b, p := find("slow", kindBaseline), find("slow", kindPam); b != nil && p != nil {
		fmt.Printf("slow API: throughput %.2fx the minimal worker's (target at least 0.85x)\n", rate(p)/rate(b))
	}
	if b, p := find("burst", kindBaseline), find("burst", kindPam); b != nil && p != nil {
		fmt.Printf("burst: throughput %.2fx the minimal worker's (target at least 0.5x); CPU per event %.2fx (target at most 3x); peak RSS %.1f MiB (target at most 30 MB = 28.6 MiB)\n",
			rate(p)/rate(b), float64(p.cpu)/float64(b.cpu), mb(p.peakRSS))
	}
	if two, one := find("replicas", kindPam), find("one-replica", kindPam); two != nil && one != nil {
		fmt.Printf("replicas: 2 replicas %.2fx the throughput of 1 (target at least 1.6x)\n", rate(two)/rate(one))
	}
	_ = os.Stdout.Sync()
}
