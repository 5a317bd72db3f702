package element

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
)

// sessionsParams are the parameters of DeleteAuthSessionsByUsername and
// ListAuthSessionsByUsername.
type sessionsParams struct {
	Username   string `json:"username"`
	AuthMethod string `json:"authMethod,omitempty"`
}

// sessionsResult is their result. Sessions are kept as the cluster sent them.
type sessionsResult struct {
	Sessions []json.RawMessage `json:"sessions"`
}

// Handle performs ev on this cluster. A dry run lists the sessions that would be deleted with
// ListAuthSessionsByUsername, the read-only twin of the delete call.
func (c *Client) Handle(ctx context.Context, ev events.Event) (handlers.Outcome, error) {
	if ev.Action != events.ElementSessionsDelete {
		return handlers.Outcome{}, &events.Rejection{Code: events.CodeUnknownAction, Message: "element: no call for " + ev.Action}
	}
	params := sessionsParams{Username: ev.Username, AuthMethod: ev.AuthMethod}
	method := "DeleteAuthSessionsByUsername"
	if ev.DryRun {
		method = "ListAuthSessionsByUsername"
	}
	var res sessionsResult
	status, err := c.call(ctx, method, params, &res)
	if err != nil {
		return handlers.Outcome{}, err
	}
	if res.Sessions == nil {
		res.Sessions = []json.RawMessage{}
	}
	n := len(res.Sessions)
	out := handlers.Outcome{
		HTTPStatus: status,
		Details:    map[string]any{"method": method, "sessions": res.Sessions, "count": n},
	}
	switch {
	case ev.DryRun:
		out.Message = fmt.Sprintf("dry run: would delete %d auth session(s)", n)
	case n == 0:
		out.Message, out.Noop = "no auth sessions to delete", true
	default:
		out.Message = fmt.Sprintf("deleted %d auth session(s)", n)
	}
	return out, nil
}

// Register adds the Element action's handler to r, dispatching on the event's target.
func Register(r *handlers.Registry, targets handlers.Targets[*Client]) error {
	h := handlers.Dispatch("element", targets)
	return r.Add(events.ElementSessionsDelete, h)
}
