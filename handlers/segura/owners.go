package segura

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
)

// CodeSessionNotListed is the rejection of a drop whose session Segura does not list, when
// session owners are protected: its owner cannot be checked, so nothing is dropped.
const CodeSessionNotListed = "session_not_listed"

// CodeSessionOwnerUnknown is the rejection of a drop whose session is listed without a user.
const CodeSessionOwnerUnknown = "session_owner_unknown"

// OwnerCheck decides, once a session's owner is known, whether the session may be dropped:
// nil, or the rejection to answer with.
type OwnerCheck func(sessionID, owner string) *events.Rejection

// owners finds who opened a remote session, from Segura's "List all remote sessions"
// (GET {prefix}/pam/session/remotesessions). A session's owner never changes, so the last list
// answers every session it holds; a session missing from it is looked up again only in a list
// fetched after the question was asked. One fetch runs at a time, a burst of drops shares it,
// and lists are fetched at most once per minRefresh: Segura warns the list of a large
// installation can take minutes, and a flood of drops of sessions it does not hold (stale ids,
// or a hostile publisher's) must not turn into a flood of full reads.
type owners struct {
	sem        chan struct{}     // held while reading or refreshing the fields below
	byID       map[string]string // session_id -> user, from the last list
	fetched    time.Time         // when the request for that list was sent
	tried      time.Time         // when the last request was sent, answered or not
	minRefresh time.Duration
}

// minListRefresh is the shortest time between two reads of the session list: a session the
// last list lacks waits at most this long for the next read, which every such session shares.
const minListRefresh = 2 * time.Second

func newOwners(minRefresh time.Duration) *owners {
	return &owners{sem: make(chan struct{}, 1), minRefresh: minRefresh}
}

// sessionOwner returns who opened session id, and whether Segura lists it at all.
func (c *Client) sessionOwner(ctx context.Context, id string) (owner string, listed bool, err error) {
	o := c.owners
	asked := time.Now()
	for {
		select {
		case o.sem <- struct{}{}:
		case <-ctx.Done():
			return "", false, handlers.TransportError(ctx, ctx.Err())
		}
		if owner, ok := o.byID[id]; ok {
			<-o.sem
			return owner, true, nil
		}
		if o.fetched.After(asked) {
			<-o.sem
			return "", false, nil
		}
		wait := time.Until(o.tried.Add(o.minRefresh))
		if wait <= 0 {
			break // this caller fetches, holding sem
		}
		<-o.sem
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return "", false, handlers.TransportError(ctx, ctx.Err())
		}
	}
	defer func() { <-o.sem }()
	start := time.Now()
	o.tried = start
	list, err := c.listSessions(ctx)
	if err != nil {
		return "", false, err
	}
	o.byID, o.fetched = list, start
	owner, listed = list[id]
	return owner, listed, nil
}

// listedSession is the part of a session list entry the owner check needs. One version of the
// vendor's documentation shows the list nested in an envelope of its own, so entries may hold
// a list again.
type listedSession struct {
	SessionID string          `json:"session_id"`
	User      string          `json:"user"`
	Nested    []listedSession `json:"remote_sessions"`
}

// listSessions fetches every remote session Segura lists and maps its session_id to its user.
func (c *Client) listSessions(ctx context.Context) (map[string]string, error) {
	u, err := endpoint(c.root, "/pam/session/remotesessions")
	if err != nil {
		return nil, err
	}
	_, body, err := c.call(ctx, opSessionList, Request{Method: http.MethodGet, URL: u, route: route(c.root, "/pam/session/remotesessions", 0)}, maxSessionList)
	if err != nil {
		return nil, err
	}
	var reply struct {
		Sessions *[]listedSession `json:"remote_sessions"`
	}
	if err := json.Unmarshal(body, &reply); err != nil || reply.Sessions == nil {
		msg := "the remote session list is not a Segura session list"
		if len(body) >= maxSessionList {
			// Cut at the limit: retrying would cut it again.
			return nil, &handlers.PermanentError{VendorError: handlers.VendorError{Code: "session_list_too_large",
				Message:    fmt.Sprintf("the remote session list is larger than %d MiB; session owners cannot be checked", maxSessionList>>20),
				HTTPStatus: http.StatusOK}}
		}
		return nil, &handlers.RetryableError{VendorError: handlers.VendorError{Code: "unexpected_reply", Message: msg,
			HTTPStatus: http.StatusOK}, Reason: handlers.ReasonServer}
	}
	m := map[string]string{}
	var walk func([]listedSession)
	walk = func(list []listedSession) {
		for _, s := range list {
			if s.SessionID != "" {
				m[s.SessionID] = s.User
			}
			walk(s.Nested)
		}
	}
	walk(*reply.Sessions)
	return m, nil
}

// checkOwner looks up who opened the session ev drops and applies the owner check. It returns
// the owner, for the result's details.
func (c *Client) checkOwner(ctx context.Context, ev events.Event) (string, error) {
	owner, listed, err := c.sessionOwner(ctx, ev.SessionID)
	if err != nil {
		return "", err
	}
	if !listed {
		return "", &events.Rejection{Code: CodeSessionNotListed, Message: fmt.Sprintf(
			"session %s is not in Segura's remote session list, so its owner cannot be checked against the protected session owners; nothing was dropped",
			ev.SessionID)}
	}
	if strings.TrimSpace(owner) == "" {
		// Fail closed: a list that stops naming users must not make every session droppable.
		return "", &events.Rejection{Code: CodeSessionOwnerUnknown, Message: fmt.Sprintf(
			"Segura lists session %s without a user, so its owner cannot be checked against the protected session owners; nothing was dropped",
			ev.SessionID)}
	}
	if rej := c.ownerCheck(ev.SessionID, owner); rej != nil {
		return owner, rej
	}
	return owner, nil
}
