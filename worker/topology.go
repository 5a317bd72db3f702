package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Topology names what the worker uses in JetStream.
type Topology struct {
	EventsStream  string        // captures pam.> and element.>
	ResultsStream string        // captures results.>
	FailedStream  string        // keeps the original event of every failed result
	WorkStream    string        // the router's lanes: pamworker.work.<vendor>.<target>.<n>
	FailedMaxAge  time.Duration // how long failed events are kept for replay
	Consumer      string        // base name of the durable consumers: <base>-router, <base>-<lane>
	Bucket        string        // key-value bucket of the ledger
	Replicas      int           // for the streams and bucket the worker creates
	MaxAge        time.Duration // how long events and results are kept
	DedupWindow   time.Duration // streams' duplicate window (Nats-Msg-Id)
	LedgerTTL     time.Duration // how long a finished event id is remembered
}

// DefaultTopology is what the worker creates when nothing is configured.
func DefaultTopology() Topology {
	return Topology{
		EventsStream:  "PAMWORKER_EVENTS",
		ResultsStream: "PAMWORKER_RESULTS",
		FailedStream:  "PAMWORKER_FAILED",
		WorkStream:    "PAMWORKER_WORK",
		FailedMaxAge:  30 * 24 * time.Hour,
		Consumer:      "pamworker",
		Bucket:        "pamworker_ledger",
		Replicas:      1,
		MaxAge:        7 * 24 * time.Hour,
		// The duplicate window equals the ledger TTL: then the stream itself drops a publisher's
		// retry (sent with Nats-Msg-Id) for as long as the ledger would answer it. The server
		// keeps about 100 bytes per id in the window.
		DedupWindow: 24 * time.Hour,
		LedgerTTL:   24 * time.Hour,
	}
}

var (
	eventSubjects  = []string{"pam.>", "element.>"}
	resultSubjects = []string{"results.>"}
	failedSubjects = []string{FailedPrefix + ">"}
)

// ensureStream creates the stream if it is missing. An existing stream is left as the operator
// set it, but it must capture every subject the worker relies on.
func ensureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	s, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, cfg)
		if err != nil {
			return fmt.Errorf("create stream %s for %v: %w (does another stream already capture these subjects?)", cfg.Name, cfg.Subjects, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up stream %s: %w", cfg.Name, err)
	}
	have := s.CachedInfo().Config
	for _, want := range cfg.Subjects {
		if !slices.Contains(have.Subjects, want) {
			return fmt.Errorf("stream %s exists but does not capture %q (it captures %v)", cfg.Name, want, have.Subjects)
		}
	}
	return lossy(have)
}

// minStreamAge is the shortest max_age the worker accepts: a shorter one would delete events
// that a worker or broker outage kept waiting, before they are answered.
const minStreamAge = time.Hour

// lossy refuses a stream whose settings would drop events or results without anyone being
// told, naming the setting. Limits with discard "new" are fine: the publisher gets an error.
func lossy(c jetstream.StreamConfig) error {
	why := ""
	switch {
	case c.Storage == jetstream.MemoryStorage:
		why = "storage is memory: a server restart loses every message not yet processed; use file storage"
	case c.MaxMsgsPerSubject > 0:
		why = fmt.Sprintf("max_msgs_per_subject is %d: all but the last %d messages of a subject are dropped, processed or not", c.MaxMsgsPerSubject, c.MaxMsgsPerSubject)
	case c.Discard == jetstream.DiscardOld && c.MaxMsgs > 0:
		why = fmt.Sprintf("max_msgs is %d with discard old: when full, the oldest messages are dropped unprocessed; use discard new so publishers get an error", c.MaxMsgs)
	case c.Discard == jetstream.DiscardOld && c.MaxBytes > 0:
		why = fmt.Sprintf("max_bytes is %d with discard old: when full, the oldest messages are dropped unprocessed; use discard new so publishers get an error", c.MaxBytes)
	case c.MaxAge > 0 && c.MaxAge < minStreamAge:
		why = fmt.Sprintf("max_age is %v: messages waiting out an outage longer than that are deleted before they are answered; use at least %v", c.MaxAge, minStreamAge)
	case c.NoAck:
		why = "no_ack is set: publishers are not told whether their event was stored"
	}
	if why != "" {
		return fmt.Errorf("stream %s would lose data silently, refusing to run: %s", c.Name, why)
	}
	return nil
}

