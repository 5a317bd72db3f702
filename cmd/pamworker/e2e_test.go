package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/broker"
	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/sandbox"
)

// The end-to-end tests build the real binary and run it as a process against a real
// nats-server and the vendor simulators behind httptest servers.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func binary(t *testing.T) string {
	t.Helper()
	// PAMWORKER_TEST_BINARY runs these tests against another build, e.g. an older one to show
	// that a new test fails on it.
	if path := os.Getenv("PAMWORKER_TEST_BINARY"); path != "" {
		return path
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pamworker-e2e")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "pamworker")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

type rig struct {
	natsURL string
	nc      *nats.Conn
	js      jetstream.JetStream
	segura  *sandbox.Segura
	element *sandbox.Element
	env     []string // PAMWORKER_* settings for the worker and send
}

func newRig(t *testing.T) *rig {
	t.Helper()
	ns, err := broker.Start(broker.Embedded{Listen: "127.0.0.1:-1", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	r := &rig{natsURL: ns.ClientURL()}
	r.nc, err = nats.Connect(r.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.nc.Close)
	r.js, _ = jetstream.New(r.nc)
	// Credentials 501-1000 are plain ones for tests that need hundreds (the blast-radius test).
	r.segura = sandbox.NewSegura(sandbox.SeguraOptions{ClientID: "e2e", ClientSecret: canarySecret, Credentials: 1000})
	r.element = sandbox.NewElement(sandbox.ElementOptions{Username: "pamworker", Password: canaryPassword})
	ss, es := httptest.NewServer(canaryTap("Segura", r.segura)), httptest.NewServer(canaryTap("Element", r.element))
	t.Cleanup(ss.Close)
	t.Cleanup(es.Close)
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(canarySecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r.env = []string{
		"PAMWORKER_NATS_URL=" + r.natsURL,
		"PAMWORKER_SEGURA_URL=" + ss.URL,
		"PAMWORKER_SEGURA_CLIENT_ID=e2e",
		"PAMWORKER_SEGURA_CLIENT_SECRET_FILE=" + secretFile,
		"PAMWORKER_ELEMENT_URL=" + es.URL + "/json-rpc/12.0",
		"PAMWORKER_ELEMENT_USERNAME=pamworker",
		"PAMWORKER_ELEMENT_PASSWORD=" + canaryPassword,
		"PAMWORKER_LOG_LEVEL=debug",
	}
	return r
}

// proc is a running pamworker process.
type proc struct {
	cmd      *exec.Cmd
	httpAddr string
	logs     *syncBuffer
	done     chan error
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func baseEnv() []string {
	return []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "TMPDIR=" + os.TempDir()}
}

func startWorker(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return startProc(t, env, append([]string{"run"}, args...)...)
}

// startProc starts the binary with args and waits until its /readyz says ready.
func startProc(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{httpAddr: freeAddr(t), logs: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(binary(t), args...)
	p.cmd.Env = append(append(baseEnv(), env...), "PAMWORKER_HTTP_ADDR="+p.httpAddr)
	p.cmd.Dir = t.TempDir()
	p.cmd.Stdout = p.logs
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		// A last look at what the worker serves while it still runs, then its whole output.
		if p.alive() {
			for _, path := range []string{"/metrics", "/readyz"} {
				if body, err := p.fetch(path); err == nil {
					scanForSecrets(t, fmt.Sprintf("%s of worker %d at the end", path, p.cmd.Process.Pid), body)
				}
			}
		}
		_ = p.cmd.Process.Kill()
		<-p.done
		scanForSecrets(t, fmt.Sprintf("logs of worker %d", p.cmd.Process.Pid), p.logs.String())
		if t.Failed() {
			t.Logf("worker logs:\n%s", redact(p.logs.String()))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + p.httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		select {
		case err := <-p.done:
			p.done <- err // for the cleanup, which waits on it
			t.Fatalf("worker exited before ready: %v\n%s", err, redact(p.logs.String()))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker not ready in 30s:\n%s", redact(p.logs.String()))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// get fetches path from the worker's HTTP server and scans the body for canaries.
func (p *proc) get(t *testing.T, path string) string {
	t.Helper()
	body, err := p.fetch(path)
	if err != nil {
		t.Fatal(err)
	}
	scanForSecrets(t, path, body)
	return body
}

func (p *proc) fetch(path string) (string, error) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + p.httpAddr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// alive reports whether the process has not exited (or been reaped by the test) yet.
func (p *proc) alive() bool {
	select {
	case err := <-p.done:
		p.done <- err
		return false
	default:
		return true
	}
}

// resultsOf collects results from a core subscription: every result of every event id, in
// arrival order, the last one and their number.
type resultsOf struct {
	mu  sync.Mutex
	m   map[string]events.Result
	n   map[string]int
	all map[string][]events.Result
}

func collect(t *testing.T, nc *nats.Conn) *resultsOf {
	t.Helper()
	r := &resultsOf{m: map[string]events.Result{}, n: map[string]int{}, all: map[string][]events.Result{}}
	sub, err := nc.Subscribe("results.>", func(msg *nats.Msg) {
		scanForSecrets(t, "result on "+msg.Subject, string(msg.Data))
		var res events.Result
		if json.Unmarshal(msg.Data, &res) == nil {
			r.mu.Lock()
			r.m[res.EventID] = res
			r.n[res.EventID]++
			r.all[res.EventID] = append(r.all[res.EventID], res)
			r.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return r
}

// wait waits until event id has n results and returns them.
func (r *resultsOf) wait(t *testing.T, id string, n int) []events.Result {
	t.Helper()
	var got []events.Result
	waitUntil(t, 30*time.Second, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		got = append([]events.Result(nil), r.all[id]...)
		return len(got) >= n
	})
	return got
}

// answered is how many distinct events have a result.
func (r *resultsOf) answered() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.n)
}

// counts returns a copy of the number of results per event id.
func (r *resultsOf) counts() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.n))
	for k, v := range r.n {
		out[k] = v
	}
	return out
}

// count is how many events whose id has prefix have a result with status ("" for any).
func (r *resultsOf) count(prefix string, status events.Status) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for id, res := range r.m {
		if strings.HasPrefix(id, prefix) && (status == "" || res.Status == status) {
			n++
		}
	}
	return n
}

// cli runs the binary with args (a sub-command and its arguments) and returns its stdout,
// stderr and exit status; both are scanned for canaries.
func cli(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	cmd.Env = append(baseEnv(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	name := "pamworker " + strings.Join(args[:min(len(args), 2)], " ")
	scanForSecrets(t, name+" stdout", stdout.String())
	scanForSecrets(t, name+" stderr", stderr.String())
	return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
}

// send runs `pamworker send`.
func send(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	return cli(t, env, append([]string{"send"}, args...)...)
}

func TestEndToEnd(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	w := startWorker(t, r.env)
	session := r.segura.AddSession()

	// Each case runs the real `send` and checks its one JSON document and exit status.
	for _, tc := range []struct {
		subject, payload string
		exit             int
		status           events.Status
	}{
		{events.SessionDrop, `{"session_id":"` + session + `","correlation_id":"INC-4711"}`, 0, events.Succeeded},
		{events.CredentialDisable, `{"username":"root","hostname":"db01"}`, 0, events.Succeeded},
		{events.CredentialDisable, `{"credential_id":999999}`, 1, events.Failed},
		{events.ElementSessionsDelete, `{"username":"admin"}`, 0, events.Succeeded},
		{events.CredentialEnable, `{"credential_id":"x"}`, 1, events.Rejected},
		{events.CredentialEnable, `not json`, 1, events.Rejected},
	} {
		stdout, stderr, code := send(t, r.env, tc.subject, tc.payload, "--wait", "20s")
		var res events.Result
		if err := json.Unmarshal([]byte(stdout), &res); err != nil {
			t.Fatalf("%s %s: stdout is not one JSON result: %v\n%s\nstderr: %s", tc.subject, tc.payload, err, stdout, stderr)
		}
		if code != tc.exit || res.Status != tc.status || res.Action != tc.subject {
			t.Errorf("%s %s: exit %d status %s, want %d %s\n%s", tc.subject, tc.payload, code, res.Status, tc.exit, tc.status, stdout)
		}
	}
	if r.segura.SessionOpen(session) {
		t.Error("session not dropped")
	}

	// The same event id sent again: the stream drops the publish, send shows the recorded
	// result, and the vendor is not called again.
	again := `{"event_id":"e2e-repeat-1","credential_id":41}`
	first, _, code1 := send(t, r.env, events.CredentialDisable, again, "--wait", "20s")
	second, stderr2, code2 := send(t, r.env, events.CredentialDisable, again, "--wait", "20s")
	if code1 != 0 || code2 != 0 || first != second || !strings.Contains(stderr2, "already holds") {
		t.Errorf("repeat: exit %d/%d, same result %v, stderr %q", code1, code2, first == second, stderr2)
	}
	if n := r.segura.CallsTo("DELETE", "/pam/credential/41"); n != 1 {
		t.Errorf("repeat: vendor called %d times", n)
	}

	// Dry runs through the binary change nothing at either vendor.
	deletes := r.element.CallsTo("DeleteAuthSessionsByUsername")
	for _, tc := range []struct{ subject, payload, want string }{
		{events.CredentialDisable, `{"credential_id":50,"dry_run":true}`, "/api/pam/credential/50"},
		{events.ElementSessionsDelete, `{"username":"operator","dry_run":true}`, "would delete 1"},
	} {
		stdout, _, code := send(t, r.env, tc.subject, tc.payload, "--wait", "20s")
		if code != 0 || !strings.Contains(stdout, `"dry_run": true`) || !strings.Contains(stdout, tc.want) {
			t.Errorf("dry run %s: exit %d\n%s", tc.subject, code, stdout)
		}
	}
	if active, _, _ := r.segura.Credential(50); !active || r.element.CallsTo("DeleteAuthSessionsByUsername") != deletes || r.element.Sessions("operator") != 1 {
		t.Error("a dry run changed state")
	}

	// Usage errors exit 2 without publishing.
	if _, _, code := send(t, r.env, events.SessionDrop); code != 2 {
		t.Errorf("send without payload: exit %d, want 2", code)
	}
	if _, _, code := send(t, r.env, events.SessionDrop, `{}`, "--wait", "soon"); code != 2 {
		t.Errorf("send with a bad --wait: exit %d, want 2", code)
	}

	metrics := w.get(t, "/metrics")
	for _, want := range []string{
		`pamworker_events_processed_total{action="pam.session.drop",status="succeeded"} 1`,
		`pamworker_events_processed_total{action="pam.credential.disable",status="failed"} 1`,
		`pamworker_events_processed_total{action="pam.credential.enable",status="rejected"} 2`,
		`pamworker_api_requests_total{action="pam.session.drop",code="200",target="segura/default"} 1`,
		`pamworker_target_up{target="segura/default"} 1`,
		`pamworker_in_flight 0`,
		`pamworker_event_duration_seconds_bucket{action="pam.session.drop",le=`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if got := w.get(t, "/healthz"); got != "ok\n" {
		t.Errorf("/healthz = %q", got)
	}

	// No secret in any result (allResults scans them, as get scanned /metrics; the debug-level
	// logs are scanned when the worker ends).
	allResults(t, r.js)

	// SIGTERM: a clean exit 0.
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-w.done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
		w.done <- err // for the cleanup
	case <-time.After(30 * time.Second):
		t.Error("worker did not exit after SIGTERM")
	}
}

// TestKillMidLoad SIGKILLs the worker while it works through a backlog, starts a new one, and
// checks that every event ends with exactly one result in the results stream.
func TestKillMidLoad(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	r.segura.SetLatency(15 * time.Millisecond)
	env := append(r.env, "PAMWORKER_CONCURRENCY=8", "PAMWORKER_LOG_LEVEL=info", "PAMWORKER_ACK_WAIT=5s", "PAMWORKER_TARGET_RATE=2000")
	w := startWorker(t, env)

	res := collect(t, r.nc)
	count := res.answered

	const n = 1500
	ids := make([]string, n)
	ctx := context.Background()
	for i := range ids {
		ids[i] = fmt.Sprintf("kill-%04d", i)
		payload := fmt.Sprintf(`{"event_id":%q,"credential_id":%d}`, ids[i], 1+i%100)
		subject := events.CredentialDisable
		if i%2 == 1 {
			subject = events.CredentialEnable
		}
		if _, err := r.js.PublishAsync(subject, []byte(payload), jetstream.WithMsgID(ids[i])); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-r.js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publishing did not complete")
	}

	waitUntil(t, 60*time.Second, func() bool { return count() >= n/5 })
	if err := w.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-w.done
	w.done <- nil
	atKill := count()
	if atKill >= n {
		t.Fatalf("all %d events finished before the kill; the test proves nothing", n)
	}
	t.Logf("killed with %d of %d events answered", atKill, n)

	restarted := time.Now()
	startWorker(t, env)
	waitUntil(t, 60*time.Second, func() bool { return count() > atKill })
	t.Logf("first new result %v after the restart", time.Since(restarted).Round(time.Millisecond))
	waitUntil(t, 120*time.Second, func() bool { return count() >= n })

	// Exactly one result per event in the results stream; none lost.
	perID := map[string]int{}
	cons, err := r.js.OrderedConsumer(ctx, "PAMWORKER_RESULTS", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	info, _ := cons.Info(ctx)
	for i := uint64(0); i < info.NumPending; i++ {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		scanForSecrets(t, "results stream", string(m.Data()))
		var res events.Result
		if err := json.Unmarshal(m.Data(), &res); err != nil {
			t.Fatal(err)
		}
		perID[res.EventID]++
		if res.Status != events.Succeeded {
			t.Errorf("event %s: %s %+v", res.EventID, res.Status, res.Error)
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
	t.Logf("results stream: %d events, lost=%d, duplicated results=%d, vendor calls=%d", len(perID), lost, dup, r.segura.Calls())
	if lost != 0 || dup != 0 {
		t.Errorf("lost=%d duplicated=%d, want 0 and 0", lost, dup)
	}
	// Calls repeated by the crash are bounded by what was in flight or fetched at the kill.
	if extra := r.segura.Calls() - n; extra < 0 || extra > 2*8 {
		t.Errorf("%d vendor calls for %d events: %d repeats, more than the 16 the kill could have caught in flight", r.segura.Calls(), n, extra)
	}
}

// TestTwoReplicasSplitWork: two processes share the durable consumer; each takes part of the
// work and every event is answered once.
func TestTwoReplicasSplitWork(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	r.segura.SetLatency(5 * time.Millisecond)
	env := append(r.env, "PAMWORKER_CONCURRENCY=4", "PAMWORKER_LOG_LEVEL=warn", "PAMWORKER_PARTITIONS=4")
	a, b := startWorker(t, env), startWorker(t, env)
	time.Sleep(3 * time.Second) // both see each other in the members list

	const n = 400
	for i := range n {
		id := fmt.Sprintf("split-%03d", i)
		payload := fmt.Sprintf(`{"event_id":%q,"credential_id":%d}`, id, 1+i%100)
		if _, err := r.js.PublishAsync(events.CredentialDisable, []byte(payload), jetstream.WithMsgID(id)); err != nil {
			t.Fatal(err)
		}
	}
	<-r.js.PublishAsyncComplete()
	processed := func(p *proc) int {
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
	waitUntil(t, 60*time.Second, func() bool { return processed(a)+processed(b) >= n })
	na, nb := processed(a), processed(b)
	t.Logf("replica A processed %d, replica B %d", na, nb)
	if na+nb != n || na == 0 || nb == 0 {
		t.Errorf("replicas processed %d + %d of %d events; want all, split between both", na, nb, n)
	}
	perID := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(allResults(t, r.js)), "\n") {
		var res events.Result
		if err := json.Unmarshal([]byte(line), &res); err != nil {
			t.Fatal(err)
		}
		perID[res.EventID]++
	}
	if len(perID) != n {
		t.Errorf("%d distinct results, want %d", len(perID), n)
	}
	for id, c := range perID {
		if c != 1 {
			t.Errorf("event %s has %d results", id, c)
		}
	}
}

// TestSandboxNewcomer runs the README's first command: the embedded NATS server and the
// simulators, then drops a session with `send` alone.
func TestSandboxNewcomer(t *testing.T) {
	t.Parallel()
	data, ingressAddr := filepath.Join(t.TempDir(), "data"), freeAddr(t)
	env := []string{"PAMWORKER_NATS_LISTEN=" + freeAddr(t), "PAMWORKER_DATA_DIR=" + data}
	w := startWorker(t, append(env, "PAMWORKER_INGRESS_ADDR="+ingressAddr), "--sandbox")
	stdout, stderr, code := send(t, env, events.SessionDrop, `{"session_id":"`+sandbox.SandboxSessions()[0]+`"}`, "--wait", "20s")
	if code != 0 || !strings.Contains(stdout, `"status": "succeeded"`) {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	stdout, _, code = send(t, env, events.CredentialDisable, `{"username":"root","hostname":"db01"}`, "--wait", "20s")
	if code != 0 || !strings.Contains(stdout, "Credential successfully deactivated") {
		t.Fatalf("exit %d\n%s", code, stdout)
	}
	// The ingress, with the demo token the sandbox wrote and logged, as the README's curl.
	raw, err := os.ReadFile(filepath.Join(data, "sandbox-ingress-token"))
	token := strings.TrimSpace(string(raw))
	if err != nil || len(token) < 20 || !strings.Contains(w.logs.String(), token) {
		t.Fatalf("sandbox token: %v %q", err, token)
	}
	ir := &ingressRig{addr: ingressAddr, tokens: map[string]string{"sandbox": token}, seen: observedIn(t)}
	resp, b := ir.post(t, events.CredentialDisable, "sandbox", `{"credential_id":95,"correlation_id":"INC-4711"}`, "Idempotency-Key", "try-1")
	if res := decodeResult(t, b); resp.StatusCode != 200 || res.Status != events.Succeeded || res.RequestedBy != "sandbox" {
		t.Errorf("sandbox ingress: %d\n%s", resp.StatusCode, b)
	}
}

// TestSandboxIngressPortTaken: the sandbox runs without its ingress, and says so, when its
// default address is taken; an address the user chose must be free.
func TestSandboxIngressPortTaken(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:9465")
	if err != nil {
		t.Skip("127.0.0.1:9465 is in use by something else; the case needs it")
	}
	defer ln.Close()
	env := []string{"PAMWORKER_NATS_LISTEN=" + freeAddr(t), "PAMWORKER_DATA_DIR=" + filepath.Join(t.TempDir(), "data")}
	w := startWorker(t, env, "--sandbox")
	if !strings.Contains(w.logs.String(), "running without it") {
		t.Error("no word that the ingress did not start")
	}
	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	taken := other.Addr().String()
	if out, code := runToExit(t, append(env, "PAMWORKER_INGRESS_ADDR="+taken, "PAMWORKER_NATS_LISTEN="+freeAddr(t)), "--sandbox"); code != 1 || !strings.Contains(out, "PAMWORKER_INGRESS_ADDR") {
		t.Errorf("a chosen address taken: exit %d\n%s", code, out)
	}
}

// TestBadConfigStops: a malformed setting stops start-up with one line naming it.
func TestBadConfigStops(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ env, names string }{
		{"PAMWORKER_CONCURRENCY=lots", "PAMWORKER_CONCURRENCY"},
		{"PAMWORKER_CONCURENCY=8", "PAMWORKER_CONCURENCY"},
		// A secret is set as well (settings are separated by spaces): the error must not echo it.
		{"PAMWORKER_SEGURA_URL=https://segura.example.com PAMWORKER_SEGURA_CLIENT_SECRET=" + canarySecret, "PAMWORKER_SEGURA_CLIENT_ID"},
		{"PAMWORKER_HTTP_TIMEOUT=10", "PAMWORKER_HTTP_TIMEOUT"},
	} {
		cmd := exec.Command(binary(t), "run")
		cmd.Env = append(append(baseEnv(), strings.Fields(tc.env)...), "PAMWORKER_DATA_DIR="+t.TempDir())
		out, err := cmd.CombinedOutput()
		scanForSecrets(t, "output of pamworker run with bad configuration", string(out))
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("%s: %v, want exit status 1", redact(tc.env), err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 1 || !strings.Contains(lines[0], tc.names) {
			t.Errorf("%s: output %q, want one line naming %s", redact(tc.env), redact(string(out)), tc.names)
		}
	}
}

func allResults(t *testing.T, js jetstream.JetStream) string {
	t.Helper()
	ctx := context.Background()
	cons, err := js.OrderedConsumer(ctx, "PAMWORKER_RESULTS", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	info, _ := cons.Info(ctx)
	var b strings.Builder
	for i := uint64(0); i < info.NumPending; i++ {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		b.Write(m.Data())
		b.WriteByte('\n')
	}
	scanForSecrets(t, "results stream", b.String())
	return b.String()
}

func waitUntil(t *testing.T, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met in %v", limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestShutdownUnderLoad: SIGTERM while events are in flight — the worker stops fetching, lets
// in-flight events finish within PAMWORKER_SHUTDOWN_TIMEOUT, hands the rest back, and exits 0.
// A second signal exits at once. Either way a new worker finishes every event, none lost.
func TestShutdownUnderLoad(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		signals int
	}{{"one SIGTERM", 1}, {"second signal", 2}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t)
			r.segura.SetLatency(300 * time.Millisecond)
			env := append(r.env, "PAMWORKER_CONCURRENCY=8", "PAMWORKER_LOG_LEVEL=info",
				"PAMWORKER_SHUTDOWN_TIMEOUT=10s", "PAMWORKER_ACK_WAIT=5s")
			w := startWorker(t, env)
			res := collect(t, r.nc)
			count := res.answered

			const n = 120
			for i := range n {
				id := fmt.Sprintf("term-%03d", i)
				payload := fmt.Sprintf(`{"event_id":%q,"credential_id":%d}`, id, 1+i%100)
				if _, err := r.js.PublishAsync(events.CredentialDisable, []byte(payload), jetstream.WithMsgID(id)); err != nil {
					t.Fatal(err)
				}
			}
			<-r.js.PublishAsyncComplete()
			waitUntil(t, 30*time.Second, func() bool { return count() >= 16 })
			start := time.Now()
			for range tc.signals {
				_ = w.cmd.Process.Signal(syscall.SIGTERM)
				time.Sleep(50 * time.Millisecond)
			}
			var exitErr error
			select {
			case exitErr = <-w.done:
				w.done <- exitErr
			case <-time.After(30 * time.Second):
				t.Fatal("worker did not exit")
			}
			stopped, atStop := time.Since(start), count()
			switch tc.signals {
			case 1:
				if exitErr != nil {
					t.Errorf("exit after SIGTERM: %v, want status 0\n%s", exitErr, redact(w.logs.String()))
				}
				if !strings.Contains(w.logs.String(), "stopped consuming") {
					t.Error("no clean stop in the logs")
				}
			case 2:
				if exitErr == nil {
					t.Error("second signal: clean exit; want the process ended by the signal")
				}
			}
			t.Logf("%s: exited after %v with %d of %d answered", tc.name, stopped.Round(time.Millisecond), atStop, n)
			if atStop >= n {
				t.Fatal("everything finished before the signal; the test proves nothing")
			}

			startWorker(t, env)
			waitUntil(t, 90*time.Second, func() bool { return count() >= n })
			for id, c := range res.counts() {
				if c != 1 && tc.signals == 1 {
					t.Errorf("event %s answered %d times", id, c)
				}
			}
			if calls := r.segura.Calls(); calls > n+8 {
				t.Errorf("%d vendor calls for %d events: more repeats than the 8 in flight", calls, n)
			}
		})
	}
}

// TestCrashLoop: an event on which the worker keeps dying (here: SIGKILLed while its call
// hangs, five times in a row) gets a failed result crash_loop from the next worker instead of being run
// again, and the worker then carries on with other events.
func TestCrashLoop(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	env := append(r.env, "PAMWORKER_ACK_WAIT=3s", "PAMWORKER_HTTP_TIMEOUT=2m", "PAMWORKER_LOG_LEVEL=info")
	r.segura.FailNext(5, sandbox.Fault{Delay: 5 * time.Minute}) // the first five calls hang
	const id = "crash-loop-1"
	for kill := 1; kill <= 5; kill++ {
		w := startWorker(t, env)
		if kill == 1 {
			if _, err := r.js.Publish(context.Background(), events.CredentialDisable,
				[]byte(`{"event_id":"`+id+`","credential_id":70}`), jetstream.WithMsgID(id)); err != nil {
				t.Fatal(err)
			}
		}
		waitUntil(t, 30*time.Second, func() bool { return r.segura.Calls() >= int64(kill) })
		_ = w.cmd.Process.Signal(syscall.SIGKILL)
		w.done <- <-w.done
	}
	w := startWorker(t, env)
	var res events.Result
	waitUntil(t, 30*time.Second, func() bool {
		for _, line := range strings.Split(strings.TrimSpace(allResults(t, r.js)), "\n") {
			if json.Unmarshal([]byte(line), &res) == nil && res.EventID == id {
				return true
			}
		}
		return false
	})
	if res.Status != events.Failed || res.Error == nil || res.Error.Code != "crash_loop" {
		t.Fatalf("result %+v, want failed crash_loop", res)
	}
	if n := r.segura.Calls(); n != 5 {
		t.Errorf("vendor called %d times, want 5 (not again after the fifth death)", n)
	}
	// The worker is fine and goes on.
	stdout, _, code := send(t, r.env, events.CredentialDisable, `{"credential_id":71}`, "--wait", "20s")
	if code != 0 {
		t.Errorf("next event: exit %d\n%s\n%s", code, stdout, redact(w.logs.String()))
	}
}

// TestProtectedObjects: events against protected credentials — in any spelling — and against
// the Element account the worker logs in as are refused, logged and counted, with no vendor call.
func TestProtectedObjects(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	env := append(r.env, "PAMWORKER_SEGURA_PROTECTED_CREDENTIALS=94; breakglass-*@*; admin@web01",
		"PAMWORKER_ELEMENT_PROTECTED_USERS=CN=Jane Doe,OU=Ops,DC=example,DC=com",
		"PAMWORKER_SEGURA_PROTECTED_SESSION_OWNERS=BreakGlass")
	w := startWorker(t, env)
	bgSession := ""
	for _, id := range sandbox.SandboxSessions() {
		if sandbox.SandboxSessionOwner(id) == "breakglass" {
			bgSession = id
		}
	}
	for _, tc := range []struct{ subject, payload string }{
		{events.CredentialDisable, `{"credential_id":94}`},
		{events.CredentialDisable, `{"credential_id":"94"}`},
		{events.CustodyRelease, `{"credential_id":94}`},
		{events.CredentialDisable, `{"username":"ADMIN","hostname":"Web01"}`},
		{events.CredentialDisable, `{"username":"аdmin","hostname":"web01"}`}, // Cyrillic а
		{events.CredentialDisable, `{"username":"breakglass-2","hostname":"db07"}`},
		{events.CredentialDisable, `{"credential_id":94,"dry_run":true}`},
		{events.ElementSessionsDelete, `{"username":"pamworker"}`},
		{events.ElementSessionsDelete, `{"username":"cn=jane doe,ou=ops,dc=example,dc=com"}`},
	} {
		stdout, _, code := send(t, env, tc.subject, tc.payload, "--wait", "20s")
		if code != 1 || !strings.Contains(stdout, `"code": "protected_object"`) {
			t.Errorf("%s %s: exit %d, want a protected_object rejection\n%s", tc.subject, tc.payload, code, stdout)
		}
	}
	if n := r.segura.Calls() + r.element.Calls(); n != 0 {
		t.Errorf("%d vendor calls for protected objects", n)
	}
	// A drop names only the session: the worker looks up who opened it, and refuses a
	// protected owner's session, dry run or not, with one read and no drop.
	for _, payload := range []string{`{"session_id":"` + bgSession + `"}`, `{"session_id":"` + bgSession + `","dry_run":true}`} {
		stdout, _, code := send(t, env, events.SessionDrop, payload, "--wait", "20s")
		if code != 1 || !strings.Contains(stdout, `"code": "protected_object"`) || !strings.Contains(stdout, `opened by \"breakglass\"`) {
			t.Errorf("drop %s: exit %d, want a protected_object rejection naming the owner\n%s", payload, code, stdout)
		}
	}
	if !r.segura.SessionOpen(bgSession) || r.segura.CallsTo("DELETE", "/pam/session") != 0 {
		t.Errorf("the break-glass session was touched: open %v", r.segura.SessionOpen(bgSession))
	}
	other := sandbox.SandboxSessions()[0]
	if stdout, _, code := send(t, env, events.SessionDrop, `{"session_id":"`+other+`"}`, "--wait", "20s"); code != 0 ||
		!strings.Contains(stdout, `"session_owner": "`+sandbox.SandboxSessionOwner(other)+`"`) || r.segura.SessionOpen(other) {
		t.Errorf("drop of %s's session: exit %d\n%s", sandbox.SandboxSessionOwner(other), code, stdout)
	}
	m := w.get(t, "/metrics")
	for _, want := range []string{`pamworker_protected_refused_total{action="pam.credential.disable"} 6`,
		`pamworker_protected_refused_total{action="pam.session.drop"} 2`} {
		if !strings.Contains(m, want) {
			t.Errorf("protected refusals not counted: no %s\n%s", want, m)
		}
	}
	if !strings.Contains(w.logs.String(), `"level":"WARN","msg":"event against a protected object refused"`) {
		t.Error("no warning logged")
	}
	// Everything else still runs.
	if _, _, code := send(t, env, events.CredentialDisable, `{"credential_id":96}`, "--wait", "20s"); code != 0 {
		t.Errorf("unprotected credential: exit %d", code)
	}
}

// TestPauseResume: the kill switch stops every action without losing one, survives a worker
// restart, shows on /readyz and in pamworker_paused, and resume lets everything through.
func TestPauseResume(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	w := startWorker(t, r.env)
	run := func(args ...string) (string, int) {
		stdout, stderr, code := cli(t, r.env, args...)
		return stdout + stderr, code
	}
	if out, code := run("pause"); code != 0 || !strings.Contains(out, "paused") {
		t.Fatalf("pause: exit %d %s", code, out)
	}
	const n = 20
	for i := range n {
		id := fmt.Sprintf("paused-%02d", i)
		if _, err := r.js.Publish(context.Background(), events.CredentialDisable,
			[]byte(fmt.Sprintf(`{"event_id":%q,"credential_id":%d}`, id, 10+i)), jetstream.WithMsgID(id)); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 10*time.Second, func() bool { return strings.Contains(w.get(t, "/readyz"), "paused by an operator") })
	if !strings.Contains(w.get(t, "/metrics"), "pamworker_paused 1") {
		t.Error("pamworker_paused is not 1")
	}
	// A restarted worker stays paused.
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	w.done <- <-w.done
	w = startWorker(t, r.env)
	time.Sleep(2 * time.Second)
	if n := r.segura.Calls(); n != 0 {
		t.Fatalf("%d vendor calls while paused", n)
	}
	if out, code := run("resume"); code != 0 || !strings.Contains(out, "resumed") {
		t.Fatalf("resume: exit %d %s", code, out)
	}
	waitUntil(t, 30*time.Second, func() bool {
		rs, err := r.js.Stream(context.Background(), "PAMWORKER_RESULTS")
		return err == nil && rs.CachedInfo().State.Msgs >= n
	})
	if n := r.segura.Calls(); n != 20 {
		t.Errorf("%d vendor calls after resume, want 20", n)
	}
	waitUntil(t, 10*time.Second, func() bool { return !strings.Contains(w.get(t, "/readyz"), "paused") })
}

// TestPauseUnderLoad: the kill switch thrown while a playbook is publishing. Once the events
// already in a vendor call have finished, no vendor call is made while paused, publishing
// goes on, and after resume every event is answered exactly once.
func TestPauseUnderLoad(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	startWorker(t, r.env)
	res := collect(t, r.nc)
	const n, first = 400, 501
	published := make(chan struct{})
	paused := make(chan struct{})
	go func() {
		defer close(published)
		for i := range n {
			if i == n/4 {
				close(paused) // pause a quarter of the way in, while events are in flight
			}
			id := fmt.Sprintf("load-%03d", i)
			payload := fmt.Sprintf(`{"event_id":%q,"credential_id":%d,"requested_by":"playbook"}`, id, first+i)
			if _, err := r.js.PublishAsync(events.CredentialDisable, []byte(payload), jetstream.WithMsgID(id)); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		<-r.js.PublishAsyncComplete()
	}()
	<-paused
	if out, stderr, code := cli(t, r.env, "pause"); code != 0 {
		t.Fatalf("pause: exit %d %s %s", code, out, stderr)
	}
	// What was already in a call finishes; then the count must stand still.
	last, stable := r.segura.Calls(), time.Now()
	waitUntil(t, 30*time.Second, func() bool {
		if c := r.segura.Calls(); c != last {
			last, stable = c, time.Now()
		}
		return time.Since(stable) > time.Second
	})
	<-published
	time.Sleep(2 * time.Second)
	if c := r.segura.Calls(); c != last {
		t.Fatalf("%d vendor calls while paused (from %d to %d)", c-last, last, c)
	}
	if last >= n {
		t.Fatalf("all %d events ran before the pause took effect: the test proves nothing", last)
	}
	t.Logf("paused after %d of %d events; %d waited", last, n, n-last)
	if out, stderr, code := cli(t, r.env, "resume"); code != 0 {
		t.Fatalf("resume: exit %d %s %s", code, out, stderr)
	}
	waitUntil(t, 60*time.Second, func() bool { return res.count("load", events.Succeeded) == n })
	for id, c := range res.counts() {
		if c != 1 {
			t.Errorf("%s: %d results", id, c)
		}
	}
	if c := r.segura.Calls(); c != n {
		t.Errorf("%d vendor calls for %d events", c, n)
	}
}
