package worker_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pamworker/pamworker/broker"
	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/handlers"
	"github.com/pamworker/pamworker/sandbox"
	"github.com/pamworker/pamworker/worker"
)

type workerConfig = worker.Config

var jsonUnmarshal = json.Unmarshal

// TestActions drives every action of the contract through the real stream and consumer to the
// simulators, and checks each outcome: applied, already applied (noop), refused.
func TestActions(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	session := b.segura.AddSession()

	tests := []struct {
		name       string
		subject    string
		payload    string
		status     events.Status
		noop       bool
		code       string
		wantMsgSub string
	}{
		{"drop session", events.SessionDrop, `{"session_id":"` + session + `"}`, events.Succeeded, false, "", "Session dropped successfully"},
		{"drop unknown session", events.SessionDrop, `{"session_id":"no-such-session"}`, events.Failed, false, "session_drop_error", "dropping session"},
		{"disable by id", events.CredentialDisable, `{"credential_id":7}`, events.Succeeded, false, "", "deactivated"},
		{"disable again is a noop (1008)", events.CredentialDisable, `{"credential_id":"7"}`, events.Succeeded, true, "", "1008"},
		{"enable", events.CredentialEnable, `{"credential_id":7}`, events.Succeeded, false, "", "activated"},
		{"enable again is a noop (1043)", events.CredentialEnable, `{"credential_id":7}`, events.Succeeded, true, "", "1043"},
		{"disable by username@hostname", events.CredentialDisable, `{"username":"svc08","hostname":"host08"}`, events.Succeeded, false, "", "deactivated"},
		{"release custody", events.CustodyRelease, fmt.Sprintf(`{"credential_id":%d}`, sandbox.CustodyCredentialID), events.Succeeded, false, "", "released"},
		{"release custody not held is a noop (1018)", events.CustodyRelease, `{"credential_id":9}`, events.Succeeded, true, "", "1018"},
		{"unknown credential (1007)", events.CredentialDisable, `{"credential_id":999999}`, events.Failed, false, "1007", "not found"},
		{"no access (1009)", events.CredentialDisable, fmt.Sprintf(`{"credential_id":%d}`, sandbox.NoAccessCredentialID), events.Failed, false, "1009", "No access"},
		{"not a credential (1010)", events.CredentialDisable, fmt.Sprintf(`{"credential_id":%d}`, sandbox.NotCredentialID), events.Failed, false, "1010", "not a credential"},
		{"element sessions", events.ElementSessionsDelete, `{"username":"admin","auth_method":"cluster"}`, events.Succeeded, false, "", "deleted 2"},
		{"element, none left", events.ElementSessionsDelete, `{"username":"admin"}`, events.Succeeded, true, "", "no auth sessions"},
	}
	for _, tc := range tests { // in order: later cases depend on the state earlier ones leave
		id := b.send(t, tc.subject, tc.payload)
		r := b.result(t, id)
		if r.Status != tc.status || r.Noop != tc.noop || !strings.Contains(r.Message, tc.wantMsgSub) {
			t.Errorf("%s: got status=%s noop=%v message=%q, want %s noop=%v containing %q", tc.name, r.Status, r.Noop, r.Message, tc.status, tc.noop, tc.wantMsgSub)
		}
		if tc.code != "" && (r.Error == nil || r.Error.Code != tc.code || r.Error.Retryable) {
			t.Errorf("%s: error = %+v, want code %s, not retryable", tc.name, r.Error, tc.code)
		}
		if r.Attempts != 1 {
			t.Errorf("%s: attempts = %d, want 1 (refusals and successes are not retried)", tc.name, r.Attempts)
		}
		if r.Action != tc.subject || r.Target != "default" || r.FinishedAt == (events.Timestamp{}) {
			t.Errorf("%s: result fields %+v", tc.name, r)
		}
	}
	if b.segura.SessionOpen(session) {
		t.Error("session still open after drop")
	}
	if active, _, _ := b.segura.Credential(8); active {
		t.Error("svc08@host08 still active after disable by name")
	}
	if _, custody, _ := b.segura.Credential(sandbox.CustodyCredentialID); custody {
		t.Error("credential 94 still in custody")
	}
	if n := b.element.Sessions("admin"); n != 0 {
		t.Errorf("admin has %d Element sessions left", n)
	}
	if got := b.metric(t, "pamworker_events_processed_total", map[string]string{"action": events.CredentialDisable, "status": "failed"}); got != 3 {
		t.Errorf("failed disables counted %v, want 3", got)
	}
}

