package worker

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Every replica keeps a key of its own alive in the members bucket, its value what the replica
// reports of itself (Report: the state of its targets), so that anyone who can read the
// bucket — the ingress, an operator's CLI — sees every live replica and what it sees.
//
// With more than one partition, the replicas also share the partitions out by it: the live
// keys, sorted, say who pulls which partition (partition k belongs to the replica at index k mod
// the number of replicas). A replica that dies stops renewing its key; when the key expires the
// others take its partitions over, each behind a fence (feed.go). The pinned priority group,
// not this list, is what guarantees one replica at a time per partition: the list only spreads
// the work.

// membersTTL is how long a replica's key lives without being renewed; it is renewed three
// times in that span.
const membersTTL = 6 * time.Second

type members struct {
	kv     jetstream.KeyValue
	js     jetstream.JetStream
	id     string
	key    string
	report func() []byte // this replica's value
	poke   chan struct{} // renew now: what the replica reports changed

	mu    sync.Mutex
	ids   []string
	watch chan struct{} // closed and replaced whenever ids change
}

func newMembers(ctx context.Context, js jetstream.JetStream, t Topology, id string, report func() []byte) (*members, error) {
	kv, err := js.KeyValue(ctx, t.MembersBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      t.MembersBucket,
			Description: "pamworker: the replicas alive and what they report, to share partitions out",
			TTL:         membersTTL,
			Storage:     jetstream.MemoryStorage,
			Replicas:    t.Replicas,
			History:     1,
		})
	}
	if err != nil {
		return nil, err
	}
	m := &members{kv: kv, js: js, id: id, key: memberPrefix + strings.NewReplacer(".", "_", "*", "_", ">", "_").Replace(id),
		report: report, poke: make(chan struct{}, 1), watch: make(chan struct{})}
	m.refresh(ctx)
	return m, nil
}

// run renews this replica's key and follows the list until ctx ends; it then deletes the key
// so the others take over at once.
func (m *members) run(ctx context.Context) {
	t := time.NewTicker(membersTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = m.kv.Delete(dctx, m.key)
			cancel()
			return
		case <-t.C:
		case <-m.poke:
		}
		m.refresh(ctx)
	}
}

// refresh renews this replica's key and reads the live ones: the subjects the bucket's stream
// holds (one stream info request, no consumer).
func (m *members) refresh(ctx context.Context) {
	if _, err := m.kv.Put(ctx, m.key, m.report()); err != nil {
		return
	}
	s, err := m.js.Stream(ctx, "KV_"+m.kv.Bucket())
	if err != nil {
		return
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter("$KV."+m.kv.Bucket()+".>"))
	if err != nil {
		return
	}
	var ids []string
	for subj := range info.State.Subjects {
		ids = append(ids, strings.TrimPrefix(subj, "$KV."+m.kv.Bucket()+"."))
	}
	slices.Sort(ids)
	m.mu.Lock()
	defer m.mu.Unlock()
	if !slices.Equal(ids, m.ids) {
		m.ids = ids
		close(m.watch)
		m.watch = make(chan struct{})
	}
}

// changed asks for the replica's key to be renewed now.
func (m *members) changed() {
	select {
	case m.poke <- struct{}{}:
	default:
	}
}

// owns reports whether this replica pulls partition k of n, and a channel closed when the
// list changes. With one partition every replica pulls it (the pinned group picks one).
func (m *members) owns(k, n int) (bool, <-chan struct{}) {
	if n <= 1 {
		return true, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	i := slices.Index(m.ids, m.key)
	if i < 0 || len(m.ids) == 0 {
		return true, m.watch // not listed yet (or the bucket is out of reach): pull everything
	}
	return k%len(m.ids) == i, m.watch
}
