package worker

import (
	"cmp"
	"context"
	"errors"
	"hash/fnv"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// partition is this replica's side of one partition consumer. A replica consumes a partition
// only while it holds the partition's lease (members.go); the others wait to take it over. A
// replica that has just taken a lease — at start, or after a takeover — first lets the previous
// owner's events come back to it (a fence): until every event still pending on the consumer is
// one this replica holds, the events it takes wait, and then run in stream order. So an event
// about an object can never overtake one the previous owner still had, whatever the window of
// events in flight.
type partition struct {
	w     *Worker
	k     int
	owned atomic.Bool // this replica holds the lease: its events may run

	mu      sync.Mutex
	cons    jetstream.Consumer
	lease   *lease    // the lease held, or last held
	fenced  bool      // a fence is up: taken events wait in fence
	fence   []*entry  // taken while the fence is up
	held    int       // events taken and not settled (the fence's count)
	settles int       // settles so far, so the fence can tell a count taken mid-settle
	last    uint64    // the highest stream sequence taken
	lowest  uint64    // the lowest stream sequence held when last asked
	created time.Time // when the events stream those sequences belong to was created
}

// partitions creates this replica's side of every partition consumer.
func (w *Worker) partitions(ctx context.Context) ([]*partition, error) {
	var out []*partition
	for k := range w.cfg.Partitions {
		p := &partition{w: w, k: k}
		cons, err := ensureConsumer(ctx, w.js, w.cfg.Topology, k, w.cfg.AckWait, w.cfg.MaxHeld, position{}, w.log)
		if err != nil {
			return nil, err
		}
		p.cons, p.created = cons, streamCreated(ctx, w.js, w.cfg.Topology)
		out = append(out, p)
	}
	return out, nil
}

// partitionOf is the partition of an object.
func partitionOf(key string, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

// run takes the partition's lease whenever it may, consumes the partition while it holds it,
// and hands it over when the lease is lost or the members list gives it to another replica.
// At shutdown it just stops: Run hands back what is held, then gives the lease up.
func (p *partition) run(ctx context.Context) {
	for ctx.Err() == nil {
		l, ok := p.acquire(ctx)
		if !ok {
			return
		}
		p.consume(ctx, l)
		if ctx.Err() != nil {
			return
		}
		p.handOver(l)
	}
}

// acquire waits until this replica holds the partition's lease, then raises the fence.
func (p *partition) acquire(ctx context.Context) (*lease, bool) {
	w := p.w
	for {
		want, changed := w.members.wants(p.k, w.cfg.Partitions)
		if want {
			if l, ok := w.members.acquire(ctx, p.k); ok {
				p.mu.Lock()
				p.lease, p.fenced = l, true
				p.mu.Unlock()
				p.owned.Store(true)
				go p.lift(ctx)
				w.log.Info("partition lease taken", "partition", p.k)
				return l, true
			}
		}
		select {
		case <-ctx.Done():
			return nil, false
		case <-changed:
		case <-time.After(leaseTick):
		}
	}
}

// consume pulls the partition's events until ctx ends or the lease ends, recreating the
// consumer if it disappears.
func (p *partition) consume(ctx context.Context, l *lease) {
	w := p.w
	errs, lastErr := 0, ""
	for ctx.Err() == nil && !l.ended() {
		iter, err := p.messages(ctx)
		if err != nil {
			if err.Error() != lastErr {
				w.log.Warn("partition consumer unavailable", "partition", p.k, "error", err)
				lastErr = err.Error()
			}
			errs++
			select {
			case <-time.After(min(time.Duration(errs)*200*time.Millisecond, 2*time.Second)):
			case <-ctx.Done():
			case <-l.lost:
			}
			continue
		}
		errs, lastErr = 0, ""
		stop := context.AfterFunc(ctx, func() { iter.Drain() })
		done := make(chan struct{})
		go func() {
			select {
			case <-l.lost:
				p.owned.Store(false) // nothing more of it runs here
				iter.Drain()         // what is buffered comes through take, which hands it back
			case <-done:
			}
		}()
		p.take(ctx, iter)
		close(done)
		stop()
		iter.Stop()
	}
}

// handOver gives the partition up after its lease ended: what this replica holds of it and is
// not running goes back to JetStream, and the lease is released so the next owner need not
// wait for it to lapse; running events hand themselves back if they end up waiting. A lease
// that lapsed is another replica's by now: its events are left to expire rather than nak'd, a
// nak being accepted for whichever delivery of the event is current.
func (p *partition) handOver(l *lease) {
	w := p.w
	p.owned.Store(false)
	released := append(p.dropFence(), w.sched.release(p)...)
	for _, e := range released {
		w.handBack(e, 0, deferReleased)
	}
	if l.lapsed.Load() {
		w.log.Warn("partition lease lapsed (this replica could not renew it); its events are left to the next owner", "partition", p.k,
			"events", len(released))
		return
	}
	w.members.release(p.k)
	w.log.Info("partition given to another replica", "partition", p.k, "events_handed_back", len(released))
}

// messages opens a pull on the partition's consumer, creating it first if it is gone.
func (p *partition) messages(ctx context.Context) (jetstream.MessagesContext, error) {
	w := p.w
	p.mu.Lock()
	cons := p.cons
	p.mu.Unlock()
	if cons == nil {
		var err error
		if cons, err = ensureConsumer(ctx, w.js, w.cfg.Topology, p.k, w.cfg.AckWait, w.cfg.MaxHeld, p.resumeAt(), w.log); err != nil {
			return nil, err
		}
		created := streamCreated(ctx, w.js, w.cfg.Topology)
		p.mu.Lock()
		if !created.Equal(p.created) {
			p.last, p.created = 0, created
		}
		p.cons = cons
		p.mu.Unlock()
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(min(w.cfg.MaxHeld, max(64, 2*w.cfg.Concurrency))), jetstream.PullExpiry(5*time.Second))
	if err != nil {
		p.forget(err)
		return nil, err
	}
	return iter, nil
}

// forget drops the consumer after an error that says it is gone, so it is recreated.
func (p *partition) forget(err error) {
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
		strings.Contains(err.Error(), "consumer not found") {
		p.mu.Lock()
		p.cons = nil
		p.mu.Unlock()
	}
}

// resumeAt is where a recreated consumer starts: the oldest event this replica still holds,
// or the one after the last it took; nowhere in particular if it took none.
func (p *partition) resumeAt() position {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.last == 0:
		return position{}
	case p.held > 0 && p.lowest > 0:
		return position{seq: p.lowest, created: p.created}
	}
	return position{seq: p.last + 1, created: p.created}
}

// take hands each message of iter to the scheduler until iter closes or fails. It takes
// them as they come: the consumer's MaxAckPending bounds what a replica holds, and a message
// left in the client's buffer would not be kept alive. Messages taken while shutting down or
// giving the partition up go back to JetStream at once.
func (p *partition) take(ctx context.Context, iter jetstream.MessagesContext) {
	w := p.w
	errs := 0
	for {
		msg, err := iter.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return
		}
		if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
			p.forget(err)
			return
		}
		if err != nil {
			// The iterator recovers from most errors by itself (missed heartbeats, a reconnect).
			errs++
			if errs > 20 {
				return // start a new pull
			}
			select {
			case <-time.After(min(time.Duration(errs)*100*time.Millisecond, 2*time.Second)):
			case <-ctx.Done():
			}
			continue
		}
		errs = 0
		if ctx.Err() != nil || !p.owned.Load() {
			if !p.lapsed() {
				_ = msg.Nak()
			}
			continue
		}
		e := w.newEntry(msg, p)
		if w.cfg.Partitions > 1 && partitionOf(e.key, w.cfg.Partitions) != p.k {
			_ = msg.Ack() // another partition's event: its own consumer delivers it there
			continue
		}
		p.add(e)
	}
}

