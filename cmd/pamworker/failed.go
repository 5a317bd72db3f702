package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/worker"
)

// failedArgs are the parsed arguments of `pamworker failed list|replay`. Flags may stand before
// or after the positional arguments, as in send.
type failedArgs struct {
	sub    string   // "list" or "replay"
	ids    []string // replay: the event ids to send again
	all    bool     // replay: every record that matches action and code
	action string   // only records of this action subject
	code   string   // only records whose result has this error code
	limit  int      // list: at most this many records; 0 for all
	json   bool     // list: one JSON array instead of a table
	help   bool
}

const defaultFailedLimit = 50

func parseFailedArgs(args []string) (failedArgs, error) {
	a := failedArgs{limit: defaultFailedLimit}
	if len(args) == 0 {
		return a, errors.New("failed needs list or replay")
	}
	a.sub, args = args[0], args[1:]
	switch a.sub {
	case "list", "replay":
	case "-h", "--help", "help":
		a.help = true
		return a, nil
	default:
		return a, fmt.Errorf("unknown failed sub-command %q (want list or replay)", a.sub)
	}
	seen := map[string]bool{}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if !strings.HasPrefix(arg, "-") || arg == "-" {
			a.ids = append(a.ids, arg)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		switch name {
		case "h", "help":
			a.help = true
			continue
		case "json", "all":
			if hasVal {
				return a, fmt.Errorf("--%s takes no value", name)
			}
			a.json = a.json || name == "json"
			a.all = a.all || name == "all"
			continue
		case "action", "code", "limit":
		default:
			return a, fmt.Errorf("unknown flag %s", arg)
		}
		if !hasVal {
			if i+1 >= len(args) {
				return a, fmt.Errorf("--%s needs a value", name)
			}
			i++
			val = args[i]
		}
		if seen[name] {
			return a, fmt.Errorf("--%s given twice", name)
		}
		seen[name] = true
		switch name {
		case "action":
			if !events.IsAction(val) {
				return a, fmt.Errorf("--action %q is not an action subject (one of %s)", val, strings.Join(events.Actions(), ", "))
			}
			a.action = val
		case "code":
			if val == "" {
				return a, errors.New("--code needs an error code, e.g. --code 1007")
			}
			a.code = val
		case "limit":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return a, fmt.Errorf("--limit %q is not a number of events (0 for all)", val)
			}
			a.limit = n
		}
	}
	if a.help {
		return a, nil
	}
	switch a.sub {
	case "list":
		if len(a.ids) > 0 {
			return a, fmt.Errorf("failed list takes no arguments, got %q", a.ids[0])
		}
		if a.all {
			return a, errors.New("--all belongs to failed replay")
		}
	case "replay":
		switch {
		case a.json || seen["limit"]:
			return a, errors.New("--json and --limit belong to failed list")
		case a.all && len(a.ids) > 0:
			return a, errors.New("failed replay takes event ids or --all, not both")
		case !a.all && len(a.ids) == 0:
			return a, errors.New("failed replay needs event ids or --all")
		case !a.all && (a.action != "" || a.code != ""):
			return a, errors.New("--action and --code select the events of --all; with event ids they mean nothing")
		}
	}
	return a, nil
}

// runFailed lists the events kept in the failed-events stream, or sends them again.
func runFailed(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer) int {
	a, err := parseFailedArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "pamworker failed: %v\n%s", err, usage)
		return exitUsage
	}
	if a.help {
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	nc, js, err := connectClient(getenv, environ, "failed", stderr)
	if err != nil {
		return exitUsage
	}
	defer nc.Close()
	store, err := openFailed(ctx, js, worker.DefaultTopology().FailedStream)
	if err != nil {
		fmt.Fprintln(stderr, "pamworker failed:", err)
		return exitUsage
	}
	if a.sub == "list" {
		return listFailed(ctx, store, a, stdout, stderr)
	}
	return replayFailed(ctx, js, store, a, stdout, stderr)
}

// failedStore reads and deletes the records of the failed-events stream.
type failedStore struct {
	stream jetstream.Stream // nil: the stream does not exist yet, so nothing has failed
}

// failedEntry is one record of the failed-events stream.
type failedEntry struct {
	seq    uint64
	record worker.FailedRecord
	result struct {
		FinishedAt string            `json:"finished_at"`
		Message    string            `json:"message"`
		Error      *events.ErrorInfo `json:"error"`
	}
}

func (e *failedEntry) code() string {
	if e.result.Error == nil {
		return ""
	}
	return e.result.Error.Code
}