// TestRejections: bad input gets a rejected result naming the problem, no vendor call, and the
// worker carries on.
func TestRejections(t *testing.T) {
	t.Parallel()
	b := setup(t, options{cfg: func() (c workerConfig) { c = fastConfig(); c.MaxEventBytes = 1024; return }()})
	tests := []struct {
		name, subject, payload, code, inMessage string
	}{
		{"malformed JSON", events.SessionDrop, `{"session_id":`, "invalid_event", "JSON"},
		{"not an object", events.SessionDrop, `[1,2]`, "invalid_event", "JSON object"},
		{"wrong type", events.CredentialEnable, `{"credential_id":true}`, "invalid_event", "credential_id"},
		{"unknown field", events.CredentialDisable, `{"credential_id":5,"dryrun":true}`, "invalid_event", "dryrun"},
		{"missing id", events.SessionDrop, `{}`, "invalid_event", "session_id is required"},
		{"path traversal", events.SessionDrop, `{"session_id":".."}`, "invalid_event", "session_id"},
		{"username with @", events.CredentialDisable, `{"username":"a@b","hostname":"h"}`, "invalid_event", "@"},
		{"reply_to not an inbox", events.SessionDrop, `{"session_id":"x","reply_to":"pam.credential.disable"}`, "invalid_event", "reply_to"},
		{"too large", events.SessionDrop, `{"session_id":"x","reason":"` + strings.Repeat("a", 2000) + `"}`, "event_too_large", "limit is 1024"},
		{"unknown subject", "pam.credential.explode", `{"credential_id":5}`, "unknown_action", "pam.credential.explode"},
		{"unknown target", events.SessionDrop, `{"session_id":"x","target":"mars"}`, "target_not_configured", "mars"},
	}
	for _, tc := range tests {
		id := ulid.Make().String()
		b.publish(t, tc.subject, tc.payload, id) // the id comes from Nats-Msg-Id when the payload cannot give one
		r := b.result(t, id)
		if r.Status != events.Rejected || r.Error == nil || r.Error.Code != tc.code || !strings.Contains(r.Message, tc.inMessage) {
			t.Errorf("%s: got %s %+v %q, want rejected %s mentioning %q", tc.name, r.Status, r.Error, r.Message, tc.code, tc.inMessage)
		}
	}
	if n := b.segura.Calls() + b.element.Calls(); n != 0 {
		t.Errorf("%d vendor calls for rejected events", n)
	}
	// Still working after all that.
	id := b.send(t, events.CredentialDisable, `{"credential_id":3}`)
	if r := b.result(t, id); r.Status != events.Succeeded {
		t.Errorf("worker unhealthy after rejections: %+v", r)
	}
}

func TestTargetNotConfigured(t *testing.T) {
	t.Parallel()
	b := setup(t, options{noElement: true})
	id := b.send(t, events.ElementSessionsDelete, `{"username":"admin"}`)
	r := b.result(t, id)
	if r.Status != events.Rejected || r.Error.Code != events.CodeTargetNotConfigured {
		t.Fatalf("got %+v", r)
	}
	if b.element.Calls() != 0 {
		t.Error("unconfigured target was called")
	}
}

func TestRetriesThenSuccess(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	b.segura.FailNext(1, sandbox.Fault{Status: 503})
	b.segura.FailNext(1, sandbox.Fault{Status: 500})
	id := b.send(t, events.CredentialDisable, `{"credential_id":11}`)
	r := b.result(t, id)
	if r.Status != events.Succeeded || r.Attempts != 3 {
		t.Fatalf("got status %s after %d attempts, want succeeded after 3: %+v", r.Status, r.Attempts, r)
	}
	if got := b.metric(t, "pamworker_retries_total", map[string]string{"action": events.CredentialDisable, "reason": "server"}); got != 2 {
		t.Errorf("retries_total{reason=server} = %v, want 2", got)
	}
	for code, want := range map[string]float64{"503": 1, "500": 1, "200": 1} {
		if got := b.metric(t, "pamworker_api_requests_total", map[string]string{"action": events.CredentialDisable, "code": code, "target": "segura/default"}); got != want {
			t.Errorf("api_requests_total{code=%s} = %v, want %v", code, got, want)
		}
	}
}

func TestElementTransientRetried(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	b.element.FailNext(1, sandbox.ElementFault{Name: "xDBVersionMismatch"})
	b.element.FailNext(1, sandbox.ElementFault{Name: "xNotReadyForIO"})
	id := b.send(t, events.ElementSessionsDelete, `{"username":"operator"}`)
	r := b.result(t, id)
	if r.Status != events.Succeeded || r.Attempts != 3 {
		t.Fatalf("got %+v", r)
	}
	if got := b.metric(t, "pamworker_retries_total", map[string]string{"reason": "transient"}); got != 2 {
		t.Errorf("retries_total{reason=transient} = %v, want 2", got)
	}
}

// TestRetryAfterHonoured: a 429 with Retry-After is retried no sooner than the server asked.
func TestRetryAfterHonoured(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	c.RetryMaxElapsed = 5 * time.Second
	b := setup(t, options{cfg: c})
	b.segura.FailNext(1, sandbox.Fault{Status: 429, RetryAfter: "1"})
	id := b.send(t, events.CredentialDisable, `{"credential_id":12}`)
	r := b.result(t, id)
	if r.Status != events.Succeeded || r.Attempts != 2 {
		t.Fatalf("got %+v", r)
	}
	at := b.seguraHTTP.arrivals()
	if len(at) != 2 {
		t.Fatalf("%d API requests, want 2", len(at))
	}
	// A lower bound, not a timing assertion: retrying sooner would disobey the server.
	if gap := at[1].Sub(at[0]); gap < time.Second {
		t.Errorf("retried after %v, before the 1s Retry-After", gap)
	}
	if got := b.metric(t, "pamworker_retries_total", map[string]string{"reason": "rate_limit"}); got != 1 {
		t.Errorf("retries_total{reason=rate_limit} = %v", got)
	}
}

