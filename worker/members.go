package worker

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The members bucket is how the replicas share the partitions out, and where each says what it
// sees. It holds, with a short TTL:
//
//   - m.<replica>: every live replica's report (ReplicaStatus), renewed every tick. The live
//     keys, sorted, say who should own which partition: partition k belongs to the replica at
//     index k mod the number of replicas (with one partition, to whoever holds it);
//   - p.<k>: the lease of partition k, the replica that owns it. It is taken with Create (only
//     if no one holds it) and renewed with Update against its revision, so at most one replica
//     holds it; one that stops renewing it loses it when the TTL ends.
//
// A replica consumes a partition only while it holds its lease, and runs nothing of it once
// the lease is lost or given up. A replica that takes a lease over first lets the previous
// owner's events come back (the fence, feed.go). The lease lives in NATS, so no header an
// event carries can move a partition.

// membersTTL is how long a key lives without being renewed; leaseTick is how often they are
// renewed. The TTL is also how long a partition waits after its owner dies.
const (
	membersTTL = 4 * time.Second
	leaseTick  = time.Second
)

const leasePrefix = "p."

type members struct {
	js     jetstream.JetStream
	t      Topology
	id     string
	key    string
	n      int           // partitions
	report func() []byte // this replica's value
	poke   chan struct{} // renew the report now: what the replica reports changed

	mu     sync.Mutex
	kv     jetstream.KeyValue
	ids    []string
	watch  chan struct{} // closed and replaced whenever ids change
	leases map[int]*lease
}

// lease is a partition lease this replica holds.
type lease struct {
	rev     uint64
	renewed time.Time     // last successful renewal
	lost    chan struct{} // closed when the lease is lost, or must be given up
	ending  bool          // lost is closed
	lapsed  atomic.Bool   // it ended because it could not be renewed: another replica may hold it
}

// ended reports whether the lease's channel is closed.
func (l *lease) ended() bool {
	select {
	case <-l.lost:
		return true
	default:
		return false
	}
}

func newMembers(ctx context.Context, js jetstream.JetStream, t Topology, id string, partitions int, report func() []byte) (*members, error) {
	m := &members{js: js, t: t, id: id, n: partitions, key: memberPrefix + strings.NewReplacer(".", "_", "*", "_", ">", "_").Replace(id),
		report: report, poke: make(chan struct{}, 1), watch: make(chan struct{}), leases: map[int]*lease{}}
	if _, err := m.bucket(ctx); err != nil {
		return nil, err
	}
	m.refresh(ctx)
	return m, nil
}

// bucket returns the members bucket, creating it if it is gone (it lives in memory: a broker
// restart loses it).
func (m *members) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	m.mu.Lock()
	kv := m.kv
	m.mu.Unlock()
	if kv != nil {
		return kv, nil
	}
	kv, err := m.js.KeyValue(ctx, m.t.MembersBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = m.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      m.t.MembersBucket,
			Description: "pamworker: the replicas alive, what they report, and who owns which partition",
			TTL:         membersTTL,
			Storage:     jetstream.MemoryStorage,
			Replicas:    m.t.Replicas,
			History:     1,
		})
	}
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.kv = kv
	m.mu.Unlock()
	return kv, nil
}

// lostBucket forgets the bucket after an error that says it is gone.
func (m *members) lostBucket(err error) {
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrNoStreamResponse) {
		m.mu.Lock()
		m.kv = nil
		m.mu.Unlock()
	}
}

// run renews this replica's report and leases every tick until life ends: life outlasts the
// worker's own shutdown, so the leases stay held while its last events are handed back.
func (m *members) run(life context.Context) {
	t := time.NewTicker(leaseTick)
	defer t.Stop()
	for {
		select {
		case <-life.Done():
			return
		case <-t.C:
		case <-m.poke:
		}
		m.renew(life)
		m.refresh(life)
	}
}

// leave deletes this replica's report, so that the others count it out at once.
func (m *members) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if kv, err := m.bucket(ctx); err == nil {
		_ = kv.Delete(ctx, m.key)
	}
}

