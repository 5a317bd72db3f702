package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// soakRun runs pamworker alone at a steady rate for opts.soak and prints its memory and
// goroutines at the start, every minute and at the end, then checks that every event was
// answered. A leak shows as RSS, heap or goroutines that keep climbing at a constant load.
func (b *bench) soakRun(ctx context.Context) error {
	o := b.opts
	w, err := startPamworker(b.pamBin, b.natsURL, b.api.URL, o.concurrency, filepath.Join(b.tmp, "soak.log"), "")
	if err != nil {
		return err
	}
	defer w.stop()
	total := int(o.soak.Seconds() * float64(o.rate))
	c := &collector{prefix: "soak-", arrived: make([]time.Duration, total), done: make(chan struct{})}
	sub, err := b.sub.Subscribe("results.>", c.onResult)
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)

	fmt.Printf("soak: %d events/s for %v (%d events), concurrency %d\n\n", o.rate, o.soak, total, o.concurrency)
	fmt.Println("| at | published | answered | RSS MiB | peak RSS MiB | heap in use MiB | goroutines |")
	fmt.Println("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	sample := func(label string, published int) (rss int64, goroutines float64) {
		u, _ := w.usage()
		m := scrape(w.http)
		fmt.Printf("| %s | %d | %d | %.1f | %.1f | %.1f | %.0f |\n", label, published, c.count(), mb(u.rss), mb(u.peakRSS),
			m["go_memstats_heap_inuse_bytes"]/(1<<20), m["go_goroutines"])
		return u.rss, m["go_goroutines"]
	}
	startRSS, startG := sample("start", 0)

	tick := time.NewTicker(time.Second / time.Duration(o.rate))
	defer tick.Stop()
	minute := time.NewTicker(time.Minute)
	defer minute.Stop()
	begin := time.Now()
	for i := 0; i < total; {
		select {
		case <-tick.C:
			id := "soak-" + strconv.Itoa(i)
			msg := &nats.Msg{Subject: eventSubject, Header: nats.Header{jetstream.MsgIDHeader: []string{id}},
				Data: fmt.Appendf(nil, `{"event_id":%q,"credential_id":%d}`, id, 1+i%1000)}
			if _, err := b.js.PublishMsgAsync(msg); err != nil {
				return fmt.Errorf("publish %s: %w", id, err)
			}
			i++
		case <-minute.C:
			sample(time.Since(begin).Round(time.Second).String(), i)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	select {
	case <-c.done:
	case <-time.After(o.timeout):
		return fmt.Errorf("soak: %d of %d events answered within %v of the last publish", c.count(), total, o.timeout)
	}
	time.Sleep(2 * time.Second) // let the worker settle before the last sample
	endRSS, endG := sample("end", total)
	c.mu.Lock()
	dups, notOK := c.dups, c.notOK
	c.mu.Unlock()
	fmt.Printf("\nsoak: %d events, lost 0, duplicate results %d, not succeeded %d; RSS %.1f → %.1f MiB, goroutines %.0f → %.0f\n",
		total, dups, notOK, mb(startRSS), mb(endRSS), startG, endG)
	return nil
}

// scrape reads the untyped values of pamworker's /metrics (no labels) into a map.
func scrape(addr string) map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			out[name] = v
		}
	}
	return out
}
