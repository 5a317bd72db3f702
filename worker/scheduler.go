package worker

import (
	"slices"
	"sync"
	"time"
)

// scheduler holds the events a replica has taken, one FIFO queue per object in stream order,
// and decides what runs. Only the head of an object's queue ever runs or waits; the events
// behind it wait for it, and for nothing else. A head that must wait — for a retry, a limit's
// window, a target that is down — leaves the runners free for everyone else and comes back when
// its time comes or something wakes it: the target comes back, an operator releases held
// events, consumption resumes.
type scheduler struct {
	mu      sync.Mutex
	cond    *sync.Cond          // runners wait here for ready events
	room    *sync.Cond          // feeds wait here for room (see waitRoom)
	parked  int                 // events in queues whose head waits
	objects map[string][]*entry // by object key; the head is [0]
	total   int                 // events held
	ready   []*entry            // heads that may run now, oldest first
	held    map[*entry]bool     // heads waiting for a blast-radius window
	down    map[string]map[*entry]bool
	paused  bool
	closed  bool
}

func newScheduler() *scheduler {
	s := &scheduler{objects: map[string][]*entry{}, held: map[*entry]bool{}, down: map[string]map[*entry]bool{}}
	s.cond, s.room = sync.NewCond(&s.mu), sync.NewCond(&s.mu)
	return s
}

// parkedIn is how many events of key's queue count as parked: all of them while its head waits.
func (s *scheduler) parkedIn(key string) int {
	if q := s.objects[key]; len(q) > 0 && q[0].state == stateWaiting {
		return len(q)
	}
	return 0
}

// change applies f to key's queue, keeping the parked count and waking a feed if there is
// room again.
func (s *scheduler) change(key string, f func()) {
	before := s.parkedIn(key)
	f()
	s.parked += s.parkedIn(key) - before
	s.room.Broadcast()
}

// waitRoom waits until the events held and not parked — those that will run soon — are at
// most half of limit, and returns how many more may be taken: a burst is taken in as fast as
// the runners take it, not all at once, while waiting events (held by a limit, behind a
// target that is down) leave room for the rest. It returns 0 once stop is closed.
func (s *scheduler) waitRoom(limit int, stop <-chan struct{}) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		select {
		case <-stop:
			return 0
		default:
		}
		if active := s.total - s.parked; active <= limit/2 {
			return limit - active
		}
		s.room.Wait()
	}
}

// poke wakes the feeds waiting for room, to look at their stop channel.
func (s *scheduler) poke() {
	s.mu.Lock()
	s.room.Broadcast()
	s.mu.Unlock()
}

// add queues e behind the earlier events about its object; it is ready at once if there are
// none.
func (s *scheduler) add(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addLocked(e)
}

// addAll adds es in order, unless the scheduler is closed (then it adds none).
func (s *scheduler) addAll(es []*entry) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	for _, e := range es {
		s.addLocked(e)
	}
	return true
}

func (s *scheduler) addLocked(e *entry) {
	e.kept = time.Now()
	s.total++
	s.change(e.key, func() {
		q := append(s.objects[e.key], e)
		s.objects[e.key] = q
		if len(q) == 1 {
			s.readyLocked(e)
		}
	})
}

func (s *scheduler) readyLocked(e *entry) {
	e.state = stateReady
	s.ready = append(s.ready, e)
	s.cond.Signal()
}

// next returns the oldest ready event, waiting for one; nil once the scheduler is closed.
func (s *scheduler) next() *entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	for !s.closed && (s.paused || len(s.ready) == 0) {
		s.cond.Wait()
	}
	if s.closed {
		return nil
	}
	e := s.ready[0]
	s.ready[0] = nil
	s.ready = s.ready[1:]
	e.state = stateRunning
	return e
}

// done removes e, a settled head, and makes the next event about its object ready.
func (s *scheduler) done(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeLocked(e)
}

func (s *scheduler) removeLocked(e *entry) {
	q := s.objects[e.key]
	i := slices.Index(q, e)
	if i < 0 {
		e.state = stateGone
		return // not held here (taken behind a fence, or removed already)
	}
	s.total--
	s.change(e.key, func() {
		e.state = stateGone
		s.stopWaitLocked(e)
		q = append(q[:i:i], q[i+1:]...)
		if len(q) == 0 {
			delete(s.objects, e.key)
			return
		}
		s.objects[e.key] = q
		if q[0].state == stateQueued {
			s.readyLocked(q[0])
		}
	})
}

