package worker

import (
	"context"
	"log/slog"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/broker"
)

// TestStoppedReplicaCountedOutAtOnce: a replica that stops deletes its members key; the delete
// marker keeps its subject in the stream, but the others count it out at once, not when the
// marker ages out.
func TestStoppedReplicaCountedOutAtOnce(t *testing.T) {
	ns, err := broker.Start(broker.Embedded{Listen: "127.0.0.1:-1", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	nc, err := broker.Connect(ns.ClientURL(), "t", slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	report := func() []byte { return []byte("{}") }
	a, err := newMembers(ctx, js, DefaultTopology(), "A", 2, report)
	if err != nil {
		t.Fatal(err)
	}
	bm, err := newMembers(ctx, js, DefaultTopology(), "B", 2, report)
	if err != nil {
		t.Fatal(err)
	}
	a.refresh(ctx)
	if want, _ := a.wants(1, 2); want && len(a.ids) == 2 {
		t.Fatalf("with two replicas A wants partition 1 too: %v", a.ids)
	}
	bm.leave() // what a stopping replica does
	a.refresh(ctx)
	if want, _ := a.wants(1, 2); !want {
		t.Errorf("A does not count B out after B left: %v", a.ids)
	}
}

// TestLedgerBatchRead reads present, absent and deleted records with one request.
func TestLedgerBatchRead(t *testing.T) {
	ns, err := broker.Start(broker.Embedded{Listen: "127.0.0.1:-1", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	nc, err := broker.Connect(ns.ClientURL(), "t", slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	kv, err := setup(ctx, js, DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	l := newLedger(kv)
	for _, id := range []string{"a", "b", "gone"} {
		if _, err := kv.Put(ctx, keyOf("done", id), encodeRecord("d-"+id, "", []byte(`{"event_id":"`+id+`"}`))); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(ctx, keyOf("done", "gone")); err != nil {
		t.Fatal(err)
	}
	got, err := l.results(ctx, nc, []string{"a", "b", "gone", "never", "a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["a"].Digest != "d-a" || got["b"].Digest != "d-b" {
		t.Errorf("batch read: %v", got)
	}
	if got, err := l.results(ctx, nc, []string{"never"}); err != nil || len(got) != 0 {
		t.Errorf("none of them: %v %v", got, err)
	}
}
