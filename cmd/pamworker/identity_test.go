package main

import (
	"context"
	"encoding/json"
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
	"github.com/pamworker/pamworker/ingress"
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

func (id identity) connect(t *testing.T, url string, opts ...nats.Option) *nats.Conn {
	nc, _ := id.connectWithErrors(t, url, opts...)
	return nc
}

// connectWithErrors also returns the asynchronous errors the server sends the client, such as
// permission violations.
func (id identity) connectWithErrors(t *testing.T, url string, opts ...nats.Option) (*nats.Conn, <-chan error) {
	t.Helper()
	opt, err := nats.NkeyOptionFromSeed(id.seedFile)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 64)
	nc, err := nats.Connect(url, append([]nats.Option{opt, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case errs <- err:
		default:
		}
	})}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

// TestNATSIdentities runs the real worker and CLI against deploy/nats/nats-server.conf — the
// file we ship — with its three identities: the worker works end to end and a playbook's
// `send --wait` gets its result; each identity sees only its own replies (no one else's
// inbox can be read, and only the worker may send to inboxes); a playbook may publish events
// but not results and cannot delete a stream; the worker may neither publish action events,
// delete or purge a stream, pause itself, release held events nor mark replays; an operator
// may pause, resume and release.
func TestNATSIdentities(t *testing.T) {
	t.Parallel()
	playbook, worker, operator := newIdentity(t, "playbook"), newIdentity(t, "pamworker"), newIdentity(t, "operator")
	ingressID := newIdentity(t, "ingress")
	raw, err := os.ReadFile("../../deploy/nats/nats-server.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.NewReplacer("PLAYBOOK_NKEY", playbook.public, "PAMWORKER_NKEY", worker.public,
		"OPERATOR_NKEY", operator.public, "INGRESS_NKEY", ingressID.public).Replace(string(raw))
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
	as := func(id identity, prefix string) []string {
		env := []string{"PAMWORKER_NATS_NKEY_SEED_FILE=" + id.seedFile, "PAMWORKER_NATS_INBOX_PREFIX=" + prefix}
		for _, kv := range r.env {
			if !strings.HasPrefix(kv, "PAMWORKER_NATS_URL=") {
				env = append(env, kv)
			}
		}
		return append(env, "PAMWORKER_NATS_URL="+ns.ClientURL())
	}
	workerEnv := append(as(worker, "_INBOX.pamworker"), "PAMWORKER_LIMITS=pam.credential.disable=1/1h")
	w := startWorker(t, workerEnv)

	ctx := context.Background()
	// The playbook tries to read every reply: the server refuses each subscription.
	pb, pbErrs := playbook.connectWithErrors(t, ns.ClientURL(), nats.CustomInboxPrefix("_INBOX.playbook"))
	var sniffed []string
	for _, subject := range []string{"_INBOX.>", "_INBOX.pamworker.>", "_INBOX.operator.>", ">", "$JS.API.>", "$KV.>"} {
		if _, err := pb.Subscribe(subject, func(m *nats.Msg) { sniffed = append(sniffed, m.Subject) }); err != nil {
			t.Fatal(err)
		}
	}
	denials := 0
	for deadline := time.After(5 * time.Second); denials < 6; {
		select {
		case err := <-pbErrs:
			if strings.Contains(err.Error(), "Permissions Violation for Subscription") {
				denials++
			}
		case <-deadline:
			t.Fatalf("%d of 6 subscriptions outside the playbook's own inbox were refused", denials)
		}
	}
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

	// A playbook's send --wait gets its result on its own inbox, also when the stream drops
	// its publish as a repeat (then from the ledger).
	pbEnv := as(playbook, "_INBOX.playbook")
	if stdout, stderr, code := send(t, pbEnv, events.SessionDrop, `{"event_id":"pb-drop","session_id":"`+r.segura.AddSession()+`"}`, "--wait", "20s"); code != 0 {
		t.Fatalf("playbook send --wait: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if stdout, stderr, code := send(t, pbEnv, events.SessionDrop, `{"event_id":"pb-drop","session_id":"x"}`, "--wait", "20s"); code != 1 || !strings.Contains(stdout, "event_id_conflict") {
		t.Errorf("playbook send of another event under a used id: exit %d\n%s\n%s", code, stdout, stderr)
	}
	// An operator's send with a reply inbox: the playbook saw none of the replies.
	if _, _, code := send(t, as(operator, "_INBOX.operator"), events.SessionDrop, `{"session_id":"`+r.segura.AddSession()+`"}`, "--wait", "20s"); code != 0 {
		t.Errorf("operator send: exit %d", code)
	}
	if len(sniffed) > 0 {
		t.Errorf("the playbook read replies meant for others: %v", sniffed)
	}

	// Denied requests get no answer (the server drops them and tells the client
	// asynchronously), so each waits only briefly; the state is checked afterwards.
	denied := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}
	// The playbook may not publish a result, nor to anyone's inbox, nor delete a stream.
	if _, err := pjs.Publish(denied(), "results.pam.credential.disable", []byte(`{"event_id":"forged"}`)); err == nil {
		t.Error("playbook published a result")
	}
	if err := pb.Publish("_INBOX.operator.x", []byte(`{"event_id":"forged"}`)); err == nil {
		if err := pb.Flush(); err == nil {
			select {
			case err := <-pbErrs:
				if !strings.Contains(err.Error(), "Permissions Violation for Publish") {
					t.Errorf("publish to an inbox: %v", err)
				}
			case <-time.After(2 * time.Second):
				t.Error("the playbook published to another identity's inbox")
			}
		}
	}
	if err := pjs.DeleteStream(denied(), "PAMWORKER_EVENTS"); err == nil {
		t.Error("playbook deleted the events stream")
	}
	// The worker's identity may not publish actions, delete, purge, pause, release held events
	// or mark replays.
	wc := worker.connect(t, ns.ClientURL(), nats.CustomInboxPrefix("_INBOX.pamworker"))
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
	if _, err := wjs.PauseConsumer(denied(), "PAMWORKER_EVENTS", "pamworker-p0", time.Now().Add(time.Hour)); err == nil {
		t.Error("the worker's identity paused its consumer")
	}
	for _, key := range []string{"$KV.pamworker_ledger.hold.release", "$KV.pamworker_ledger.hold.cancel", "$KV.pamworker_ledger.replay.0123"} {
		if _, err := wjs.Publish(denied(), key, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err == nil {
			t.Errorf("the worker's identity wrote %s", key)
		}
	}
	if _, stderr, code := cli(t, as(worker, "_INBOX.pamworker"), "hold", "release"); code == 0 {
		t.Errorf("the worker's identity ran hold release: %s", stderr)
	}
	// Nothing was deleted, purged, forged or paused.
	for _, name := range []string{"PAMWORKER_EVENTS", "PAMWORKER_RESULTS"} {
		s, err := wjs.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		// id-1, the playbook's and the operator's drops; the stream dropped the conflicting
		// publish, whose answer send made itself.
		if name == "PAMWORKER_RESULTS" && s.CachedInfo().State.Msgs != 3 {
			t.Errorf("results stream holds %d messages, want the 3 real results", s.CachedInfo().State.Msgs)
		}
	}
	if c, err := wjs.Consumer(ctx, "PAMWORKER_EVENTS", "pamworker-p0"); err != nil || c.CachedInfo().Paused {
		t.Errorf("consumer paused or gone: %v", err)
	}

	// The operator may: a second disable is held by the limit until an operator releases it,
	// and pause and resume work.
	opEnv := as(operator, "_INBOX.operator")
	if _, err := pjs.Publish(ctx, events.CredentialDisable, []byte(`{"event_id":"id-2","credential_id":32}`), jetstream.WithMsgID("id-2")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	oc := operator.connect(t, ns.ClientURL(), nats.CustomInboxPrefix("_INBOX.operator"))
	ojs, _ := jetstream.New(oc)
	if got := streamResults(t, ojs, "id-2"); len(got) != 0 {
		t.Fatalf("the second disable was not held by the limit: %+v", got)
	}
	if out, stderr, code := cli(t, opEnv, "hold", "release"); code != 0 {
		t.Fatalf("operator hold release: exit %d %s %s", code, out, stderr)
	}
	for {
		m, err := results.NextMsg(20 * time.Second)
		if err != nil {
			t.Fatalf("no result for the held disable after the operator's release: %v", err)
		}
		if strings.Contains(string(m.Data), `"event_id":"id-2"`) {
			break
		}
	}
	for _, verb := range []string{"pause", "resume"} {
		if out, stderr, code := cli(t, opEnv, verb); code != 0 {
			t.Errorf("operator %s: exit %d %s %s", verb, code, out, stderr)
		}
	}

	// The ingress as its own process, under its identity: a result in the response, the 503 of
	// a target that is down (the replicas' reports), and polling an event with no result yet
	// (the event read back by its sequence, the results stream scanned).
	token := "tok-identity-" + newEventID()
	addCanary("ingress token", token)
	ir := &ingressRig{rig: r, addr: freeAddr(t), tokens: map[string]string{"soar": token}, seen: observedIn(t)}
	startProc(t, append(as(ingressID, "_INBOX.ingress"), "PAMWORKER_INGRESS_ADDR="+ir.addr,
		"PAMWORKER_INGRESS_CALLERS=soar:"+ingress.HashToken(token)+":pam.session.drop"), "ingress")
	if resp, b := ir.post(t, events.SessionDrop, "soar", `{"session_id":"`+r.segura.AddSession()+`"}`); resp.StatusCode != 200 {
		t.Errorf("ingress under its identity: %d\n%s", resp.StatusCode, b)
	}
	r.segura.SetRevoked(true)
	resp, b := ir.post(t, events.SessionDrop, "soar", `{"session_id":"`+r.segura.AddSession()+`"}`, "Prefer", "wait=3")
	var pending pendingBody
	_ = json.Unmarshal(b, &pending)
	if resp.StatusCode != 503 || pending.TargetState != "refused" {
		t.Errorf("ingress under its identity, target down: %d\n%s", resp.StatusCode, b)
	}
	r.segura.SetRevoked(false)
	if res := decodeResult(t, pollResult(t, ir, resp.Header.Get("Location"), "soar", 200)); res.Status != events.Succeeded {
		t.Errorf("polled result under the ingress identity: %+v", res)
	}
}