// TestRetriesExhausted: each delivery spends its in-process budget, JetStream redelivers, and
// only after MaxDeliveries spent budgets does the event fail — once.
func TestRetriesExhausted(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	c.BreakerThreshold = -1 // a lone event: the breaker is tested on its own below
	b := setup(t, options{cfg: c})
	b.segura.FailNext(1000, sandbox.Fault{Status: 502})
	id := b.send(t, events.CredentialDisable, `{"credential_id":13}`)
	r := b.result(t, id)
	if r.Status != events.Failed || r.Error == nil || !r.Error.Retryable || r.Error.HTTPStatus != 502 {
		t.Fatalf("got %+v", r)
	}
	if got := b.metric(t, "pamworker_deferred_total", map[string]string{"reason": "retries_spent"}); got != 2 {
		t.Errorf("deferred{retries_spent} = %v, want 2 (3 deliveries)", got)
	}
	calls := b.segura.Calls()
	time.Sleep(500 * time.Millisecond) // longer than any redelivery delay in fastConfig
	if b.segura.Calls() != calls || b.resultCount(id) != 1 {
		t.Errorf("event kept running after its failed result: calls %d → %d, results %d", calls, b.segura.Calls(), b.resultCount(id))
	}
	if active, _, _ := b.segura.Credential(13); !active {
		t.Error("the simulator applied a change it answered 502 to")
	}
}

// TestAttemptTimeout: a vendor slower than the attempt timeout is retried.
func TestAttemptTimeout(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	c.AttemptTimeout = 200 * time.Millisecond
	c.RetryMaxElapsed = 3 * time.Second
	b := setup(t, options{cfg: c})
	b.segura.FailNext(1, sandbox.Fault{Delay: 2 * time.Second})
	id := b.send(t, events.CredentialDisable, `{"credential_id":14}`)
	r := b.result(t, id)
	if r.Status != events.Succeeded || r.Attempts != 2 {
		t.Fatalf("got %+v", r)
	}
	if got := b.metric(t, "pamworker_api_requests_total", map[string]string{"code": "timeout"}); got != 1 {
		t.Errorf("api_requests_total{code=timeout} = %v, want 1", got)
	}
	if got := b.metric(t, "pamworker_retries_total", map[string]string{"reason": "timeout"}); got != 1 {
		t.Errorf("retries_total{reason=timeout} = %v, want 1", got)
	}
}

// TestTokenExpiresMidRun: a token the API stops accepting is refetched once, transparently.
func TestTokenExpiresMidRun(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	if r := b.result(t, b.send(t, events.CredentialDisable, `{"credential_id":15}`)); r.Status != events.Succeeded {
		t.Fatalf("first: %+v", r)
	}
	b.segura.ExpireTokens()
	r := b.result(t, b.send(t, events.CredentialDisable, `{"credential_id":16}`))
	if r.Status != events.Succeeded || r.Attempts != 1 {
		t.Fatalf("after expiry: %+v", r)
	}
	if n := b.segura.TokenRequests(); n != 2 {
		t.Errorf("token requests = %d, want 2 (one at start, one after expiry)", n)
	}
	if got := b.metric(t, "pamworker_api_requests_total", map[string]string{"code": "401"}); got != 1 {
		t.Errorf("401s = %v, want 1", got)
	}
}

// TestTargetRefusesWorker is the systemic case: the vendor locks the worker out. No event fails;
// they wait, the target is reported down, and everything proceeds once the vendor relents.
func TestTargetRefusesWorker(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		breakIt func(b *bundle)
		fixIt   func(b *bundle)
	}{
		{"authorization revoked", func(b *bundle) { b.segura.SetRevoked(true) }, func(b *bundle) { b.segura.SetRevoked(false) }},
		{"client secret rotated", func(b *bundle) { b.segura.SetClientSecret("rotated"); b.segura.ExpireTokens() },
			func(b *bundle) { b.segura.SetClientSecret("s3cret-canary") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, options{})
			tc.breakIt(b)
			var ids []string
			for i := 20; i < 25; i++ {
				ids = append(ids, b.send(t, events.CredentialDisable, fmt.Sprintf(`{"credential_id":%d}`, i)))
			}
			waitFor(t, 10*time.Second, "target down", func() bool {
				return b.metric(t, "pamworker_target_up", map[string]string{"target": "segura/default"}) == 0
			})
			ready, why := b.w.Ready()
			if !ready || !strings.Contains(strings.Join(why, "\n"), "segura/default") {
				t.Errorf("Ready() = %v %q: want ready (consuming) with the down target named", ready, why)
			}
			time.Sleep(600 * time.Millisecond) // several TargetDownDelays: events must wait, not fail
			for _, id := range ids {
				if n := b.resultCount(id); n != 0 {
					t.Fatalf("event %s got a result while the target refused the worker", id)
				}
			}
			// An Element event is not held up by Segura's trouble.
			if r := b.result(t, b.send(t, events.ElementSessionsDelete, `{"username":"operator"}`)); r.Status != events.Succeeded {
				t.Errorf("element event: %+v", r)
			}
			tc.fixIt(b)
			for _, id := range ids {
				if r := b.result(t, id); r.Status != events.Succeeded {
					t.Errorf("after recovery %s: %+v", id, r)
				}
			}
			if b.metric(t, "pamworker_target_up", map[string]string{"target": "segura/default"}) != 1 {
				t.Error("target_up not back to 1")
			}
			if got := b.metric(t, "pamworker_events_processed_total", map[string]string{"status": "failed"}); got != 0 {
				t.Errorf("%v events failed because the worker was locked out", got)
			}
		})
	}
}