// add takes e, behind the fence if one is up.
func (p *partition) add(e *entry) {
	p.mu.Lock()
	e.kept = time.Now()
	p.held++
	p.last = max(p.last, e.seq)
	if p.fenced {
		p.fence = append(p.fence, e)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	p.w.sched.add(e)
}

// lapsed reports whether the partition's last lease lapsed rather than ending cleanly.
func (p *partition) lapsed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lease != nil && p.lease.lapsed.Load()
}

// lift takes the fence down once every event pending on the consumer is one this replica
// holds — the previous owner's have been answered or have come back to it — and hands the
// events taken meanwhile to the scheduler in stream order. A count taken while one of this
// replica's events was being settled proves nothing (the server may have seen that ack
// already); it is taken again.
func (p *partition) lift(ctx context.Context) {
	w := p.w
	start := time.Now()
	warned := false
	for delay := time.Duration(0); ; delay = 50 * time.Millisecond {
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		p.mu.Lock()
		held, settles, cons := p.held, p.settles, p.cons
		p.mu.Unlock()
		if cons == nil {
			continue
		}
		info, err := cons.Info(ctx)
		if err != nil {
			continue
		}
		p.mu.Lock()
		if !p.fenced {
			p.mu.Unlock()
			return // the partition went to another replica meanwhile
		}
		if p.settles == settles && info.NumAckPending <= held {
			// Under the lock, so that no event taken after the fence is queued before these.
			fence := p.fence
			slices.SortFunc(fence, func(a, b *entry) int { return cmp.Compare(a.seq, b.seq) })
			if !w.sched.addAll(fence) {
				p.mu.Unlock()
				return // shutting down: the fence's events are handed back with the rest
			}
			p.fence, p.fenced = nil, false
			p.mu.Unlock()
			if waited := time.Since(start); waited > 100*time.Millisecond {
				w.log.Info("partition taken over; the previous owner's events came back first", "partition", p.k,
					"waited", waited.Round(time.Millisecond).String(), "events_taken_meanwhile", len(fence))
			}
			return
		}
		p.mu.Unlock()
		if !warned && time.Since(start) > 2*w.cfg.AckWait {
			warned = true
			w.log.Warn("partition taken over; waiting for the previous owner's events", "partition", p.k,
				"pending", info.NumAckPending, "held_here", held)
		}
	}
}

