package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Topology names what the worker uses in JetStream.
type Topology struct {
	EventsStream  string        // captures pam.> and element.>
	ResultsStream string        // captures results.>
	FailedStream  string        // keeps the original event of every failed result
	FailedMaxAge  time.Duration // how long failed events are kept for replay
	Consumer      string        // base name of the durable consumers: <base>-p<partition>
	Bucket        string        // key-value bucket of the ledger
	MembersBucket string        // key-value bucket of the live replicas (with several partitions)
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
		FailedMaxAge:  30 * 24 * time.Hour,
		Consumer:      "pamworker",
		Bucket:        "pamworker_ledger",
		MembersBucket: "pamworker_members",
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
	evs, res, fld := base, base, base
	evs.Name, evs.Subjects, evs.Description = t.EventsStream, eventSubjects, "pamworker action events"
	res.Name, res.Subjects, res.Description = t.ResultsStream, resultSubjects, "pamworker result events"
	fld.Name, fld.Subjects, fld.Description = t.FailedStream, failedSubjects, "pamworker failed events, kept for replay"
	fld.MaxAge = t.FailedMaxAge
	for _, cfg := range []jetstream.StreamConfig{evs, res, fld} {
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

// PartitionConsumer is the name of partition k's durable consumer on the events stream.
func (t Topology) PartitionConsumer(k int) string { return t.Consumer + "-p" + strconv.Itoa(k) }

// IsOurs reports whether name is one of the worker's consumers on the events stream, of any
// partition count or of an earlier version (its router).
func (t Topology) IsOurs(name string) bool { return strings.HasPrefix(name, t.Consumer+"-") }

// consumerSettings is the configuration of partition k's consumer. AckWait is short, and kept
// alive by InProgress while an event is held. Which replica pulls it is decided by the
// partition's lease (members.go), not by the consumer.
func consumerSettings(t Topology, k int, ackWait time.Duration, maxHeld int) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       t.PartitionConsumer(k),
		Description:   "pamworker: events of partition " + strconv.Itoa(k),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1, // events waiting for a target that refuses the worker must not be dropped
		MaxAckPending: maxHeld,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
}

// ensureConsumer creates partition k's consumer, or updates the one there, keeping its place
// in the stream. A new consumer starts at the beginning of the stream — unless another of the
// worker's consumers already reads it (an earlier partition count, or the router of an earlier
// version), or this replica saw the consumer before and it was deleted: then it starts where
// nothing can have been left unanswered, resume (the oldest event this replica still holds or
// the next after the last it saw) or, failing that, the ledger's TTL back. What was answered
// in that span is answered from the ledger, what was not runs.
func ensureConsumer(ctx context.Context, js jetstream.JetStream, t Topology, k int, ackWait time.Duration, maxHeld int, resume position, log *slog.Logger) (jetstream.Consumer, error) {
	cfg := consumerSettings(t, k, ackWait, maxHeld)
	stream, err := js.Stream(ctx, t.EventsStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", t.EventsStream, err)
	}
	if !stream.CachedInfo().Created.Equal(resume.created) {
		resume.seq = 0 // another stream by that name: its sequences started again
	}
	existing, err := stream.Consumer(ctx, cfg.Durable)
	switch {
	case err == nil:
		old := existing.CachedInfo().Config
		cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = old.DeliverPolicy, old.OptStartSeq, old.OptStartTime
		cons, err := stream.UpdateConsumer(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("consumer %s on %s: %w", cfg.Durable, t.EventsStream, err)
		}
		return cons, nil
	case !errors.Is(err, jetstream.ErrConsumerNotFound):
		return nil, fmt.Errorf("consumer %s on %s: %w", cfg.Durable, t.EventsStream, err)
	}
	switch {
	case resume.seq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, resume.seq
		log.Warn("consumer was deleted; recreated where this replica was", "consumer", cfg.Durable, "start_sequence", resume.seq)
	case othersRead(ctx, stream, t, k):
		since := time.Now().Add(-t.LedgerTTL)
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
		log.Warn("new consumer on a stream other pamworker consumers read: it starts the ledger's TTL back, and answers what was answered from the ledger",
			"consumer", cfg.Durable, "start_time", since.UTC())
	}
	cons, err := stream.CreateConsumer(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", cfg.Durable, t.EventsStream, err)
	}
	return cons, nil
}

// position is where in which stream a recreated consumer resumes: seq, if the stream is still
// the one created at created.
type position struct {
	seq     uint64
	created time.Time
}

// streamCreated returns when the events stream was created.
func streamCreated(ctx context.Context, js jetstream.JetStream, t Topology) time.Time {
	if s, err := js.Stream(ctx, t.EventsStream); err == nil {
		return s.CachedInfo().Created
	}
	return time.Time{}
}

// othersRead reports whether a consumer of the worker's other than partition k's reads the
// events stream.
func othersRead(ctx context.Context, s jetstream.Stream, t Topology, k int) bool {
	names := s.ConsumerNames(ctx)
	found := false
	for name := range names.Name() {
		if t.IsOurs(name) && name != t.PartitionConsumer(k) {
			found = true
		}
	}
	return found
}
