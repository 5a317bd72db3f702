// Package ingress is pamworker's HTTP front door for SOAR and SIEM tools, none of which speaks
// NATS: POST /v1/actions/{subject} takes exactly the event payload the contract defines for the
// subject (or a CloudEvents event, structured or binary), publishes it through JetStream once
// the same strict validation as the worker's passes, and answers with the event's result when
// it comes within the wait the caller allows, or 202 and where to poll for it. It holds no
// state: results are read from NATS, the ledger and the results stream.
package ingress

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/guard"
	"github.com/pamworker/pamworker/handlers"
	"github.com/pamworker/pamworker/telemetry"
	"github.com/pamworker/pamworker/worker"
)

// Config is the ingress's settings.
type Config struct {
	MaxEventBytes int           // larger bodies are refused 413
	MaxWait       time.Duration // longest wait for a result before answering 202
	Rate          float64       // requests per second per caller
	Callers       []Caller
	NewID         func() string // event ids for events that carry none
}

// Server serves the ingress.
type Server struct {
	cfg     Config
	nc      *nats.Conn
	js      jetstream.JetStream
	log     *slog.Logger
	callers []*caller
	results *watcher
	m       *metrics
	mux     *http.ServeMux
}

// New returns the ingress over nc. Its metrics register with reg.
func New(nc *nats.Conn, cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, nc: nc, js: js, log: log, m: newMetrics(reg)}
	for _, c := range cfg.Callers {
		x := &caller{Caller: c, limiter: rate.NewLimiter(rate.Limit(cfg.Rate), max(1, int(cfg.Rate)))}
		if c.TokenSHA256 != "" {
			if x.hash, err = hexDecode(c.TokenSHA256); err != nil {
				return nil, fmt.Errorf("ingress caller %q: token_sha256: %w", c.Name, err)
			}
		}
		s.callers = append(s.callers, x)
	}
	if s.results, err = newWatcher(nc); err != nil {
		return nil, err
	}
	s.mux = http.NewServeMux()
	for _, rt := range routes {
		h := map[string]http.HandlerFunc{"postAction": s.postAction, "getResult": s.getResult, "openapi": s.openapi}[rt.operation]
		s.mux.Handle(rt.method+" "+rt.path, s.counted(rt, h))
	}
	return s, nil
}

// Handler is the ingress's HTTP handler, traced when tracing is on.
func (s *Server) Handler() http.Handler { return telemetry.HTTPHandler(s.mux, "pamworker ingress") }

// Close stops following results.
func (s *Server) Close() { s.results.close() }

// statusOf maps a result to the HTTP status a playbook branches on (docs/soar.md).
func statusOf(status events.Status) int {
	switch status {
	case events.Succeeded:
		return http.StatusOK
	case events.Rejected:
		return http.StatusUnprocessableEntity
	}
	return http.StatusBadGateway // failed: the vendor refused, or retries ran out
}

