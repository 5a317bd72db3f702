package worker

import (
	"context"
	"time"

	"github.com/pamworker/pamworker/handlers"
)

// admitTarget lets the event call its target unless the target is down — its breaker open
// after repeated failures, or refusing the worker — in which case the event waits in memory
// until the target is back, or until it may be the one probe that finds out.
func (w *Worker) admitTarget(_ context.Context, e *entry) verdict {
	tgt := handlers.TargetLabel(e.ev.Action, e.ev.Target)
	ok, probe, wait := w.targets.admit(tgt)
	if ok {
		e.probe = probe
		return next()
	}
	reason := deferTargetDown
	if w.targets.isOpen(tgt) && !w.targets.refused(tgt) {
		reason = deferCircuitOpen
	}
	return verdict{kind: verdictWait, until: time.Now().Add(wait), reason: reason, target: tgt}
}