// TestDuplicateEventID: the same event id published twice (a playbook retry that bypasses the
// stream's dedupe window) calls the vendor once and is answered twice with the same result.
func TestDuplicateEventID(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	id := ulid.Make().String()
	payload := `{"event_id":"` + id + `","credential_id":30}`
	b.publish(t, events.CredentialDisable, payload, "first-"+id)
	first := b.result(t, id)

	inbox := b.nc.NewRespInbox()
	sub, err := b.nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	b.publish(t, events.CredentialDisable, `{"event_id":"`+id+`","credential_id":30,"reply_to":"`+inbox+`"}`, "second-"+id)
	msg, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal("no answer on reply_to for the duplicate:", err)
	}
	var again events.Result
	if err := jsonUnmarshal(msg.Data, &again); err != nil {
		t.Fatal(err)
	}
	if again.Status != events.Succeeded || again.FinishedAt != first.FinishedAt || again.Attempts != first.Attempts {
		t.Errorf("duplicate answered with %+v, want the recorded %+v", again, first)
	}
	if n := b.segura.CallsTo("DELETE", "/pam/credential/30"); n != 1 {
		t.Errorf("vendor called %d times for one event id", n)
	}
	if got := b.metric(t, "pamworker_duplicates_total", map[string]string{"action": events.CredentialDisable}); got != 1 {
		t.Errorf("duplicates_total = %v", got)
	}
	if n := b.streamResults(t, events.CredentialDisable, id); n != 1 {
		t.Errorf("results stream holds %d results for the event, want exactly 1", n)
	}
}

func TestReplyToAndCloudEvents(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	inbox := b.nc.NewRespInbox()
	sub, err := b.nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	ce := `{"specversion":"1.0","id":"ce-123","source":"soar://playbook/7","type":"pam.credential.disable",` +
		`"time":"` + time.Now().UTC().Format(time.RFC3339) + `","data":{"credential_id":31,"correlation_id":"INC-4711","requested_by":"soar","reply_to":"` + inbox + `"}}`
	b.publish(t, events.CredentialDisable, ce, "")
	msg, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var r events.Result
	if err := jsonUnmarshal(msg.Data, &r); err != nil {
		t.Fatal(err)
	}
	if r.EventID != "ce-123" || r.CorrelationID != "INC-4711" || r.RequestedBy != "soar" || r.Status != events.Succeeded {
		t.Errorf("reply: %+v", r)
	}
	if got := b.result(t, "ce-123"); got.Status != events.Succeeded {
		t.Errorf("results stream: %+v", got)
	}
}

// TestDryRun: nothing that changes state is called.
func TestDryRun(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	r := b.result(t, b.send(t, events.CredentialDisable, `{"credential_id":32,"dry_run":true}`))
	if r.Status != events.Succeeded || !r.DryRun || !strings.Contains(jsonOf(r.Details), "/api/pam/credential/32") {
		t.Errorf("segura dry run: %+v", r)
	}
	if b.segura.Calls() != 0 {
		t.Errorf("dry run called Segura %d times", b.segura.Calls())
	}
	r = b.result(t, b.send(t, events.ElementSessionsDelete, `{"username":"admin","dry_run":true}`))
	if r.Status != events.Succeeded || !strings.Contains(r.Message, "would delete 2") {
		t.Errorf("element dry run: %+v", r)
	}
	if n := b.element.CallsTo("DeleteAuthSessionsByUsername"); n != 0 || b.element.Sessions("admin") != 2 {
		t.Errorf("dry run deleted sessions: %d delete calls, %d sessions left", n, b.element.Sessions("admin"))
	}
}

// TestSlowVendorKeptInProgress: an attempt longer than AckWait is not redelivered to another
// consumer meanwhile, so the vendor is called once.
func TestSlowVendorKeptInProgress(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	c.AckWait = time.Second
	c.AttemptTimeout = 10 * time.Second
	b := setup(t, options{cfg: c})
	b.segura.SetLatency(2500 * time.Millisecond)
	id := b.send(t, events.CredentialDisable, `{"credential_id":33}`)
	if r := b.result(t, id); r.Status != events.Succeeded || r.Attempts != 1 {
		t.Fatalf("got %+v", r)
	}
	if n := b.segura.Calls(); n != 1 {
		t.Errorf("vendor called %d times; the message was redelivered while in progress", n)
	}
}

// TestConcurrencyBound: never more calls at once than configured.
func TestConcurrencyBound(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	c.Concurrency = 3
	b := setup(t, options{cfg: c})
	b.segura.SetLatency(100 * time.Millisecond)
	var ids []string
	for i := 40; i < 55; i++ {
		ids = append(ids, b.send(t, events.CredentialDisable, fmt.Sprintf(`{"credential_id":%d}`, i)))
	}
	for _, id := range ids {
		if r := b.result(t, id); r.Status != events.Succeeded {
			t.Errorf("%+v", r)
		}
	}
	if m := b.seguraHTTP.maxSeen.Load(); m > 3 || m < 2 {
		t.Errorf("max concurrent vendor calls = %d, want ≤ 3 (and >1: the work is parallel)", m)
	}
}

// TestRepeatWithinDuplicateWindow: a repeat sent with the same Nats-Msg-Id never reaches the
// worker (the stream drops it), which is why first deliveries skip the ledger read.
func TestRepeatWithinDuplicateWindow(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	id := ulid.Make().String()
	payload := `{"event_id":"` + id + `","credential_id":34}`
	b.publish(t, events.CredentialDisable, payload, id)
	b.result(t, id)
	ack, err := b.js.Publish(t.Context(), events.CredentialDisable, []byte(payload), jetstreamMsgID(id))
	if err != nil || !ack.Duplicate {
		t.Fatalf("second publish: %+v %v, want a duplicate ack", ack, err)
	}
	if n := b.segura.CallsTo("DELETE", "/pam/credential/34"); n != 1 {
		t.Errorf("vendor called %d times", n)
	}
}

