package segura

import (
	"context"
	"fmt"
	"net/http"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
)

// Plan returns the API call an event maps to, without making it.
func (c *Client) Plan(ev events.Event) (Request, operation, error) {
	var (
		method, path, seg string
		op                operation
		err               error
	)
	switch ev.Action {
	case events.SessionDrop:
		method, path, seg, op = http.MethodDelete, "/pam/session/drop", ev.SessionID, opSessionDrop
	case events.CredentialDisable:
		method, path, op = http.MethodDelete, "/pam/credential", opDisable
		seg, err = credentialSegment(ev.CredentialID, ev.Username, ev.Hostname)
	case events.CredentialEnable:
		method, path, op = http.MethodPut, "/pam/credential", opEnable
		seg, err = credentialSegment(ev.CredentialID, "", "")
	case events.CustodyRelease:
		method, path, op = http.MethodDelete, "/pam/credential/custody", opCustodyRelease
		seg, err = credentialSegment(ev.CredentialID, "", "")
	default:
		return Request{}, 0, fmt.Errorf("segura: no API call for %q", ev.Action)
	}
	if err != nil {
		return Request{}, 0, err
	}
	u, err := endpoint(c.root, path, seg)
	if err != nil {
		return Request{}, 0, err
	}
	return Request{Method: method, URL: u, route: route(c.root, path, 1)}, op, nil
}

// Handle performs ev on this instance. A dry run reports the exact request and sends nothing.
func (c *Client) Handle(ctx context.Context, ev events.Event) (handlers.Outcome, error) {
	req, op, err := c.Plan(ev)
	if err != nil {
		// Decoding already validated the ids; reaching here means an event that bypassed it.
		return handlers.Outcome{}, &events.Rejection{Code: events.CodeInvalidEvent, Message: err.Error()}
	}
	var owner string
	if ev.Action == events.SessionDrop && c.ownerCheck != nil {
		// A read that grants nothing and reveals no secret, so a dry run makes it too.
		if owner, err = c.checkOwner(ctx, ev); err != nil {
			return handlers.Outcome{}, err
		}
	}
	var out handlers.Outcome
	if ev.DryRun {
		out = handlers.Outcome{
			Message: fmt.Sprintf("dry run: would send %s %s", req.Method, req.URL),
			Details: map[string]any{"request": Request{Method: req.Method, URL: req.URL}},
		}
	} else if out, err = c.do(ctx, op, req); err != nil {
		return out, err
	}
	if owner != "" {
		if out.Details == nil {
			out.Details = map[string]any{}
		}
		out.Details["session_owner"] = owner
	}
	return out, nil
}

// Register adds the handlers of Segura's actions to r, dispatching on the event's target. With
// no targets, every Segura action is rejected as target_not_configured.
func Register(r *handlers.Registry, targets handlers.Targets[*Client]) error {
	h := handlers.Dispatch("segura", targets)
	for _, a := range []string{events.SessionDrop, events.CredentialDisable, events.CredentialEnable, events.CustodyRelease} {
		if err := r.Add(a, h); err != nil {
			return err
		}
	}
	return nil
}
