package worker

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

// TestOnlyForwardedHeadersTravel: whatever headers an event carries — every header JetStream
// acts on, the worker's own names, random ones in any case — an internal publish carries only
// the forwarded ones and those the worker sets itself.
func TestOnlyForwardedHeadersTravel(t *testing.T) {
	t.Parallel()
	hostile := []string{"Nats-Msg-Id", "Nats-Expected-Stream", "Nats-Expected-Last-Msg-Id", "Nats-Expected-Last-Sequence",
		"Nats-Expected-Last-Subject-Sequence", "Nats-Expected-Last-Subject-Sequence-Subject", "Nats-Rollup", "Nats-TTL",
		"Nats-Marker-Reason", "Nats-Schedule", "Nats-Schedule-Target", "Nats-Batch-Id", "Nats-Batch-Sequence", "Nats-Batch-Commit",
		"Nats-Counter-Incr", "Nats-Required-Api-Level", hdrSubject, hdrMsgID, hdrReceived, hdrParkKey, hdrParkID, DigestHeader,
		"nats-expected-stream", "NATS-ROLLUP", "Webhook-Id", "WEBHOOK-SIGNATURE", "Traceparent"}
	allowed := map[string]bool{}
	for _, k := range forwarded {
		allowed[k] = true
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		h := nats.Header{}
		for _, k := range forwarded {
			if rng.IntN(2) == 0 {
				h.Set(k, "v")
			}
		}
		for range 1 + rng.IntN(6) {
			k := hostile[rng.IntN(len(hostile))]
			if rng.IntN(4) == 0 { // a random name
				var b strings.Builder
				for range 1 + rng.IntN(20) {
					b.WriteByte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"[rng.IntN(53)])
				}
				k = b.String()
			}
			h[k] = []string{"hostile"}
		}
		out := copyHeaders(h, hdrSubject)
		for k := range out {
			if !allowed[k] && k != hdrSubject {
				t.Fatalf("round %d: %q travelled into an internal publish (%v)", round, k, h)
			}
		}
		for _, k := range forwarded {
			if h.Get(k) != "" && out.Get(k) != h.Get(k) {
				t.Fatalf("round %d: forwarded %s lost", round, k)
			}
		}
	}
}