// weaknesses lists settings that hold up in a test but not in production, for a start-up
// warning: unreplicated streams on a cluster, a short duplicate window, unsynced storage.
func weaknesses(ctx context.Context, js jetstream.JetStream, names ...string) []string {
	var out []string
	for _, name := range names {
		s, err := js.Stream(ctx, name)
		if err != nil {
			continue
		}
		info := s.CachedInfo()
		if info.Cluster != nil && info.Cluster.Name != "" && info.Config.Replicas < 3 {
			out = append(out, fmt.Sprintf("stream %s has %d replica(s) on cluster %s: losing one server can lose acknowledged events; use 3", name, info.Config.Replicas, info.Cluster.Name))
		}
		if info.Config.Duplicates < 2*time.Minute {
			out = append(out, fmt.Sprintf("stream %s's duplicate window is %v: a publisher retrying later than that creates a second event", name, info.Config.Duplicates))
		}
	}
	return out
}

// setup creates the streams and the ledger bucket.
func setup(ctx context.Context, js jetstream.JetStream, t Topology) (jetstream.KeyValue, error) {
	base := jetstream.StreamConfig{
		Retention:  jetstream.LimitsPolicy,
		Storage:    jetstream.FileStorage,
		Discard:    jetstream.DiscardOld,
		MaxAge:     t.MaxAge,
		Duplicates: t.DedupWindow,
		Replicas:   t.Replicas,
	}
	evs, res, fld, work := base, base, base, base
	evs.Name, evs.Subjects, evs.Description = t.EventsStream, eventSubjects, "pamworker action events"
	res.Name, res.Subjects, res.Description = t.ResultsStream, resultSubjects, "pamworker result events"
	fld.Name, fld.Subjects, fld.Description = t.FailedStream, failedSubjects, "pamworker failed events, kept for replay"
	fld.MaxAge = t.FailedMaxAge
	// Lanes keep their messages for a day after processing (limits retention), for inspection.
	work.Name, work.Subjects, work.Description = t.WorkStream, []string{workPrefix() + ">"}, "pamworker: events routed to their lanes"
	work.MaxAge, work.Duplicates = 24*time.Hour, 10*time.Minute
	for _, cfg := range []jetstream.StreamConfig{evs, res, fld, work} {
		if err := ensureStream(ctx, js, cfg); err != nil {
			return nil, err
		}
	}
	kv, err := js.KeyValue(ctx, t.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      t.Bucket,
			Description: "pamworker: results of finished events, by event id",
			TTL:         t.LedgerTTL,
			Storage:     jetstream.FileStorage,
			Replicas:    t.Replicas,
			History:     1,
		})
	}
	if err != nil {
		return nil, fmt.Errorf("ledger bucket %s: %w", t.Bucket, err)
	}
	return kv, nil
}

// RouterConsumer is the name of the router's consumer on the events stream.
func (t Topology) RouterConsumer() string { return t.Consumer + "-router" }

// ensureRouter creates or updates the router's consumer. It hands out one event at a time
// (MaxAckPending 1) to whichever replica asks, so events are routed in stream order; an event
// a dead router held comes back after AckWait, before anything newer. (A pinned priority group
// would allow pipelining, but nats.go's pinned pulls ran at ~140 events/s here; see
// docs/ordering.md.) An operator's pause survives this update at every start: the server keeps an existing
// consumer's PauseUntil (nats-server jetstream_api.go); TestPauseResume restarts a worker.
func ensureRouter(ctx context.Context, js jetstream.JetStream, t Topology, ackWait time.Duration) (jetstream.Consumer, error) {
	cons, err := js.CreateOrUpdateConsumer(ctx, t.EventsStream, jetstream.ConsumerConfig{
		Durable:       t.RouterConsumer(),
		Description:   "pamworker: routes events to their lanes, one at a time",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1,
		MaxAckPending: 1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("router consumer on %s: %w", t.EventsStream, err)
	}
	return cons, nil
}

// ensureLane creates or updates the consumer of one lane. An ordered lane hands out one
// message at a time, so its events run one after the other in publish order: a nak'd message
// stays pending and is redelivered before anything newer. Deliveries are not capped by the
// server: events waiting for a target that refuses the worker must not be dropped.
func ensureLane(ctx context.Context, js jetstream.JetStream, t Topology, lane string, ackWait time.Duration, maxPending int) (jetstream.Consumer, error) {
	cons, err := js.CreateOrUpdateConsumer(ctx, t.WorkStream, jetstream.ConsumerConfig{
		Durable:       laneConsumer(t.Consumer, lane),
		Description:   "pamworker lane " + lane,
		FilterSubject: lane,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1,
		MaxAckPending: maxPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("lane consumer %s: %w", lane, err)
	}
	return cons, nil
}
