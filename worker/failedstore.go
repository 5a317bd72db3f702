package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
)

// FailedStore reads, replays and removes the records of the failed-events stream, for
// pamworker failed list and replay: the worker writes that stream, so it owns its format.
type FailedStore struct {
	js     jetstream.JetStream
	stream jetstream.Stream // nil: the stream does not exist yet, so nothing has failed
}

// FailedEntry is one record of the failed-events stream, with what its result says.
type FailedEntry struct {
	Seq        uint64
	Record     FailedRecord
	FinishedAt string
	Message    string
	Code       string // the result's error code
}

// OpenFailed opens the failed-events stream.
func OpenFailed(ctx context.Context, js jetstream.JetStream) (*FailedStore, error) {
	name := DefaultTopology().FailedStream
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return &FailedStore{js: js}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	return &FailedStore{js: js, stream: s}, nil
}

func decodeEntry(m *jetstream.RawStreamMsg) (FailedEntry, error) {
	e := FailedEntry{Seq: m.Sequence}
	if err := json.Unmarshal(m.Data, &e.Record); err != nil {
		return e, fmt.Errorf("sequence %d on %s is not a failed record: %w", m.Sequence, m.Subject, err)
	}
	if e.Record.Subject == "" {
		e.Record.Subject = ActionOfFailedSubject(m.Subject)
	}
	var res struct {
		FinishedAt string            `json:"finished_at"`
		Message    string            `json:"message"`
		Error      *events.ErrorInfo `json:"error"`
	}
	_ = json.Unmarshal(e.Record.Result, &res) // an unreadable result still lists, without a code
	e.FinishedAt, e.Message = res.FinishedAt, res.Message
	if res.Error != nil {
		e.Code = res.Error.Code
		if e.Message == "" {
			e.Message = res.Error.Message
		}
	}
	return e, nil
}

// List returns the records matching action and code (either may be empty), newest first, at
// most limit of them (0: all), and whether there are more. It walks the sequences back from the
// last one: the newest are what people look for, and a limit then stops the walk early. A
// record that cannot be read is passed to skipped and left out.
func (s *FailedStore) List(ctx context.Context, action, code string, limit int, skipped func(error)) ([]FailedEntry, bool, error) {
	if s.stream == nil {
		return nil, false, nil
	}
	info, err := s.stream.Info(ctx, jetstream.WithDeletedDetails(true))
	if err != nil {
		return nil, false, fmt.Errorf("stream %s: %w", s.stream.CachedInfo().Config.Name, err)
	}
	// Every replay deletes a record; knowing where the holes are saves asking for each.
	deleted := make(map[uint64]bool, len(info.State.Deleted))
	for _, seq := range info.State.Deleted {
		deleted[seq] = true
	}
	var out []FailedEntry
	for seq := info.State.LastSeq; seq != 0 && seq >= info.State.FirstSeq; seq-- {
		if deleted[seq] {
			continue
		}
		m, err := s.stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) { // deleted or expired meanwhile
			continue
		}
		if err != nil {
			return nil, false, fmt.Errorf("read failed record %d: %w", seq, err)
		}
		if action != "" && ActionOfFailedSubject(m.Subject) != action {
			continue
		}
		e, err := decodeEntry(m)
		if err != nil {
			skipped(err)
			continue
		}
		if code != "" && !strings.EqualFold(e.Code, code) {
			continue
		}
		if limit > 0 && len(out) == limit {
			return out, true, nil
		}
		out = append(out, e)
	}
	return out, false, nil
}

// ByID returns the newest record of eventID, trying each action: its subject is known from the
// id, so no scan is needed. Nil if there is none.
func (s *FailedStore) ByID(ctx context.Context, eventID string) (*FailedEntry, error) {
	if s.stream == nil {
		return nil, nil
	}
	for _, action := range events.Actions() {
		m, err := s.stream.GetLastMsgForSubject(ctx, FailedSubject(action, eventID))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("look up failed event %s: %w", eventID, err)
		}
		e, err := decodeEntry(m)
		if err != nil {
			return nil, err
		}
		return &e, nil
	}
	return nil, nil
}

// Remove deletes records, once their events are safely back in the events stream.
func (s *FailedStore) Remove(ctx context.Context, seq uint64) error {
	if err := s.stream.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return err
	}
	return nil
}

// Replay publishes the original event of rec again under newID: the payload field for field
// but its id (and time, see rewritePayload), the publisher's headers but the server's, the
// header Pamworker-Replay-Of naming the old id — confirmed by a mark in the ledger, which only
// an operator's identity may write.
func (s *FailedStore) Replay(ctx context.Context, rec FailedRecord, newID string) error {
	if !events.IsAction(rec.Subject) {
		return fmt.Errorf("record names no action subject (%q)", rec.Subject)
	}
	payload, err := rewritePayload([]byte(rec.Payload), newID, time.Now())
	if err != nil {
		return err
	}
	hdr := replayHeaders(rec, newID)
	if err := MarkReplay(ctx, s.js, newID, rec.EventID); err != nil {
		return fmt.Errorf("mark the replay in the ledger: %w", err)
	}
	if _, err := s.js.PublishMsg(ctx, &nats.Msg{Subject: rec.Subject, Header: hdr, Data: payload}); err != nil {
		return fmt.Errorf("publish to %s: %w", rec.Subject, err)
	}
	return nil
}

// replayHeaders are the headers of the replay of rec under newID: whatever the publisher
// added (signature, tracing ...) travels on; the server's and JetStream's own headers
// (Nats-Msg-Id, Nats-Expected-..., Nats-TTL ...) described the old message and do not, nor a
// Pamworker-Replay-Of claim of the old message's, nor the worker's own headers; the new
// message id and the replay claim are set.
func replayHeaders(rec FailedRecord, newID string) nats.Header {
	hdr := nats.Header{}
	for k, v := range rec.Headers {
		if lk := strings.ToLower(k); strings.HasPrefix(lk, "nats-") || strings.HasPrefix(lk, "pamworker-") {
			continue
		}
		hdr.Set(k, v)
	}
	hdr.Set(jetstream.MsgIDHeader, newID)
	hdr.Set(ReplayOfHeader, rec.EventID)
	return hdr
}

// rewritePayload gives an original event body a new id and keeps every other field, in order.
// A plain event loses its "time": a deliberate replay must not be refused as stale by an age
// that counts from when the event was first raised. A CloudEvents envelope, whose time is part
// of the format, gets the current one; a time and event_id inside its data follow suit.
func rewritePayload(body []byte, newID string, now time.Time) ([]byte, error) {
	obj, err := events.ParseObject(body)
	if err != nil {
		return nil, fmt.Errorf("the original event cannot be replayed: %w", err)
	}
	id, _ := json.Marshal(newID)
	if _, ce := obj.Get("specversion"); !ce {
		obj = obj.Set("event_id", id).Del("time")
		return obj.Marshal(), nil
	}
	ts, _ := json.Marshal(now.UTC().Format(time.RFC3339Nano))
	obj = obj.Set("id", id).Set("time", ts)
	if raw, ok := obj.Get("data"); ok {
		if data, err := events.ParseObject(raw); err == nil {
			if _, has := data.Get("event_id"); has {
				data = data.Set("event_id", id) // the decoder refuses one that differs from id
			}
			obj = obj.Set("data", data.Del("time").Marshal())
		}
	}
	return obj.Marshal(), nil
}