func openFailed(ctx context.Context, js jetstream.JetStream, name string) (*failedStore, error) {
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return &failedStore{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	return &failedStore{stream: s}, nil
}

func decodeEntry(m *jetstream.RawStreamMsg) (failedEntry, error) {
	e := failedEntry{seq: m.Sequence}
	if err := json.Unmarshal(m.Data, &e.record); err != nil {
		return e, fmt.Errorf("sequence %d on %s is not a failed record: %w", m.Sequence, m.Subject, err)
	}
	if e.record.Subject == "" {
		e.record.Subject = worker.ActionOfFailedSubject(m.Subject)
	}
	_ = json.Unmarshal(e.record.Result, &e.result) // an unreadable result still lists, without a code
	return e, nil
}

// scan returns the records matching action and code, newest first, at most limit of them (0:
// all) and whether there are more. It walks the sequences back from the last one: the newest
// are what people look for, and a limit then stops the walk early.
func (s *failedStore) scan(ctx context.Context, action, code string, limit int, stderr io.Writer) ([]failedEntry, bool, error) {
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
	var out []failedEntry
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
		if action != "" && worker.ActionOfFailedSubject(m.Subject) != action {
			continue
		}
		e, err := decodeEntry(m)
		if err != nil {
			fmt.Fprintln(stderr, "pamworker failed: skipping:", err)
			continue
		}
		if code != "" && !strings.EqualFold(e.code(), code) {
			continue
		}
		if limit > 0 && len(out) == limit {
			return out, true, nil
		}
		out = append(out, e)
	}
	return out, false, nil
}

// byID returns the newest record of eventID, trying each action: its subject is known from the
// id, so no scan is needed.
func (s *failedStore) byID(ctx context.Context, eventID string) (*failedEntry, error) {
	if s.stream == nil {
		return nil, nil
	}
	for _, action := range events.Actions() {
		m, err := s.stream.GetLastMsgForSubject(ctx, worker.FailedSubject(action, eventID))
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

func listFailed(ctx context.Context, store *failedStore, a failedArgs, stdout, stderr io.Writer) int {
	entries, more, err := store.scan(ctx, a.action, a.code, a.limit, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "pamworker failed list:", err)
		return exitUsage
	}
	if a.json {
		records := make([]worker.FailedRecord, 0, len(entries))
		for _, e := range entries {
			records = append(records, e.record)
		}
		out, err := json.MarshalIndent(records, "", "  ")
		if err != nil {
			fmt.Fprintln(stderr, "pamworker failed list:", err)
			return exitUsage
		}
		fmt.Fprintln(stdout, string(out))
	} else if len(entries) > 0 {
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "FAILED AT\tEVENT ID\tACTION\tCODE\tMESSAGE")
		for _, e := range entries {
			msg := e.result.Message
			if msg == "" && e.result.Error != nil {
				msg = e.result.Error.Message
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", cell(e.result.FinishedAt, 40), cell(e.record.EventID, 80),
				cell(e.record.Subject, 40), cell(e.code(), 40), cell(msg, 60))
		}
		_ = tw.Flush()
	}
	switch {
	case len(entries) == 0:
		fmt.Fprintln(stderr, "no failed events")
	case more:
		fmt.Fprintf(stderr, "%s shown, newest first; there are more (raise --limit, or --limit 0 for all)\n", plural(len(entries), "failed event"))
	default:
		fmt.Fprintln(stderr, plural(len(entries), "failed event"))
	}
	return exitOK
}

// replayFailed sends failed events again, each under a new event id that names the old one in
// the Pamworker-Replay-Of header, and removes each replayed record from the failed stream.
func replayFailed(ctx context.Context, js jetstream.JetStream, store *failedStore, a failedArgs, stdout, stderr io.Writer) int {
	type job struct {
		entry  failedEntry
		others []uint64 // older records of the same event id, removed with it
	}
	var jobs []job
	status := exitOK
	if a.all {
		entries, _, err := store.scan(ctx, a.action, a.code, 0, stderr)
		if err != nil {
			fmt.Fprintln(stderr, "pamworker failed replay:", err)
			return exitUsage
		}
		// An event id recorded twice (it failed again after the stream's duplicate window) is
		// replayed once, from its newest record; oldest events go first, as they happened.
		at := map[string]int{}
		for _, e := range entries {
			if i, ok := at[e.record.EventID]; ok {
				jobs[i].others = append(jobs[i].others, e.seq)
				continue
			}
			at[e.record.EventID] = len(jobs)
			jobs = append(jobs, job{entry: e})
		}
		slices.Reverse(jobs)
		if len(jobs) == 0 {
			fmt.Fprintln(stderr, "no failed events")
			return exitOK
		}
	} else {
		asked := map[string]bool{}
		for _, id := range a.ids {
			if asked[id] { // named twice, replayed once
				continue
			}
			asked[id] = true
			e, err := store.byID(ctx, id)
			switch {
			case err != nil:
				fmt.Fprintln(stderr, "pamworker failed replay:", err)
				status = exitFailed
			case e == nil:
				fmt.Fprintf(stderr, "pamworker failed replay: no failed event %q is kept (it never failed, was replayed already, or expired)\n", id)
				status = exitFailed
			default:
				jobs = append(jobs, job{entry: *e})
			}
		}
	}
	replayed := 0
	for _, j := range jobs {
		newID, err := replay(ctx, js, j.entry.record)
		if err != nil {
			fmt.Fprintf(stderr, "pamworker failed replay: %s: %v\n", j.entry.record.EventID, err)
			status = exitFailed
			continue
		}
		fmt.Fprintf(stdout, "%s -> %s\n", j.entry.record.EventID, newID)
		replayed++
		// The record goes once its event is safely back in the events stream, so the list shows
		// only what is still to be dealt with. Should the replay fail too, the worker keeps a new
		// record under the new id.
		for _, seq := range append([]uint64{j.entry.seq}, j.others...) {
			if err := store.stream.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				fmt.Fprintf(stderr, "pamworker failed replay: %s was replayed as %s, but its record (sequence %d) could not be removed and is still listed: %v\n",
					j.entry.record.EventID, newID, seq, err)
				status = exitFailed
			}
		}
	}
	if replayed > 0 {
		fmt.Fprintf(stderr, "replayed %s\n", plural(replayed, "failed event"))
	}
	return status
}

