package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// baselineMode is the hidden first argument that turns the bench binary into the baseline
// worker, so that the baseline runs as its own process like pamworker does.
const baselineMode = "baseline-worker"

// baseline is the minimal hand-written worker pamworker is compared with: a durable pull
// consumer, a shared keep-alive HTTP client, no retries, no idempotency, results published
// with core NATS. Two optional steps add the durable parts of pamworker's pipeline, to measure
// what they cost on their own (see -workers): results published through JetStream and awaited,
// and a ledger (a key-value read before the call, a write pipelined with the result).
type baseline struct {
	nc        *nats.Conn
	js        jetstream.JetStream
	hc        *http.Client
	apiURL    string
	jsResults bool
	ledger    jetstream.KeyValue // nil: no ledger
}

// runBaseline runs the baseline worker. It creates nothing in JetStream: the bench has created
// its streams, bucket and consumer. It writes "ready" on stdout once it is consuming, and stops
// on SIGTERM.
func runBaseline(args []string) error {
	fs := flag.NewFlagSet(baselineMode, flag.ContinueOnError)
	natsURL := fs.String("nats", "", "NATS URL")
	apiURL := fs.String("api", "", "Segura base URL")
	stream := fs.String("stream", "", "events stream")
	consumer := fs.String("consumer", "", "durable consumer")
	concurrency := fs.Int("concurrency", 32, "events processed at once")
	jsResults := fs.Bool("js-results", false, "publish results through JetStream and wait for the ack")
	bucket := fs.String("ledger", "", "key-value bucket of a ledger (implies -js-results)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	nc, err := nats.Connect(*natsURL, nats.Name("baseline"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	b := &baseline{nc: nc, js: js, apiURL: *apiURL, jsResults: *jsResults || *bucket != ""}
	b.hc = &http.Client{Transport: &http.Transport{
		MaxIdleConns:        *concurrency,
		MaxIdleConnsPerHost: *concurrency,
	}}
	if *bucket != "" {
		if b.ledger, err = js.KeyValue(ctx, *bucket); err != nil {
			return err
		}
	}
	cons, err := js.Consumer(ctx, *stream, *consumer)
	if err != nil {
		return err
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(*concurrency))
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, iter.Stop)
	fmt.Println("ready")

	sem := make(chan struct{}, *concurrency)
	var wg sync.WaitGroup
	for {
		msg, err := iter.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			break
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "baseline: next:", err)
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			b.handle(msg)
		}()
	}
	wg.Wait()
	return nc.Drain()
}

type baselineEvent struct {
	EventID      string `json:"event_id"`
	CredentialID int64  `json:"credential_id"`
}

type baselineResult struct {
	EventID string `json:"event_id"`
	Status  string `json:"status"`
}

func (b *baseline) handle(msg jetstream.Msg) {
	var ev baselineEvent
	status := "failed"
	err := json.Unmarshal(msg.Data(), &ev)
	key := ""
	if b.ledger != nil {
		sum := sha256.Sum256([]byte(ev.EventID))
		key = "done." + hex.EncodeToString(sum[:20])
		if e, err := b.ledger.Get(context.Background(), key); err == nil {
			b.publish(msg, ev.EventID, key, e.Value()) // a duplicate: answer with the recorded result
			return
		}
	}
	if err == nil {
		status = b.call(b.apiURL + "/api/pam/credential/" + strconv.FormatInt(ev.CredentialID, 10))
	}
	data, _ := json.Marshal(baselineResult{EventID: ev.EventID, Status: status})
	b.publish(msg, ev.EventID, key, data)
}

// publish sends the result (and records it under key, with a ledger) and acks the event.
func (b *baseline) publish(msg jetstream.Msg, eventID, key string, data []byte) {
	subject := "results." + msg.Subject()
	if !b.jsResults {
		if err := b.nc.Publish(subject, data); err != nil {
			fmt.Fprintln(os.Stderr, "baseline: publish:", err)
		}
		_ = msg.Ack()
		return
	}
	var futures []jetstream.PubAckFuture
	if key != "" {
		f, err := b.js.PublishAsync("$KV."+b.ledger.Bucket()+"."+key, data)
		if err != nil {
			fmt.Fprintln(os.Stderr, "baseline: record:", err)
			return
		}
		futures = append(futures, f)
	}
	f, err := b.js.PublishMsgAsync(&nats.Msg{
		Subject: subject,
		Header:  nats.Header{jetstream.MsgIDHeader: []string{"result:" + eventID}},
		Data:    data,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "baseline: publish:", err)
		return
	}
	timeout := time.After(10 * time.Second)
	for _, f := range append(futures, f) {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			fmt.Fprintln(os.Stderr, "baseline: publish:", err)
			return
		case <-timeout:
			fmt.Fprintln(os.Stderr, "baseline: publish: no ack in 10s")
			return
		}
	}
	_ = msg.Ack()
}

func (b *baseline) call(url string) string {
	req, err := http.NewRequest(http.MethodDelete, url, nil)
	if err != nil {
		return "failed"
	}
	req.Header.Set("Authorization", "Bearer "+fakeToken)
	resp, err := b.hc.Do(req)
	if err != nil {
		return "failed"
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body) // read to the end so the connection is reused
	if resp.StatusCode != http.StatusOK {
		return "failed"
	}
	return "succeeded"
}