// postAction is POST /v1/actions/{subject}.
func (s *Server) postAction(w http.ResponseWriter, r *http.Request) {
	subject := r.PathValue("subject")
	c := s.admit(w, r)
	if c == nil {
		return
	}
	if !events.IsAction(subject) {
		problem(w, http.StatusNotFound, "unknown action", fmt.Sprintf("no action is bound to %q; the actions are %s", subject, strings.Join(events.Actions(), ", ")))
		return
	}
	if !c.may(subject) {
		problem(w, http.StatusForbidden, "subject not allowed", fmt.Sprintf("caller %q may not post %s", c.Name, subject))
		return
	}
	if !c.limiter.Allow() {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter(c.limiter)))
		problem(w, http.StatusTooManyRequests, "too many requests", fmt.Sprintf("caller %q is over its %g requests a second", c.Name, s.cfg.Rate))
		return
	}
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	signed := r.Header.Get(guard.HeaderSignature) != ""
	key := firstOf(r.Header.Get("Idempotency-Key"), r.Header.Get(guard.HeaderID))
	gen := ""
	ev, err := events.Decode(subject, body, key, s.cfg.MaxEventBytes, func() string { gen = s.cfg.NewID(); return gen })
	var rej *events.Rejection
	if errors.As(err, &rej) {
		code := http.StatusUnprocessableEntity
		if strings.Contains(rej.Message, "not valid UTF-8") || strings.Contains(rej.Message, "is not a JSON object") {
			code = http.StatusBadRequest
		}
		refuse(w, code, ev, c, rej)
		return
	}
	if key != "" && ev.ID != key {
		refuse(w, http.StatusUnprocessableEntity, ev, c, &events.Rejection{Code: events.CodeInvalidEvent,
			Message: fmt.Sprintf("the Idempotency-Key (or webhook-id) %q is not the event's id %q; give one id", key, ev.ID)})
		return
	}
	if ev.RequestedBy == "" && !signed {
		// The caller is who asks. (A signed body is sent as it was signed.)
		if body, err = withRequester(body, c.Name); err == nil {
			ev.RequestedBy = c.Name
		}
	}
	msg := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{jetstream.MsgIDHeader: []string{ev.ID}}}
	for _, h := range []string{guard.HeaderID, guard.HeaderTimestamp, guard.HeaderSignature} {
		if v := r.Header.Get(h); v != "" {
			msg.Header.Set(h, v)
		}
	}
	ctx, span := r.Context(), trace.SpanFromContext(r.Context())
	if telemetry.Enabled() {
		ctx, span = telemetry.Tracer().Start(ctx, "send "+subject, trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(semconv.MessagingSystemKey.String("nats"), semconv.MessagingDestinationName(subject),
				semconv.MessagingOperationTypeSend, semconv.MessagingOperationName("send"), semconv.MessagingMessageID(ev.ID)))
	}
	telemetry.Inject(ctx, msg.Header) // the worker's span continues this trace (or the caller's, untraced)

	digest := ev.Digest()
	wt := s.results.expect(ev.ID, digest)
	defer s.results.cancel(wt)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	ack, err := s.js.PublishMsg(pctx, msg)
	cancel()
	if err != nil {
		span.SetStatus(codes.Error, "not stored")
	}
	if telemetry.Enabled() {
		span.End() // the send, not the wait for the result
	}
	if err != nil {
		s.log.Warn("ingress: event could not be published", "event_id", ev.ID, "action", subject, "error", err)
		w.Header().Set("Retry-After", "2")
		problem(w, http.StatusServiceUnavailable, "not queued", "the event could not be stored in JetStream; nothing was done: send it again")
		return
	}
	s.log.Info("ingress: event queued", "event_id", ev.ID, "action", subject, "caller", c.Name, "sequence", ack.Sequence, "duplicate", ack.Duplicate)
	if ack.Duplicate {
		// The stream holds an event with this id already: the same one retried (answer with its
		// result), or another one (a conflict, never answered as done).
		raw, recorded, err := worker.RecordedResult(r.Context(), s.js, ev.ID)
		if err == nil && raw == nil {
			recorded, err = s.storedDigest(r.Context(), ack.Sequence, ev.ID) // not answered yet
		}
		if err == nil && recorded != "" && recorded != digest {
			refuse(w, http.StatusUnprocessableEntity, ev, c, &events.Rejection{Code: events.CodeIDConflict, Message: fmt.Sprintf(
				"event id %q is already the id of another event; this one was not accepted: give it an id of its own", ev.ID)})
			return
		}
		if raw != nil {
			answer(w, raw, ev.ID)
			return
		}
	}
	select {
	case raw := <-wt.ch:
		answer(w, raw, ev.ID)
		return
	case <-time.After(preferWait(r, s.cfg.MaxWait)):
	case <-r.Context().Done():
		return
	}
	s.pending(w, r, ev, ack.Sequence)
}

