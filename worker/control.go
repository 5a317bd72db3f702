package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Pause pauses every consumer of the worker's on the events stream until until (JetStream
// consumer pause): no replica takes events, they wait in the stream, and the pause survives
// worker restarts. Replicas start nothing they hold either; running events finish.
func Pause(ctx context.Context, js jetstream.JetStream, until time.Time) error {
	return eachConsumer(ctx, js, func(stream, name string) error {
		_, err := js.PauseConsumer(ctx, stream, name, until)
		return err
	})
}

// Resume ends a pause.
func Resume(ctx context.Context, js jetstream.JetStream) error {
	return eachConsumer(ctx, js, func(stream, name string) error {
		_, err := js.ResumeConsumer(ctx, stream, name)
		return err
	})
}

func eachConsumer(ctx context.Context, js jetstream.JetStream, do func(stream, name string) error) error {
	t := DefaultTopology()
	s, err := js.Stream(ctx, t.EventsStream)
	if err != nil {
		return err
	}
	names := s.ConsumerNames(ctx)
	var ours []string
	for name := range names.Name() {
		if t.IsOurs(name) {
			ours = append(ours, name)
		}
	}
	if err := names.Err(); err != nil {
		return err
	}
	if len(ours) == 0 {
		return fmt.Errorf("no pamworker consumer on %s: has a worker ever run against this server?", t.EventsStream)
	}
	for _, name := range ours {
		if err := do(t.EventsStream, name); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}
