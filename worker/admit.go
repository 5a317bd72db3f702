package worker

import (
	"context"
	"errors"

	"github.com/pamworker/pamworker/events"
)

// admit decides whether the event is acceptable at all: its signature, checked on the bytes as
// they arrived, and its decoding. An event it refuses is answered without being recorded:
// nothing it carries — its id least of all — may decide what happens to another event.
func (w *Worker) admit(_ context.Context, e *entry) verdict {
	if rej := w.cfg.Signatures.Check(e.msg.Subject(), e.msg.Headers().Get, e.msg.Data(), e.ev.ID); rej != nil {
		e.logger().Warn("event refused: signature", "code", rej.Code, "reason", rej.Message)
		return answerWith(rejected(e.ev, rej), false)
	}
	var rej *events.Rejection
	if errors.As(e.decodeErr, &rej) {
		return answerWith(rejected(e.ev, rej), false)
	}
	return next()
}
