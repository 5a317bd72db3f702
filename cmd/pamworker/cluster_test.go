package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/sandbox"
)

// startCluster starts n nats-servers with JetStream, clustered over loopback routes.
func startCluster(t *testing.T, n int) []*server.Server {
	t.Helper()
	routes := make([]string, n)
	for i := range routes {
		routes[i] = "nats://" + freeAddr(t)
	}
	var urls []*url.URL
	for _, r := range routes {
		u, _ := url.Parse(r)
		urls = append(urls, u)
	}
	dir := t.TempDir()
	servers := make([]*server.Server, n)
	for i := range servers {
		host, port := splitAddr(t, strings.TrimPrefix(routes[i], "nats://"))
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
			Cluster:    server.ClusterOpts{Name: "pamworker-test", Host: host, Port: port},
			Routes:     urls,
			NoLog:      true,
			NoSigs:     true,
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		servers[i] = s
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	}
	for _, s := range servers {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatal("cluster node not ready")
		}
	}
	// Wait for the JetStream meta leader.
	waitUntil(t, 30*time.Second, func() bool {
		for _, s := range servers {
			if s.JetStreamIsLeader() {
				return true
			}
		}
		return false
	})
	return servers
}

func splitAddr(t *testing.T, addr string) (string, int) {
	t.Helper()
	var host string
	var port int
	i := strings.LastIndexByte(addr, ':')
	host = addr[:i]
	if _, err := fmt.Sscanf(addr[i+1:], "%d", &port); err != nil {
		t.Fatal(err)
	}
	return host, port
}

