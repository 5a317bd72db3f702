package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/broker"
	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/sandbox"
)

// TestChaos is issue 3's proof, through the real binary and a real nats-server. A fake Segura
// fails 20% of calls with 503, lets 5% hang past the worker's timeout, and applies 3% and then
// cuts the connection (the change is made, the reply is lost). Credentials get sequences of
// alternating disable/enable events. Meanwhile the worker is SIGKILLed three times and the NATS
// server is restarted once. After a full drain: every event has exactly one terminal result,
// none is lost, every credential ends in the state its last event asked for, and repeated
// applications (a noop result for an event that should have changed state) stay within what
// lost replies and kills can explain.
//
// Short by default (CI); long by hand: CHAOS_OBJECTS=300 CHAOS_ROUNDS=20 go test -run Chaos -v -timeout 30m ./cmd/pamworker/
func TestChaos(t *testing.T) {
	t.Parallel()
	objects, rounds := envInt("CHAOS_OBJECTS", 40), envInt("CHAOS_ROUNDS", 8)
	store := t.TempDir()
	ns, err := broker.Start(broker.Embedded{Listen: "127.0.0.1:-1", DataDir: store})
	if err != nil {
		t.Fatal(err)
	}
	addr := ns.Addr().String()
	t.Cleanup(func() { ns.Shutdown() })
	url := ns.ClientURL()

	seg := sandbox.NewSegura(sandbox.SeguraOptions{ClientID: "chaos", ClientSecret: canarySecret, Credentials: objects + 10})
	seg.SetChaos(sandbox.Chaos{ServerErrors: 0.20, Hangs: 0.05, DropReplies: 0.03, HangFor: 3 * time.Second, Seed: 7})
	api := httptest.NewServer(canaryTap("Segura", seg))
	t.Cleanup(api.Close)
	env := []string{
		"PAMWORKER_NATS_URL=" + url,
		"PAMWORKER_SEGURA_URL=" + api.URL,
		"PAMWORKER_SEGURA_CLIENT_ID=chaos",
		"PAMWORKER_SEGURA_CLIENT_SECRET=" + canarySecret,
		"PAMWORKER_CONCURRENCY=16",
		"PAMWORKER_HTTP_TIMEOUT=500ms",
		"PAMWORKER_ACK_WAIT=3s",
		"PAMWORKER_MAX_DELIVERIES=50",
		"PAMWORKER_TARGET_RATE=5000",
		"PAMWORKER_LOG_LEVEL=warn",
	}
	w := startWorker(t, env)

	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx := context.Background()

	// Credential ids, skipping the simulator's special ones.
	var creds []int
	for id := 1; len(creds) < objects; id++ {
		if id != sandbox.CustodyCredentialID && id != sandbox.AdminCredentialID && id != sandbox.NoAccessCredentialID && id != sandbox.NotCredentialID {
			creds = append(creds, id)
		}
	}
	total := objects * rounds
	start := time.Now()
	for round := range rounds {
		subject := events.CredentialDisable // credentials start active: every event changes state
		if round%2 == 1 {
			subject = events.CredentialEnable
		}
		for _, id := range creds {
			eid := fmt.Sprintf("chaos-%d-%d", id, round)
			payload := fmt.Sprintf(`{"event_id":%q,"credential_id":%d}`, eid, id)
			if _, err := js.PublishAsync(subject, []byte(payload), jetstream.WithMsgID(eid)); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(60 * time.Second):
		t.Fatal("publishing did not complete")
	}

	stored := func() int {
		rs, err := js.Stream(ctx, "PAMWORKER_RESULTS")
		if err != nil {
			return 0
		}
		return int(rs.CachedInfo().State.Msgs)
	}
	kills := 0
	for i, at := range []float64{0.2, 0.4, 0.6} {
		waitUntil(t, 10*time.Minute, func() bool { return stored() >= int(at*float64(total)) })
		_ = w.cmd.Process.Signal(syscall.SIGKILL)
		w.done <- <-w.done
		kills++
		if i == 1 { // once, the broker too
			ns.Shutdown()
			ns.WaitForShutdown()
			if ns, err = broker.Start(broker.Embedded{Listen: addr, DataDir: store}); err != nil {
				t.Fatal(err)
			}
		}
		w = startWorker(t, env)
	}
	deadline := time.Now().Add(15 * time.Minute)
	for stored() < total && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}

	// Read every result from the durable record.
	perID := map[string]events.Result{}
	count := map[string]int{}
	cons, err := js.OrderedConsumer(ctx, "PAMWORKER_RESULTS", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	n := stored()
	for read := 0; read < n; {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			continue
		}
		read++
		scanForSecrets(t, "results stream", string(m.Data()))
		var r events.Result
		if json.Unmarshal(m.Data(), &r) == nil {
			perID[r.EventID] = r
			count[r.EventID]++
		}
	}
	lost, dup, notOK, repeats := 0, 0, 0, 0
	for _, id := range creds {
		for round := range rounds {
			eid := fmt.Sprintf("chaos-%d-%d", id, round)
			switch count[eid] {
			case 0:
				lost++
				continue
			case 1:
			default:
				dup++
			}
			r := perID[eid]
			if r.Status != events.Succeeded {
				notOK++
				t.Logf("%s: %s %+v", eid, r.Status, r.Error)
			}
			if r.Noop {
				repeats++
			}
		}
	}
	wrong := 0
	for _, id := range creds {
		active, _, _ := seg.Credential(id)
		if want := rounds%2 == 0; active != want {
			wrong++
		}
	}
	errs, hangs, drops := seg.ChaosCounts()
	t.Logf("chaos: %d events on %d credentials in %v; %d SIGKILLs, 1 NATS restart; vendor calls %d (503 %d, hangs %d, dropped replies %d)",
		total, objects, time.Since(start).Round(time.Second), kills, seg.Calls(), errs, hangs, drops)
	t.Logf("chaos: lost=%d duplicated results=%d not succeeded=%d wrong final states=%d repeated applications=%d",
		lost, dup, notOK, wrong, repeats)
	if lost != 0 || dup != 0 || notOK != 0 || wrong != 0 {
		t.Errorf("lost=%d duplicated=%d not succeeded=%d wrong final states=%d, want all 0", lost, dup, notOK, wrong)
	}
	// A repeat needs a reason: a reply lost after the change was applied, or a kill while the
	// call was in flight (at most the concurrency per kill).
	if limit := int(drops) + kills*16; repeats > limit {
		t.Errorf("%d repeated applications, more than the %d dropped replies and kills can explain", repeats, limit)
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(strings.TrimSpace(os.Getenv(name))); err == nil && v > 0 {
		return v
	}
	return def
}
