package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/events"
)

func publishDisables(t *testing.T, js jetstream.JetStream, prefix, requester string, first, n int) {
	t.Helper()
	for i := range n {
		id := fmt.Sprintf("%s-%02d", prefix, i)
		payload := fmt.Sprintf(`{"event_id":%q,"credential_id":%d,"requested_by":%q}`, id, first+i, requester)
		if _, err := js.PublishAsync(events.CredentialDisable, []byte(payload), jetstream.WithMsgID(id)); err != nil {
			t.Fatal(err)
		}
	}
	<-js.PublishAsyncComplete()
}

// TestBlastRadius500: a playbook gone wrong sends 500 disables against a cap of 50 a minute
// per requester (100 on the target).
// 50 run; 450 are held — not dropped, not failed — while an analyst's disables and session
// drop on the same target run at once; `hold release` runs all 450, one result each.
func TestBlastRadius500(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	env := append(r.env, "PAMWORKER_LIMITS=pam.credential.disable=100/1m/50")
	w := startWorker(t, env)
	res := collect(t, r.nc)
	const runaway, first = 500, 501
	publishDisables(t, r.js, "runaway", "playbook-7", first, runaway)
	waitUntil(t, 60*time.Second, func() bool { return res.count("runaway", "") >= 50 })

	// While 450 wait, the analyst's actions on the same target are not held up by them.
	publishDisables(t, r.js, "analyst", "soc-analyst", 1, 5)
	session := r.segura.AddSession()
	if stdout, _, code := send(t, env, events.SessionDrop, `{"session_id":"`+session+`","requested_by":"soc-analyst"}`, "--wait", "20s"); code != 0 {
		t.Fatalf("the analyst's session drop: exit %d\n%s", code, stdout)
	}
	waitUntil(t, 20*time.Second, func() bool { return res.count("analyst", events.Succeeded) == 5 })
	if n := res.count("runaway", ""); n != 50 {
		t.Fatalf("%d runaway disables answered within the minute, cap 50", n)
	}
	disabled := 0
	for id := first; id < first+runaway; id++ {
		if active, _, _ := r.segura.Credential(id); !active {
			disabled++
		}
	}
	if disabled != 50 {
		t.Fatalf("%d credentials disabled, cap 50", disabled)
	}
	m := w.get(t, "/metrics")
	if !strings.Contains(m, `pamworker_held_total{action="pam.credential.disable"}`) {
		t.Error("no held metric")
	}

	if out, stderr, code := cli(t, env, "hold", "release"); code != 0 {
		t.Fatalf("hold release: exit %d %s %s", code, out, stderr)
	}
	waitUntil(t, 120*time.Second, func() bool { return res.count("runaway", "") == runaway })
	if n := res.count("runaway", events.Succeeded); n != runaway {
		t.Errorf("%d of %d succeeded; held events must run, not fail", n, runaway)
	}
	for id, n := range res.counts() {
		if n != 1 {
			t.Errorf("%s: %d results", id, n)
		}
	}
	for id := first; id < first+runaway; id++ {
		if active, _, _ := r.segura.Credential(id); active {
			t.Errorf("credential %d still active after release", id)
		}
	}
}

// TestBlastRadius: a playbook gone wrong sends 40 disables against a cap of 10 per 3 s per
// requester (100 on the target): the
// first 10 run, the rest are held — not dropped, not failed — and run as the window slides;
// another requester is not affected.
func TestBlastRadius(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	env := append(r.env, "PAMWORKER_LIMITS=pam.credential.disable=100/3s/10")
	w := startWorker(t, env)
	res := collect(t, r.nc)
	publishDisables(t, r.js, "runaway", "playbook-7", 1, 40)
	publishDisables(t, r.js, "other", "soc-analyst", 60, 5)
	time.Sleep(1500 * time.Millisecond)
	if n := res.count("runaway", ""); n > 10 {
		t.Errorf("%d runaway disables ran within the first window, cap 10", n)
	}
	waitUntil(t, 20*time.Second, func() bool { return res.count("other", events.Succeeded) == 5 })
	waitUntil(t, 60*time.Second, func() bool { return res.count("runaway", "") == 40 })
	if n := res.count("runaway", events.Succeeded); n != 40 {
		t.Errorf("%d of 40 held events succeeded; held events must run, not fail", n)
	}
	if !strings.Contains(w.get(t, "/metrics"), `pamworker_held_total{action="pam.credential.disable"}`) {
		t.Error("no held metric")
	}
	if !strings.Contains(w.logs.String(), "event held: blast-radius limit reached") {
		t.Error("no log line for held events")
	}
}

// TestHoldReleaseAndCancel: an operator releases what a limit holds, or cancels it.
func TestHoldReleaseAndCancel(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	env := append(r.env, "PAMWORKER_LIMITS=pam.credential.disable=5/1h")
	startWorker(t, env)
	res := collect(t, r.nc)
	hold := func(verb string) {
		if out, stderr, code := cli(t, env, "hold", verb); code != 0 {
			t.Fatalf("hold %s: exit %d %s %s", verb, code, out, stderr)
		}
	}
	publishDisables(t, r.js, "rel", "p", 1, 15)
	waitUntil(t, 20*time.Second, func() bool { return res.count("rel", events.Succeeded) == 5 })
	time.Sleep(time.Second)
	if n := res.count("rel", ""); n != 5 {
		t.Fatalf("%d answered, want 5 run and 10 held", n)
	}
	hold("release")
	waitUntil(t, 30*time.Second, func() bool { return res.count("rel", events.Succeeded) == 15 })

	publishDisables(t, r.js, "can", "p", 30, 5) // the window is full: all five are held
	time.Sleep(time.Second)
	if n := res.count("can", ""); n != 0 {
		t.Fatalf("%d answered while the cap was reached", n)
	}
	hold("cancel")
	waitUntil(t, 30*time.Second, func() bool { return res.count("can", events.Rejected) == 5 })
	res.mu.Lock()
	defer res.mu.Unlock()
	for id, rr := range res.m {
		if strings.HasPrefix(id, "can") && (rr.Error == nil || rr.Error.Code != "held_cancelled") {
			t.Errorf("%s: %+v", id, rr)
		}
	}
	if active, _, _ := r.segura.Credential(30); !active {
		t.Error("a cancelled disable was applied")
	}
}