// TestLedgerReadWhenWindowIsShort: when the stream's duplicate window is shorter than the
// ledger TTL, a repeat arriving after the window is still answered from the ledger.
func TestLedgerReadWhenWindowIsShort(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	c.Topology = worker.DefaultTopology()
	c.Topology.DedupWindow = time.Second
	b := setup(t, options{cfg: c})
	id := ulid.Make().String()
	payload := `{"event_id":"` + id + `","credential_id":35}`
	b.publish(t, events.CredentialDisable, payload, id)
	first := b.result(t, id)
	time.Sleep(1500 * time.Millisecond) // past the window: the stream accepts the repeat
	ack, err := b.js.Publish(t.Context(), events.CredentialDisable, []byte(payload), jetstreamMsgID(id))
	if err != nil || ack.Duplicate {
		t.Fatalf("repeat after the window: %+v %v, want it accepted", ack, err)
	}
	waitFor(t, 10*time.Second, "duplicate answered", func() bool {
		return b.metric(t, "pamworker_duplicates_total", map[string]string{"action": events.CredentialDisable}) == 1
	})
	if n := b.segura.CallsTo("DELETE", "/pam/credential/35"); n != 1 {
		t.Errorf("vendor called %d times for one event id", n)
	}
	if first.Status != events.Succeeded {
		t.Errorf("first: %+v", first)
	}
}

// TestStaleEvents: an event older than MaxEventAge — by its own time or, failing that, by when
// the stream took it — is rejected stale_event and never reaches the vendor.
func TestStaleEvents(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	c.MaxEventAge = time.Minute
	b := setup(t, options{cfg: c})
	old := time.Now().Add(-2 * time.Minute).UTC().Format(time.RFC3339)
	fresh := time.Now().UTC().Format(time.RFC3339)
	future := time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339)

	r := b.result(t, b.send(t, events.CredentialDisable, `{"credential_id":36,"time":"`+old+`"}`))
	if r.Status != events.Rejected || r.Error.Code != events.CodeStaleEvent {
		t.Errorf("old event: %+v", r)
	}
	ce := `{"specversion":"1.0","id":"ce-stale","source":"s","type":"t","time":"` + old + `","data":{"credential_id":36}}`
	b.publish(t, events.CredentialDisable, ce, "")
	if r := b.result(t, "ce-stale"); r.Status != events.Rejected || r.Error.Code != events.CodeStaleEvent {
		t.Errorf("old CloudEvent: %+v", r)
	}
	if n := b.segura.Calls(); n != 0 {
		t.Errorf("stale events called the vendor %d times", n)
	}
	if active, _, _ := b.segura.Credential(36); !active {
		t.Error("a stale disable was applied")
	}
	// A future-dated time does not make an event younger than the stream says it is, and a
	// fresh event runs.
	if r := b.result(t, b.send(t, events.CredentialDisable, `{"credential_id":37,"time":"`+future+`"}`)); r.Status != events.Succeeded {
		t.Errorf("future-dated but just published: %+v", r)
	}
	if r := b.result(t, b.send(t, events.CredentialDisable, `{"credential_id":38,"time":"`+fresh+`"}`)); r.Status != events.Succeeded {
		t.Errorf("fresh: %+v", r)
	}
}

// TestCircuitBreakerBoundsRequests: a flood against an API that answers 503 opens the breaker;
// from then on one probe at a time calls it, the events wait (none fails), and the request
// count stays within the rate limit. When the API recovers, every event completes.
func TestCircuitBreakerBoundsRequests(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	const rate = 60
	c.BreakerThreshold = 5
	c.BreakerCooldown = 300 * time.Millisecond
	c.BreakerMaxCool = time.Second
	c.MaxDeliveries = 1000 // failure is not what this test is about
	b := setup(t, options{cfg: c, rate: rate})
	b.segura.FailNext(1_000_000, sandbox.Fault{Status: 503})

	const n = 240
	ids := make([]string, n)
	start := time.Now()
	for i := range ids {
		ids[i] = b.send(t, events.CredentialDisable, fmt.Sprintf(`{"credential_id":%d}`, 1+i%100))
	}
	waitFor(t, 10*time.Second, "circuit open", func() bool {
		return b.metric(t, "pamworker_target_up", map[string]string{"target": "segura/default"}) == 0
	})
	ready, why := b.w.Ready()
	if !ready || !strings.Contains(strings.Join(why, "\n"), "circuit open") {
		t.Errorf("Ready() = %v %q, want ready with the open circuit named", ready, why)
	}
	time.Sleep(3 * time.Second)
	calls, elapsed := b.segura.Calls(), time.Since(start)
	// An upper bound, which slowness can only make easier: the limiter's burst plus its rate.
	if limit := int64(rate) + int64(rate*elapsed.Seconds()); calls > limit {
		t.Errorf("%d API calls in %v, above the rate limit's %d", calls, elapsed.Round(time.Millisecond), limit)
	}
	if calls > 60 {
		t.Errorf("%d API calls for %d events against a failing API: the breaker did not stop the flood", calls, n)
	}
	t.Logf("%d events, %d API calls in %v while the API answered 503", n, calls, elapsed.Round(time.Millisecond))
	for _, id := range ids {
		if b.resultCount(id) != 0 {
			t.Fatalf("event %s got a result while its target was failing", id)
		}
	}

	b.segura.ClearFaults()
	for _, id := range ids {
		if r := b.result(t, id); r.Status != events.Succeeded {
			t.Errorf("after recovery: %+v", r)
		}
	}
	if b.metric(t, "pamworker_target_up", map[string]string{"target": "segura/default"}) != 1 {
		t.Error("target_up not back to 1")
	}
}