// wait parks e, a head, until until (zero: until woken), for reason; a held event is woken by
// an operator's hold decision too, and one waiting for target by that target coming back.
func (s *scheduler) wait(e *entry, until time.Time, held bool, target string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || e.state == stateGone {
		return
	}
	s.change(e.key, func() { e.state = stateWaiting })
	e.wake++
	token := e.wake
	if held {
		s.held[e] = true
	}
	if target != "" {
		if s.down[target] == nil {
			s.down[target] = map[*entry]bool{}
		}
		s.down[target][e] = true
		e.downOn = target
	}
	if !until.IsZero() {
		e.timer = time.AfterFunc(time.Until(until), func() { s.wakeIf(e, token) })
	}
}

func (s *scheduler) wakeIf(e *entry, token int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.wake == token && e.state == stateWaiting {
		s.wakeLocked(e)
	}
}

// wakeLocked makes e, a waiting head, ready.
func (s *scheduler) wakeLocked(e *entry) {
	s.change(e.key, func() {
		s.stopWaitLocked(e)
		s.readyLocked(e)
	})
}

func (s *scheduler) stopWaitLocked(e *entry) {
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
	delete(s.held, e)
	if e.downOn != "" {
		delete(s.down[e.downOn], e)
		e.downOn = ""
	}
}

// wakeHeld makes every held event ready: an operator released or cancelled held events.
func (s *scheduler) wakeHeld() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for e := range s.held {
		s.wakeLocked(e)
	}
}

// wakeTarget makes every event waiting for target ready: it accepts the worker again.
func (s *scheduler) wakeTarget(target string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for e := range s.down[target] {
		s.wakeLocked(e)
	}
}

// setPaused stops or resumes starting events; running ones are not touched.
func (s *scheduler) setPaused(paused bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.paused != paused {
		s.paused = paused
		s.cond.Broadcast()
	}
}

// stale returns the events held for longer than every since they were last kept alive, and
// marks them kept.
func (s *scheduler) stale(every time.Duration) []*entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	var out []*entry
	for _, q := range s.objects {
		for _, e := range q {
			if now.Sub(e.kept) >= every {
				e.kept = now
				out = append(out, e)
			}
		}
	}
	return out
}

// release removes and returns the events of partition p that are not running, so that they
// can be handed back to JetStream (p is given to another replica).
func (s *scheduler) release(p *partition) []*entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*entry
	for _, q := range s.objects {
		for _, e := range q {
			if e.part == p && e.state != stateRunning {
				out = append(out, e)
			}
		}
	}
	for _, e := range out {
		s.removeLocked(e)
	}
	s.dropReadyLocked()
	return out
}

// dropReadyLocked removes gone events from the ready queue.
func (s *scheduler) dropReadyLocked() {
	kept := s.ready[:0]
	for _, e := range s.ready {
		if e.state == stateReady {
			kept = append(kept, e)
		}
	}
	clear(s.ready[len(kept):])
	s.ready = kept
}

// close stops handing out events; runners return once their event is settled.
func (s *scheduler) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.cond.Broadcast()
	s.room.Broadcast()
}

// drain removes and returns every event still held, once the runners have stopped.
func (s *scheduler) drain() []*entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*entry
	for _, q := range s.objects {
		out = append(out, q...)
	}
	for _, e := range out {
		s.stopWaitLocked(e)
		e.state = stateGone
	}
	s.objects, s.ready, s.total, s.parked = map[string][]*entry{}, nil, 0, 0
	return out
}

// lowest returns the lowest stream sequence of p's events held here; 0 if none.
func (s *scheduler) lowest(p *partition) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var low uint64
	for _, q := range s.objects {
		for _, e := range q {
			if e.part == p && (low == 0 || e.seq < low) {
				low = e.seq
			}
		}
	}
	return low
}

// counts returns how many events are held and how many of them wait for a limit or a target.
func (s *scheduler) counts() (held, waiting int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range s.objects {
		held += len(q)
	}
	waiting = len(s.held)
	for _, m := range s.down {
		waiting += len(m)
	}
	return held, waiting
}
