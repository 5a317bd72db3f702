package worker

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// memberPrefix starts every key of the members bucket.
const memberPrefix = "m."

// ReplicaStatus is what a live replica reports of itself in the members bucket, renewed every
// few seconds and at once when one of its targets goes down or comes back.
type ReplicaStatus struct {
	Replica string                  `json:"replica"`
	At      time.Time               `json:"at"`
	Targets map[string]TargetStatus `json:"targets"` // by target label, "segura/default"
}

// TargetStatus is one target as a replica sees it.
type TargetStatus struct {
	Up     bool       `json:"up"`
	State  string     `json:"state"`            // up, refused (the target refuses the worker), circuit_open
	Reason string     `json:"reason,omitempty"` // why it is down
	Since  *time.Time `json:"since,omitempty"`  // down since
}

// report is this replica's value in the members bucket.
func (w *Worker) report(id string) func() []byte {
	return func() []byte {
		b, _ := json.Marshal(ReplicaStatus{Replica: id, At: time.Now().UTC(), Targets: w.targets.snapshot()})
		return b
	}
}

// snapshot returns the state of every configured target.
func (ts *targetState) snapshot() map[string]TargetStatus {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	out := make(map[string]TargetStatus, len(ts.m))
	for name, t := range ts.m {
		st := TargetStatus{Up: t.state == up, State: "up"}
		if t.state != up {
			since := t.since.UTC()
			st.Reason, st.Since = t.reason, &since
			st.State = map[downKind]string{refused: "refused", open: "circuit_open"}[t.state]
		}
		out[name] = st
	}
	return out
}

// Replicas reads what every live replica reports, from the members bucket of t: one stream
// info request for the keys, then one direct get each. A replica that has not reported yet,
// or whose value does not decode, is left out.
func Replicas(ctx context.Context, js jetstream.JetStream, t Topology) ([]ReplicaStatus, error) {
	stream, err := js.Stream(ctx, "KV_"+t.MembersBucket)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil // no replica has ever run
	}
	if err != nil {
		return nil, err
	}
	prefix := "$KV." + t.MembersBucket + "."
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(prefix+memberPrefix+">"))
	if err != nil {
		return nil, err
	}
	subjects := make([]string, 0, len(info.State.Subjects))
	for s := range info.State.Subjects {
		subjects = append(subjects, s)
	}
	slices.Sort(subjects)
	var out []ReplicaStatus
	for _, s := range subjects {
		m, err := stream.GetLastMsgForSubject(ctx, s)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // expired meanwhile
		}
		if err != nil {
			return nil, err
		}
		if op := m.Header.Get("KV-Operation"); op == "DEL" || op == "PURGE" {
			continue
		}
		var r ReplicaStatus
		if json.Unmarshal(m.Data, &r) == nil && strings.TrimSpace(r.Replica) != "" {
			out = append(out, r)
		}
	}
	return out, nil
}

// TargetDown reports whether any live replica sees target down, and why.
func TargetDown(replicas []ReplicaStatus, target string) (TargetStatus, bool) {
	for _, r := range replicas {
		if st, ok := r.Targets[target]; ok && !st.Up {
			return st, true
		}
	}
	return TargetStatus{}, false
}

// reportChange renews this replica's report now: a target went down or came back.
func (w *Worker) reportChange() { w.members.changed() }
