package worker_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pamworker/pamworker/broker"
	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
	"github.com/pamworker/pamworker/handlers/element"
	"github.com/pamworker/pamworker/handlers/segura"
	"github.com/pamworker/pamworker/sandbox"
	"github.com/pamworker/pamworker/worker"
)

// bundle is what setup starts: a real nats-server with JetStream, the vendor simulators behind
// httptest servers, and a running worker.
type bundle struct {
	ns      *server.Server
	store   string // the server's JetStream directory
	nc      *nats.Conn
	js      jetstream.JetStream
	w       *worker.Worker
	reg     *prometheus.Registry
	segura  *sandbox.Segura
	element *sandbox.Element
	seguraHTTP,
	elementHTTP *recorder
	seguraURL string

	mu      sync.Mutex
	results map[string][]events.Result
	arrived chan struct{}
	stop    func()
}

type options struct {
	cfg       worker.Config
	rate      float64 // API requests per second per target (default 50, as the worker's)
	noElement bool
	noSegura  bool
}

func fastConfig() worker.Config {
	return worker.Config{
		Concurrency:      8,
		AttemptTimeout:   2 * time.Second,
		MaxDeliveries:    3,
		RetryInitial:     10 * time.Millisecond,
		RetryMaxInterval: 50 * time.Millisecond,
		RetryMaxElapsed:  400 * time.Millisecond,
		RedeliveryDelay:  100 * time.Millisecond,
		ProbeInterval:    150 * time.Millisecond,
		AckWait:          3 * time.Second,
		ShutdownTimeout:  5 * time.Second,
		BreakerCooldown:  200 * time.Millisecond,
		BreakerMaxCool:   time.Second,
	}
}

func setup(t *testing.T, o options) *bundle {
	t.Helper()
	store := t.TempDir()
	ns, err := broker.Start(broker.Embedded{Listen: "127.0.0.1:-1", DataDir: store})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewJSONHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	nc, err := broker.Connect(ns.ClientURL(), "test", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)

	b := &bundle{ns: ns, store: store, nc: nc, results: map[string][]events.Result{}, arrived: make(chan struct{}, 1)}
	t.Cleanup(func() { b.ns.Shutdown(); b.ns.WaitForShutdown() })
	b.js, _ = jetstream.New(nc)
	b.segura = sandbox.NewSegura(sandbox.SeguraOptions{ClientID: "pamworker", ClientSecret: "s3cret-canary"})
	b.element = sandbox.NewElement(sandbox.ElementOptions{Username: "admin", Password: "pw-canary"})
	b.seguraHTTP, b.elementHTTP = newRecorder(b.segura), newRecorder(b.element)
	ss, es := httptest.NewServer(b.seguraHTTP), httptest.NewServer(b.elementHTTP)
	b.seguraURL = ss.URL
	t.Cleanup(ss.Close)
	t.Cleanup(es.Close)

	b.reg = prometheus.NewRegistry()
	m := worker.NewMetrics(b.reg)
	hc := pacedClient(m, cmp.Or(o.rate, 50))
	reg := handlers.NewRegistry()
	var targets []string
	st, et := handlers.Targets[*segura.Client]{}, handlers.Targets[*element.Client]{}
	if !o.noSegura {
		c, err := segura.New(segura.Config{BaseURL: ss.URL, ClientID: "pamworker", ClientSecret: handlers.NewSecret("s3cret-canary"), HTTPClient: hc})
		if err != nil {
			t.Fatal(err)
		}
		st["default"] = c
		targets = append(targets, "segura/default")
	}
	if !o.noElement {
		c, err := element.New(element.Config{URL: es.URL + "/json-rpc/12.0", Username: "admin", Password: handlers.NewSecret("pw-canary"), HTTPClient: hc})
		if err != nil {
			t.Fatal(err)
		}
		et["default"] = c
		targets = append(targets, "element/default")
	}
	if err := segura.Register(reg, st); err != nil {
		t.Fatal(err)
	}
	if err := element.Register(reg, et); err != nil {
		t.Fatal(err)
	}

	cfg := o.cfg
	if cfg.Concurrency == 0 {
		cfg = fastConfig()
	}
	cfg.Targets = targets
	b.w, err = worker.New(nc, reg, m, log, func() string { return ulid.Make().String() }, cfg)
	if err != nil {
		t.Fatal(err)
	}

	// Results are collected from a core subscription: every JetStream publish reaches it too.
	sub, err := nc.Subscribe("results.>", func(msg *nats.Msg) {
		var r events.Result
		if err := json.Unmarshal(msg.Data, &r); err != nil {
			t.Errorf("unreadable result %q: %v", msg.Data, err)
			return
		}
		b.mu.Lock()
		b.results[r.EventID] = append(b.results[r.EventID], r)
		b.mu.Unlock()
		select {
		case b.arrived <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.w.Run(ctx) }()
	var once sync.Once
	b.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("worker.Run: %v", err)
			}
		})
	}
	t.Cleanup(b.stop)
	waitFor(t, 10*time.Second, "worker ready", func() bool { ok, _ := b.w.Ready(); return ok })
	return b
}

// pacedClient is the vendor client the worker's wiring builds: rate-limited per target where
// requests leave, each request bounded by the attempt timeout, every attempt counted.
func pacedClient(m *worker.Metrics, perSecond float64) *http.Client {
	pacer := handlers.NewPacer(perSecond)
	return handlers.NewHTTPClient(handlers.ClientOptions{Timeout: 10 * time.Second,
		Wrap: func(rt http.RoundTripper) http.RoundTripper { return pacer.Wrap(m.InstrumentTransport(rt)) }})
}

