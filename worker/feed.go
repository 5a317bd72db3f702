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

	"github.com/nats-io/nats.go"
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
	lease   *lease         // the lease held, or last held
	fenced  bool           // a fence is up: taken events wait in fence
	fence   []*entry       // taken while the fence is up
	held    int            // events taken and not settled (the fence's count)
	ids     map[string]int // the event ids of those events (see prefetch)
	settles int            // settles so far, so the fence can tell a count taken mid-settle
	last    uint64         // the highest stream sequence taken
	lowest  uint64         // the lowest stream sequence held when last asked
	created time.Time      // when the events stream those sequences belong to was created
}

// partitions creates this replica's side of every partition consumer.
func (w *Worker) partitions(ctx context.Context) ([]*partition, error) {
	var out []*partition
	for k := range w.cfg.Partitions {
		p := &partition{w: w, k: k, ids: map[string]int{}}
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
// consumer if it disappears. It pulls in batches no larger than the room left for events
// that will run soon (see waitRoom), and takes each message as it arrives: nothing waits
// unseen in the client's buffer, where it would not be kept alive.
func (p *partition) consume(ctx context.Context, l *lease) {
	w := p.w
	stop := make(chan struct{})
	go func() {
		select {
		case <-l.lost:
			p.owned.Store(false) // nothing more of it runs here
		case <-ctx.Done():
		}
		close(stop)
		w.sched.poke() // out of waitRoom
	}()
	errs, lastErr := 0, ""
	for ctx.Err() == nil && !l.ended() {
		room := w.sched.waitRoom(4*w.cfg.Concurrency, stop)
		if room == 0 {
			continue // stopping
		}
		batch, err := p.fetch(ctx, room)
		if err == nil {
			if p.takeBatch(ctx, batch.Messages()) {
				// These consumers have no priority group, so the server adds no pin id: a
				// Nats-Pin-Id on a message is its publisher's. nats.go adopts it for the next
				// pull, which the server then refuses; a fresh handle has none.
				p.renew(ctx)
			}
			err = batch.Error()
		}
		if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, nats.ErrTimeout) {
			p.forget(err)
			if err.Error() != lastErr {
				w.log.Warn("partition consumer unavailable", "partition", p.k, "error", err)
				lastErr = err.Error()
			}
			errs++
			select {
			case <-time.After(min(time.Duration(errs)*200*time.Millisecond, 2*time.Second)):
			case <-stop:
			}
			continue
		}
		errs, lastErr = 0, ""
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

// fetch asks the partition's consumer for up to n events, creating it first if it is gone.
// The request lasts a second at most, so a replica that stops or loses the lease is never
// long in the middle of one.
func (p *partition) fetch(ctx context.Context, n int) (jetstream.MessageBatch, error) {
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
	return cons.Fetch(n, jetstream.FetchMaxWait(time.Second))
}

// renew replaces the consumer's handle by a fresh one, with no client-side state.
func (p *partition) renew(ctx context.Context) {
	p.mu.Lock()
	cons := p.cons
	p.mu.Unlock()
	if cons == nil {
		return
	}
	fresh, err := p.w.js.Consumer(ctx, p.w.cfg.Topology.EventsStream, cons.CachedInfo().Name)
	if err != nil {
		p.forget(err)
		return
	}
	p.mu.Lock()
	if p.cons == cons {
		p.cons = fresh
	}
	p.mu.Unlock()
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

// takeBatch takes the messages of a fetch as they arrive, in groups: what has arrived by the
// time the previous group is taken (one message when they trickle in, many in a burst). Each
// group's ledger records are read with one request before its events are queued (prefetch).
// It reports whether a message carried a Nats-Pin-Id header.
func (p *partition) takeBatch(ctx context.Context, msgs <-chan jetstream.Msg) (pinHeader bool) {
	group := make([]*entry, 0, 64)
	take := func(msg jetstream.Msg) {
		pinHeader = pinHeader || msg.Headers().Get("Nats-Pin-Id") != ""
		if e := p.entryOf(ctx, msg); e != nil {
			group = append(group, e)
		}
	}
	for msg := range msgs {
		take(msg)
	arrived:
		for len(group) < cap(group) {
			select {
			case m, ok := <-msgs:
				if !ok {
					break arrived
				}
				take(m)
			default:
				break arrived
			}
		}
		p.prefetch(ctx, group)
		for _, e := range group {
			p.add(e)
		}
		group = group[:0]
	}
	return pinHeader
}

// entryOf makes the entry of one message, or nil for a message this replica does not keep:
// one taken while shutting down or giving the partition up goes back to JetStream at once,
// another partition's event is acknowledged (its own consumer delivers it there).
func (p *partition) entryOf(ctx context.Context, msg jetstream.Msg) *entry {
	w := p.w
	if ctx.Err() != nil || !p.owned.Load() {
		if !p.lapsed() {
			_ = msg.Nak()
		}
		return nil
	}
	e := w.newEntry(msg, p)
	if w.cfg.Partitions > 1 && partitionOf(e.key, w.cfg.Partitions) != p.k {
		_ = msg.Ack()
		return nil
	}
	return e
}

// prefetchValid is how long a record read with an event's batch answers for it; an event
// that runs later reads its own.
const prefetchValid = time.Second

// prefetch reads the ledger records of a group's events with one request instead of one
// each. A record read now stays right for an event as long as no other event with its id is
// answered meanwhile; the only ones that could be answered by this replica are events with
// that id it holds, so an event whose id another held event (or another of the group) has
// reads its own when it runs, as does every event if the batch read fails.
func (p *partition) prefetch(ctx context.Context, group []*entry) {
	if len(group) < 2 {
		return // one event: its own read costs the same
	}
	p.mu.Lock()
	count := map[string]int{}
	for _, e := range group {
		count[e.ev.ID]++
	}
	var want []*entry
	var ids []string
	for _, e := range group {
		if e.decodeErr == nil && e.ev.ID != e.generated && count[e.ev.ID] == 1 && p.ids[e.ev.ID] == 0 {
			want = append(want, e)
			ids = append(ids, e.ev.ID)
		}
	}
	p.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	at := time.Now()
	records, err := p.w.ledger.results(ctx, p.w.nc, ids)
	if err != nil {
		p.w.log.Debug("ledger batch read failed; each event reads its own", "error", err)
		return
	}
	for _, e := range want {
		e.prefetched, e.prefetchedAt, e.prior = true, at, records[e.ev.ID]
	}
}

// add takes e, behind the fence if one is up.
func (p *partition) add(e *entry) {
	p.mu.Lock()
	e.kept = time.Now()
	p.held++
	p.ids[e.ev.ID]++
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
func (p *partition) settled(e *entry) {
	p.mu.Lock()
	p.held--
	if p.ids[e.ev.ID]--; p.ids[e.ev.ID] <= 0 {
		delete(p.ids, e.ev.ID)
	}
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
