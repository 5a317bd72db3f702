// Package handlers defines what an action handler is and the vocabulary it answers in: an
// Outcome on success, or an error that says what should happen next (a vendor refusal, a retry,
// a target that has locked the worker out). The vendor packages below it (handlers/segura,
// handlers/element) hold each vendor's API client and the handlers for its actions; none of
// them knows anything of NATS.
package handlers

import (
	"context"
	"fmt"
	"strings"

	"github.com/pamworker/pamworker/events"
)

// Outcome is what a successful action returned.
type Outcome struct {
	Message    string         // the vendor's own success message
	Noop       bool           // the object was already in the wanted state
	HTTPStatus int            // status of the answering API call, 0 if none was made
	Details    map[string]any // what the action returned, e.g. the Element sessions deleted
}

// Handler performs one action. It returns an Outcome, or an error wrapped in one of this
// package's error types (PermanentError, RetryableError, TargetDownError, *events.Rejection).
// A plain error is treated as retryable.
type Handler interface {
	Handle(ctx context.Context, ev events.Event) (Outcome, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, ev events.Event) (Outcome, error)

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, ev events.Event) (Outcome, error) { return f(ctx, ev) }

// Middleware wraps a Handler with a cross-cutting concern.
type Middleware func(Handler) Handler

// Registry maps action subjects to handlers. Registration is explicit; a duplicate is an error.
type Registry struct {
	m map[string]Handler
}

// NewRegistry returns an empty Registry.
func NewRegistry() *Registry { return &Registry{m: map[string]Handler{}} }

// Add registers h for subject.
func (r *Registry) Add(subject string, h Handler) error {
	if !events.IsAction(subject) {
		return fmt.Errorf("handlers: %q is not an action subject", subject)
	}
	if _, dup := r.m[subject]; dup {
		return fmt.Errorf("handlers: a handler for %q is already registered", subject)
	}
	r.m[subject] = h
	return nil
}

// Lookup returns the handler for subject.
func (r *Registry) Lookup(subject string) (Handler, bool) {
	h, ok := r.m[subject]
	return h, ok
}

// Handle runs ev through the handler registered for its action; an action without one is
// rejected as unknown_action. A Registry is itself the Handler the worker calls.
func (r *Registry) Handle(ctx context.Context, ev events.Event) (Outcome, error) {
	h, ok := r.m[ev.Action]
	if !ok {
		return Outcome{}, &events.Rejection{Code: events.CodeUnknownAction, Message: "no handler is registered for " + ev.Action}
	}
	return h.Handle(ctx, ev)
}

// Chain wraps h in the middleware, the first outermost. It is built once, at start.
func Chain(h Handler, mw ...Middleware) Handler {
	for i := len(mw) - 1; i >= 0; i-- {
		h = mw[i](h)
	}
	return h
}

// Vendor names the system an action subject acts on: "segura" or "element".
func Vendor(action string) string {
	if strings.HasPrefix(action, "element.") {
		return "element"
	}
	return "segura"
}

// TargetLabel names a target for metrics and logs: vendor/instance, e.g. "segura/default".
func TargetLabel(action, target string) string { return Vendor(action) + "/" + target }

// NotConfigured answers every event of a vendor that has no target configured.
func NotConfigured(vendor string) Handler {
	return HandlerFunc(func(_ context.Context, ev events.Event) (Outcome, error) {
		return Outcome{}, &events.Rejection{
			Code:    events.CodeTargetNotConfigured,
			Message: fmt.Sprintf("no %s target is configured (set PAMWORKER_%s_URL)", vendor, strings.ToUpper(vendor)),
		}
	})
}

// Dispatch returns a Handler that runs each event on the client of its target, or rejects it
// as target_not_configured; with no targets at all, every event of vendor is rejected.
func Dispatch[C Handler](vendor string, targets Targets[C]) Handler {
	if len(targets) == 0 {
		return NotConfigured(vendor)
	}
	return HandlerFunc(func(ctx context.Context, ev events.Event) (Outcome, error) {
		c, err := targets.Pick(ev)
		if err != nil {
			return Outcome{}, err
		}
		return c.Handle(ctx, ev)
	})
}

// Targets picks the client for an event's target.
type Targets[C any] map[string]C

// Pick returns the client of ev.Target, or a target_not_configured rejection.
func (t Targets[C]) Pick(ev events.Event) (C, error) {
	c, ok := t[ev.Target]
	if !ok {
		var zero C
		return zero, &events.Rejection{
			Code:    events.CodeTargetNotConfigured,
			Message: fmt.Sprintf("%s target %q is not configured", Vendor(ev.Action), ev.Target),
		}
	}
	return c, nil
}