// pending answers for an event queued without a result yet: 503 if its target is down (it
// waits for the target's return), else 202; both say where to poll.
func (s *Server) pending(w http.ResponseWriter, r *http.Request, ev events.Event, seq uint64) {
	p := pendingBody{EventID: ev.ID, Status: "pending", Location: "/v1/results/" + url.PathEscape(ev.ID)}
	if seq > 0 {
		p.Location += "?seq=" + strconv.FormatUint(seq, 10)
	}
	code, retry := http.StatusAccepted, "1"
	if ev.Action != "" {
		label := handlers.TargetLabel(ev.Action, ev.Target)
		if replicas, err := worker.Replicas(r.Context(), s.js, worker.DefaultTopology()); err == nil {
			if st, down := worker.TargetDown(replicas, label); down {
				code, retry = http.StatusServiceUnavailable, "5"
				p.Target, p.TargetState, p.Reason = label, st.State, st.Reason
			}
		}
	}
	w.Header().Set("Location", p.Location)
	w.Header().Set("Retry-After", retry)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Pamworker-Event-Id", ev.ID)
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(p)
}

// pendingBody is the answer while an event has no result: where to poll, and, when its target
// is down, which target and why.
type pendingBody struct {
	EventID     string `json:"event_id"`
	Status      string `json:"status"` // "pending"
	Location    string `json:"location"`
	Target      string `json:"target,omitempty"`
	TargetState string `json:"target_state,omitempty"` // refused, circuit_open
	Reason      string `json:"reason,omitempty"`
}

// getResult is GET /v1/results/{event_id}.
func (s *Server) getResult(w http.ResponseWriter, r *http.Request) {
	c := s.admit(w, r)
	if c == nil {
		return
	}
	id := r.PathValue("event_id")
	seq, _ := strconv.ParseUint(r.URL.Query().Get("seq"), 10, 64)
	raw, pending, err := s.lookup(r.Context(), id, seq)
	if pending != nil && !c.may(pending.Action) {
		pending, raw = nil, nil // not one of the caller's subjects: it learns nothing of it
	}
	switch {
	case err != nil:
		w.Header().Set("Retry-After", "2")
		problem(w, http.StatusServiceUnavailable, "not available", "the result could not be read from JetStream now: ask again")
	case raw != nil:
		var res events.Result
		if json.Unmarshal(raw, &res) == nil && !c.may(res.Action) {
			problem(w, http.StatusNotFound, "no such event", fmt.Sprintf("no event %q is known", id))
			return
		}
		answer(w, raw, id)
	case pending != nil:
		s.pending(w, r, *pending, seq)
	default:
		problem(w, http.StatusNotFound, "no such event", fmt.Sprintf("no event %q is known (the results are kept for %s)", id, worker.DefaultTopology().LedgerTTL))
	}
}

// admit authenticates r, answering 401 itself when it fails.
func (s *Server) admit(w http.ResponseWriter, r *http.Request) *caller {
	c, why := s.authenticate(r)
	if c == nil {
		s.m.authFailures.WithLabelValues(string(why)).Inc()
		s.log.Warn("ingress: request refused: authentication", "reason", string(why), "remote", r.RemoteAddr, "path", r.URL.Path)
		w.Header().Set("WWW-Authenticate", `Bearer realm="pamworker"`)
		problem(w, http.StatusUnauthorized, "unauthorized", "send Authorization: Bearer <token> (or a client certificate a caller is configured for)")
		return nil
	}
	return c
}

