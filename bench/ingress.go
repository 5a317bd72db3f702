package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/ingress"
)

// The ingress scenario: what the HTTP ingress adds to an action, seen by its caller. One
// pamworker serves the ingress; callers, each waiting for one result before sending the
// next, run the same number of actions twice, alternating, -rounds times: through the ingress
// (POST, the result in the answer) and straight to NATS (a JetStream publish, then the result
// on results.>). API instant, so the ingress's own cost shows.

const (
	ingressActions = 3000
	ingressCallers = 32
)

type ingressRow struct {
	mode          string
	n             int
	elapsed       time.Duration
	p50, p99, max time.Duration
	cpu           time.Duration
	peakRSS       int64
}

func (b *bench) runIngress(ctx context.Context) error {
	if err := b.reset(ctx); err != nil {
		return err
	}
	b.api.set(faults{})
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	const token = "bench-ingress-token"
	profile := ""
	if b.opts.profileDir != "" {
		profile = filepath.Join(b.opts.profileDir, "ingress.cpu.pprof") // both paths, every round
	}
	p, err := startPamworker(b.pamBin, b.natsURL, b.api.URL, b.opts.concurrency, filepath.Join(b.tmp, "ingress.log"), profile,
		"PAMWORKER_INGRESS_ADDR="+addr, "PAMWORKER_INGRESS_RATE=10000",
		"PAMWORKER_INGRESS_CALLERS=bench:"+ingress.HashToken(token)+":>")
	if err != nil {
		return err
	}
	defer func() { _ = p.stop() }()
	if err := waitListening(addr); err != nil {
		return err
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: ingressCallers}}
	var rows []ingressRow
	modes := []string{"nats", "http"}
	if err := p.toggleProfile(false); err != nil {
		return err
	}
	for round := range max(1, b.opts.rounds) {
		for _, mode := range modes {
			logf("scenario ingress: %s, round %d (%d actions by %d callers, each waiting for its result)", mode, round+1, ingressActions, ingressCallers)
			row, err := b.ingressRound(ctx, p, hc, addr, token, mode, fmt.Sprintf("i%d-%s-", round, mode))
			if err != nil {
				return fmt.Errorf("ingress %s: %w%s", mode, err, p.logTail())
			}
			rows = append(rows, row)
		}
	}
	if err := p.toggleProfile(true); err != nil {
		return err
	}
	fmt.Println("| scenario | path | actions/s | p50 ms | p99 ms | max ms | worker CPU ms/10k | peak RSS MiB |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, r := range rows {
		fmt.Printf("| ingress | %s | %.0f | %.1f | %.1f | %.1f | %.0f | %.1f |\n", r.mode, float64(r.n)/r.elapsed.Seconds(),
			ms(r.p50), ms(r.p99), ms(r.max), ms(r.cpu)*10000/float64(r.n), mb(r.peakRSS))
	}
	median := func(mode string, f func(ingressRow) float64) float64 {
		var v []float64
		for _, r := range rows {
			if r.mode == mode {
				v = append(v, f(r))
			}
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	rate := func(r ingressRow) float64 { return float64(r.n) / r.elapsed.Seconds() }
	p50 := func(r ingressRow) float64 { return ms(r.p50) }
	p99 := func(r ingressRow) float64 { return ms(r.p99) }
	fmt.Printf("\ningress: through HTTP %.2fx the actions/s of NATS straight; p50 %.1f against %.1f ms, p99 %.1f against %.1f ms (medians of %d rounds)\n",
		median("http", rate)/median("nats", rate), median("http", p50), median("nats", p50), median("http", p99), median("nats", p99), max(1, b.opts.rounds))
	return b.reset(ctx)
}

// ingressRound runs ingressActions actions by ingressCallers callers, one mode.
func (b *bench) ingressRound(ctx context.Context, p *workerProc, hc *http.Client, addr, token, mode, prefix string) (ingressRow, error) {
	row := ingressRow{mode: mode, n: ingressActions}
	// Results on NATS, for the NATS mode: each caller waits on its event's channel.
	var mu sync.Mutex
	waiting := map[string]chan struct{}{}
	sub, err := b.sub.Subscribe("results.>", func(m *nats.Msg) {
		id, _ := resultFields(m.Data)
		mu.Lock()
		if ch, ok := waiting[id]; ok {
			close(ch)
			delete(waiting, id)
		}
		mu.Unlock()
	})
	if err != nil {
		return row, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)
	_ = b.sub.Flush()

	one := func(i int) (time.Duration, error) {
		id := prefix + strconv.Itoa(i)
		body := fmt.Sprintf(`{"event_id":%q,"credential_id":%d}`, id, 1+i%1000)
		start := time.Now()
		if mode == "http" {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/actions/"+eventSubject, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Idempotency-Key", id)
			resp, err := hc.Do(req)
			if err != nil {
				return 0, err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return 0, fmt.Errorf("POST %s: HTTP %d", id, resp.StatusCode)
			}
			return time.Since(start), nil
		}
		ch := make(chan struct{})
		mu.Lock()
		waiting[id] = ch
		mu.Unlock()
		if _, err := b.js.PublishMsg(ctx, &nats.Msg{Subject: eventSubject, Data: []byte(body),
			Header: nats.Header{jetstream.MsgIDHeader: []string{id}}}); err != nil {
			return 0, err
		}
		select {
		case <-ch:
			return time.Since(start), nil
		case <-time.After(30 * time.Second):
			return 0, fmt.Errorf("no result for %s", id)
		}
	}
	// Warm up both paths' connections.
	for i := range ingressCallers {
		if _, err := one(ingressActions + i); err != nil {
			return row, fmt.Errorf("warm-up: %w", err)
		}
	}
	cpuBefore := cpuOf([]*workerProc{p})
	lat := make([]time.Duration, ingressActions)
	next := make(chan int, ingressActions)
	for i := range ingressActions {
		next <- i
	}
	close(next)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, ingressCallers)
	for range ingressCallers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				d, err := one(i)
				if err != nil {
					errs <- err
					return
				}
				lat[i] = d
			}
		}()
	}
	wg.Wait()
	row.elapsed = time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return row, err
	}
	row.cpu = cpuOf([]*workerProc{p}) - cpuBefore
	if u, err := p.usage(); err == nil {
		row.peakRSS = u.peakRSS
	}
	slices.Sort(lat)
	row.p50, row.p99, row.max = percentile(lat, 50), percentile(lat, 99), lat[len(lat)-1]
	return row, nil
}

// waitListening waits until addr accepts connections.
func waitListening(addr string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("the ingress did not listen on " + addr)
}
