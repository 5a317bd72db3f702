package worker

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// targetState tracks which targets refuse the worker. While a target is down, one event at a
// time is let through as a probe; the others wait in the stream. The first probe the target
// accepts brings it back up, so work resumes by itself once an operator fixes the cause.
type targetState struct {
	gauge *prometheus.GaugeVec
	now   func() time.Time

	mu sync.Mutex
	m  map[string]*target
}

type target struct {
	down    bool
	probing bool
	reason  string
	since   time.Time
}

func newTargetState(gauge *prometheus.GaugeVec, names []string) *targetState {
	ts := &targetState{gauge: gauge, now: time.Now, m: map[string]*target{}}
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

// admit reports whether an event for name may call the target now, and whether it is the probe.
func (ts *targetState) admit(name string) (ok, probe bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t := ts.get(name)
	switch {
	case t == nil || !t.down:
		return true, false
	case t.probing:
		return false, false
	}
	t.probing = true
	return true, true
}

// done records what a call that was admitted (as a probe or not) learnt about the target:
// accepted (it answered as a working API), refused (down, with reason), or neither.
func (ts *targetState) done(name string, probe bool, accepted bool, refused string) (changed bool) {
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
	case refused != "" && !t.down:
		t.down, t.reason, t.since = true, refused, ts.now()
		ts.gauge.WithLabelValues(name).Set(0)
		return true
	case refused != "":
		t.reason = refused
	case accepted && t.down:
		t.down, t.reason = false, ""
		ts.gauge.WithLabelValues(name).Set(1)
		return true
	}
	return false
}

// downList describes the targets that are down, for /readyz.
func (ts *targetState) downList() map[string]string {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	out := map[string]string{}
	for name, t := range ts.m {
		if t.down {
			out[name] = t.reason + " (since " + t.since.UTC().Format(time.RFC3339) + ")"
		}
	}
	return out
}
