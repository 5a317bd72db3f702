package worker

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/telemetry"
)

// DigestHeader carries, on every result, the digest of the event it answers (see
// events.Event.Digest), so a client can tell its own event's result from another's.
const DigestHeader = "Pamworker-Digest"

// publish makes v the answer to e: it records the result in the ledger (if v says so),
// publishes it on results.<action> and the reply inbox, and keeps the original of a failed
// event for replay. It reports whether the answer is durable; the caller then settles e.
func (w *Worker) publish(ctx context.Context, e *entry, v verdict) bool {
	r := resultMsg{ev: e.ev, digest: e.digest, data: v.raw, msgID: v.rawMsgID, trace: e.trace}
	if r.msgID == "" {
		r.msgID = events.ResultMsgID(e.ev.ID)
	}
	res := v.res
	var keep []*nats.Msg
	if v.raw == nil {
		elapsed := time.Since(e.arrived)
		res.DurationMS = float64(elapsed.Microseconds()) / 1000
		res.FinishedAt = events.Timestamp(time.Now())
		if of := e.msg.Headers().Get(ReplayOfHeader); of != "" && v.record {
			// Trusted only as far as the operator's mark in the ledger confirms it.
			if marked, err := w.ledger.replayOf(ctx, e.ev.ID); err == nil && marked == of {
				res.Details["replay_of"] = of
			} else {
				e.logger().Warn("Pamworker-Replay-Of header not confirmed by a replay mark; ignored", "claimed_replay_of", of)
			}
		}
		data, err := res.Marshal()
		if err != nil { // details from a vendor that cannot be encoded: keep the verdict, drop them
			res.Details = map[string]any{"error": "details could not be encoded"}
			data, _ = res.Marshal()
		}
		r.data = data
		if !v.record || !e.strict() {
			// Not recorded, or its id only in its payload: its message id names the stream
			// message it answers, so it never takes the place of the result of another event
			// with the same id — an event whose Nats-Msg-Id is that id (see repeat).
			r.msgID = "result@" + strconv.FormatUint(e.seq, 10) + ":" + e.ev.ID
		}
		if v.record {
			own := ""
			if r.msgID != events.ResultMsgID(e.ev.ID) {
				own = r.msgID
			}
			r.record = encodeRecord(e.digest, own, data)
		}
		if res.Status == events.Failed {
			keep = append(keep, failedRecordMsg(e, data))
		}
	}
	if err := w.publishResult(ctx, r, keep...); err != nil {
		e.logger().Error("result could not be stored; the event waits and it is tried again", "error", err)
		return false
	}
	if v.raw != nil {
		return true
	}
	action := actionLabel(e.ev.Action)
	w.m.processed.WithLabelValues(action, string(res.Status)).Inc()
	w.m.duration.WithLabelValues(action).Observe(time.Since(e.arrived).Seconds())
	attrs := []any{"status", res.Status, "noop", res.Noop, "dry_run", res.DryRun, "attempts", res.Attempts,
		"duration_ms", res.DurationMS, "target", res.Target, "message", res.Message}
	if res.Error != nil {
		attrs = append(attrs, "error_code", res.Error.Code)
	}
	if res.CorrelationID != "" {
		attrs = append(attrs, "correlation_id", res.CorrelationID)
	}
	if res.Status == events.Succeeded {
		e.logger().Info("event finished", attrs...)
	} else {
		e.logger().Warn("event finished", attrs...)
	}
	return true
}

// resultMsg is one result to publish: its JSON, the record to keep in the ledger (nil: none)
// and the results stream's message id.
type resultMsg struct {
	ev     events.Event
	digest string
	data   []byte
	record []byte
	msgID  string
	trace  context.Context // the event's trace, carried on in the result's headers; nil: none
}

// publishResult stores r's record in the ledger, if it has one, and publishes the result
// event, with any extra messages (the failed-event record). The JetStream publishes are
// pipelined; all must be acknowledged. The reply inbox, if any, is told last, once the result
// is durable. Only headers the worker owns are set.
func (w *Worker) publishResult(ctx context.Context, r resultMsg, extra ...*nats.Msg) error {
	var futures []jetstream.PubAckFuture
	if r.record != nil {
		rec, err := w.js.PublishAsync(w.ledger.recordSubject(r.ev.ID), r.record)
		if err != nil {
			return fmt.Errorf("record: %w", err)
		}
		futures = append(futures, rec)
	}
	digest := r.digest
	header := nats.Header{jetstream.MsgIDHeader: []string{r.msgID}, DigestHeader: []string{digest}}
	if r.trace != nil {
		telemetry.Inject(r.trace, header)
	}
	pub, err := w.js.PublishMsgAsync(&nats.Msg{Subject: events.ResultSubject(r.ev.Action), Header: header, Data: r.data})
	if err != nil {
		return fmt.Errorf("result: %w", err)
	}
	futures = append(futures, pub)
	for _, m := range extra {
		f, err := w.js.PublishMsgAsync(m)
		if err != nil {
			return fmt.Errorf("%s: %w", m.Subject, err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures { // each times out by itself (publishAckTimeout)
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if r.ev.ReplyTo != "" {
		reply := &nats.Msg{Subject: r.ev.ReplyTo, Header: nats.Header{DigestHeader: []string{digest}}, Data: r.data}
		if r.trace != nil {
			telemetry.Inject(r.trace, reply.Header)
		}
		if err := w.nc.PublishMsg(reply); err != nil {
			w.log.Warn("publishing to reply_to", "event_id", r.ev.ID, "error", err)
		}
	}
	return nil
}
