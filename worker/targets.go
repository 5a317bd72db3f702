package worker

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// targetState protects each configured target and reports on it. (Its rate limit is applied
// where requests leave, by handlers.Pacer.) Per target it keeps:
//
//   - a circuit breaker: after breakerThreshold consecutive failed attempts the target is
//     "open" — no event calls it, they wait in the stream — until a cool-down has passed, then
//     one event at a time probes it; each failed probe doubles the cool-down up to breakerMax;
//   - the lock-out state: a target that refuses the worker (bad credentials, revoked
//     authorization) is down until a probe is accepted; one probe goes every probeEvery.
//
// Either down state sets pamworker_target_up to 0 and is listed by /readyz. The first call the
// target answers as a working API brings it back.
type targetState struct {
	gauge *prometheus.GaugeVec
	now   func() time.Time
	cfg   guardConfig

	mu sync.Mutex
	m  map[string]*target
}

type guardConfig struct {
	threshold  int           // consecutive failed attempts that open the breaker
	cooldown   time.Duration // first open period
	maxCool    time.Duration // longest open period
	probeEvery time.Duration // how often a target that refuses the worker is probed
	breakerOff bool
}

type downKind int

const (
	up      downKind = iota
	refused          // the target refuses the worker
	open             // the breaker is open after repeated failures
)

type target struct {
	state    downKind
	probing  bool
	reason   string
	since    time.Time
	fails    int           // consecutive failed attempts
	cooldown time.Duration // current open period
	until    time.Time     // open: no probe before this
}

func newTargetState(gauge *prometheus.GaugeVec, names []string, cfg guardConfig) *targetState {
	ts := &targetState{gauge: gauge, now: time.Now, cfg: cfg, m: map[string]*target{}}
	for _, n := range names {
		ts.m[n] = &target{}
		gauge.WithLabelValues(n).Set(1)
	}
	return ts
}

// get returns the state of a configured target. Names that are not configured (an event that
// names an unknown target is rejected before any call) are not tracked, so events cannot grow
// the map or the gauge's label set.
func (ts *targetState) get(name string) *target { return ts.m[name] }

// admit reports whether an event for name may call the target now and whether it is the
// probe; when it may not, wait is how long it should wait in the stream.
func (ts *targetState) admit(name string) (ok, probe bool, wait time.Duration) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t := ts.get(name)
	switch {
	case t == nil || t.state == up:
		return true, false, 0
	case t.probing:
		return false, false, ts.waitFor(t)
	case ts.now().Before(t.until): // open and cooling down, or refusing until its next probe
		return false, false, ts.waitFor(t)
	}
	t.probing = true
	return true, true, 0
}

// waitFor is how long a turned-away event should wait before it may be the next probe; it is
// woken sooner if the target comes back.
func (ts *targetState) waitFor(t *target) time.Duration {
	return max(t.until.Sub(ts.now()), 50*time.Millisecond)
}

// attempted records one attempt's outcome for the breaker: failed (retryable) or not. It
// reports whether the breaker just opened.
func (ts *targetState) attempted(name string, failed bool) (opened bool) {
	if ts.cfg.breakerOff {
		return false
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t := ts.get(name)
	if t == nil {
		return false
	}
	if !failed {
		t.fails = 0
		return false
	}
	t.fails++
	if t.state != up || t.fails < ts.cfg.threshold {
		return false
	}
	t.state, t.since, t.cooldown = open, ts.now(), ts.cfg.cooldown
	t.until = t.since.Add(t.cooldown)
	t.reason = fmt.Sprintf("circuit open after %d consecutive failed attempts", t.fails)
	ts.gauge.WithLabelValues(name).Set(0)
	return true
}

// refused reports whether name refuses the worker (rather than failing).
func (ts *targetState) refused(name string) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t := ts.get(name)
	return t != nil && t.state == refused
}

// isOpen reports whether events other than the probe should stop calling name.
func (ts *targetState) isOpen(name string) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t := ts.get(name)
	return t != nil && t.state != up
}

// done records what an admitted event learnt about the target: accepted (it answered as a
// working API), refusedBy (it refuses the worker), failed (the last attempt failed and may
// pass later), or none of these. It reports whether the target went down or came back up.
func (ts *targetState) done(name string, probe, accepted bool, refusedBy string, failed bool) (changed bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t := ts.get(name)
	if t == nil {
		return false
	}
	if probe {
		t.probing = false
	}
	switch {
	case refusedBy != "":
		changed = t.state != refused
		if t.state == up {
			t.since = ts.now()
		}
		t.state, t.reason = refused, refusedBy
		t.until = ts.now().Add(ts.cfg.probeEvery) // the next probe, no sooner
		ts.gauge.WithLabelValues(name).Set(0)
	case accepted:
		t.fails = 0
		if t.state != up {
			t.state, t.reason, changed = up, "", true
			ts.gauge.WithLabelValues(name).Set(1)
		}
	case failed && probe && t.state == open:
		t.cooldown = min(2*t.cooldown, ts.cfg.maxCool)
		t.until = ts.now().Add(t.cooldown)
	}
	return changed
}

// downList describes the targets that are down, for /readyz.
func (ts *targetState) downList() map[string]string {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	out := map[string]string{}
	for name, t := range ts.m {
		switch t.state {
		case refused:
			out[name] = "refuses the worker: " + t.reason + " (since " + t.since.UTC().Format(time.RFC3339) + ")"
		case open:
			out[name] = t.reason + " (since " + t.since.UTC().Format(time.RFC3339) + "); next probe after " +
				t.until.UTC().Format(time.RFC3339)
		}
	}
	return out
}
