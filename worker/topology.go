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
	Consumer      string        // durable pull consumer shared by every replica
	Bucket        string        // key-value bucket of the ledger
	Replicas      int           // for the streams and bucket the worker creates
	MaxAge        time.Duration // how long events and results are kept
	DedupWindow   time.Duration // streams' duplicate window (Nats-Msg-Id); see Worker.Run
	LedgerTTL     time.Duration // how long a finished event id is remembered
}

// DefaultTopology is what the worker creates when nothing is configured.
func DefaultTopology() Topology {
	return Topology{
		EventsStream:  "PAMWORKER_EVENTS",
		ResultsStream: "PAMWORKER_RESULTS",
		Consumer:      "pamworker",
		Bucket:        "pamworker_ledger",
		Replicas:      1,
		MaxAge:        7 * 24 * time.Hour,
		// The duplicate window equals the ledger TTL: then the stream itself drops a repeated
		// event id (sent with Nats-Msg-Id) for as long as the ledger would answer it, and first
		// deliveries need no ledger read. The server keeps about 100 bytes per id in the window.
		DedupWindow: 24 * time.Hour,
		LedgerTTL:   24 * time.Hour,
	}
}

var (
	eventSubjects  = []string{"pam.>", "element.>"}
	resultSubjects = []string{"results.>"}
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
	have := s.CachedInfo().Config.Subjects
	for _, want := range cfg.Subjects {
		if !slices.Contains(have, want) {
			return fmt.Errorf("stream %s exists but does not capture %q (it captures %v)", cfg.Name, want, have)
		}
	}
	return nil
}

// inForce are the settings of what setup found or created, which may differ from Topology
// when the streams or bucket already existed.
type inForce struct {
	dedupWindow time.Duration // of the events stream
	ledgerTTL   time.Duration
}

// setup creates the streams, the ledger bucket and the durable consumer.
func setup(ctx context.Context, js jetstream.JetStream, t Topology, c ConsumerSettings) (jetstream.Consumer, jetstream.KeyValue, inForce, error) {
	base := jetstream.StreamConfig{
		Retention:  jetstream.LimitsPolicy,
		Storage:    jetstream.FileStorage,
		Discard:    jetstream.DiscardOld,
		MaxAge:     t.MaxAge,
		Duplicates: t.DedupWindow,
		Replicas:   t.Replicas,
	}
	evs, res := base, base
	evs.Name, evs.Subjects, evs.Description = t.EventsStream, eventSubjects, "pamworker action events"
	res.Name, res.Subjects, res.Description = t.ResultsStream, resultSubjects, "pamworker result events"
	for _, cfg := range []jetstream.StreamConfig{evs, res} {
		if err := ensureStream(ctx, js, cfg); err != nil {
			return nil, nil, inForce{}, err
		}
	}
	var in inForce
	if s, err := js.Stream(ctx, t.EventsStream); err == nil {
		in.dedupWindow = s.CachedInfo().Config.Duplicates
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
		return nil, nil, inForce{}, fmt.Errorf("ledger bucket %s: %w", t.Bucket, err)
	}
	if st, err := kv.Status(ctx); err == nil {
		in.ledgerTTL = st.TTL()
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, t.EventsStream, jetstream.ConsumerConfig{
		Durable:     t.Consumer,
		Description: "pamworker: shared by every replica",
		AckPolicy:   jetstream.AckExplicitPolicy,
		AckWait:     c.AckWait,
		// Deliveries are not capped by the server: a target that refuses the worker must not
		// turn waiting events into lost ones. The worker counts exhausted retry budgets itself.
		MaxDeliver:    -1,
		MaxAckPending: c.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, nil, inForce{}, fmt.Errorf("consumer %s on %s: %w", t.Consumer, t.EventsStream, err)
	}
	return cons, kv, in, nil
}

// ConsumerSettings are the consumer's delivery settings.
type ConsumerSettings struct {
	AckWait       time.Duration
	MaxAckPending int
}
