package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
)

// ledger remembers, in a JetStream key-value bucket with a TTL, the result of every finished
// event and how many times an event's retry budget ran out. It is what makes a repeated event
// id (a playbook that retried, a redelivery after a crash) get the recorded answer instead of a
// second vendor call. Keys are hashes: event ids are free text and KV keys are not.
type ledger struct {
	kv     jetstream.KeyValue
	prefix string // "$KV.<bucket>." for pipelined writes through PublishAsync
}

func newLedger(kv jetstream.KeyValue) *ledger {
	return &ledger{kv: kv, prefix: "$KV." + kv.Bucket() + "."}
}

func keyOf(kind, eventID string) string {
	sum := sha256.Sum256([]byte(eventID))
	return kind + "." + hex.EncodeToString(sum[:20])
}

// result returns the recorded result of eventID, if any. An error means the ledger could not be
// read: the caller must not act, since it cannot know whether the event already ran.
func (l *ledger) result(ctx context.Context, eventID string) (*events.Result, []byte, error) {
	e, err := l.kv.Get(ctx, keyOf("done", eventID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var r events.Result
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, nil, nil // an unreadable record is no record; the event runs again
	}
	return &r, e.Value(), nil
}

// recordSubject is the subject a result is published to for it to be stored under eventID. A
// KV put is a publish to this subject; publishing it asynchronously lets the record and the
// result event travel together instead of in two round trips.
func (l *ledger) recordSubject(eventID string) string { return l.prefix + keyOf("done", eventID) }

// spend counts one more exhausted retry budget for eventID and returns the total.
func (l *ledger) spend(ctx context.Context, eventID string) (int, error) {
	key := keyOf("spent", eventID)
	n := 0
	e, err := l.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return 0, err
	default:
		n, _ = strconv.Atoi(string(e.Value()))
	}
	n++
	if _, err := l.kv.Put(ctx, key, []byte(strconv.Itoa(n))); err != nil {
		return 0, err
	}
	return n, nil
}

// RecordedResult returns the result recorded for eventID in the ledger bucket, or nil if there
// is none. pamworker send uses it to answer an event the stream dropped as a duplicate.
func RecordedResult(ctx context.Context, js jetstream.JetStream, bucket, eventID string) ([]byte, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, err
	}
	_, raw, err := newLedger(kv).result(ctx, eventID)
	return raw, err
}

// Delivery marks, kept by stream sequence, tell a redelivery how the previous one ended. A
// worker that hands a message back (nak) marks it "decided"; a redelivery marks it "started".
// A redelivery that finds no mark or a "started" one knows the delivery before it died without
// an answer — the process crashed or hung on it — and counts it; a decision resets the count.
const (
	markStarted = "started"
	markDecided = "decided"
)

func markKey(streamSeq uint64) string { return "try." + strconv.FormatUint(streamSeq, 10) }

// deliveryStarted records that a redelivery of streamSeq is starting and returns how many
// deliveries of it have died without an answer so far, this one excluded.
func (l *ledger) deliveryStarted(ctx context.Context, streamSeq uint64) (int, error) {
	state, deaths, err := l.readMark(ctx, streamSeq)
	if err != nil {
		return 0, err
	}
	if state != markDecided {
		deaths++
	}
	return deaths, l.writeMark(ctx, streamSeq, markStarted, deaths)
}

// deliveryDecided records that a worker handed streamSeq back on purpose. A worker that
// survived the event to decide about it is evidence that the event does not kill workers, so
// the count of unanswered deliveries starts again.
func (l *ledger) deliveryDecided(ctx context.Context, streamSeq uint64) error {
	return l.writeMark(ctx, streamSeq, markDecided, 0)
}

func (l *ledger) readMark(ctx context.Context, streamSeq uint64) (state string, deaths int, err error) {
	e, err := l.kv.Get(ctx, markKey(streamSeq))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", 0, nil
	}
	if err != nil {
		return "", 0, err
	}
	state, n, _ := strings.Cut(string(e.Value()), ":")
	deaths, _ = strconv.Atoi(n)
	return state, deaths, nil
}

func (l *ledger) writeMark(ctx context.Context, streamSeq uint64, state string, deaths int) error {
	_, err := l.kv.Put(ctx, markKey(streamSeq), []byte(state+":"+strconv.Itoa(deaths)))
	return err
}
