package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/sandbox"
	"github.com/pamworker/pamworker/worker"
)

// The failed-events tests make events fail for real against the simulators, then list and
// replay them with the real binary.

// failedCmd runs `pamworker failed`.
func failedCmd(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	return cli(t, env, append([]string{"failed"}, args...)...)
}

// sendFailing sends an event that must fail and returns its event id.
func sendFailing(t *testing.T, env []string, subject, payload string) string {
	t.Helper()
	stdout, stderr, code := send(t, env, subject, payload, "--wait", "20s")
	var res events.Result
	if err := json.Unmarshal([]byte(stdout), &res); err != nil || code != 1 || res.Status != events.Failed {
		t.Fatalf("%s %s: exit %d, want a failed result\nstdout: %s\nstderr: %s", subject, payload, code, stdout, stderr)
	}
	return res.EventID
}

// listed runs `pamworker failed list --json` with args and returns the records.
func listed(t *testing.T, env []string, args ...string) []worker.FailedRecord {
	t.Helper()
	stdout, stderr, code := failedCmd(t, env, append([]string{"list", "--json"}, args...)...)
	var recs []worker.FailedRecord
	if err := json.Unmarshal([]byte(stdout), &recs); err != nil || code != 0 {
		t.Fatalf("failed list --json %v: exit %d, %v\nstdout: %s\nstderr: %s", args, code, err, stdout, stderr)
	}
	return recs
}

func idsOf(recs []worker.FailedRecord) []string {
	ids := []string{}
	for _, r := range recs {
		ids = append(ids, r.EventID)
	}
	return ids
}

// replayed parses the "<old id> -> <new id>" lines of `failed replay`, in order.
func replayed(t *testing.T, stdout string) (olds, news []string) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		if line == "" {
			continue
		}
		old, id, ok := strings.Cut(line, " -> ")
		if !ok || id == "" {
			t.Fatalf("replay printed %q, want <old id> -> <new id>", line)
		}
		olds, news = append(olds, old), append(news, id)
	}
	return olds, news
}

// resultFor waits for the result of eventID in the results stream.
func resultFor(t *testing.T, r *rig, eventID string) events.Result {
	t.Helper()
	var found events.Result
	waitUntil(t, 20*time.Second, func() bool {
		for _, line := range strings.Split(strings.TrimSpace(allResults(t, r.js)), "\n") {
			var res events.Result
			if json.Unmarshal([]byte(line), &res) == nil && res.EventID == eventID {
				found = res
				return true
			}
		}
		return false
	})
	return found
}

