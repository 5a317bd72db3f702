package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/guard"
)

// limit applies the blast-radius limit of the event's action. An event over it waits in memory
// — holding up later events about its own object and nothing else — until its window frees a
// slot, an operator releases it (it then runs without counting) or cancels it (rejected
// held_cancelled). It is counted once, when it may run.
func (w *Worker) limit(ctx context.Context, e *entry) verdict {
	lim, ok := w.cfg.Limits[e.ev.Action]
	if !ok || e.ev.DryRun || e.counted {
		return next()
	}
	decision, until, err := w.holds.admit(ctx, e.ev, lim, e.received)
	switch {
	case err != nil:
		e.logger().Warn("ledger unavailable for the blast-radius limit; event waits", "error", err)
		return waitUntil(time.Now().Add(time.Second), deferLedger)
	case decision == holdIt:
		if e.heldSince.IsZero() {
			e.heldSince = time.Now()
			e.logger().Warn("event held: blast-radius limit reached; it waits", "target", e.ev.Target,
				"requested_by", e.ev.RequestedBy, "limit", lim.String(), "retry_at", until.UTC().Format(time.RFC3339Nano))
		}
		w.m.held.WithLabelValues(actionLabel(e.ev.Action)).Inc()
		return waitUntil(until, deferHeld)
	case decision == cancelIt:
		return answerWith(rejected(e.ev, &events.Rejection{Code: guard.CodeHeldCancelled, Message: fmt.Sprintf(
			"held by the blast-radius limit (%s) and cancelled by an operator (pamworker hold cancel); not run", lim)}), true)
	}
	e.counted = true
	return next()
}

// Ledger keys of the operators' decisions about held events: events received before the
// stored time are released (run despite the limit) or cancelled (rejected held_cancelled).
const (
	HoldReleaseKey = "hold.release"
	HoldCancelKey  = "hold.cancel"
)

// maxHold is the longest a held event waits before it looks at its window again.
const maxHold = 5 * time.Second

// holdDecision is what a blast-radius limit says about an event.
type holdDecision int

const (
	runIt holdDecision = iota
	holdIt
	cancelIt
)

// holds owns two key families of the ledger bucket: the limits' windows ("rate.<hash of
// action and target>", a list of stamps) and the operators' hold decisions.
type holds struct{ kv jetstream.KeyValue }

func newHolds(kv jetstream.KeyValue) *holds { return &holds{kv: kv} }

// stamp is one event counted in a window: when it ran and a short hash of its requester.
type stamp struct {
	At  int64  `json:"t"`
	Who string `json:"r,omitempty"`
}

// admit counts ev against lim's window, shared by all replicas (compare-and-set), or says how
// long it waits. The window is capped as a whole and, if the limit says so, per requester.
func (h *holds) admit(ctx context.Context, ev events.Event, lim guard.Limit, received time.Time) (holdDecision, time.Time, error) {
	key := keyOf("rate", guard.CounterKey(ev))
	sum := sha256.Sum256([]byte(guard.Requester(ev)))
	who := hex.EncodeToString(sum[:6])
	for range 20 { // compare-and-set against other replicas
		now := time.Now()
		var stamps []stamp
		var rev uint64
		e, err := h.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return runIt, time.Time{}, err
		default:
			rev = e.Revision()
			_ = json.Unmarshal(e.Value(), &stamps)
		}
		kept := stamps[:0]
		var mine []stamp
		for _, s := range stamps {
			if now.Sub(time.Unix(0, s.At)) < lim.Window {
				kept = append(kept, s)
				if s.Who == who {
					mine = append(mine, s)
				}
			}
		}
		var full []stamp // the window that has no room left, if one has none
		switch {
		case len(kept) >= lim.Max:
			full = kept
		case lim.PerRequester > 0 && len(mine) >= lim.PerRequester:
			full = mine
		}
		if full != nil {
			switch h.operatorSays(ctx, received) {
			case cancelIt:
				return cancelIt, time.Time{}, nil
			case runIt:
				return runIt, time.Time{}, nil // released by an operator: not counted
			}
			// Look again when the window frees a slot, and at least every few seconds.
			wait := min(max(time.Unix(0, full[0].At).Add(lim.Window).Sub(now), 50*time.Millisecond), maxHold)
			return holdIt, now.Add(wait), nil
		}
		kept = append(kept, stamp{At: now.UnixNano(), Who: who})
		data, _ := json.Marshal(kept)
		if rev == 0 {
			_, err = h.kv.Create(ctx, key, data)
		} else {
			_, err = h.kv.Update(ctx, key, data, rev)
		}
		if err == nil {
			return runIt, time.Time{}, nil
		}
		// Another replica counted meanwhile: read again.
	}
	return holdIt, time.Now().Add(time.Second), nil
}

// operatorSays reports whether an operator released or cancelled events received before now.
func (h *holds) operatorSays(ctx context.Context, received time.Time) holdDecision {
	at := func(key string) time.Time {
		e, err := h.kv.Get(ctx, key)
		if err != nil {
			return time.Time{}
		}
		t, _ := time.Parse(time.RFC3339Nano, string(e.Value()))
		return t
	}
	if c := at(HoldCancelKey); !c.IsZero() && !received.After(c) {
		return cancelIt
	}
	if r := at(HoldReleaseKey); !r.IsZero() && !received.After(r) {
		return runIt
	}
	return holdIt
}

// watch calls changed whenever an operator releases or cancels held events, so they run (or
// are rejected) at once instead of at their next look.
func (h *holds) watch(ctx context.Context, log *slog.Logger, changed func()) {
	for ctx.Err() == nil {
		wt, err := h.kv.Watch(ctx, "hold.*", jetstream.UpdatesOnly())
		if err != nil {
			log.Warn("cannot watch hold decisions; held events look again every few seconds", "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
			}
			continue
		}
		for u := range wt.Updates() {
			if u != nil {
				changed()
			}
		}
		_ = wt.Stop()
	}
}

// Hold records an operator's decision about the events held now: release (run despite the
// limit) or cancel (reject them held_cancelled). It returns the moment it applies to.
func Hold(ctx context.Context, js jetstream.JetStream, release bool) (time.Time, error) {
	kv, err := js.KeyValue(ctx, DefaultTopology().Bucket)
	if err != nil {
		return time.Time{}, err
	}
	key := HoldCancelKey
	if release {
		key = HoldReleaseKey
	}
	now := time.Now().UTC()
	_, err = kv.Put(ctx, key, []byte(now.Format(time.RFC3339Nano)))
	return now, err
}
