package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The workers the bench knows. The two baseline+ variants add pamworker's durable steps to the
// baseline one at a time, to tell what durability costs from what pamworker's own code costs.
const (
	kindBaseline = "baseline"         // core NATS results, nothing stored
	kindResults  = "baseline+results" // results through JetStream (with Nats-Msg-Id), acks awaited
	kindLedger   = "baseline+ledger"  // and a ledger: KV read before the call, write with the result
	kindPam      = "pamworker"
	kindGuards   = "pamworker+guards" // with guardrails on that never refuse the bench's events
)

var workerKinds = []string{kindBaseline, kindResults, kindLedger, kindPam, kindGuards}

// guardSettings turn on the guardrails a production configuration would have — protected
// objects and blast-radius limits — without refusing or holding any of the bench's disables:
// it measures what the checks cost on the normal path (with a limit configured, every event
// also asks the ledger whether its object is parked behind a held event).
var guardSettings = []string{
	"PAMWORKER_SEGURA_PROTECTED_CREDENTIALS=0000; breakglass-*@*; pamworker-a2a@vault01",
	"PAMWORKER_SEGURA_PROTECTED_SESSION_OWNERS=breakglass",
	"PAMWORKER_LIMITS=pam.session.drop=50/1m,pam.credential.enable=50/1m",
}

// baselineConsumer is the baselines' durable consumer, named apart from pamworker's.
const baselineConsumer = "baseline"

// createBaselineTopology creates what pamworker would (worker/topology.go), as far as the
// baseline variant uses it, and the baseline's consumer with pamworker's consumer settings.
func (b *bench) createBaselineTopology(ctx context.Context, kind string) error {
	t := b.topology
	stream := jetstream.StreamConfig{
		Retention:  jetstream.LimitsPolicy,
		Storage:    jetstream.FileStorage,
		Discard:    jetstream.DiscardOld,
		MaxAge:     t.MaxAge,
		Duplicates: t.DedupWindow,
		Replicas:   t.Replicas,
	}
	events, results := stream, stream
	events.Name, events.Subjects = t.EventsStream, []string{"pam.>", "element.>"}
	results.Name, results.Subjects = t.ResultsStream, []string{"results.>"}
	if _, err := b.js.CreateStream(ctx, events); err != nil {
		return err
	}
	if kind == kindResults || kind == kindLedger {
		if _, err := b.js.CreateStream(ctx, results); err != nil {
			return err
		}
	}
	if kind == kindLedger {
		_, err := b.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: t.Bucket, TTL: t.LedgerTTL, Storage: jetstream.FileStorage, Replicas: t.Replicas, History: 1,
		})
		if err != nil {
			return err
		}
	}
	_, err := b.js.CreateOrUpdateConsumer(ctx, t.EventsStream, jetstream.ConsumerConfig{
		Durable:       baselineConsumer,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    -1,
		MaxAckPending: max(1024, 4*b.opts.concurrency),
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	return err
}

func (b *bench) startWorker(ctx context.Context, kind string, run int) (*workerProc, error) {
	name := strings.ReplaceAll(kind, "+", "-")
	logPath := filepath.Join(b.tmp, fmt.Sprintf("%s-%d.log", name, run))
	profile := ""
	if b.opts.profileDir != "" {
		profile = filepath.Join(b.opts.profileDir, fmt.Sprintf("%s-%d.cpu.pprof", name, run))
	}
	switch kind {
	case kindPam:
		return startPamworker(b.pamBin, b.natsURL, b.api.URL, b.opts.concurrency, logPath, profile)
	case kindGuards:
		return startPamworker(b.pamBin, b.natsURL, b.api.URL, b.opts.concurrency, logPath, profile, guardSettings...)
	}
	if err := b.createBaselineTopology(ctx, kind); err != nil {
		return nil, fmt.Errorf("%s topology: %w", kind, err)
	}
	var extra []string
	switch kind {
	case kindResults:
		extra = []string{"-js-results"}
	case kindLedger:
		extra = []string{"-ledger", b.topology.Bucket}
	}
	return startBaseline(b.self, kind, b.natsURL, b.api.URL, b.topology.EventsStream, baselineConsumer,
		b.opts.concurrency, logPath, profile, extra...)
}
