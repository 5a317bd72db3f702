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

// Limit caps how many events of one action may run in a sliding window, counted separately
// for every target and every requested_by: a runaway playbook can then disable 50 accounts a
// minute at most, not the whole directory. Events over the cap are held, never dropped.
type Limit struct {
	Max    int
	Window time.Duration
}

// Limits maps action subjects to their limits.
type Limits map[string]Limit

// ParseLimits reads "pam.credential.disable=50/1m,pam.session.drop=200/1m".
func ParseLimits(s string) (Limits, error) {
	out := Limits{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		action, spec, ok := strings.Cut(item, "=")
		maxStr, window, ok2 := strings.Cut(spec, "/")
		n, err := strconv.Atoi(maxStr)
		d, err2 := time.ParseDuration(window)
		switch {
		case !ok || !ok2 || err != nil || err2 != nil || n < 1 || d <= 0:
			return nil, fmt.Errorf("%q is not ACTION=MAX/WINDOW, e.g. pam.credential.disable=50/1m", item)
		case !events.IsAction(action):
			return nil, fmt.Errorf("%q: %s is not an action subject", item, action)
		}
		out[action] = Limit{Max: n, Window: d}
	}
	return out, nil
}

// CounterKey names the counter an event counts against.
func CounterKey(ev events.Event) string {
	return ev.Action + "|" + ev.Target + "|" + ev.RequestedBy
}
