package worker

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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

// failedRecordMsg builds the failed-stream message keeping e's original message: its body as
// it arrived and the headers its publisher set.
func failedRecordMsg(e *entry, result []byte) *nats.Msg {
	rec := FailedRecord{EventID: e.ev.ID, Subject: e.msg.Subject(), Result: result, Payload: string(e.msg.Data())}
	for k, v := range e.msg.Headers() {
		if len(v) == 0 || k == "Nats-Pin-Id" {
			continue // the server's, not the publisher's
		}
		if rec.Headers == nil {
			rec.Headers = map[string]string{}
		}
		rec.Headers[k] = v[0]
	}
	data, _ := json.Marshal(rec)
	return &nats.Msg{
		Subject: FailedSubject(e.ev.Action, e.ev.ID),
		Header:  nats.Header{jetstream.MsgIDHeader: []string{"failed:" + e.ev.ID}},
		Data:    data,
	}
}
