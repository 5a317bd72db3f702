package worker_test

import (
	"fmt"
	"hash/fnv"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/oklog/ulid/v2"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/sandbox"
)

func partOf(key string, n int) int {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

// These tests come from an adversarial review of the consumption core: each reproduced a way
// for one event (or one delivery) to run twice, or for one object to hold up others.

// TestNoRerunOnANewPartitionConsumer: events published with Nats-Msg-Id = event id are
// answered; the worker is stopped (drained) and started again with 2 partitions. The new
// consumer pamworker-p1 starts the ledger's TTL back (othersRead) and delivers every event
// again as a first delivery: the ledger answers them all, the vendor is not called again.
func TestNoRerunOnANewPartitionConsumer(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	b := setup(t, options{cfg: c})
	var strictCreds, looseCreds []int
	var ids []string
	for n := 1; n <= 8; n++ {
		id := ulid.Make().String()
		b.publish(t, events.CredentialDisable, fmt.Sprintf(`{"credential_id":%d}`, n), id) // strict
		ids = append(ids, id)
		strictCreds = append(strictCreds, n)
	}
	for n := 41; n <= 48; n++ {
		ids = append(ids, b.send(t, events.CredentialDisable, fmt.Sprintf(`{"credential_id":%d}`, n))) // id in payload only
		looseCreds = append(looseCreds, n)
	}
	for _, id := range ids {
		if r := b.result(t, id); r.Status != events.Succeeded {
			t.Fatalf("%+v", r)
		}
	}
	calls := func(n int) int {
		b.seguraHTTP.mu.Lock()
		defer b.seguraHTTP.mu.Unlock()
		return len(b.seguraHTTP.byPath[fmt.Sprintf("/api/pam/credential/%d", n)])
	}
	b.stop() // drained: nothing held
	c2 := c
	c2.Partitions = 2
	b.startReplica(t, c2, b.seguraURL)
	time.Sleep(4 * time.Second)
	for _, n := range strictCreds {
		if calls(n) != 1 {
			t.Errorf("strict credential %d: vendor called %d times for one answered event", n, calls(n))
		}
	}
	for _, n := range looseCreds {
		if calls(n) != 1 {
			t.Errorf("payload-id credential %d: vendor called %d times for one answered event", n, calls(n))
		}
	}
}

// TestShutdownKeepsRunningEventsAlive: during the shutdown grace keepAlive has stopped, so an event
// still running on the stopping replica is redelivered to the standby after AckWait and runs
// there at the same time.
func TestShutdownKeepsRunningEventsAlive(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	c.AttemptTimeout = 30 * time.Second
	c.ShutdownTimeout = 15 * time.Second
	b := setup(t, options{cfg: c})
	if r := b.result(t, b.send(t, events.CredentialDisable, `{"credential_id":5}`)); r.Status != events.Succeeded {
		t.Fatal(r)
	}
	b.startReplica(t, c, b.seguraURL)
	release := b.seguraHTTP.hangOn("/api/pam/credential/77")
	defer release()
	id := b.send(t, events.CredentialDisable, `{"credential_id":77}`)
	calls := func() int {
		b.seguraHTTP.mu.Lock()
		defer b.seguraHTTP.mu.Unlock()
		return len(b.seguraHTTP.byPath["/api/pam/credential/77"])
	}
	waitFor(t, 10*time.Second, "call in flight", func() bool { return calls() == 1 })
	go b.stop()
	start := time.Now()
	for time.Since(start) < 10*time.Second && calls() < 2 {
		time.Sleep(20 * time.Millisecond)
	}
	b.seguraHTTP.mu.Lock()
	maxAt := b.seguraHTTP.maxPath["/api/pam/credential/77"]
	b.seguraHTTP.mu.Unlock()
	if maxAt > 1 {
		t.Errorf("one event ran on two replicas at once during a graceful shutdown")
	}
	release()
	b.result(t, id)
}

// TestBusyReplicaKeepsItsPartition: a single replica busy for longer than AckWait (one runner,
// a slow vendor) keeps its partition: it hands nothing back (with a pinned consumer, a feed
// that stopped pulling while it waited for room lost its pin and handed everything back).
func TestBusyReplicaKeepsItsPartition(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	c.Concurrency = 1
	b := setup(t, options{cfg: c})
	b.segura.SetLatency(700 * time.Millisecond)
	var ids []string
	for n := 1; n <= 14; n++ {
		ids = append(ids, b.send(t, events.CredentialDisable, fmt.Sprintf(`{"credential_id":%d}`, n)))
	}
	for _, id := range ids {
		b.result(t, id)
	}
	if released := b.metric(t, "pamworker_deferred_total", map[string]string{"reason": "released"}); released > 0 {
		t.Errorf("a single busy replica lost its own pin and handed back %v events", released)
	}
}

// TestBusyReplicasRunEachObjectOnceAtATime: the same with a standby: no object runs on two
// replicas at once, and each object's calls reach the vendor once each, in publish order.
func TestBusyReplicasRunEachObjectOnceAtATime(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	c.Concurrency = 1
	b := setup(t, options{cfg: c})
	b.startReplica(t, c, b.seguraURL)
	b.segura.SetLatency(500 * time.Millisecond)
	const objects, rounds = 4, 6
	want := map[int][]string{}
	var ids []string
	for round := range rounds {
		for cred := 1; cred <= objects; cred++ {
			subject, method := events.CredentialDisable, "DELETE"
			if (round+cred)%2 == 1 {
				subject, method = events.CredentialEnable, "PUT"
			}
			ids = append(ids, b.send(t, subject, fmt.Sprintf(`{"credential_id":%d}`, cred)))
			want[cred] = append(want[cred], method)
		}
	}
	for _, id := range ids {
		waitFor(t, 60*time.Second, "result", func() bool { return b.resultCount(id) > 0 })
	}
	time.Sleep(2 * time.Second)
	b.seguraHTTP.mu.Lock()
	defer b.seguraHTTP.mu.Unlock()
	for cred := 1; cred <= objects; cred++ {
		path := fmt.Sprintf("/api/pam/credential/%d", cred)
		got := b.seguraHTTP.byPath[path]
		if b.seguraHTTP.maxPath[path] > 1 {
			t.Errorf("credential %d: %d calls at once", cred, b.seguraHTTP.maxPath[path])
		}
		if !slices.Equal(got, want[cred]) {
			t.Errorf("credential %d: calls %v, published %v", cred, got, want[cred])
		}
	}
}

// TestGivenUpPartitionsRunningEventHandsBack: partition 1 moves from replica A to a new
// replica B while A runs an event of it whose call keeps failing. The running event must not
// park on A once its run ends (B's fence would wait for it, and with it every event of the
// partition — other objects, another healthy target): it is handed back to B.
func TestGivenUpPartitionsRunningEventHandsBack(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	c.Partitions = 2
	c.BreakerThreshold = -1
	c.MaxDeliveries = 1000
	b := setup(t, options{cfg: c})
	cred := 0
	for n := 1; n <= 40; n++ {
		if partOf(fmt.Sprintf("segura/default|credential:%d", n), 2) == 1 {
			cred = n
			break
		}
	}
	var users []string
	for i := 0; len(users) < 5; i++ {
		u := fmt.Sprintf("user%d", i)
		if partOf("element/default|user:"+u, 2) == 1 {
			users = append(users, u)
		}
	}
	b.segura.FailNext(1000000, sandbox.Fault{Status: 503, Delay: 1500 * time.Millisecond})
	stuck := b.send(t, events.CredentialDisable, fmt.Sprintf(`{"credential_id":%d}`, cred))
	time.Sleep(2 * time.Second)
	b.startReplica(t, c, b.seguraURL) // B joins: partition 1 moves to it
	time.Sleep(4 * time.Second)
	var ids []string
	for _, u := range users {
		ids = append(ids, b.send(t, events.ElementSessionsDelete, fmt.Sprintf(`{"username":%q}`, u)))
	}
	deadline := time.Now().Add(20 * time.Second)
	answered := 0
	for time.Now().Before(deadline) {
		answered = 0
		for _, id := range ids {
			if b.resultCount(id) > 0 {
				answered++
			}
		}
		if answered == len(ids) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if answered < len(ids) {
		t.Logf("element events of partition 1 answered: %d of %d (the failing credential %d still retrying: results %d)",
			answered, len(ids), cred, b.resultCount(stuck))
		t.Errorf("events of other objects and another target wait for one object retrying on the previous owner")
	}
	b.segura.ClearFaults()
	for _, id := range ids {
		waitFor(t, 30*time.Second, "answered once the failing call succeeds", func() bool { return b.resultCount(id) > 0 })
	}
}

// TestForgedPinHeaderMovesNothing: an event published with its own Nats-Pin-Id header (which
// the server delivers beside its own) moves no partition: ownership is a lease in NATS, not
// anything an event carries. No waiting event of another object is handed back.
func TestForgedPinHeaderMovesNothing(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	b := setup(t, options{cfg: c})
	b.segura.SetRevoked(true) // Segura events wait in memory for the target
	var waiting []string
	for n := 1; n <= 10; n++ {
		waiting = append(waiting, b.send(t, events.CredentialDisable, fmt.Sprintf(`{"credential_id":%d}`, n)))
	}
	waitFor(t, 10*time.Second, "target down", func() bool {
		return b.metric(t, "pamworker_target_up", map[string]string{"target": "segura/default"}) == 0
	})
	time.Sleep(time.Second)
	before := b.metric(t, "pamworker_deferred_total", map[string]string{"reason": "released"})
	msg := &nats.Msg{Subject: events.ElementSessionsDelete, Data: []byte(`{"event_id":"hostile-1","username":"nobody"}`), Header: nats.Header{}}
	msg.Header.Set("Nats-Pin-Id", "forged")
	if _, err := b.js.PublishMsg(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	after := b.metric(t, "pamworker_deferred_total", map[string]string{"reason": "released"})
	if after > before {
		t.Errorf("a header of one event made the worker hand back %v waiting events of other objects", after-before)
	}
	b.result(t, b.send(t, events.ElementSessionsDelete, `{"username":"someone"}`))
	b.segura.SetRevoked(false)
	for _, id := range waiting {
		b.result(t, id)
	}
}