// keptAlive returns the events behind the fence held for longer than every since they were
// last kept alive, and marks them kept.
func (p *partition) keptAlive(every time.Duration) []*entry {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	var out []*entry
	for _, e := range p.fence {
		if now.Sub(e.kept) >= every {
			e.kept = now
			out = append(out, e)
		}
	}
	return out
}

// dropFence returns the events behind the fence and takes it down, for a hand-back.
func (p *partition) dropFence() []*entry {
	p.mu.Lock()
	defer p.mu.Unlock()
	fence := p.fence
	p.fence, p.fenced = nil, false
	return fence
}

// settled records that one of the partition's events was acked, termed or handed back.
func (p *partition) settled() {
	p.mu.Lock()
	p.held--
	p.settles++
	p.mu.Unlock()
}

// info returns the consumer's state, and notes the oldest event held for resumeAt.
func (p *partition) info(ctx context.Context) (*jetstream.ConsumerInfo, error) {
	p.mu.Lock()
	cons := p.cons
	p.mu.Unlock()
	if cons == nil {
		return nil, errors.New("no consumer")
	}
	info, err := cons.Info(ctx)
	if err != nil {
		p.forget(err)
		return nil, err
	}
	lowest := p.w.sched.lowest(p)
	p.mu.Lock()
	p.lowest = lowest
	p.mu.Unlock()
	return info, nil
}