// lastEvent returns the last message on subject in the events stream, as the worker got it.
func lastEvent(t *testing.T, r *rig, subject string) (*jetstream.RawStreamMsg, map[string]json.RawMessage) {
	t.Helper()
	ctx := context.Background()
	s, err := r.js.Stream(ctx, worker.DefaultTopology().EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(m.Data, &body); err != nil {
		t.Fatalf("replayed payload %s: %v", m.Data, err)
	}
	return m, body
}

func str(raw json.RawMessage) string {
	var s string
	_ = json.Unmarshal(raw, &s)
	return s
}

func TestFailedListAndReplay(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	startWorker(t, r.env)

	// Five events fail for real, oldest first.
	notFound := sendFailing(t, r.env, events.CredentialDisable, `{"event_id":"f-notfound","credential_id":999999}`)
	noAccess := sendFailing(t, r.env, events.CredentialEnable, fmt.Sprintf(`{"event_id":"f-noaccess","credential_id":%d}`, sandbox.NoAccessCredentialID))
	noSession := sendFailing(t, r.env, events.SessionDrop, `{"event_id":"f-nosession","session_id":"no-such-session"}`)
	ceTime := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339)
	ce := sendFailing(t, r.env, events.CustodyRelease, `{"specversion":"1.0","id":"f-ce","type":"pam.credential.custody.release","source":"e2e","time":"`+ceTime+`","data":{"credential_id":999998}}`)
	// Credential 5 exists; Segura wrongly answering 1007 fails its disable, until that is fixed.
	r.segura.FailNext(1000, sandbox.Fault{Status: 400, Message: "1007: Credential not found"})
	fixable := sendFailing(t, r.env, events.CredentialDisable,
		`{"event_id":"f-fixable","credential_id":5,"correlation_id":"INC-9","time":"`+time.Now().UTC().Format(time.RFC3339)+`"}`)
	r.segura.ClearFaults()

	// The table: newest first, one row per failed event, the count on stderr.
	stdout, stderr, code := failedCmd(t, r.env, "list")
	lines := strings.Split(strings.TrimRight(stdout, "\n"), "\n")
	if code != 0 || len(lines) != 6 || !strings.HasPrefix(lines[0], "FAILED AT") || strings.Join(strings.Fields(lines[0]), " ") != "FAILED AT EVENT ID ACTION CODE MESSAGE" {
		t.Fatalf("failed list: exit %d\nstdout:\n%s\nstderr: %s", code, stdout, stderr)
	}
	var rows []string
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		rows = append(rows, f[1])
		if _, err := time.Parse(time.RFC3339, f[0]); err != nil {
			t.Errorf("FAILED AT of %q: %v", line, err)
		}
	}
	if want := []string{fixable, ce, noSession, noAccess, notFound}; !slices.Equal(rows, want) {
		t.Errorf("failed list rows %v, want newest first %v", rows, want)
	}
	if f := strings.Fields(lines[4]); f[2] != events.CredentialEnable || f[3] != "1009" || !strings.Contains(lines[4], "1009: No access to credential") {
		t.Errorf("row of the 1009 event: %q", lines[4])
	}
	if !strings.Contains(lines[3], "session_drop_error") {
		t.Errorf("row of the session drop: %q", lines[3])
	}
	if strings.TrimSpace(stderr) != "5 failed events" {
		t.Errorf("failed list stderr %q", stderr)
	}

	// Filters, the limit, and the JSON form.
	if got := idsOf(listed(t, r.env, "--action", events.CredentialDisable)); !slices.Equal(got, []string{fixable, notFound}) {
		t.Errorf("--action %s: %v", events.CredentialDisable, got)
	}
	if got := idsOf(listed(t, r.env, "--code=1007")); !slices.Equal(got, []string{fixable, ce, notFound}) {
		t.Errorf("--code 1007: %v", got)
	}
	recs := listed(t, r.env, "--code", "1009")
	if len(recs) != 1 {
		t.Fatalf("--code 1009: %v", idsOf(recs))
	}
	var res events.Result
	if err := json.Unmarshal(recs[0].Result, &res); err != nil {
		t.Fatal(err)
	}
	if recs[0].EventID != noAccess || recs[0].Subject != events.CredentialEnable || recs[0].Headers["Nats-Msg-Id"] != noAccess ||
		!strings.Contains(recs[0].Payload, `"credential_id":403`) || res.Status != events.Failed || res.Error == nil || res.Error.Code != "1009" {
		t.Errorf("--code 1009 record: %+v result %+v", recs[0], res)
	}
	stdout, stderr, code = failedCmd(t, r.env, "list", "--limit", "2")
	if n := strings.Count(stdout, "\n"); code != 0 || n != 3 || !strings.Contains(stdout, fixable) || !strings.Contains(stdout, ce) || !strings.Contains(stderr, "more") {
		t.Errorf("--limit 2: exit %d\n%s%s", code, stdout, stderr)
	}
	stdout, stderr, code = failedCmd(t, r.env, "list", "--action", events.ElementSessionsDelete)
	if code != 0 || stdout != "" || strings.TrimSpace(stderr) != "no failed events" {
		t.Errorf("empty list: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}

	// Replay once the cause is fixed: a new event id linked to the old, and now it succeeds.
	stdout, stderr, code = failedCmd(t, r.env, "replay", fixable)
	olds, news := replayed(t, stdout)
	if code != 0 || !slices.Equal(olds, []string{fixable}) || news[0] == fixable {
		t.Fatalf("replay %s: exit %d\n%s%s", fixable, code, stdout, stderr)
	}
	msg, body := lastEvent(t, r, events.CredentialDisable)
	if msg.Header.Get(worker.ReplayOfHeader) != fixable || msg.Header.Get(jetstream.MsgIDHeader) != news[0] ||
		str(body["event_id"]) != news[0] || string(body["credential_id"]) != "5" || str(body["correlation_id"]) != "INC-9" ||
		!strings.HasPrefix(str(body["reply_to"]), "_INBOX.") {
		t.Errorf("replayed event: headers %v payload %s", msg.Header, msg.Data)
	}
	if _, has := body["time"]; has {
		t.Errorf("replayed event kept its time, so an old event would be refused as stale: %s", msg.Data)
	}
	res = resultFor(t, r, news[0])
	if res.Status != events.Succeeded || res.Details["replay_of"] != fixable || res.CorrelationID != "INC-9" {
		t.Errorf("result of the replay: %+v", res)
	}
	if active, _, _ := r.segura.Credential(5); active {
		t.Error("credential 5 still active after the replay succeeded")
	}
	if got := idsOf(listed(t, r.env)); slices.Contains(got, fixable) || len(got) != 4 {
		t.Errorf("after the replay the list is %v; the replayed event must be gone", got)
	}

	// A CloudEvents envelope gets a new id and a fresh time; the rest is kept. It fails again,
	// so the worker records it again, under its new id.
	stdout, stderr, code = failedCmd(t, r.env, "replay", ce)
	olds, news = replayed(t, stdout)
	if code != 0 || !slices.Equal(olds, []string{ce}) {
		t.Fatalf("replay %s: exit %d\n%s%s", ce, code, stdout, stderr)
	}
	ceNew := news[0]
	msg, body = lastEvent(t, r, events.CustodyRelease)
	at, err := time.Parse(time.RFC3339Nano, str(body["time"]))
	if str(body["id"]) != ceNew || str(body["specversion"]) != "1.0" || str(body["source"]) != "e2e" || err != nil ||
		time.Since(at) > 30*time.Second || !strings.Contains(string(body["data"]), `"credential_id":999998`) ||
		msg.Header.Get(worker.ReplayOfHeader) != ce {
		t.Errorf("replayed CloudEvent: headers %v payload %s", msg.Header, msg.Data)
	}
	res = resultFor(t, r, ceNew)
	if res.Status != events.Failed || res.Details["replay_of"] != ce || res.Error == nil || res.Error.Code != "1007" {
		t.Errorf("result of the CloudEvent replay: %+v", res)
	}
	waitUntil(t, 20*time.Second, func() bool { return slices.Contains(idsOf(listed(t, r.env)), ceNew) })
	if got := idsOf(listed(t, r.env)); slices.Contains(got, ce) {
		t.Errorf("the replayed CloudEvent is still listed: %v", got)
	}

	// --all with a code replays exactly those, oldest first.
	stdout, stderr, code = failedCmd(t, r.env, "replay", "--all", "--code", "1007")
	olds, news = replayed(t, stdout)
	if code != 0 || !slices.Equal(olds, []string{notFound, ceNew}) {
		t.Fatalf("replay --all --code 1007: exit %d, replayed %v, want %v\n%s", code, olds, []string{notFound, ceNew}, stderr)
	}
	waitUntil(t, 20*time.Second, func() bool {
		got := idsOf(listed(t, r.env, "--code", "1007"))
		slices.Sort(got)
		want := slices.Clone(news)
		slices.Sort(want)
		return slices.Equal(got, want)
	})
	if got := idsOf(listed(t, r.env, "--code", "1009")); !slices.Equal(got, []string{noAccess}) {
		t.Errorf("--all --code 1007 touched a 1009 event: %v", got)
	}
	if got := idsOf(listed(t, r.env, "--code", "session_drop_error")); !slices.Equal(got, []string{noSession}) {
		t.Errorf("--all --code 1007 touched a session_drop_error event: %v", got)
	}

	// An unknown id is reported, the others are still replayed (once, even if named twice), and
	// the exit status is 1.
	stdout, stderr, code = failedCmd(t, r.env, "replay", "no-such-event", noSession, noSession)
	olds, _ = replayed(t, stdout)
	if code != 1 || !slices.Equal(olds, []string{noSession}) || !strings.Contains(stderr, `"no-such-event"`) {
		t.Errorf("replay of an unknown and a known id: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	// --all with nothing to replay.
	stdout, stderr, code = failedCmd(t, r.env, "replay", "--all", "--code", "1010")
	if code != 0 || stdout != "" || strings.TrimSpace(stderr) != "no failed events" {
		t.Errorf("replay --all with nothing to replay: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// TestFailedReplayIsNotStale: a replay is a deliberate decision, so the age limit must count
// from the replay, not from when the original event was raised.
func TestFailedReplayIsNotStale(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	const maxAge = 5 * time.Second
	startWorker(t, append(r.env, "PAMWORKER_MAX_EVENT_AGE="+maxAge.String()))

	born := time.Now().Add(-2 * time.Second).UTC()
	old := func(id string, credential int) string {
		return fmt.Sprintf(`{"event_id":%q,"credential_id":%d,"time":%q}`, id, credential, born.Format(time.RFC3339Nano))
	}
	r.segura.FailNext(1000, sandbox.Fault{Status: 400, Message: "1007: Credential not found"})
	id := sendFailing(t, r.env, events.CredentialDisable, old("stale-1", 6))
	r.segura.ClearFaults()
	time.Sleep(time.Until(born.Add(maxAge + time.Second)))

	// The original payload is now too old: sent again under another id, it is refused.
	stdout, _, _ := send(t, r.env, events.CredentialDisable, old("stale-control", 7), "--wait", "20s")
	var res events.Result
	if err := json.Unmarshal([]byte(stdout), &res); err != nil || res.Status != events.Rejected || res.Error == nil || res.Error.Code != events.CodeStaleEvent {
		t.Fatalf("control: the old payload should be refused as stale, got %s", stdout)
	}
	// Its replay is executed.
	stdout, stderr, code := failedCmd(t, r.env, "replay", id)
	_, news := replayed(t, stdout)
	if code != 0 || len(news) != 1 {
		t.Fatalf("replay: exit %d\n%s%s", code, stdout, stderr)
	}
	if res = resultFor(t, r, news[0]); res.Status != events.Succeeded || res.Details["replay_of"] != id {
		t.Errorf("replay of an old event: %+v", res)
	}
	if active, _, _ := r.segura.Credential(6); active {
		t.Error("credential 6 still active after the replay")
	}
}

// TestFailedUsage: usage and connection errors exit 2 and say why.
func TestFailedUsage(t *testing.T) {
	t.Parallel()
	// Nothing listens there; the password in the URL must not show in the connection error.
	env := []string{"PAMWORKER_NATS_URL=nats://pamworker:" + canaryNATSPassword + "@" + freeAddr(t)}
	for _, args := range [][]string{
		{},
		{"bogus"},
		{"list", "extra"},
		{"list", "--limit", "x"},
		{"list", "--limit"},
		{"list", "--action", "pam.nope"},
		{"list", "--all"},
		{"list", "--color"},
		{"replay"},
		{"replay", "--all", "f-1"},
		{"replay", "f-1", "--code", "1007"},
		{"replay", "--all", "--json"},
	} {
		stdout, stderr, code := failedCmd(t, env, args...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, "usage:") {
			t.Errorf("failed %v: exit %d, stdout %q, stderr %q; want 2 and the usage", args, code, stdout, stderr)
		}
	}
	if _, stderr, code := failedCmd(t, env, "list"); code != 2 || !strings.Contains(stderr, "running?") {
		t.Errorf("failed list without NATS: exit %d, stderr %q", code, stderr)
	}
	if stdout, _, code := failedCmd(t, env, "--help"); code != 0 || !strings.Contains(stdout, "pamworker failed replay") {
		t.Errorf("failed --help: exit %d\n%s", code, stdout)
	}
}
