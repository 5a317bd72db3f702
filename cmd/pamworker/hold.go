package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/pamworker/pamworker/worker"
)

// runHold lets an operator decide about events held by a blast-radius limit: `pamworker hold
// release` lets every event held now run despite the limit; `pamworker hold cancel` rejects
// them (held_cancelled). Events arriving later are counted against the limit again.
func runHold(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer) int {
	if len(args) != 1 || (args[0] != "release" && args[0] != "cancel") {
		fmt.Fprintf(stderr, "pamworker hold: say release or cancel\n%s", usage)
		return exitUsage
	}
	nc, js, err := connectClient(getenv, environ, "hold", stderr)
	if err != nil {
		return exitUsage
	}
	defer nc.Close()
	now, err := worker.Hold(ctx, js, args[0] == "release")
	if err != nil {
		fmt.Fprintln(stderr, "pamworker hold:", err)
		return exitFailed
	}
	if args[0] == "cancel" {
		fmt.Fprintf(stdout, "cancelled: events held now (received before %s) will be rejected held_cancelled\n", now.Format(time.RFC3339))
	} else {
		fmt.Fprintf(stdout, "released: events held now (received before %s) run despite the limit\n", now.Format(time.RFC3339))
	}
	return exitOK
}
