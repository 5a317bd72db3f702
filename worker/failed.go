package worker

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
)

// FailedPrefix begins the subjects of the failed-events stream:
// pamworker.failed.<action subject>.<hash of the event id>.
const FailedPrefix = "pamworker.failed."

// ReplayOfHeader marks an event re-submitted by `pamworker failed replay` with the id of the
// event it replays; the new result carries it in details.replay_of.
const ReplayOfHeader = "Pamworker-Replay-Of"

// FailedRecord is what the failed-events stream keeps for every failed result: the result and
// everything needed to send the original event again.
type FailedRecord struct {
	EventID string            `json:"event_id"`
	Subject string            `json:"subject"`
	Result  json.RawMessage   `json:"result"`
	Headers map[string]string `json:"headers,omitempty"`
	Payload string            `json:"payload"` // the original message body, as it arrived
}

// FailedSubject is where the failed record of eventID on action is kept. The hash makes one
// subject per event, so a record can be fetched by event id without a scan.
func FailedSubject(action, eventID string) string {
	sum := sha256.Sum256([]byte(eventID))
	return FailedPrefix + action + "." + hex.EncodeToString(sum[:10])
}

// ActionOfFailedSubject returns the action subject inside a failed-record subject.
func ActionOfFailedSubject(subject string) string {
	rest := strings.TrimPrefix(subject, FailedPrefix)
	if i := strings.LastIndexByte(rest, '.'); i > 0 {
		return rest[:i]
	}
	return rest
}

// failedRecordMsg builds the failed-stream message keeping msg, the original of ev.
func failedRecordMsg(msg jetstream.Msg, ev events.Event, result []byte) *nats.Msg {
	subject, msgID, _ := origin(msg)
	rec := FailedRecord{EventID: ev.ID, Subject: subject, Result: result, Payload: string(msg.Data())}
	for k, v := range msg.Headers() {
		if len(v) == 0 || k == hdrSubject || k == hdrMsgID || k == hdrReceived || k == jetstream.MsgIDHeader {
			continue // the router's own headers; the original message id is restored below
		}
		if rec.Headers == nil {
			rec.Headers = map[string]string{}
		}
		rec.Headers[k] = v[0]
	}
	if msgID != "" {
		if rec.Headers == nil {
			rec.Headers = map[string]string{}
		}
		rec.Headers[jetstream.MsgIDHeader] = msgID
	}
	data, _ := json.Marshal(rec)
	return &nats.Msg{
		Subject: FailedSubject(ev.Action, ev.ID),
		Header:  nats.Header{jetstream.MsgIDHeader: []string{"failed:" + ev.ID}},
		Data:    data,
	}
}