// TestBrokerRestart: the NATS server restarts under the worker; without a worker restart it
// reconnects and every event, before and after, gets its result.
func TestBrokerRestart(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	b.segura.SetLatency(20 * time.Millisecond)
	var ids []string
	for i := range 40 {
		ids = append(ids, b.send(t, events.CredentialDisable, fmt.Sprintf(`{"credential_id":%d}`, 1+i)))
	}
	b.restartBroker(t, 500*time.Millisecond)
	waitFor(t, 20*time.Second, "reconnected and consuming", func() bool { ok, _ := b.w.Ready(); return ok })
	for i := range 40 {
		ids = append(ids, b.send(t, events.CredentialEnable, fmt.Sprintf(`{"credential_id":%d}`, 1+i)))
	}
	for _, id := range ids {
		if r := b.result(t, id); r.Status != events.Succeeded {
			t.Errorf("%+v", r)
		}
	}
}

// TestConsumerDeleted: someone deletes the worker's durable consumer; the worker recreates it
// where it was, and the events published meanwhile are processed.
func TestConsumerDeleted(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	first := b.send(t, events.CredentialDisable, `{"credential_id":60}`)
	if r := b.result(t, first); r.Status != events.Succeeded {
		t.Fatal(r)
	}
	name := worker.DefaultTopology().PartitionConsumer(0)
	if err := b.js.DeleteConsumer(t.Context(), "PAMWORKER_EVENTS", name); err != nil {
		t.Fatal(err)
	}
	id := b.send(t, events.CredentialDisable, `{"credential_id":61}`)
	if r := b.result(t, id); r.Status != events.Succeeded {
		t.Errorf("after the consumer was deleted: %+v", r)
	}
	if _, err := b.js.Consumer(t.Context(), "PAMWORKER_EVENTS", name); err != nil {
		t.Errorf("consumer not recreated: %v", err)
	}
	// The recreated consumer resumed where the worker was: the first event is not answered
	// again.
	time.Sleep(500 * time.Millisecond)
	if n := b.resultCount(first); n != 1 {
		t.Errorf("the first event has %d results: the recreated consumer started from the beginning", n)
	}
}

// TestLossyStreamRefused: the worker will not run on a stream that would drop events quietly,
// and says which setting is the problem.
func TestLossyStreamRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  jetstream.StreamConfig
		want string
	}{
		{"per-subject limit", jetstream.StreamConfig{MaxMsgsPerSubject: 1}, "max_msgs_per_subject"},
		{"discard old when full", jetstream.StreamConfig{MaxMsgs: 1000, Discard: jetstream.DiscardOld}, "max_msgs"},
		{"short max age", jetstream.StreamConfig{MaxAge: time.Minute}, "max_age"},
		{"memory storage", jetstream.StreamConfig{Storage: jetstream.MemoryStorage}, "memory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ns, err := broker.Start(broker.Embedded{Listen: "127.0.0.1:-1", DataDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(ns.Shutdown)
			nc, err := nats.Connect(ns.ClientURL())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(nc.Close)
			js, _ := jetstream.New(nc)
			sc := tc.cfg
			sc.Name, sc.Subjects = "PAMWORKER_EVENTS", []string{"pam.>", "element.>"}
			if _, err := js.CreateStream(t.Context(), sc); err != nil {
				t.Fatal(err)
			}
			w, err := worker.New(nc, handlers.NewRegistry(), worker.NewMetrics(prometheus.NewRegistry()),
				slog.New(slog.NewTextHandler(io.Discard, nil)), func() string { return "x" }, fastConfig())
			if err != nil {
				t.Fatal(err)
			}
			err = w.Run(t.Context())
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "refusing to run") {
				t.Errorf("Run = %v, want a refusal naming %s", err, tc.want)
			}
		})
	}
}

