package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/broker"
	"github.com/pamworker/pamworker/config"
	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/guard"
	"github.com/pamworker/pamworker/worker"
)

// sendArgs are the parsed arguments of `pamworker send`. Flags may stand before or after the
// positional arguments, as people type them.
type sendArgs struct {
	subject string
	payload []byte
	wait    time.Duration
	signKey string // path of a file holding a whsec_ or whsk_ key
}

func parseSendArgs(args []string) (sendArgs, error) {
	var a sendArgs
	var pos []string
	for i := 0; i < len(args); i++ {
		arg := args[i]
		name, val, hasVal := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		switch {
		case !strings.HasPrefix(arg, "-") || arg == "-":
			pos = append(pos, arg)
			continue
		case name == "sign-key-file":
			if !hasVal {
				if i+1 >= len(args) {
					return a, errors.New("--sign-key-file needs a path")
				}
				i++
				val = args[i]
			}
			a.signKey = val
			continue
		case name != "wait":
			return a, fmt.Errorf("unknown flag %s", arg)
		case !hasVal:
			if i+1 >= len(args) {
				return a, errors.New("--wait needs a duration, e.g. --wait 10s")
			}
			i++
			val = args[i]
		}
		d, err := time.ParseDuration(val)
		if err != nil || d <= 0 {
			return a, fmt.Errorf("--wait %q is not a positive duration such as 10s", val)
		}
		a.wait = d
	}
	if len(pos) != 2 {
		return a, errors.New("send takes SUBJECT and 'JSON'")
	}
	a.subject, a.payload = pos[0], []byte(pos[1])
	if a.subject == "" || strings.ContainsAny(a.subject, " \t\r\n*>") || strings.HasPrefix(a.subject, "results.") {
		return a, fmt.Errorf("%q is not an action subject", a.subject)
	}
	return a, nil
}

// runSend publishes one event through JetStream and, with --wait, prints its result.
func runSend(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer) int {
	a, err := parseSendArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "pamworker send: %v\n%s", err, usage)
		return exitUsage
	}
	nc, js, err := connectClient(getenv, environ, "send", stderr)
	if err != nil {
		return exitUsage
	}
	defer nc.Close()

	var inboxOf func() string // a reply inbox under this identity's prefix
	if a.wait > 0 {
		inboxOf = nc.NewInbox
	}
	id, payload, replyTo := prepare(a.payload, inboxOf)
	header := nats.Header{jetstream.MsgIDHeader: []string{id}}
	if a.signKey != "" {
		key, err := os.ReadFile(a.signKey)
		if err != nil {
			fmt.Fprintln(stderr, "pamworker send: --sign-key-file:", err)
			return exitUsage
		}
		sig, err := guard.Sign(strings.TrimSpace(string(key)), a.subject, id, time.Now(), payload)
		if err != nil {
			fmt.Fprintln(stderr, "pamworker send: --sign-key-file:", err)
			return exitUsage
		}
		for k, v := range sig {
			header.Set(k, v)
		}
	}
	var inbox *nats.Subscription
	if replyTo != "" {
		if inbox, err = nc.SubscribeSync(replyTo); err != nil {
			fmt.Fprintln(stderr, "pamworker send:", err)
			return exitUsage
		}
		defer inbox.Unsubscribe()
	}
	sent := time.Now()
	ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: a.subject, Header: header, Data: payload})
	if err != nil {
		fmt.Fprintf(stderr, "pamworker send: publish to %s: %v\n", a.subject, err)
		return exitUsage
	}
	fmt.Fprintf(stderr, "published event %s to %s (stream %s, sequence %d)\n", id, a.subject, ack.Stream, ack.Sequence)
	if a.wait == 0 {
		return exitOK
	}

	wctx, cancel := context.WithTimeout(ctx, a.wait)
	defer cancel()
	// Only this event's result is printed: its event_id, and the digest of what it asks for
	// when the payload decodes. Anything else on the inbox or the results stream — a forged
	// reply, the result of another event that reuses the id — is not its answer.
	mine := answerOf(a.subject, id, payload)
	var raw []byte
	switch {
	case ack.Duplicate:
		// The stream dropped this publish as a repeat of an event it already holds. Its result
		// is in the ledger if it is finished, else it is still to come on the results stream.
		fmt.Fprintln(stderr, "the stream already holds an event with this id; showing its result")
		var conflict bool
		raw, conflict, err = duplicateResult(wctx, js, a.subject, mine, sent)
		if conflict {
			raw = conflictResult(a.subject, id, raw)
		}
	case inbox != nil:
		for {
			var m *nats.Msg
			if m, err = inbox.NextMsgWithContext(wctx); err != nil {
				break
			}
			if mine.is(m.Data, m.Header.Get(worker.DigestHeader)) {
				raw = m.Data
				break
			}
			fmt.Fprintln(stderr, "pamworker send: ignored a message on the reply inbox that is not this event's result")
		}
	default: // the payload could not carry a reply_to (not a JSON object)
		raw, err = watchResults(wctx, js, a.subject, mine, sent.Add(-time.Second))
	}
	if err != nil {
		fmt.Fprintf(stderr, "pamworker send: no result for event %s within %v\n", id, a.wait)
		return exitUsage
	}
	var res events.Result
	if err := json.Unmarshal(raw, &res); err != nil {
		fmt.Fprintln(stderr, "pamworker send: unreadable result:", err)
		return exitUsage
	}
	var pretty bytes.Buffer
	if json.Indent(&pretty, raw, "", "  ") != nil {
		pretty.Reset()
		pretty.Write(raw)
	}
	fmt.Fprintln(stdout, pretty.String())
	if res.Status == events.Succeeded {
		return exitOK
	}
	return exitFailed
}