// refresh renews this replica's report and reads the live replicas: the subjects of m. keys
// the bucket's stream holds (one stream info request), less those whose last word is a delete.
func (m *members) refresh(ctx context.Context) {
	kv, err := m.bucket(ctx)
	if err != nil {
		return
	}
	if _, err := kv.Put(ctx, m.key, m.report()); err != nil {
		m.lostBucket(err)
		return
	}
	s, err := m.js.Stream(ctx, "KV_"+kv.Bucket())
	if err != nil {
		return
	}
	prefix := "$KV." + kv.Bucket() + "."
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(prefix+memberPrefix+">"))
	if err != nil {
		return
	}
	var ids []string
	for subj := range info.State.Subjects {
		key := strings.TrimPrefix(subj, prefix)
		if key != m.key {
			if e, err := kv.Get(ctx, key); err != nil || e.Operation() != jetstream.KeyValuePut {
				continue // deleted: a replica that stopped
			}
		}
		ids = append(ids, key)
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

// changed asks for the replica's report to be renewed now.
func (m *members) changed() {
	select {
	case m.poke <- struct{}{}:
	default:
	}
}

// wants reports whether this replica should own partition k of n, and a channel closed when
// the list changes. With one partition any replica may (the first to take the lease keeps it).
func (m *members) wants(k, n int) (bool, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n <= 1 {
		return true, m.watch
	}
	i := slices.Index(m.ids, m.key)
	if i < 0 || len(m.ids) == 0 {
		return true, m.watch // not listed yet: any free partition
	}
	return k%len(m.ids) == i, m.watch
}

func leaseKey(k int) string { return leasePrefix + strconv.Itoa(k) }

// acquire takes partition k's lease if no one holds it. Its channel is closed when the lease
// is lost, or when the members list gives the partition to another replica.
func (m *members) acquire(ctx context.Context, k int) (*lease, bool) {
	kv, err := m.bucket(ctx)
	if err != nil {
		return nil, false
	}
	rev, err := kv.Create(ctx, leaseKey(k), []byte(m.id))
	if err != nil {
		m.lostBucket(err)
		return nil, false
	}
	l := &lease{rev: rev, renewed: time.Now(), lost: make(chan struct{})}
	m.mu.Lock()
	m.leases[k] = l
	m.mu.Unlock()
	return l, true
}

// renew renews every lease held. A lease whose revision moved on (another replica took it
// after it lapsed) or that could not be renewed for a TTL is lost; one the list now gives to
// another replica is to be given up (its channel closes; it is kept until release).
func (m *members) renew(ctx context.Context) {
	kv, err := m.bucket(ctx)
	m.mu.Lock()
	held := make(map[int]*lease, len(m.leases))
	for k, l := range m.leases {
		held[k] = l
	}
	m.mu.Unlock()
	for k, l := range held {
		if err == nil {
			rev, uerr := kv.Update(ctx, leaseKey(k), []byte(m.id), l.rev)
			switch {
			case uerr == nil:
				m.mu.Lock()
				l.rev, l.renewed = rev, time.Now()
				m.mu.Unlock()
			case errors.Is(uerr, jetstream.ErrKeyExists) || strings.Contains(uerr.Error(), "wrong last sequence"):
				m.end(k, l, true) // another replica holds it now
				continue
			default:
				m.lostBucket(uerr)
			}
		}
		if time.Since(l.renewed) > membersTTL {
			m.end(k, l, true) // lapsed: another replica may hold it by now
			continue
		}
		if want, _ := m.wants(k, m.n); !want {
			m.end(k, l, false) // to be given up: the partition hands its events back first
		}
	}
}

// end closes a lease's channel, once; lost leases are forgotten at once.
func (m *members) end(k int, l *lease, lost bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !l.ending {
		l.ending = true
		l.lapsed.Store(lost)
		close(l.lost)
	}
	if lost && m.leases[k] == l {
		delete(m.leases, k)
	}
}

// release gives partition k's lease up, if this replica still holds it, so that the next
// owner need not wait for it to lapse.
func (m *members) release(k int) {
	m.mu.Lock()
	l := m.leases[k]
	delete(m.leases, k)
	m.mu.Unlock()
	if l == nil {
		return
	}
	m.end(k, l, false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if kv, err := m.bucket(ctx); err == nil {
		_ = kv.Delete(ctx, leaseKey(k), jetstream.LastRevision(l.rev))
	}
}
