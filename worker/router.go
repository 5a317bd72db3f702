package worker

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
)

// Per-object ordering (docs/ordering.md). Events arrive on the contract's subjects with their
// object inside the payload, so a router — a consumer that hands out one event at a time —
// reads the events stream in order and re-publishes each event to the lane of its target and object:
// pamworker.work.<vendor>.<target>.<partition>. Every lane has a consumer that hands out one
// message at a time (MaxAckPending 1), so two events about one object are never in flight at
// once and run in publish order, through retries, naks and crashes. Lanes are per target, so a
// target that is down holds up only its own events.

// Headers the router adds to a routed event.
const (
	hdrSubject  = "Pamworker-Subject"  // the action subject the event was published on
	hdrMsgID    = "Pamworker-Msg-Id"   // its own Nats-Msg-Id (the routed copy has route:<seq>)
	hdrReceived = "Pamworker-Received" // when the events stream took it (RFC 3339)
	invalidLane = "invalid"
)

// partitions is the number of lanes per target. More lanes mean less head-of-line blocking
// (a waiting event holds up 1/partitions of its target's objects) and more consumers. It must
// not change while events are in flight.
const partitions = 16

func workPrefix() string { return "pamworker.work." }

// laneSubject is the work subject of a target's partition, or of the invalid lane.
func laneSubject(target string, partition int) string {
	if target == invalidLane {
		return workPrefix() + invalidLane
	}
	return workPrefix() + strings.Replace(target, "/", ".", 1) + "." + strconv.Itoa(partition)
}

// laneConsumer names the durable consumer of a lane subject.
func laneConsumer(base, subject string) string {
	return base + "-" + strings.ReplaceAll(strings.TrimPrefix(subject, workPrefix()), ".", "-")
}

// objectKey names what an event acts on, the unit of ordering.
func objectKey(ev events.Event) string {
	switch {
	case ev.SessionID != "":
		return "session:" + ev.SessionID
	case ev.CredentialID > 0:
		return "credential:" + strconv.FormatInt(ev.CredentialID, 10)
	case ev.Hostname != "":
		return "credential:" + ev.Username + "@" + ev.Hostname
	}
	return "user:" + ev.Username
}

// laneOf decides the lane subject of a raw event. Events that cannot be decoded or name a
// target that is not configured need no order: they go to the invalid lane to be rejected.
func (w *Worker) laneOf(msg jetstream.Msg) string {
	ev, err := events.Decode(msg.Subject(), msg.Data(), msg.Headers().Get(jetstream.MsgIDHeader), w.cfg.MaxEventBytes, func() string { return "" })
	if err != nil {
		return laneSubject(invalidLane, 0)
	}
	target := handlers.TargetLabel(ev.Action, ev.Target)
	if !w.lanes[target] {
		return laneSubject(invalidLane, 0)
	}
	h := fnv.New32a()
	h.Write([]byte(objectKey(ev)))
	return laneSubject(target, int(h.Sum32()%partitions))
}

// route runs this replica's router until ctx ends. Every replica runs one; the router's
// consumer hands out one event at a time (MaxAckPending 1), so events leave the events stream in
// order whichever replica takes them, and a replica that dies holding one only delays it by
// AckWait.
func (w *Worker) route(ctx context.Context) {
	for ctx.Err() == nil {
		cons, err := ensureRouter(ctx, w.js, w.cfg.Topology, w.cfg.AckWait)
		if err == nil {
			var iter jetstream.MessagesContext
			iter, err = cons.Messages(jetstream.PullMaxMessages(16))
			if err == nil {
				stop := context.AfterFunc(ctx, func() { iter.Stop() })
				err = w.routeFrom(ctx, iter)
				stop()
				iter.Stop()
			}
		}
		if err != nil && ctx.Err() == nil {
			w.log.Warn("router restarting", "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}

// routeFrom copies each event to its lane and acknowledges it once the copy is stored. A router
// that stalls after the copy and before the ack, or wakes up after another replica has taken
// the event over, adds nothing: the copy's message id (route:<source sequence>) makes the work
// stream drop it as a duplicate.
func (w *Worker) routeFrom(ctx context.Context, iter jetstream.MessagesContext) error {
	for {
		msg, err := iter.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		out, err := routedCopy(msg, w.laneOf(msg))
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err = w.js.PublishMsg(pctx, out)
			cancel()
		}
		if err != nil {
			_ = msg.Nak()
			return fmt.Errorf("routing: %w", err)
		}
		if err := msg.Ack(); err != nil {
			return fmt.Errorf("routing ack: %w", err)
		}
	}
}

// routedCopy is the lane message of a source event: the same body and headers, with the
// original subject, message id and arrival time kept in headers, and a message id derived
// from the source message so a router that re-routes after a crash adds nothing.
func routedCopy(src jetstream.Msg, lane string) (*nats.Msg, error) {
	md, err := src.Metadata()
	if err != nil {
		return nil, err
	}
	h := nats.Header{}
	for k, v := range src.Headers() {
		if k != jetstream.MsgIDHeader {
			h[k] = v
		}
	}
	h.Set(hdrSubject, src.Subject())
	h.Set(hdrMsgID, src.Headers().Get(jetstream.MsgIDHeader))
	h.Set(hdrReceived, md.Timestamp.UTC().Format(time.RFC3339Nano))
	// Sequence and arrival time together name this message: a redelivery keeps both (so a
	// re-route is dropped as a duplicate), while a recreated events stream, whose sequences start
	// again at 1, does not collide with what the work stream remembers.
	h.Set(jetstream.MsgIDHeader, "route:"+strconv.FormatUint(md.Sequence.Stream, 10)+":"+strconv.FormatInt(md.Timestamp.UnixNano(), 10))
	return &nats.Msg{Subject: lane, Header: h, Data: src.Data()}, nil
}

// origin returns what a message says about the event it carries: its action subject, its own
// Nats-Msg-Id, and when the events stream received it — from the router's headers for a
// routed event, from the message itself otherwise.
func origin(msg jetstream.Msg) (subject, msgID string, received time.Time) {
	h := msg.Headers()
	if s := h.Get(hdrSubject); s != "" {
		t, _ := time.Parse(time.RFC3339Nano, h.Get(hdrReceived))
		return s, h.Get(hdrMsgID), t
	}
	if md, err := msg.Metadata(); err == nil {
		received = md.Timestamp
	}
	return msg.Subject(), h.Get(jetstream.MsgIDHeader), received
}
