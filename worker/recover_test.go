package worker

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
)

func TestRecoverHandler(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	h := recoverHandler(slog.New(slog.NewJSONHandler(&logs, nil)))(handlers.HandlerFunc(
		func(context.Context, events.Event) (handlers.Outcome, error) {
			var m map[string]int
			m["boom"]++ // a nil-map write: a real runtime panic
			return handlers.Outcome{}, nil
		}))
	_, err := h.Handle(context.Background(), events.Event{ID: "e1", Action: events.SessionDrop})
	var re *handlers.RetryableError
	if !errors.As(err, &re) || re.Reason != handlers.ReasonInternal || re.Code != "internal_error" {
		t.Fatalf("err = %v, want a retryable internal error", err)
	}
	if !strings.Contains(logs.String(), `"event_id":"e1"`) || !strings.Contains(logs.String(), "nil map") {
		t.Errorf("the panic is not logged with the event and cause: %s", logs.String())
	}
	// A handler that returns normally is untouched.
	ok := recoverHandler(slog.Default())(handlers.HandlerFunc(func(context.Context, events.Event) (handlers.Outcome, error) {
		return handlers.Outcome{Message: "fine"}, nil
	}))
	if out, err := ok.Handle(context.Background(), events.Event{}); err != nil || out.Message != "fine" {
		t.Errorf("got %+v %v", out, err)
	}
}
