package worker

import (
	"cmp"
	"context"
	"errors"
	"hash/fnv"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// partition is this replica's side of one partition consumer. JetStream hands the
// partition's events to one replica at a time (a pinned priority group) and gives them to
// another when it stops pulling. A replica that has just been given the partition — at start,
// or after a takeover — first lets the previous owner's events come back to it (a fence):
// until every event still pending on the consumer is one this replica holds, the events it
// takes wait, and then run in stream order. So an event about an object can never overtake one
// the previous owner still had, whatever the window of events in flight.
type partition struct {
	w *Worker
	k int

	mu      sync.Mutex
	cons    jetstream.Consumer
	pin     string    // the pin id JetStream gave this replica's pulls
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

// run pulls the partition's events until ctx ends, recreating its consumer if it disappears.
// With several partitions it pulls only while the members list gives it to this replica.
func (p *partition) run(ctx context.Context) {
	w := p.w
	errs, lastErr := 0, ""
	for ctx.Err() == nil {
		owned, changed := true, (<-chan struct{})(nil)
		if w.members != nil {
			owned, changed = w.members.owns(p.k, w.cfg.Partitions)
		}
		if !owned {
			select {
			case <-changed:
			case <-ctx.Done():
			}
			continue
		}
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
			}
			continue
		}
		errs, lastErr = 0, ""
		stop := context.AfterFunc(ctx, func() { iter.Drain() })
		given := make(chan struct{})
		done := make(chan struct{})
		if w.members != nil {
			go func() {
				for {
					select {
					case <-changed:
					case <-done:
						return
					}
					var owned bool
					if owned, changed = w.members.owns(p.k, w.cfg.Partitions); !owned {
						close(given)
						iter.Stop()
						return
					}
				}
			}()
		}
		p.take(ctx, iter)
		close(done)
		stop()
		iter.Stop()
		select {
		case <-given:
			p.giveUp(ctx)
		default:
		}
	}
}

// giveUp hands the partition to the replica the members list now gives it to: everything this
// replica holds of it and is not running goes back to JetStream, and the pin is released so
// the new owner need not wait for it to expire.
func (p *partition) giveUp(ctx context.Context) {
	w := p.w
	fence := p.dropFence()
	p.mu.Lock()
	cons := p.cons
	p.pin = ""
	p.mu.Unlock()
	released := append(fence, w.sched.release(p)...)
	for _, e := range released {
		w.handBack(e, 0, deferReleased)
	}
	if s, err := w.js.Stream(ctx, w.cfg.Topology.EventsStream); err == nil && cons != nil {
		_ = s.UnpinConsumer(ctx, cons.CachedInfo().Name, priorityGroup)
	}
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
	expiry := max(pinnedTTL(w.cfg.AckWait)/3, time.Second)
	iter, err := cons.Messages(jetstream.PullPriorityGroup(priorityGroup),
		jetstream.PullMaxMessages(min(w.cfg.MaxHeld, max(64, 2*w.cfg.Concurrency))), jetstream.PullExpiry(expiry))
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

// take hands each message of iter to the scheduler until iter closes or fails.
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
		if ctx.Err() != nil {
			_ = msg.Nak() // taken while shutting down: to another replica at once
			continue
		}
		w.sched.waitRoom(4 * w.cfg.Concurrency)
		e := w.newEntry(msg, p)
		if w.cfg.Partitions > 1 && partitionOf(e.key, w.cfg.Partitions) != p.k {
			_ = msg.Ack() // another partition's event: its own consumer delivers it there
			continue
		}
		p.add(ctx, e, msg.Headers().Get("Nats-Pin-Id"))
	}
}

// add takes e, behind the fence if one is up; a pin id this replica did not have yet raises it.
func (p *partition) add(ctx context.Context, e *entry, pin string) {
	p.mu.Lock()
	e.kept = time.Now()
	p.held++
	p.last = max(p.last, e.seq)
	if pin != p.pin {
		p.pin = pin
		if !p.fenced {
			p.fenced = true
			go p.lift(ctx)
		}
	}
	if p.fenced {
		p.fence = append(p.fence, e)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	p.w.sched.add(e)
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
			for _, e := range fence {
				w.sched.add(e)
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

// checkPin hands back what this replica holds of the partition but is not running, once the
// consumer is pinned to another replica: that replica's fence waits for these events.
func (p *partition) checkPin(info *jetstream.ConsumerInfo) {
	now := ""
	for _, g := range info.PriorityGroups {
		if g.Group == priorityGroup {
			now = g.PinnedClientID
		}
	}
	p.mu.Lock()
	lost := p.pin != "" && now != "" && now != p.pin
	if lost {
		p.pin = ""
	}
	p.mu.Unlock()
	if !lost {
		return
	}
	w := p.w
	released := append(p.dropFence(), w.sched.release(p)...)
	w.log.Warn("partition now pinned to another replica; handing back its waiting events", "partition", p.k, "events", len(released))
	for _, e := range released {
		w.handBack(e, 0, deferReleased)
	}
}
