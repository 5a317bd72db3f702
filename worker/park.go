package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
)

// Parking keeps events held by a blast-radius limit out of the lanes. A lane hands out one
// event at a time, so an event waiting in it for its window holds up every other object of
// the lane — a runaway playbook's held disables would stall an analyst's session drops on the
// same target. A held event is therefore moved to a park lane of its limit counter
// (action, target, requested_by), pamworker.work.park.<vendor>.<target>.<n>, where it waits
// for its window without blocking anyone else's lane.
//
// Order per object survives the move: the object is marked parked in the ledger (which park
// lane, which parked messages), and every later event about it that would call the vendor
// follows it into the same park lane until the park lane has answered them all. The mark is
// set before the copy is published and the lane message is acknowledged after it, and both
// steps repeat harmlessly after a crash (the mark holds ids, the copy has a message id).

const (
	parkLanePrefix = "park."
	hdrParkKey     = "Pamworker-Park-Key" // the ledger key of the parked object
	hdrParkID      = "Pamworker-Park-Id"  // this message's entry in it
)

// parkSubject is the park lane of a limit counter on target.
func parkSubject(target, counter string) string {
	h := fnv.New32a()
	h.Write([]byte(counter))
	return parkLane(target, int(h.Sum32()%partitions))
}

// parkLane is the subject of a target's park lane n.
func parkLane(target string, n int) string {
	return workPrefix() + parkLanePrefix + strings.Replace(target, "/", ".", 1) + "." + strconv.Itoa(n)
}

func isParkLane(subject string) bool {
	return strings.HasPrefix(subject, workPrefix()+parkLanePrefix)
}

// parkMark is the ledger's record of a parked object: the park lane its events go to and the
// parked messages not yet answered.
type parkMark struct {
	Lane string   `json:"lane"`
	IDs  []string `json:"ids"`
}

func parkKey(ev events.Event) string {
	return keyOf("park", handlers.TargetLabel(ev.Action, ev.Target)+"|"+objectKey(ev))
}

// ordered reports whether subject is an ordered lane of a target, whose events may be parked.
func ordered(subject string) bool {
	return strings.HasPrefix(subject, workPrefix()) && !isParkLane(subject) && subject != laneSubject(invalidLane, 0)
}

// parking reports whether a held event of msg's lane is parked (else it waits where it is, as
// in a park lane).
func (w *Worker) parking(msg jetstream.Msg) bool { return ordered(msg.Subject()) }

// parkedLane returns the park lane ev's object is parked in, "" if it is not.
func (w *Worker) parkedLane(ctx context.Context, ev events.Event) (string, error) {
	e, err := w.ledger.kv.Get(ctx, parkKey(ev))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	var m parkMark
	if json.Unmarshal(e.Value(), &m) != nil || len(m.IDs) == 0 {
		return "", nil
	}
	return m.Lane, nil
}

// park moves msg to a park lane — lane, or the one its object is already parked in — and
// acknowledges it. On failure the message is handed back to its lane for another try.
func (w *Worker) park(ctx context.Context, msg jetstream.Msg, ev events.Event, lane string, log *slog.Logger) bool {
	md, err := msg.Metadata()
	if err == nil {
		id := strconv.FormatUint(md.Sequence.Stream, 10)
		key := parkKey(ev)
		if lane, err = w.markParked(ctx, key, lane, id); err == nil {
			h := copyHeaders(msg.Headers(), hdrSubject, hdrMsgID, hdrReceived)
			h.Set(jetstream.MsgIDHeader, "park:"+id)
			h.Set(hdrParkKey, key)
			h.Set(hdrParkID, id)
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err = w.js.PublishMsg(pctx, &nats.Msg{Subject: lane, Header: h, Data: msg.Data()})
			cancel()
			// A failed publish leaves the id in the mark: the publish may have been stored with
			// only its acknowledgement lost, and a mark too many costs later events of the
			// object a detour through the park lane, while a mark too few could let one of them
			// overtake the parked event. The redelivery parks it again under the same id.
		}
	}
	if err != nil {
		log.Warn("event could not be parked; it stays in its lane", "error", err)
		w.postpone(msg, ev, "ledger", time.Second)
		return false
	}
	_ = msg.Ack()
	return true
}

// markParked adds id to the parked mark of key, creating it for lane, and returns the park
// lane the object's events go to.
func (w *Worker) markParked(ctx context.Context, key, lane, id string) (string, error) {
	return w.updateMark(ctx, key, func(m *parkMark) {
		if len(m.IDs) == 0 {
			m.Lane = lane
		}
		if !slices.Contains(m.IDs, id) {
			m.IDs = append(m.IDs, id)
		}
	})
}

// unpark removes an answered parked message from its object's mark, deleting the mark with
// its last message. Messages that were never parked have nothing to remove.
func (w *Worker) unpark(ctx context.Context, msg jetstream.Msg) error {
	key, id := msg.Headers().Get(hdrParkKey), msg.Headers().Get(hdrParkID)
	if key == "" || !isParkLane(msg.Subject()) {
		return nil
	}
	_, err := w.updateMark(ctx, key, func(m *parkMark) {
		m.IDs = slices.DeleteFunc(m.IDs, func(s string) bool { return s == id })
	})
	return err
}

// updateMark applies change to the mark of key with compare-and-set, against other replicas.
func (w *Worker) updateMark(ctx context.Context, key string, change func(*parkMark)) (string, error) {
	for range 20 {
		var m parkMark
		var rev uint64
		e, err := w.ledger.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return "", err
		default:
			rev = e.Revision()
			_ = json.Unmarshal(e.Value(), &m)
		}
		change(&m)
		switch {
		case len(m.IDs) == 0 && rev == 0:
			return m.Lane, nil
		case len(m.IDs) == 0:
			err = w.ledger.kv.Delete(ctx, key, jetstream.LastRevision(rev))
		default:
			data, _ := json.Marshal(m)
			if rev == 0 {
				_, err = w.ledger.kv.Create(ctx, key, data)
			} else {
				_, err = w.ledger.kv.Update(ctx, key, data, rev)
			}
		}
		if err == nil {
			return m.Lane, nil
		}
		// Another replica changed the mark meanwhile: read again.
	}
	return "", fmt.Errorf("park mark %s: too many concurrent changes", key)
}

// parkLanes lists the park lanes of the configured targets.
func parkLanes(targets []string) []string {
	var out []string
	for _, t := range targets {
		for p := range partitions {
			out = append(out, parkLane(t, p))
		}
	}
	return out
}