// startReplica starts a second worker on the same NATS server and vendor simulators, as
// another replica of the deployment would be.
func (b *bundle) startReplica(t *testing.T, cfg worker.Config, seguraURL string) {
	t.Helper()
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	nc, err := broker.Connect(b.ns.ClientURL(), "replica", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	m := worker.NewMetrics(prometheus.NewRegistry())
	hc := pacedClient(m, 10000)
	c, err := segura.New(segura.Config{BaseURL: seguraURL, ClientID: "pamworker", ClientSecret: handlers.NewSecret("s3cret-canary"), HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	reg := handlers.NewRegistry()
	if err := segura.Register(reg, handlers.Targets[*segura.Client]{"default": c}); err != nil {
		t.Fatal(err)
	}
	if err := element.Register(reg, nil); err != nil {
		t.Fatal(err)
	}
	cfg.Targets = []string{"segura/default", "element/default"}
	w, err := worker.New(nc, reg, m, log, func() string { return ulid.Make().String() }, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, 10*time.Second, "replica ready", func() bool { ok, _ := w.Ready(); return ok })
}

// restartBroker stops the NATS server and starts it again on the same port and store, as an
// operator's restart or a crash would.
func (b *bundle) restartBroker(t *testing.T, down time.Duration) {
	t.Helper()
	addr := b.ns.Addr().String()
	b.ns.Shutdown()
	b.ns.WaitForShutdown()
	time.Sleep(down)
	ns, err := broker.Start(broker.Embedded{Listen: addr, DataDir: b.store})
	if err != nil {
		t.Fatal(err)
	}
	b.ns = ns
}

// publish sends one event through JetStream; msgID may be empty.
func (b *bundle) publish(t *testing.T, subject, payload, msgID string) {
	t.Helper()
	msg := &nats.Msg{Subject: subject, Data: []byte(payload), Header: nats.Header{}}
	if msgID != "" {
		msg.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	if _, err := b.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// send publishes payload with a fresh event_id and returns the id.
func (b *bundle) send(t *testing.T, subject, payload string) string {
	t.Helper()
	id := ulid.Make().String()
	var obj map[string]any
	if err := json.Unmarshal([]byte(payload), &obj); err != nil {
		t.Fatal(err)
	}
	obj["event_id"] = id
	raw, _ := json.Marshal(obj)
	b.publish(t, subject, string(raw), "")
	return id
}

// result waits for the result of id.
func (b *bundle) result(t *testing.T, id string) events.Result {
	t.Helper()
	var r events.Result
	waitFor(t, 20*time.Second, "result of "+id, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		if rs := b.results[id]; len(rs) > 0 {
			r = rs[0]
			return true
		}
		return false
	})
	return r
}

func (b *bundle) resultCount(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.results[id])
}

// streamResults counts the results of id kept in the results stream.
func (b *bundle) streamResults(t *testing.T, action, id string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := b.js.OrderedConsumer(ctx, "PAMWORKER_RESULTS", jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.ResultSubject(action)},
	})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for pending := info.NumPending; pending > 0; pending-- {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(msg.Data()), `"event_id":"`+id+`"`) {
			n++
		}
	}
	return n
}

// metric returns the value of a counter or gauge with the given labels (0 if absent).
func (b *bundle) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := b.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if matches(m, labels) {
				switch {
				case m.Counter != nil:
					return m.Counter.GetValue()
				case m.Gauge != nil:
					return m.Gauge.GetValue()
				}
			}
		}
	}
	return 0
}

func matches(m *dto.Metric, labels map[string]string) bool {
	have := map[string]string{}
	for _, lp := range m.GetLabel() {
		have[lp.GetName()] = lp.GetValue()
	}
	for k, v := range labels {
		if have[k] != v {
			return false
		}
	}
	return true
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// recorder wraps a vendor simulator to note when each request arrived, how many ran at once,
// and per path the order of methods and the most that ran at once.
type recorder struct {
	h       http.Handler
	mu      sync.Mutex
	times   []time.Time
	cur     atomic.Int64
	maxSeen atomic.Int64
	byPath  map[string][]string // path → methods, in arrival order
	curPath map[string]int
	maxPath map[string]int
	hang    map[string]chan struct{} // path → closed when calls to it may go on
}

// hangOn makes every call to path hang until the returned function is called.
func (r *recorder) hangOn(path string) (release func()) {
	ch := make(chan struct{})
	r.mu.Lock()
	if r.hang == nil {
		r.hang = map[string]chan struct{}{}
	}
	r.hang[path] = ch
	r.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

func newRecorder(h http.Handler) *recorder {
	return &recorder{h: h, byPath: map[string][]string{}, curPath: map[string]int{}, maxPath: map[string]int{}}
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path != sandbox.SeguraTokenPath {
		path := req.URL.Path
		r.mu.Lock()
		r.times = append(r.times, time.Now())
		r.byPath[path] = append(r.byPath[path], req.Method)
		r.curPath[path]++
		r.maxPath[path] = max(r.maxPath[path], r.curPath[path])
		hang := r.hang[path]
		r.mu.Unlock()
		if hang != nil {
			select {
			case <-hang:
			case <-req.Context().Done():
			}
		}
		defer func() { r.mu.Lock(); r.curPath[path]--; r.mu.Unlock() }()
		n := r.cur.Add(1)
		defer r.cur.Add(-1)
		for {
			m := r.maxSeen.Load()
			if n <= m || r.maxSeen.CompareAndSwap(m, n) {
				break
			}
		}
	}
	r.h.ServeHTTP(w, req)
}

func (r *recorder) arrivals() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Time(nil), r.times...)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func jetstreamMsgID(id string) jetstream.PublishOpt { return jetstream.WithMsgID(id) }

func jsonOf(v any) string {
	raw, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprint(err))
	}
	return string(raw)
}
