package worker

import (
	"sync/atomic"
	"time"
)

// progress tells a worker that has stopped making progress from one that waits for good
// reasons. Progress is a decision about an event: a result stored and the message settled, or
// the message handed back on purpose (held, target down, retries spent). A worker whose own
// machinery keeps failing — results that cannot be stored, a ledger it cannot read, events it
// cannot route — or that takes nothing while events wait, decides nothing; after the stall
// timeout it says so on /readyz and in pamworker_stalled, instead of staying ready.
type progress struct {
	last    atomic.Int64 // unix nanoseconds of the last decision
	failing atomic.Int64 // of the first internal failure since then; 0: none
	waiting int64        // of the first check that saw events waiting, 0: none (one caller)
}

func newProgress() *progress {
	p := &progress{}
	p.last.Store(time.Now().UnixNano())
	return p
}

// made records a decision.
func (p *progress) made() {
	p.last.Store(time.Now().UnixNano())
	p.failing.Store(0)
}

// failed records an internal failure that left an event undecided.
func (p *progress) failed() { p.failing.CompareAndSwap(0, time.Now().UnixNano()) }

// stalled reports whether nothing has been decided for longer than after while internal
// failures went on or events waited the whole time (waiting: this check sees events in the
// stream the worker has not taken, and it is not paused), and for how long. It is called
// from one goroutine.
func (p *progress) stalled(after time.Duration, waiting bool) (bool, time.Duration) {
	now := time.Now().UnixNano()
	last := p.last.Load()
	switch {
	case !waiting:
		p.waiting = 0
	case p.waiting == 0 || p.waiting < last:
		p.waiting = now
	}
	since := time.Duration(now - last)
	if f := p.failing.Load(); f != 0 && time.Duration(now-f) > after && since > after {
		return true, since
	}
	if p.waiting != 0 && time.Duration(now-p.waiting) > after && since > after {
		return true, since
	}
	return false, since
}
