package ingress

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/worker"
)

// watcher hands results to the requests waiting for them. It follows results.> with one core
// subscription per process: every result the worker publishes reaches it, whichever replica
// made it. What it holds is only who waits now; a result that arrives when no one waits is
// found later in the ledger or the results stream (lookup), so the ingress keeps no state.
type watcher struct {
	sub *nats.Subscription
	mu  sync.Mutex
	m   map[string][]*waiter // by event id
}

type waiter struct {
	id, digest string
	ch         chan []byte // the result, once
}

func newWatcher(nc *nats.Conn) (*watcher, error) {
	w := &watcher{m: map[string][]*waiter{}}
	sub, err := nc.Subscribe("results.>", w.onResult)
	if err != nil {
		return nil, err
	}
	_ = sub.SetPendingLimits(-1, 64<<20)
	w.sub = sub
	return w, nil
}

// expect registers a wait for the result of the event id with digest: only a result for that
// event (its id, and the digest of what it asks) answers it.
func (w *watcher) expect(id, digest string) *waiter {
	wt := &waiter{id: id, digest: digest, ch: make(chan []byte, 1)}
	w.mu.Lock()
	w.m[id] = append(w.m[id], wt)
	w.mu.Unlock()
	return wt
}

func (w *watcher) cancel(wt *waiter) {
	w.mu.Lock()
	defer w.mu.Unlock()
	list := w.m[wt.id]
	for i, x := range list {
		if x == wt {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(w.m, wt.id)
	} else {
		w.m[wt.id] = list
	}
}

func (w *watcher) onResult(m *nats.Msg) {
	id := eventIDOf(m.Data)
	if id == "" {
		return
	}
	digest := m.Header.Get(worker.DigestHeader)
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, wt := range w.m[id] {
		if wt.digest == digest {
			select {
			case wt.ch <- m.Data:
			default:
			}
		}
	}
}

func (w *watcher) close() { _ = w.sub.Unsubscribe() }

// eventIDOf reads event_id, the first field of a result, without decoding the rest.
func eventIDOf(data []byte) string {
	const key = `"event_id":"`
	i := bytes.Index(data, []byte(key))
	if i < 0 || i > 16 {
		var r struct {
			EventID string `json:"event_id"`
		}
		_ = json.Unmarshal(data, &r)
		return r.EventID
	}
	rest := data[i+len(key):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 || bytes.IndexByte(rest[:end], '\\') >= 0 {
		var r struct {
			EventID string `json:"event_id"`
		}
		_ = json.Unmarshal(data, &r)
		return r.EventID
	}
	return string(rest[:end])
}

// storedDigest is the digest of the event stored at seq under id ("" if it is not there).
func (s *Server) storedDigest(ctx context.Context, seq uint64, id string) (string, error) {
	stream, err := s.js.Stream(ctx, worker.DefaultTopology().EventsStream)
	if err != nil {
		return "", err
	}
	m, err := stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if m.Header.Get(jetstream.MsgIDHeader) != id {
		return "", nil
	}
	ev, _ := events.Decode(m.Subject, m.Data, id, 1<<20, func() string { return id })
	return ev.Digest(), nil
}

// lookup finds the result of the event id stored at sequence seq of the events stream, after
// the fact: in the ledger (where every admitted event's result is recorded), or else among the
// results published for its action since it arrived (a refusal, which is not recorded).
// pending is the event when it is there but has no result yet; neither a result nor pending
// means there is no such event.
func (s *Server) lookup(ctx context.Context, id string, seq uint64) (raw []byte, pending *events.Event, err error) {
	if raw, _, err := worker.RecordedResult(ctx, s.js, id); err != nil || raw != nil {
		return raw, nil, err
	}
	if seq == 0 {
		return nil, nil, nil
	}
	stream, err := s.js.Stream(ctx, worker.DefaultTopology().EventsStream)
	if err != nil {
		return nil, nil, err
	}
	m, err := stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	if m.Header.Get(jetstream.MsgIDHeader) != id {
		return nil, nil, nil // another event's sequence: nothing to say about this one
	}
	ev, _ := events.Decode(m.Subject, m.Data, id, 1<<20, func() string { return id })
	digest := ev.Digest()
	cons, err := s.js.OrderedConsumer(ctx, worker.DefaultTopology().ResultsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.ResultSubject(m.Subject)},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &m.Time,
	})
	if err != nil {
		return nil, nil, err
	}
	for range 10000 { // results of that action since the event arrived, at most this many
		r, err := cons.Next(jetstream.FetchMaxWait(200 * time.Millisecond))
		if err != nil {
			break // caught up
		}
		if eventIDOf(r.Data()) == id && r.Headers().Get(worker.DigestHeader) == digest {
			return r.Data(), nil, nil
		}
	}
	return nil, &ev, nil
}