// TestFailedEventKept: a failed result keeps the original event, headers included, in the
// failed-events stream under a subject derived from its id; a replayed event's result links
// to the event it replays.
func TestFailedEventKept(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	id := ulid.Make().String()
	payload := `{"event_id":"` + id + `","credential_id":999999,"correlation_id":"INC-9"}`
	b.publish(t, events.CredentialDisable, payload, id)
	if r := b.result(t, id); r.Status != events.Failed {
		t.Fatalf("%+v", r)
	}
	s, err := b.js.Stream(t.Context(), "PAMWORKER_FAILED")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.GetLastMsgForSubject(t.Context(), worker.FailedSubject(events.CredentialDisable, id))
	if err != nil {
		t.Fatal(err)
	}
	var rec worker.FailedRecord
	if err := json.Unmarshal(raw.Data, &rec); err != nil {
		t.Fatal(err)
	}
	var res events.Result
	_ = json.Unmarshal(rec.Result, &res)
	if rec.EventID != id || rec.Subject != events.CredentialDisable || rec.Payload != payload ||
		rec.Headers["Nats-Msg-Id"] != id || res.Error == nil || res.Error.Code != "1007" {
		t.Errorf("failed record: %+v result %+v", rec, res)
	}
	if got := worker.ActionOfFailedSubject(raw.Subject); got != events.CredentialDisable {
		t.Errorf("ActionOfFailedSubject(%q) = %q", raw.Subject, got)
	}
	// Successes and rejections are not kept.
	b.result(t, b.send(t, events.CredentialDisable, `{"credential_id":62}`))
	info, _ := s.Info(t.Context())
	if info.State.Msgs != 1 {
		t.Errorf("failed stream holds %d messages, want 1", info.State.Msgs)
	}

	// A replay marked by an operator carries replay_of; a bare header is a claim anyone can
	// make, and is ignored.
	replay, forged := ulid.Make().String(), ulid.Make().String()
	if err := worker.MarkReplay(t.Context(), b.js, replay, id); err != nil {
		t.Fatal(err)
	}
	for _, e := range []string{replay, forged} {
		msg := &nats.Msg{Subject: events.CredentialDisable, Data: []byte(`{"event_id":"` + e + `","credential_id":63}`),
			Header: nats.Header{worker.ReplayOfHeader: []string{id}}}
		if _, err := b.js.PublishMsg(t.Context(), msg); err != nil {
			t.Fatal(err)
		}
	}
	if r := b.result(t, replay); r.Details["replay_of"] != id {
		t.Errorf("replayed result details = %v, want replay_of %s", r.Details, id)
	}
	if r := b.result(t, forged); r.Details["replay_of"] != nil {
		t.Errorf("an unmarked Pamworker-Replay-Of header reached the result: %v", r.Details)
	}
}

// TestDryRunEveryAction: a dry run of each of the five actions changes nothing — Segura is not
// called at all (the exact request is reported instead), Element only through the read-only
// ListAuthSessionsByUsername — and nothing ever asks Segura for a credential (GET would grant
// custody and reveal the secret).
func TestDryRunEveryAction(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	session := b.segura.AddSession()
	for _, tc := range []struct{ subject, payload, wantURL string }{
		{events.SessionDrop, `{"session_id":"` + session + `","dry_run":true}`, "DELETE /api/pam/session/drop/" + session},
		{events.CredentialDisable, `{"credential_id":94,"dry_run":true}`, "DELETE /api/pam/credential/94"},
		{events.CredentialDisable, `{"username":"root","hostname":"db01","dry_run":true}`, "DELETE /api/pam/credential/root@db01"},
		{events.CredentialEnable, `{"credential_id":94,"dry_run":true}`, "PUT /api/pam/credential/94"},
		{events.CustodyRelease, `{"credential_id":94,"dry_run":true}`, "DELETE /api/pam/credential/custody/94"},
		{events.ElementSessionsDelete, `{"username":"admin","dry_run":true}`, ""},
	} {
		r := b.result(t, b.send(t, tc.subject, tc.payload))
		if r.Status != events.Succeeded || !r.DryRun {
			t.Errorf("%s: %+v", tc.subject, r)
			continue
		}
		if tc.wantURL != "" {
			method, path, _ := strings.Cut(tc.wantURL, " ")
			req, _ := r.Details["request"].(map[string]any)
			if req["method"] != method || !strings.HasSuffix(fmt.Sprint(req["url"]), path) {
				t.Errorf("%s: reported request %v, want %s", tc.subject, req, tc.wantURL)
			}
		}
	}
	if n := b.segura.Calls(); n != 0 {
		t.Errorf("dry runs called Segura %d times", n)
	}
	if n := b.segura.CallsTo("GET", "/pam/credential"); n != 0 {
		t.Errorf("a credential was fetched %d times", n)
	}
	if del, list := b.element.CallsTo("DeleteAuthSessionsByUsername"), b.element.CallsTo("ListAuthSessionsByUsername"); del != 0 || list != 1 {
		t.Errorf("Element: %d deletes, %d lists; want 0 and 1", del, list)
	}
	if !b.segura.SessionOpen(session) || b.element.Sessions("admin") != 2 {
		t.Error("a dry run changed state")
	}
	if active, custody, _ := b.segura.Credential(94); !active || !custody {
		t.Error("credential 94 changed")
	}
}

// TestPerObjectOrdering: with two replicas, retries and latency, events about one credential
// are never in flight at once and reach the vendor in publish order, so each credential ends
// in the state its last event asked for; different credentials still run in parallel.
func TestPerObjectOrdering(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	c.BreakerThreshold = -1 // the injected 503s are about retries, not the breaker
	c.MaxDeliveries = 100
	b := setup(t, options{cfg: c, rate: 10000})
	b.startReplica(t, c, b.seguraURL)
	b.segura.SetLatency(3 * time.Millisecond)
	b.segura.FailNext(60, sandbox.Fault{Status: 503})

	const objects, rounds = 20, 10
	want := map[int][]string{} // credential → methods in publish order
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
		if r := b.result(t, id); r.Status != events.Succeeded {
			t.Errorf("%+v", r)
		}
	}
	collapse := func(xs []string) []string {
		var out []string
		for _, x := range xs {
			if len(out) == 0 || out[len(out)-1] != x {
				out = append(out, x)
			}
		}
		return out
	}
	b.seguraHTTP.mu.Lock()
	defer b.seguraHTTP.mu.Unlock()
	for cred := 1; cred <= objects; cred++ {
		path := fmt.Sprintf("/api/pam/credential/%d", cred)
		got := collapse(b.seguraHTTP.byPath[path])
		if strings.Join(got, " ") != strings.Join(collapse(want[cred]), " ") {
			t.Errorf("credential %d: calls %v, published %v", cred, got, want[cred])
		}
		if m := b.seguraHTTP.maxPath[path]; m > 1 {
			t.Errorf("credential %d: %d calls at once", cred, m)
		}
		active, _, _ := b.segura.Credential(cred)
		if wantActive := want[cred][rounds-1] == "PUT"; active != wantActive {
			t.Errorf("credential %d: active=%v, but its last event asked active=%v", cred, active, wantActive)
		}
	}
	if m := b.seguraHTTP.maxSeen.Load(); m < 2 {
		t.Errorf("at most %d calls at once: different credentials should run in parallel", m)
	}
}

