package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/sandbox"
)

// TestStandbyTakeoverKeepsOrder: two replicas, one active and one on standby (one partition),
// a Segura that fails 10% of calls with 503, and credentials getting alternating disable and
// enable events. The active replica is SIGKILLed while it works; the standby takes over. Every
// event gets exactly one result, and every credential's calls reach the vendor in publish
// order — a call repeated after the kill (applied, reply lost) may repeat, nothing may
// overtake. The time from the kill to the standby's first result is reported, not asserted.
func TestStandbyTakeoverKeepsOrder(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	r.segura.SetChaos(sandbox.Chaos{ServerErrors: 0.10, Seed: 11})
	r.segura.SetLatency(5 * time.Millisecond)
	env := append(r.env, "PAMWORKER_CONCURRENCY=16", "PAMWORKER_ACK_WAIT=3s", "PAMWORKER_HTTP_TIMEOUT=1s",
		"PAMWORKER_MAX_DELIVERIES=50", "PAMWORKER_TARGET_RATE=5000", "PAMWORKER_LOG_LEVEL=warn")
	a := startWorker(t, env)
	b := startWorker(t, env)
	res := collect(t, r.nc)

	const creds, rounds = 30, 8
	for round := range rounds {
		subject := events.CredentialDisable // credentials start active: every event changes state
		if round%2 == 1 {
			subject = events.CredentialEnable
		}
		for c := 1; c <= creds; c++ {
			id := fmt.Sprintf("take-%d-%d", c, round)
			payload := fmt.Sprintf(`{"event_id":%q,"credential_id":%d}`, id, 600+c)
			if _, err := r.js.PublishAsync(subject, []byte(payload), jetstream.WithMsgID(id)); err != nil {
				t.Fatal(err)
			}
		}
	}
	<-r.js.PublishAsyncComplete()
	total := creds * rounds
	waitUntil(t, 60*time.Second, func() bool { return res.answered() >= total/3 })

	// The active replica is the one that has answered events.
	active, standby := a, b
	if processedBy(t, b) > processedBy(t, a) {
		active, standby = b, a
	}
	if processedBy(t, standby) != 0 {
		t.Fatalf("the standby answered %d events while the active replica ran", processedBy(t, standby))
	}
	_ = active.cmd.Process.Signal(syscall.SIGKILL)
	active.done <- <-active.done
	killed, before := time.Now(), res.answered()
	waitUntil(t, 60*time.Second, func() bool { return res.answered() > before })
	t.Logf("standby answered its first event %v after the kill", time.Since(killed).Round(time.Millisecond))
	waitUntil(t, 120*time.Second, func() bool { return res.answered() == total })

	// Exactly one result each in the results stream (a result published just before the kill
	// may reach core subscribers twice: the redelivery is answered from the ledger).
	stored := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(allResults(t, r.js)), "\n") {
		var res events.Result
		if json.Unmarshal([]byte(line), &res) == nil {
			stored[res.EventID]++
		}
	}
	if len(stored) != total {
		t.Errorf("%d events have a result in the results stream, want %d", len(stored), total)
	}
	for id, n := range stored {
		if n != 1 {
			t.Errorf("%s: %d results in the results stream", id, n)
		}
	}
	// Per credential, the calls in the order the vendor received them, repeats collapsed.
	calls := map[string][]string{}
	for _, req := range r.segura.Requests() {
		if !strings.HasPrefix(req.EscapedPath, "/api/pam/credential/6") {
			continue
		}
		q := calls[req.EscapedPath]
		if len(q) == 0 || q[len(q)-1] != req.Method {
			calls[req.EscapedPath] = append(q, req.Method)
		}
	}
	want := strings.TrimSpace(strings.Repeat("DELETE PUT ", rounds/2))
	for c := 1; c <= creds; c++ {
		path := fmt.Sprintf("/api/pam/credential/%d", 600+c)
		if got := strings.Join(calls[path], " "); got != want {
			t.Errorf("credential %d: calls %q, want %q", 600+c, got, want)
		}
		if active, _, _ := r.segura.Credential(600 + c); !active {
			t.Errorf("credential %d ends disabled; its last event enabled it", 600+c)
		}
	}
}

func processedBy(t *testing.T, p *proc) int {
	t.Helper()
	total := 0
	for _, line := range strings.Split(p.get(t, "/metrics"), "\n") {
		if strings.HasPrefix(line, "pamworker_events_processed_total{") {
			var v int
			fmt.Sscanf(line[strings.LastIndexByte(line, ' ')+1:], "%d", &v)
			total += v
		}
	}
	return total
}