// TestClusterLeaderKilled runs the real worker against a three-node cluster with replicated
// streams, shuts down the events stream's leader mid-run, and checks that every event still
// ends with exactly one result, none is lost, and every credential ends in the state its last
// event asked for.
func TestClusterLeaderKilled(t *testing.T) {
	t.Parallel()
	servers := startCluster(t, 3)
	var clientURLs []string
	for _, s := range servers {
		clientURLs = append(clientURLs, s.ClientURL())
	}
	allURLs := strings.Join(clientURLs, ",")

	seg := sandbox.NewSegura(sandbox.SeguraOptions{ClientID: "c", ClientSecret: canarySecret})
	seg.SetLatency(5 * time.Millisecond)
	ss := httptest.NewServer(canaryTap("Segura", seg))
	t.Cleanup(ss.Close)
	env := []string{
		"PAMWORKER_NATS_URL=" + allURLs,
		"PAMWORKER_STREAM_REPLICAS=3",
		"PAMWORKER_SEGURA_URL=" + ss.URL,
		"PAMWORKER_SEGURA_CLIENT_ID=c",
		"PAMWORKER_SEGURA_CLIENT_SECRET=" + canarySecret,
		"PAMWORKER_CONCURRENCY=8",
		"PAMWORKER_ACK_WAIT=5s",
		"PAMWORKER_LOG_LEVEL=info",
	}
	w := startWorker(t, env)

	nc, err := nats.Connect(allURLs, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	info, err := js.Stream(ctx, "PAMWORKER_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	if r := info.CachedInfo().Config.Replicas; r != 3 {
		t.Fatalf("events stream has %d replicas, want 3", r)
	}

	res := collect(t, nc)
	count := res.answered

	const n = 600
	ids := make([]string, n)
	// publish retries each event (same Nats-Msg-Id) until the stream acknowledges it, as a
	// careful playbook would through a leader election.
	// Event i is round i/50 for credential 1+i%50; rounds alternate disable and enable, so
	// every credential's final state tells whether its events ran in order.
	publish := func(i int) {
		ids[i] = fmt.Sprintf("cluster-%04d", i)
		payload := []byte(fmt.Sprintf(`{"event_id":%q,"credential_id":%d}`, ids[i], 1+i%50))
		subject := events.CredentialDisable
		if (i/50)%2 == 1 {
			subject = events.CredentialEnable
		}
		for {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := js.Publish(pctx, subject, payload, jetstream.WithMsgID(ids[i]))
			cancel()
			if err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for i := range n / 2 {
		publish(i)
	}
	waitUntil(t, 60*time.Second, func() bool { return count() >= n/8 })

	si, err := js.Stream(ctx, "PAMWORKER_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	leader := si.CachedInfo().Cluster.Leader
	for _, s := range servers {
		if s.Name() == leader {
			s.Shutdown()
			t.Logf("shut down the events stream's leader %s with %d of %d answered", leader, count(), n)
		}
	}
	for i := n / 2; i < n; i++ {
		publish(i)
	}
	// Wait on the results stream, the durable record: the core subscription above may miss a
	// result published while its connection moved off the killed node (core NATS delivery is
	// at most once), which says nothing about the worker.
	stored := func() int {
		rs, err := js.Stream(ctx, "PAMWORKER_RESULTS")
		if err != nil {
			return 0
		}
		return int(rs.CachedInfo().State.Msgs)
	}
	deadline := time.Now().Add(90 * time.Second)
	for stored() < n && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if stored() < n {
		diagnose(t, js, ids, res.counts())
		t.Fatalf("only %d of %d results stored\n%s", stored(), n, redact(w.logs.String()))
	}

	// Exactly one result per event in the (replicated) results stream.
	rs, err := js.Stream(ctx, "PAMWORKER_RESULTS")
	if err != nil {
		t.Fatal(err)
	}
	total := rs.CachedInfo().State.Msgs
	perID := map[string]int{}
	cons, err := js.OrderedConsumer(ctx, "PAMWORKER_RESULTS", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(60 * time.Second)
	for read := uint64(0); read < total && time.Now().Before(deadline); {
		m, err := cons.Next(jetstream.FetchMaxWait(3 * time.Second))
		if err != nil {
			continue // the ordered consumer recreates itself after the leader change
		}
		read++
		scanForSecrets(t, "results stream", string(m.Data()))
		var res events.Result
		if json.Unmarshal(m.Data(), &res) == nil {
			perID[res.EventID]++
		}
	}
	lost, dup := 0, 0
	for _, id := range ids {
		switch perID[id] {
		case 0:
			lost++
		case 1:
		default:
			dup++
		}
	}
	t.Logf("results stream holds %d results: %d events answered, lost=%d, duplicated=%d, vendor calls=%d", total, len(perID), lost, dup, seg.Calls())
	if lost != 0 || dup != 0 {
		t.Errorf("lost=%d duplicated=%d, want 0 and 0\n%s", lost, dup, redact(w.logs.String()))
	}
	// 600 events = 12 rounds per credential, the last an enable: every credential ends active.
	for id := 1; id <= 50; id++ {
		if active, _, _ := seg.Credential(id); !active {
			t.Errorf("credential %d is disabled; its last event enabled it", id)
		}
	}
}

// diagnose reports, for events without a result, whether the stream holds them and what the
// consumer's state is.
func diagnose(t *testing.T, js jetstream.JetStream, ids []string, seen map[string]int) {
	ctx := context.Background()
	inStream := map[string]uint64{}
	cons, err := js.OrderedConsumer(ctx, "PAMWORKER_EVENTS", jetstream.OrderedConsumerConfig{})
	if err == nil {
		for {
			m, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
			if err != nil {
				break
			}
			md, _ := m.Metadata()
			var p struct {
				EventID string `json:"event_id"`
			}
			_ = json.Unmarshal(m.Data(), &p)
			inStream[p.EventID] = md.Sequence.Stream
		}
	}
	for _, id := range ids {
		if seen[id] == 0 {
			seq, ok := inStream[id]
			t.Logf("no result for %s: in the events stream %v (seq %d)", id, ok, seq)
		}
	}
	if c, err := js.Consumer(ctx, "PAMWORKER_EVENTS", "pamworker"); err == nil {
		if ci, err := c.Info(ctx); err == nil {
			t.Logf("consumer: delivered %+v ack floor %+v pending %d ack pending %d redelivered %d waiting %d leader %s",
				ci.Delivered, ci.AckFloor, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.NumWaiting, ci.Cluster.Leader)
		}
	}
}
