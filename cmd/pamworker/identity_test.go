package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/pamworker/pamworker/events"
)

// identity is a generated nkey user: its public key for the server, its seed file for a client.
type identity struct {
	public, seedFile string
	kp               nkeys.KeyPair
}

func newIdentity(t *testing.T, name string) identity {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	registerCanary(t, "nkey seed of "+name, string(seed))
	path := filepath.Join(t.TempDir(), name+".nk")
	if err := os.WriteFile(path, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	return identity{public: pub, seedFile: path, kp: kp}
}

func (id identity) connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	opt, err := nats.NkeyOptionFromSeed(id.seedFile)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 16)
	nc, err := nats.Connect(url, opt, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case errs <- err:
		default:
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// TestNATSIdentities runs the real worker against deploy/nats/nats-server.conf — the file we
// ship — with its two identities: the worker works end to end; a playbook may publish events
// but not results and cannot delete a stream; the worker may neither publish action events nor
// delete or purge a stream nor pause itself.
func TestNATSIdentities(t *testing.T) {
	t.Parallel()
	playbook, worker := newIdentity(t, "playbook"), newIdentity(t, "pamworker")
	raw, err := os.ReadFile("../../deploy/nats/nats-server.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.NewReplacer("PLAYBOOK_NKEY", playbook.public, "PAMWORKER_NKEY", worker.public).Replace(string(raw))
	confPath := filepath.Join(t.TempDir(), "nats-server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(confPath)
	if err != nil {
		t.Fatal(err)
	}
	opts.Host, opts.Port, opts.StoreDir, opts.NoLog, opts.NoSigs = "127.0.0.1", -1, t.TempDir(), true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	t.Cleanup(ns.Shutdown)

	r := newRig(t)
	env := []string{"PAMWORKER_NATS_NKEY_SEED_FILE=" + worker.seedFile}
	for _, kv := range r.env {
		if !strings.HasPrefix(kv, "PAMWORKER_NATS_URL=") {
			env = append(env, kv)
		}
	}
	env = append(env, "PAMWORKER_NATS_URL="+ns.ClientURL())
	w := startWorker(t, env)

	ctx := context.Background()
	pb := playbook.connect(t, ns.ClientURL())
	pjs, _ := jetstream.New(pb)
	results, err := pb.SubscribeSync("results.>")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pjs.Publish(ctx, events.CredentialDisable, []byte(`{"event_id":"id-1","credential_id":31}`), jetstream.WithMsgID("id-1")); err != nil {
		t.Fatalf("playbook cannot publish an event: %v", err)
	}
	m, err := results.NextMsg(20 * time.Second)
	if err == nil {
		scanForSecrets(t, "result on "+m.Subject, string(m.Data))
	}
	if err != nil || !strings.Contains(string(m.Data), `"status":"succeeded"`) {
		t.Fatalf("no result through the worker's identity: %v %s\n%s", err, m.Data, redact(w.logs.String()))
	}

	// Denied requests get no answer (the server drops them and tells the client
	// asynchronously), so each waits only briefly; the state is checked afterwards.
	denied := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}
	// The playbook may not publish a result, nor delete a stream.
	if _, err := pjs.Publish(denied(), "results.pam.credential.disable", []byte(`{"event_id":"forged"}`)); err == nil {
		t.Error("playbook published a result")
	}
	if err := pjs.DeleteStream(denied(), "PAMWORKER_EVENTS"); err == nil {
		t.Error("playbook deleted the events stream")
	}
	// The worker's identity may not publish actions, delete, purge or pause.
	wc := worker.connect(t, ns.ClientURL())
	wjs, _ := jetstream.New(wc)
	if _, err := wjs.Publish(denied(), events.CredentialEnable, []byte(`{"credential_id":31}`)); err == nil {
		t.Error("the worker's identity published an action event")
	}
	if err := wjs.DeleteStream(denied(), "PAMWORKER_EVENTS"); err == nil {
		t.Error("the worker's identity deleted the events stream")
	}
	if s, err := wjs.Stream(ctx, "PAMWORKER_RESULTS"); err == nil {
		if err := s.Purge(denied()); err == nil {
			t.Error("the worker's identity purged the results stream")
		}
	}
	if _, err := wjs.PauseConsumer(denied(), "PAMWORKER_EVENTS", "pamworker-router", time.Now().Add(time.Hour)); err == nil {
		t.Error("the worker's identity paused its consumer")
	}
	// Nothing was deleted, purged, forged or paused.
	for _, name := range []string{"PAMWORKER_EVENTS", "PAMWORKER_RESULTS"} {
		s, err := wjs.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		if name == "PAMWORKER_RESULTS" && s.CachedInfo().State.Msgs != 1 {
			t.Errorf("results stream holds %d messages, want the 1 real result", s.CachedInfo().State.Msgs)
		}
	}
	if c, err := wjs.Consumer(ctx, "PAMWORKER_EVENTS", "pamworker-router"); err != nil || c.CachedInfo().Paused {
		t.Errorf("consumer paused or gone: %v", err)
	}
}
