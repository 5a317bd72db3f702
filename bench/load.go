package main

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// eventSubject is the action every event of the bench asks for: one DELETE per event.
const eventSubject = "pam.credential.disable"

// round publishes n events with ids prefix+i and waits for all their results. published, if
// not nil, receives each event's publish time.
func (b *bench) round(prefix string, n int, published []time.Duration) (*collector, error) {
	c := &collector{prefix: prefix, arrived: make([]time.Duration, n), done: make(chan struct{})}
	sub, err := b.sub.Subscribe("results.>", c.onResult)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return nil, err
	}
	if err := b.sub.Flush(); err != nil {
		return nil, err
	}
	c.start = now()
	if err := b.publish(prefix, n, published); err != nil {
		return nil, err
	}
	select {
	case <-c.done:
		return c, nil
	case <-time.After(b.opts.timeout):
		return nil, fmt.Errorf("timeout: %d of %d results arrived within %v (%d missing)", c.count(), n, b.opts.timeout, n-c.count())
	}
}

// publish sends n events as fast as JetStream acknowledges them, keeping up to 4096 in flight.
func (b *bench) publish(prefix string, n int, published []time.Duration) error {
	errsBefore := b.pubErrs.Load()
	for i := range n {
		id := prefix + strconv.Itoa(i)
		msg := &nats.Msg{
			Subject: eventSubject,
			Header:  nats.Header{jetstream.MsgIDHeader: []string{id}},
			Data:    fmt.Appendf(nil, `{"event_id":%q,"credential_id":%d}`, id, 1+i%1000),
		}
		if _, err := b.js.PublishMsgAsync(msg, jetstream.WithStallWait(b.opts.timeout)); err != nil {
			return fmt.Errorf("publish %s: %w", id, err)
		}
		if published != nil {
			published[i] = now()
		}
	}
	select {
	case <-b.js.PublishAsyncComplete():
	case <-time.After(b.opts.timeout):
		return fmt.Errorf("publish: %d events not acknowledged by JetStream within %v", b.js.PublishAsyncPending(), b.opts.timeout)
	}
	if n := b.pubErrs.Load() - errsBefore; n > 0 {
		return fmt.Errorf("publish: JetStream refused %d events", n)
	}
	return nil
}

// collector records when each result of a round arrives.
type collector struct {
	prefix string
	start  time.Duration // just before the first publish
	done   chan struct{}

	mu      sync.Mutex
	arrived []time.Duration // by event index; 0 until the result arrives
	got     int
	dups    int // results for an event that already had one
	notOK   int // results whose status is not succeeded
}

func (c *collector) onResult(m *nats.Msg) {
	at := now()
	id, status := resultFields(m.Data)
	i, err := strconv.Atoi(strings.TrimPrefix(id, c.prefix))
	if !strings.HasPrefix(id, c.prefix) || err != nil || i < 0 || i >= len(c.arrived) {
		return // a result of another round
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.arrived[i] != 0 {
		c.dups++
		return
	}
	c.arrived[i] = at
	if status != "succeeded" {
		c.notOK++
	}
	if c.got++; c.got == len(c.arrived) {
		close(c.done)
	}
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got
}

// resultFields finds event_id and status in a result without decoding all of it: both workers
// put them at the top level, and the bench's own cost should stay small.
func resultFields(data []byte) (id, status string) {
	return stringField(data, `"event_id":"`), stringField(data, `"status":"`)
}

func stringField(data []byte, key string) string {
	i := bytes.Index(data, []byte(key))
	if i < 0 {
		return ""
	}
	rest := data[i+len(key):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return ""
	}
	return string(rest[:end])
}