// connectClient connects a command (send, failed) to the worker's NATS: PAMWORKER_NATS_URL, or
// the embedded server's address. Errors are printed as one line, named after the command.
func connectClient(getenv func(string) string, environ []string, command string, stderr io.Writer) (*nats.Conn, jetstream.JetStream, error) {
	cfg, err := config.Load(getenv, environ)
	if err != nil {
		fmt.Fprintln(stderr, "pamworker: configuration:", err)
		return nil, nil, err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: max(cfg.LogLevel, slog.LevelWarn)}))
	urls := cfg.NATSURL.Reveal()
	if urls == "" {
		urls = "nats://" + cfg.NATSListen
	}
	auth, err := natsOptions(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "pamworker %s: %v\n", command, err)
		return nil, nil, err
	}
	nc, err := broker.Connect(urls, "pamworker-"+command, log, append(auth, nats.MaxReconnects(5))...)
	if err != nil {
		// A TLS failure means a server is there but the connection is not trusted (either way):
		// asking whether it runs would point the operator the wrong way.
		if errors.Is(err, nats.ErrTLS) || errors.Is(err, broker.ErrClientCertRefused) {
			fmt.Fprintf(stderr, "pamworker %s: %v\n", command, err)
		} else {
			fmt.Fprintf(stderr, "pamworker %s: %v (is the worker, or the NATS server at %s, running?)\n", command, err, redactURL(urls))
		}
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		fmt.Fprintf(stderr, "pamworker %s: %v\n", command, err)
		return nil, nil, err
	}
	return nc, js, nil
}

// prepare gives the payload an event id (its own event_id or CloudEvents id, else a new one)
// and, when a result is awaited (newInbox is set), a reply_to inbox. A payload that is not a
// JSON object is sent unchanged: the worker will answer it with a rejection, which is what
// its sender should see.
func prepare(payload []byte, newInbox func() string) (id string, out []byte, replyTo string) {
	var obj map[string]json.RawMessage
	if json.Unmarshal(payload, &obj) != nil || obj == nil {
		return newEventID(), payload, ""
	}
	target := obj
	if _, ce := obj["specversion"]; ce {
		_ = json.Unmarshal(obj["id"], &id)
		var data map[string]json.RawMessage
		if json.Unmarshal(obj["data"], &data) != nil || data == nil {
			return cmpID(id), payload, ""
		}
		target = data
	} else {
		_ = json.Unmarshal(obj["event_id"], &id)
		if id == "" {
			id = newEventID()
			obj["event_id"], _ = json.Marshal(id)
		}
	}
	if newInbox != nil {
		if _, has := target["reply_to"]; has {
			_ = json.Unmarshal(target["reply_to"], &replyTo)
		} else {
			replyTo = newInbox()
			target["reply_to"], _ = json.Marshal(replyTo)
		}
	}
	if _, ce := obj["specversion"]; ce {
		obj["data"], _ = json.Marshal(target)
	}
	out, err := json.Marshal(obj)
	if err != nil {
		return cmpID(id), payload, ""
	}
	return cmpID(id), out, replyTo
}

