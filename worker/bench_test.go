package worker_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pamworker/pamworker/broker"
	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
	"github.com/pamworker/pamworker/handlers/segura"
	"github.com/pamworker/pamworker/worker"
)

// BenchmarkPipeline measures the whole path in one process — JetStream publish, consume,
// ledger lookup, Segura call against an instant API, record, result, ack — so a CPU profile
// (go test -bench Pipeline -cpuprofile cpu.out ./worker/) shows where an event's time goes.
// bench/ measures the real binary against a baseline worker.
func BenchmarkPipeline(b *testing.B) {
	ns, err := broker.Start(broker.Embedded{Listen: "127.0.0.1:-1", DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Shutdown()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/iso/oauth2/token" {
			_, _ = io.WriteString(w, `{"access_token":"t","token_type":"Bearer","expires_in":3600}`)
			return
		}
		_, _ = io.WriteString(w, `{"code":200,"response":{"status":200,"message":"Credential successfully deactivated","error":false,"error_code":0,"detail":"","mensagem":"Credential successfully deactivated","erro":false,"cod_erro":0}}`)
	}))
	defer api.Close()

	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	nc, err := broker.Connect(ns.ClientURL(), "bench", log)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	m := worker.NewMetrics(prometheus.NewRegistry())
	hc := handlers.NewHTTPClient(handlers.ClientOptions{Timeout: 10 * time.Second, MaxIdleConns: 32, Wrap: m.InstrumentTransport})
	c, err := segura.New(segura.Config{BaseURL: api.URL, ClientID: "b", ClientSecret: handlers.NewSecret("b"), HTTPClient: hc})
	if err != nil {
		b.Fatal(err)
	}
	reg := handlers.NewRegistry()
	if err := segura.Register(reg, handlers.Targets[*segura.Client]{"default": c}); err != nil {
		b.Fatal(err)
	}
	w, err := worker.New(nc, reg, m, log, func() string { return ulid.Make().String() }, worker.Config{Concurrency: 32, Targets: []string{"segura/default"}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for ok, _ := w.Ready(); !ok; ok, _ = w.Ready() {
		time.Sleep(10 * time.Millisecond)
	}

	pub, err := broker.Connect(ns.ClientURL(), "bench-pub", log)
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	js, _ := jetstream.New(pub)
	var got atomic.Int64
	all := make(chan struct{})
	var want int64
	sub, err := pub.Subscribe("results.>", func(*nats.Msg) {
		if got.Add(1) == atomic.LoadInt64(&want) {
			close(all)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()

	atomic.StoreInt64(&want, int64(b.N))
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		id := fmt.Sprintf("bench-%d-%d", b.N, i)
		payload := fmt.Sprintf(`{"event_id":%q,"credential_id":%d}`, id, 1+i%1000)
		if _, err := js.PublishAsync(events.CredentialDisable, []byte(payload), jetstream.WithMsgID(id)); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-all:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%d of %d results", got.Load(), b.N)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}