// TestEventsStreamRecreated: an operator deletes and recreates the events stream under a
// running worker. Its sequences start again at 1; the routed copies must not collide with the
// ones the work stream still remembers, or new events would be dropped as duplicates.
func TestEventsStreamRecreated(t *testing.T) {
	t.Parallel()
	b := setup(t, options{})
	var first []string
	for i := range 5 {
		first = append(first, b.send(t, events.CredentialDisable, fmt.Sprintf(`{"credential_id":%d}`, 70+i)))
	}
	for _, id := range first {
		b.result(t, id)
	}
	s, err := b.js.Stream(t.Context(), "PAMWORKER_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if err := b.js.DeleteStream(t.Context(), "PAMWORKER_EVENTS"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.js.CreateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		id := b.send(t, events.CredentialEnable, fmt.Sprintf(`{"credential_id":%d}`, 70+i))
		if r := b.result(t, id); r.Status != events.Succeeded {
			t.Errorf("after the stream was recreated: %+v", r)
		}
	}
}

// TestHungObjectDelaysNoOne: a call that hangs holds up later events about its own object and
// nothing else. While a disable of credential 77 hangs, 64 drops of other sessions are all
// answered; an enable of 77 published after the disable waits for it and reaches the vendor
// after it. (Issue 9: one hung call used to delay every event that hashed to its lane.)
func TestHungObjectDelaysNoOne(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	c.Concurrency = 8
	c.AttemptTimeout = 30 * time.Second
	b := setup(t, options{cfg: c})
	release := b.seguraHTTP.hangOn("/api/pam/credential/77")
	defer release()
	hung := b.send(t, events.CredentialDisable, `{"credential_id":77}`)
	waitFor(t, 10*time.Second, "the disable of 77 in flight", func() bool {
		b.seguraHTTP.mu.Lock()
		defer b.seguraHTTP.mu.Unlock()
		return len(b.seguraHTTP.byPath["/api/pam/credential/77"]) == 1
	})
	after := b.send(t, events.CredentialEnable, `{"credential_id":77}`)
	start := time.Now()
	var drops []string
	for range 64 {
		drops = append(drops, b.send(t, events.SessionDrop, fmt.Sprintf(`{"session_id":%q}`, b.segura.AddSession())))
	}
	for _, id := range drops {
		if r := b.result(t, id); r.Status != events.Succeeded {
			t.Errorf("drop: %+v", r)
		}
	}
	t.Logf("64 drops of other sessions answered in %v while credential 77's call hung", time.Since(start).Round(time.Millisecond))
	if b.resultCount(hung) != 0 || b.resultCount(after) != 0 {
		t.Fatal("the hung object's events were answered while its call hung")
	}
	release()
	for _, id := range []string{hung, after} {
		if r := b.result(t, id); r.Status != events.Succeeded {
			t.Errorf("%+v", r)
		}
	}
	b.seguraHTTP.mu.Lock()
	calls := strings.Join(b.seguraHTTP.byPath["/api/pam/credential/77"], " ")
	b.seguraHTTP.mu.Unlock()
	if calls != "DELETE PUT" {
		t.Errorf("credential 77: calls %q, want the disable then the enable", calls)
	}
}

// TestTargetBackWakesWaiting: events waiting for a target that refused the worker run as
// soon as a probe finds it back, not after a redelivery delay: with a probe interval of 300 ms
// they are all answered; the time it took is reported, not asserted.
func TestTargetBackWakesWaiting(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	c.ProbeInterval = 300 * time.Millisecond
	b := setup(t, options{cfg: c})
	b.segura.SetRevoked(true)
	var ids []string
	for i := range 40 {
		ids = append(ids, b.send(t, events.CredentialDisable, fmt.Sprintf(`{"credential_id":%d}`, 1+i)))
	}
	waitFor(t, 10*time.Second, "target down", func() bool {
		return b.metric(t, "pamworker_target_up", map[string]string{"target": "segura/default"}) == 0
	})
	time.Sleep(time.Second)
	for _, id := range ids {
		if b.resultCount(id) != 0 {
			t.Fatalf("%s answered while the target refused the worker", id)
		}
	}
	b.segura.SetRevoked(false)
	fixed := time.Now()
	for _, id := range ids {
		if r := b.result(t, id); r.Status != events.Succeeded {
			t.Errorf("%+v", r)
		}
	}
	t.Logf("40 waiting events answered %v after the target accepted the worker again", time.Since(fixed).Round(time.Millisecond))
}
