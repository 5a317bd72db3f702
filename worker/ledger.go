package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
)

// ledger remembers, in a JetStream key-value bucket with a TTL, the result of every finished
// event ("done.<hash of the event id>"), how many times an event's retry budget ran out
// ("spent.<hash>"), which events are an operator's replays ("replay.<hash>") and, in
// crashloop.go, how redeliveries ended ("try.<stream sequence>"). It is what makes a repeated
// event (a playbook that retried, a redelivery after a crash) get the recorded answer instead
// of a second vendor call. Keys are hashes: event ids are free text and KV keys are not. The
// bucket's other families belong to limit.go (windows, hold decisions).
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

// record is what the ledger keeps of a finished event: its result and the digest of the event
// it answered (events.Event.Digest), so that a later event with the same id is answered from
// it only if it is the same event.
type record struct {
	Digest string          `json:"digest"`
	MsgID  string          `json:"msg_id,omitempty"` // the result's message id, if not result:<event id>
	Result json.RawMessage `json:"result"`
}

// result returns the recorded result of eventID (its raw JSON and the digest it was recorded
// with), or nil if there is none. An error means the ledger could not be read: the caller must
// not act, since it cannot know whether the event already ran.
func (l *ledger) result(ctx context.Context, eventID string) (*record, error) {
	e, err := l.kv.Get(ctx, keyOf("done", eventID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(e.Value(), &r); err != nil || len(r.Result) == 0 {
		return nil, nil // an unreadable record is no record; the event runs again
	}
	return &r, nil
}

// results reads the records of many event ids with one request — a batched direct get of
// their keys' last messages — and returns those that have one, by event id. It is what a
// replica reads for a batch of events it takes (see prefetch); an error leaves each event to
// read its own.
func (l *ledger) results(ctx context.Context, nc *nats.Conn, ids []string) (map[string]*record, error) {
	byKey := make(map[string]string, len(ids))
	subjects := make([]string, 0, len(ids))
	for _, id := range ids {
		subj := l.recordSubject(id)
		if _, dup := byKey[subj]; !dup {
			byKey[subj] = id
			subjects = append(subjects, subj)
		}
	}
	req, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
	}{subjects})
	if err != nil {
		return nil, err
	}
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest("$JS.API.DIRECT.GET.KV_"+l.kv.Bucket(), inbox, req); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	out := map[string]*record{}
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return nil, fmt.Errorf("ledger batch read: %w", err)
		}
		switch status := m.Header.Get("Status"); status {
		case "":
		case "204": // end of the batch
			return out, nil
		case "404": // none of them
			return out, nil
		default:
			return nil, fmt.Errorf("ledger batch read: status %s %s", status, m.Header.Get("Description"))
		}
		id, ok := byKey[m.Header.Get("Nats-Subject")]
		if op := m.Header.Get("KV-Operation"); !ok || op == "DEL" || op == "PURGE" {
			continue
		}
		var r record
		if json.Unmarshal(m.Data, &r) == nil && len(r.Result) > 0 {
			out[id] = &r
		}
	}
}

// encodeRecord is the ledger value recording result (valid JSON) for an event of digest: the
// JSON of record, written out by hand (json.Marshal would compact the result again).
func encodeRecord(digest, msgID string, result []byte) []byte {
	b := make([]byte, 0, len(result)+len(digest)+len(msgID)+48)
	b = append(b, `{"digest":"`...)
	b = append(b, digest...)
	if msgID != "" {
		b = append(b, `","msg_id":`...)
		b = strconv.AppendQuote(b, msgID)
		b = append(b, `,"result":`...)
	} else {
		b = append(b, `","result":`...)
	}
	b = append(b, result...)
	return append(b, '}')
}

// resultMsgID is the message id the result of r was published with.
func (r *record) resultMsgID(eventID string) string {
	if r.MsgID != "" {
		return r.MsgID
	}
	return events.ResultMsgID(eventID)
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

// RecordedResult returns the result recorded for eventID in the ledger bucket and the digest of
// the event it answered, or nil if there is none. pamworker send uses it to answer an event the
// stream dropped as a duplicate, and to tell whether that earlier event was the same one.
func RecordedResult(ctx context.Context, js jetstream.JetStream, eventID string) (raw []byte, digest string, err error) {
	kv, err := js.KeyValue(ctx, DefaultTopology().Bucket)
	if err != nil {
		return nil, "", err
	}
	r, err := newLedger(kv).result(ctx, eventID)
	if err != nil || r == nil {
		return nil, "", err
	}
	return r.Result, r.Digest, nil
}

// Replays are marked in the ledger by the operator who sends them (pamworker failed replay),
// under the new event id: the Pamworker-Replay-Of header alone is a claim any publisher can
// make, and the result's details.replay_of says only what the mark confirms.
func replayKey(eventID string) string { return keyOf("replay", eventID) }

// MarkReplay records that eventID is a replay of original. It is written before the replay
// is published, with the operator's identity; the worker's own may not write these keys.
func MarkReplay(ctx context.Context, js jetstream.JetStream, eventID, original string) error {
	kv, err := js.KeyValue(ctx, DefaultTopology().Bucket)
	if err != nil {
		return err
	}
	_, err = kv.Put(ctx, replayKey(eventID), []byte(original))
	return err
}

// replayOf returns the event eventID replays, if an operator marked it so.
func (l *ledger) replayOf(ctx context.Context, eventID string) (string, error) {
	e, err := l.kv.Get(ctx, replayKey(eventID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return string(e.Value()), nil
}
