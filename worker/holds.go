package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/guard"
)

// Ledger keys of the operators' decisions about held events: events received before the
// stored time are released (run despite the limit) or cancelled (rejected held_cancelled).
const (
	HoldReleaseKey = "hold.release"
	HoldCancelKey  = "hold.cancel"
)

// maxHold is the longest a held event waits before it looks again at the window and at the
// operators' decisions.
const maxHold = 5 * time.Second

// holdDecision is what a blast-radius limit says about an event.
type holdDecision int

const (
	runIt holdDecision = iota
	holdIt
	cancelIt
)

// stamp is one event counted in a window: when it ran and a short hash of its requester.
type stamp struct {
	At  int64  `json:"t"`
	Who string `json:"r,omitempty"`
}

// blast applies the blast-radius limit of ev's action: a sliding window per action and target,
// kept in the ledger bucket so every replica counts against the same window, capped as a whole
// and, if the limit says so, per requester. It returns how long a held event should wait.
func (w *Worker) blast(ctx context.Context, ev events.Event, received time.Time) (holdDecision, time.Duration, error) {
	lim, ok := w.cfg.Limits[ev.Action]
	if !ok || ev.DryRun {
		return runIt, 0, nil
	}
	key := keyOf("rate", guard.CounterKey(ev))
	sum := sha256.Sum256([]byte(guard.Requester(ev)))
	who := hex.EncodeToString(sum[:6])
	for range 20 { // compare-and-set against other replicas
		now := time.Now()
		var stamps []stamp
		var rev uint64
		e, err := w.ledger.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return runIt, 0, err
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
			switch w.operatorSays(ctx, received) {
			case cancelIt:
				return cancelIt, 0, nil
			case runIt:
				return runIt, 0, nil // released by an operator: not counted
			}
			// Come back when the window frees a slot, but at least every few seconds, so an
			// operator's release or cancel takes effect promptly.
			return holdIt, min(max(time.Unix(0, full[0].At).Add(lim.Window).Sub(now), 200*time.Millisecond), maxHold), nil
		}
		kept = append(kept, stamp{At: now.UnixNano(), Who: who})
		data, _ := json.Marshal(kept)
		if rev == 0 {
			_, err = w.ledger.kv.Create(ctx, key, data)
		} else {
			_, err = w.ledger.kv.Update(ctx, key, data, rev)
		}
		if err == nil {
			return runIt, 0, nil
		}
		// Another replica counted meanwhile: read again.
	}
	return holdIt, time.Second, nil
}

// operatorSays reports whether an operator released or cancelled events received before now.
func (w *Worker) operatorSays(ctx context.Context, received time.Time) holdDecision {
	at := func(key string) time.Time {
		e, err := w.ledger.kv.Get(ctx, key)
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

func heldCancelled(lim guard.Limit) *events.Rejection {
	return &events.Rejection{Code: guard.CodeHeldCancelled, Message: fmt.Sprintf(
		"held by the blast-radius limit (%d per %s) and cancelled by an operator (pamworker hold cancel); not run", lim.Max, lim.Window)}
}