// readBody reads the event, refusing a body larger than MaxEventBytes without reading it all,
// and turns a CloudEvents event in binary mode (ce-* headers, the data as body) into the
// structured form the worker reads.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	limit := int64(s.cfg.MaxEventBytes)
	if r.ContentLength > limit {
		problem(w, http.StatusRequestEntityTooLarge, "event too large", fmt.Sprintf("the body is %d bytes, the limit is %d (PAMWORKER_MAX_EVENT_BYTES)", r.ContentLength, limit))
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		problem(w, http.StatusRequestEntityTooLarge, "event too large", fmt.Sprintf("the body is larger than %d bytes (PAMWORKER_MAX_EVENT_BYTES)", limit))
		return nil, false
	}
	if err != nil {
		problem(w, http.StatusBadRequest, "unreadable body", err.Error())
		return nil, false
	}
	media, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if spec := r.Header.Get("ce-specversion"); spec != "" {
		env := events.Object{}
		for _, attr := range []string{"specversion", "id", "type", "source", "time", "subject"} {
			if v := r.Header.Get("ce-" + attr); v != "" {
				raw, _ := json.Marshal(v)
				env = env.Set(attr, raw)
			}
		}
		if !json.Valid(body) {
			problem(w, http.StatusBadRequest, "unreadable body", "a CloudEvents event in binary mode carries its data as a JSON body")
			return nil, false
		}
		return env.Set("data", body).Marshal(), true
	}
	switch media {
	case "", "application/json", "application/cloudevents+json", "text/plain",
		"application/x-www-form-urlencoded": // curl -d's default; the body must still be the JSON event
	default:
		problem(w, http.StatusUnsupportedMediaType, "unsupported media type", "send application/json, application/cloudevents+json, or a CloudEvents event in binary mode")
		return nil, false
	}
	return body, true
}

// withRequester sets requested_by in the payload (inside data for a CloudEvents event).
func withRequester(body []byte, name string) ([]byte, error) {
	obj, err := events.ParseObject(body)
	if err != nil {
		return body, err
	}
	v, _ := json.Marshal(name)
	if raw, ce := obj.Get("data"); ce {
		if _, spec := obj.Get("specversion"); spec {
			data, err := events.ParseObject(raw)
			if err != nil {
				return body, err
			}
			return obj.Set("data", data.Set("requested_by", v).Marshal()).Marshal(), nil
		}
	}
	return obj.Set("requested_by", v).Marshal(), nil
}

// preferWait is how long the caller lets the ingress wait for the result: RFC 7240's Prefer:
// wait=N, at most max; respond-async asks for none.
func preferWait(r *http.Request, maxWait time.Duration) time.Duration {
	wait := maxWait
	for _, v := range r.Header.Values("Prefer") {
		for _, pref := range strings.Split(v, ",") {
			pref = strings.ToLower(strings.TrimSpace(pref))
			if pref == "respond-async" {
				return 0
			}
			if n, ok := strings.CutPrefix(pref, "wait="); ok {
				if secs, err := strconv.Atoi(strings.TrimSpace(n)); err == nil && secs >= 0 {
					wait = min(time.Duration(secs)*time.Second, maxWait)
				}
			}
		}
	}
	return wait
}

// answer sends a result with the status it maps to.
func answer(w http.ResponseWriter, raw []byte, id string) {
	var res events.Result
	_ = json.Unmarshal(raw, &res)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Pamworker-Event-Id", id)
	w.WriteHeader(statusOf(res.Status))
	_, _ = w.Write(raw)
}

// refuse answers an event refused before it was queued with a result-shaped body, so that a
// playbook branches on it as on any result.
func refuse(w http.ResponseWriter, code int, ev events.Event, c *caller, rej *events.Rejection) {
	if ev.RequestedBy == "" {
		ev.RequestedBy = c.Name
	}
	res := events.NewResult(ev)
	res.Status, res.Message = events.Rejected, rej.Message
	res.Error = &events.ErrorInfo{Code: rej.Code, Message: rej.Message}
	res.FinishedAt = events.Timestamp(time.Now())
	data, _ := res.Marshal()
	w.Header().Set("Content-Type", "application/json")
	if ev.ID != "" {
		w.Header().Set("Pamworker-Event-Id", ev.ID)
	}
	w.WriteHeader(code)
	_, _ = w.Write(data)
}

// problem answers an RFC 9457 problem document.
func problem(w http.ResponseWriter, code int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"type": "about:blank", "title": title, "status": code, "detail": detail})
}

func firstOf(vs ...string) string {
	for _, v := range vs {
		if v = strings.TrimSpace(v); v != "" {
			return v
		}
	}
	return ""
}
