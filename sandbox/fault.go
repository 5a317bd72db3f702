package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"time"
)

// faultQueue hands out injected faults in order; each entry answers n calls.
type faultQueue[F any] struct {
	runs []faultRun[F]
}

type faultRun[F any] struct {
	fault F
	left  int
}

func (q *faultQueue[F]) push(n int, f F) {
	if n > 0 {
		q.runs = append(q.runs, faultRun[F]{fault: f, left: n})
	}
}

// pop returns the fault for the current call, if one is queued.
func (q *faultQueue[F]) pop() (F, bool) {
	var zero F
	if len(q.runs) == 0 {
		return zero, false
	}
	run := &q.runs[0]
	f := run.fault
	run.left--
	if run.left == 0 {
		q.runs = q.runs[1:]
	}
	return f, true
}

// sleepCtx waits d, or less if ctx ends first; it reports whether the full wait elapsed. A
// client that gives up during a simulated delay must not see the change applied.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// randomHex returns 2n random hex characters, for tokens, passwords and session ids.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails since Go 1.24
	return hex.EncodeToString(b)
}

// randomUUID returns a random (version 4) UUID, the shape of Element session ids.
func randomUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// discardWriter swallows a response: an ApplyThenFail fault runs the handler for its side
// effect only.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header {
	if d.h == nil {
		d.h = http.Header{}
	}
	return d.h
}
func (*discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (*discardWriter) WriteHeader(int)             {}
