package guard

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pamworker/pamworker/events"
)

// CodeHeldCancelled is the rejection of a held event an operator cancelled.
const CodeHeldCancelled = "held_cancelled"

// Limit caps how many events of one action may run on one target in a sliding window: Max
// whoever asks — the ceiling a runaway script or a hostile publisher cannot get around by
// naming itself differently — and, if PerRequester is set, at most that many of them for any
// one requested_by, so that one runaway playbook does not use up the ceiling for everyone.
// Events over a cap are held, never dropped.
type Limit struct {
	Max          int
	Window       time.Duration
	PerRequester int // 0: no cap per requester below the ceiling
}

func (l Limit) String() string {
	s := fmt.Sprintf("%d per %s on the target", l.Max, l.Window)
	if l.PerRequester > 0 {
		s += fmt.Sprintf(", %d per requester", l.PerRequester)
	}
	return s
}

// Limits maps action subjects to their limits.
type Limits map[string]Limit

// ParseLimits reads "pam.credential.disable=200/1m/50,pam.session.drop=500/1m": ACTION=
// MAX/WINDOW, optionally /PER_REQUESTER.
func ParseLimits(s string) (Limits, error) {
	out := Limits{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		action, spec, ok := strings.Cut(item, "=")
		parts := strings.Split(spec, "/")
		bad := fmt.Errorf("%q is not ACTION=MAX/WINDOW or ACTION=MAX/WINDOW/PER_REQUESTER, e.g. pam.credential.disable=200/1m/50", item)
		if !ok || len(parts) < 2 || len(parts) > 3 {
			return nil, bad
		}
		n, err := strconv.Atoi(parts[0])
		d, err2 := time.ParseDuration(parts[1])
		per := 0
		var err3 error
		if len(parts) == 3 {
			per, err3 = strconv.Atoi(parts[2])
			if err3 == nil && (per < 1 || per > n) {
				return nil, fmt.Errorf("%q: the cap per requester (%d) must be from 1 to the ceiling (%d)", item, per, n)
			}
		}
		switch {
		case err != nil || err2 != nil || err3 != nil || n < 1 || d <= 0:
			return nil, bad
		case !events.IsAction(action):
			return nil, fmt.Errorf("%q: %s is not an action subject", item, action)
		case n > 10000:
			return nil, fmt.Errorf("%q: a ceiling above 10000 per window is no limit", item)
		}
		out[action] = Limit{Max: n, Window: d, PerRequester: per}
	}
	return out, nil
}

// CounterKey names the window an event counts against: its action on its target.
func CounterKey(ev events.Event) string { return ev.Action + "|" + ev.Target }

// Requester is the name an event is counted under for a per-requester cap: requested_by as a
// person reads it (see Skeleton), so a differently cased, padded, look-alike or invisibly
// marked spelling is the same requester.
func Requester(ev events.Event) string { return skeleton(ev.RequestedBy) }