func cmpID(id string) string {
	if id == "" {
		return newEventID()
	}
	return id
}

// answer tells the result of one event from others: by its event_id and, if the event
// decodes, by the digest of what it asks for (events.Event.Digest).
type answer struct {
	id, digest string
}

func answerOf(subject, id string, payload []byte) answer {
	a := answer{id: id}
	if ev, err := events.Decode(subject, payload, id, 1<<20, func() string { return id }); err == nil {
		a.digest = ev.Digest()
	}
	return a
}

// is reports whether data, a result with digest header digest, answers this event.
func (a answer) is(data []byte, digest string) bool {
	var r struct {
		EventID string `json:"event_id"`
	}
	return json.Unmarshal(data, &r) == nil && r.EventID == a.id && (a.digest == "" || digest == a.digest)
}

// duplicateResult finds the result of an event published earlier with this id: from the
// ledger, or, if it is not finished yet, from the results stream as it arrives. The watch
// starts first so a result recorded between the two looks is not missed. conflict reports
// that the earlier event is another one (it asks for something else): raw is then its result.
func duplicateResult(ctx context.Context, js jetstream.JetStream, subject string, mine answer, since time.Time) (raw []byte, conflict bool, err error) {
	type found struct {
		raw []byte
		err error
	}
	watched := make(chan found, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		raw, err := watchResults(wctx, js, subject, mine, since)
		watched <- found{raw, err}
	}()
	if raw, digest, err := worker.RecordedResult(ctx, js, mine.id); err == nil && raw != nil {
		if mine.digest != "" && digest != mine.digest {
			return raw, true, nil
		}
		return raw, false, nil
	}
	f := <-watched
	return f.raw, false, f.err
}

// conflictResult is the answer send prints when the stream dropped its event because another
// event already has its id: a rejection, as the worker would give, naming the other event.
func conflictResult(subject, id string, other []byte) []byte {
	var o events.Result
	_ = json.Unmarshal(other, &o)
	res := events.NewResult(events.Event{ID: id, Action: subject, Target: events.DefaultTarget})
	res.Status = events.Rejected
	res.Message = fmt.Sprintf("event id %q is already the id of another event (%s on target %q, %s); this event was not accepted: give it an id of its own",
		id, o.Action, o.Target, o.Status)
	res.Error = &events.ErrorInfo{Code: events.CodeIDConflict, Message: res.Message}
	res.FinishedAt = events.Timestamp(time.Now())
	data, _ := res.Marshal()
	return data
}

// watchResults reads results of subject from start on and returns the one of this event.
func watchResults(ctx context.Context, js jetstream.JetStream, subject string, mine answer, start time.Time) ([]byte, error) {
	cons, err := js.OrderedConsumer(ctx, worker.DefaultTopology().ResultsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.ResultSubject(subject)},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &start,
	})
	if err != nil {
		return nil, err
	}
	for {
		msg, err := cons.Next(jetstream.FetchContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		if mine.is(msg.Data(), msg.Headers().Get(worker.DigestHeader)) {
			return msg.Data(), nil
		}
	}
}

// redactURL hides a password in a NATS URL for an error message.
func redactURL(urls string) string {
	var out []string
	for _, u := range strings.Split(urls, ",") {
		if at := strings.LastIndex(u, "@"); at >= 0 {
			if scheme := strings.Index(u, "://"); scheme >= 0 && scheme < at {
				u = u[:scheme+3] + "***" + u[at:]
			}
		}
		out = append(out, u)
	}
	return strings.Join(out, ",")
}
