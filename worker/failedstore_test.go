package worker

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// TestReplayHeaders: whatever headers the failed event carried — every header JetStream acts
// on, the worker's own names, random ones in any case — its replay carries only the
// publisher's own headers, its new message id and the replay claim of the old id.
func TestReplayHeaders(t *testing.T) {
	t.Parallel()
	hostile := []string{"Nats-Msg-Id", "Nats-Expected-Stream", "Nats-Expected-Last-Msg-Id", "Nats-Expected-Last-Sequence",
		"Nats-Expected-Last-Subject-Sequence", "Nats-Rollup", "Nats-TTL", "Nats-Marker-Reason", "Nats-Schedule", "Nats-Batch-Id",
		"Nats-Counter-Incr", "nats-expected-stream", "NATS-ROLLUP", ReplayOfHeader, "pamworker-replay-of", DigestHeader, "Pamworker-Subject"}
	kept := []string{"webhook-id", "webhook-timestamp", "webhook-signature", "traceparent", "tracestate", "X-Incident"}
	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 300 {
		rec := FailedRecord{EventID: "old-id", Headers: map[string]string{}}
		for range 1 + rng.IntN(8) {
			if rng.IntN(2) == 0 {
				rec.Headers[hostile[rng.IntN(len(hostile))]] = "hostile"
			} else {
				rec.Headers[kept[rng.IntN(len(kept))]] = "kept"
			}
		}
		h := replayHeaders(rec, "new-id")
		for k, v := range h {
			lk := strings.ToLower(k)
			switch {
			case k == "Nats-Msg-Id":
				if v[0] != "new-id" {
					t.Fatalf("round %d: message id %q", round, v)
				}
			case k == ReplayOfHeader:
				if v[0] != "old-id" {
					t.Fatalf("round %d: replay of %q", round, v)
				}
			case strings.HasPrefix(lk, "nats-") || strings.HasPrefix(lk, "pamworker-") || v[0] != "kept":
				t.Fatalf("round %d: %s: %v travelled into the replay (%v)", round, k, v, rec.Headers)
			}
		}
		for k := range rec.Headers {
			if rec.Headers[k] == "kept" && h.Get(k) != "kept" {
				t.Fatalf("round %d: the publisher's %s was lost", round, k)
			}
		}
	}
}