// replay publishes the original event of rec again under a new event id and returns that id.
func replay(ctx context.Context, js jetstream.JetStream, rec worker.FailedRecord) (string, error) {
	if !events.IsAction(rec.Subject) {
		return "", fmt.Errorf("record names no action subject (%q)", rec.Subject)
	}
	newID := newEventID()
	payload, err := rewritePayload([]byte(rec.Payload), newID, time.Now())
	if err != nil {
		return "", err
	}
	hdr := nats.Header{}
	for k, v := range rec.Headers {
		// The server's and JetStream's own headers (Nats-Msg-Id, Nats-Expected-...) describe
		// the old message; whatever the publisher added (tracing ...) travels on.
		if strings.HasPrefix(strings.ToLower(k), "nats-") || strings.EqualFold(k, worker.ReplayOfHeader) {
			continue
		}
		hdr.Set(k, v)
	}
	hdr.Set(jetstream.MsgIDHeader, newID)
	hdr.Set(worker.ReplayOfHeader, rec.EventID)
	// The header is a claim; the mark, which only an operator's identity may write, is what
	// makes the worker put it in the result.
	if err := worker.MarkReplay(ctx, js, worker.DefaultTopology().Bucket, newID, rec.EventID); err != nil {
		return "", fmt.Errorf("mark the replay in the ledger: %w", err)
	}
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: rec.Subject, Header: hdr, Data: payload}); err != nil {
		return "", fmt.Errorf("publish to %s: %w", rec.Subject, err)
	}
	return newID, nil
}

// rewritePayload gives an original event body a new id and keeps every other field, in order.
// A plain event loses its "time": a deliberate replay must not be refused as stale by an age
// that counts from when the event was first raised. A CloudEvents envelope, whose time is part
// of the format, gets the current one; a time and event_id inside its data follow suit.
func rewritePayload(body []byte, newID string, now time.Time) ([]byte, error) {
	obj, err := parseObject(body)
	if err != nil {
		return nil, fmt.Errorf("the original event cannot be replayed: %w", err)
	}
	id, _ := json.Marshal(newID)
	if _, ce := obj.get("specversion"); !ce {
		obj = obj.set("event_id", id).del("time")
		return obj.marshal(), nil
	}
	ts, _ := json.Marshal(now.UTC().Format(time.RFC3339Nano))
	obj = obj.set("id", id).set("time", ts)
	if raw, ok := obj.get("data"); ok {
		if data, err := parseObject(raw); err == nil {
			if _, has := data.get("event_id"); has {
				data = data.set("event_id", id) // the decoder refuses one that differs from id
			}
			obj = obj.set("data", data.del("time").marshal())
		}
	}
	return obj.marshal(), nil
}

// object is a JSON object's members in their order, values untouched.
type object []jsonMember

type jsonMember struct {
	key string
	raw json.RawMessage
}

func parseObject(b []byte) (object, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New("payload is not a JSON object")
	}
	var obj object
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("payload: %w", err)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("payload: %w", err)
		}
		obj = append(obj, jsonMember{tok.(string), raw})
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("payload has data after its JSON object")
	}
	return obj, nil
}

func (o object) get(key string) (json.RawMessage, bool) {
	for _, m := range o {
		if m.key == key {
			return m.raw, true
		}
	}
	return nil, false
}

// set replaces the value of key where it stands, or appends it.
func (o object) set(key string, raw json.RawMessage) object {
	for i := range o {
		if o[i].key == key {
			o[i].raw = raw
			return o
		}
	}
	return append(o, jsonMember{key, raw})
}

func (o object) del(key string) object {
	return slices.DeleteFunc(o, func(m jsonMember) bool { return m.key == key })
}

func (o object) marshal() []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(m.raw)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// cell makes s fit one table cell: no control characters (a tab or newline would break the
// alignment, an escape sequence would reach the terminal), at most n runes.
func cell(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if s == "" {
		return "-"
	}
	if r := []rune(s); len(r) > n {
		return string(r[:n-3]) + "..."
	}
	return s
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}
