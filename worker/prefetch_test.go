package worker_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/pamworker/pamworker/events"
)

// TestBatchedLedgerReads: a backlog taken in batches reads the ledger with one request per
// batch (prefetch). Repeats in it are answered from the ledger, reused ids are refused, and
// two copies of a new event in the same batch call the vendor once: the batch read cannot
// vouch for an id another held event has.
func TestBatchedLedgerReads(t *testing.T) {
	t.Parallel()
	c := fastConfig()
	b := setup(t, options{cfg: c, rate: 10000})
	for n := 1; n <= 20; n++ {
		id := fmt.Sprintf("first-%02d", n)
		b.publish(t, events.CredentialDisable, fmt.Sprintf(`{"event_id":%q,"credential_id":%d}`, id, n), "")
		if r := b.result(t, id); r.Status != events.Succeeded {
			t.Fatalf("%s: %+v", id, r)
		}
	}
	b.stop()                   // the backlog below is taken all at once by the next replica
	for n := 1; n <= 10; n++ { // the same events again
		b.publish(t, events.CredentialDisable, fmt.Sprintf(`{"event_id":"first-%02d","credential_id":%d}`, n, n), "")
	}
	for n := 11; n <= 15; n++ { // their ids, other events
		b.publish(t, events.CredentialEnable, fmt.Sprintf(`{"event_id":"first-%02d","credential_id":%d}`, n, n), "")
	}
	for range 2 { // a new event, twice in the batch
		b.publish(t, events.CredentialDisable, `{"event_id":"twice","credential_id":30}`, "")
	}
	b.publish(t, events.CredentialDisable, `{"event_id":"reused","credential_id":31}`, "")
	b.publish(t, events.CredentialEnable, `{"event_id":"reused","credential_id":31}`, "")
	for n := 40; n <= 60; n++ { // and new ones
		b.publish(t, events.CredentialDisable, fmt.Sprintf(`{"event_id":"new-%02d","credential_id":%d}`, n, n), "")
	}
	b.startReplica(t, c, b.seguraURL)

	waitFor(t, 30*time.Second, "every event answered", func() bool {
		for n := 1; n <= 15; n++ {
			if b.resultCount(fmt.Sprintf("first-%02d", n)) < 2 {
				return false
			}
		}
		for n := 40; n <= 60; n++ {
			if b.resultCount(fmt.Sprintf("new-%02d", n)) < 1 {
				return false
			}
		}
		return b.resultCount("twice") == 2 && b.resultCount("reused") == 2
	})
	calls := func(n int) int {
		b.seguraHTTP.mu.Lock()
		defer b.seguraHTTP.mu.Unlock()
		return len(b.seguraHTTP.byPath[fmt.Sprintf("/api/pam/credential/%d", n)])
	}
	for n := 1; n <= 15; n++ {
		if calls(n) != 1 {
			t.Errorf("credential %d: %d vendor calls, want the first event's one", n, calls(n))
		}
	}
	for n := 11; n <= 15; n++ {
		b.mu.Lock()
		rs := b.results[fmt.Sprintf("first-%02d", n)]
		b.mu.Unlock()
		if len(rs) != 2 || rs[1].Error == nil || rs[1].Error.Code != events.CodeIDConflict {
			t.Errorf("first-%02d reused by another event: %+v", n, rs)
		}
	}
	if calls(30) != 1 {
		t.Errorf("two copies of one event in a batch: %d vendor calls", calls(30))
	}
	if calls(31) != 1 {
		t.Errorf("an id reused in a batch: %d vendor calls", calls(31))
	}
	for n := 40; n <= 60; n++ {
		if calls(n) != 1 {
			t.Errorf("new event %d: %d vendor calls", n, calls(n))
		}
	}
}
