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
	"github.com/pamworker/pamworker/guard"
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
// It also returns the event as far as it could be decoded, and the decoding error.
func (w *Worker) laneOf(msg jetstream.Msg) (string, events.Event, error) {
	ev, err := events.Decode(msg.Subject(), msg.Data(), msg.Headers().Get(jetstream.MsgIDHeader), w.cfg.MaxEventBytes, w.newID)
	if err != nil {
		return laneSubject(invalidLane, 0), ev, err
	}
	target := handlers.TargetLabel(ev.Action, ev.Target)
	if !w.lanes[target] {
		return laneSubject(invalidLane, 0), ev, nil
	}
	h := fnv.New32a()
	h.Write([]byte(objectKey(ev)))
	return laneSubject(target, int(h.Sum32()%partitions)), ev, nil
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
// stream drop it as a duplicate. An event that cannot be copied for a reason no retry can
// fix — too large to be worth copying, or refused by the work stream — is answered here with
// a rejection naming it, so it stops no event behind it.
func (w *Worker) routeFrom(ctx context.Context, iter jetstream.MessagesContext) error {
	for {
		msg, err := iter.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		lane, ev, decodeErr := w.laneOf(msg)
		var rej *events.Rejection
		if errors.As(decodeErr, &rej) && rej.Code == events.CodeEventTooLarge {
			err = w.routerAnswer(ctx, msg, ev, rej)
		} else {
			err = w.routeTo(ctx, msg, lane)
			if err != nil && permanent(err) {
				w.log.Error("event cannot be routed; rejected", "event_id", ev.ID, "action", ev.Action, "error", err)
				err = w.routerAnswer(ctx, msg, ev, &events.Rejection{Code: CodeUnroutable,
					Message: "the event could not be queued for processing: " + err.Error()})
			}
		}
		if err != nil {
			w.progress.failed()
			_ = msg.Nak()
			return fmt.Errorf("routing: %w", err)
		}
		if err := msg.Ack(); err != nil {
			return fmt.Errorf("routing ack: %w", err)
		}
		w.progress.made()
	}
}

// CodeUnroutable rejects an event the worker could not queue for processing, for a reason
// that retrying cannot fix.
const CodeUnroutable = "unroutable_event"

// routeTo stores the lane copy of msg.
func (w *Worker) routeTo(ctx context.Context, msg jetstream.Msg, lane string) error {
	out, err := routedCopy(msg, lane)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = w.js.PublishMsg(pctx, out)
	return err
}

// routerAnswer publishes the (unrecorded) rejection of an event the router does not route.
func (w *Worker) routerAnswer(ctx context.Context, msg jetstream.Msg, ev events.Event, rej *events.Rejection) error {
	res := rejected(ev, rej)
	res.FinishedAt = events.Timestamp(time.Now())
	data, _ := res.Marshal()
	out := resultMsg{ev: ev, data: data, msgID: events.ResultMsgID(ev.ID)}
	if md, err := msg.Metadata(); err == nil {
		out.msgID = unrecordedMsgID(md.Sequence.Stream, ev.ID)
	}
	if err := w.publishResult(ctx, out); err != nil {
		return err
	}
	w.m.processed.WithLabelValues(actionLabel(ev.Action), string(res.Status)).Inc()
	w.log.Warn("event finished", "event_id", ev.ID, "action", ev.Action, "status", res.Status, "error_code", rej.Code, "message", rej.Message)
	return nil
}

// permanent reports whether a failed publish would fail again however often it is retried:
// JetStream refused the message (an API error), or the client could not even send it.
// Timeouts, a missing responder and a lost connection pass.
func permanent(err error) bool {
	var api *jetstream.APIError
	switch {
	case errors.As(err, &api):
		return api.Code != 503 && api.Code != 0
	case errors.Is(err, nats.ErrMaxPayload), errors.Is(err, nats.ErrBadSubject), errors.Is(err, nats.ErrBadHeaderMsg):
		return true
	}
	return false
}

// forwarded are the headers of an event that travel with it through the worker's own
// publishes: the signature (checked on the lane), the replay claim (checked against the
// ledger) and the trace context. Nothing else an event carries reaches an internal publish:
// a Nats-Expected-Stream, Nats-Rollup, Nats-TTL or any other header that JetStream acts on
// would otherwise act on the worker's copy, not on the publisher's message.
var forwarded = []string{guard.HeaderID, guard.HeaderTimestamp, guard.HeaderSignature, ReplayOfHeader, "traceparent", "tracestate"}

// copyHeaders returns the forwarded headers of h, and the worker's own named in own.
func copyHeaders(h nats.Header, own ...string) nats.Header {
	out := nats.Header{}
	for _, k := range append(own, forwarded...) {
		if v, ok := h[k]; ok {
			out[k] = v
		}
	}
	return out
}

// routedCopy is the lane message of a source event: the same body and the forwarded headers,
// with the original subject, message id and arrival time kept in the worker's own headers,
// and a message id derived from the source message so a router that re-routes after a crash
// adds nothing.
func routedCopy(src jetstream.Msg, lane string) (*nats.Msg, error) {
	md, err := src.Metadata()
	if err != nil {
		return nil, err
	}
	h := copyHeaders(src.Headers())
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
