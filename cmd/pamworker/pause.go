package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/pamworker/pamworker/worker"
)

// runPause is the kill switch: `pamworker pause [--for DURATION]` stops every worker replica
// from taking events (JetStream consumer pause; events wait in the stream, none is lost) until
// `pamworker resume` or the duration ends. In-flight events finish.
func runPause(ctx context.Context, resume bool, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer) int {
	name := "pause"
	if resume {
		name = "resume"
	}
	until := time.Now().AddDate(100, 0, 0) // until resumed
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case !resume && (a == "--for" || a == "-for") && i+1 < len(args):
			d, err := time.ParseDuration(args[i+1])
			if err != nil || d <= 0 {
				fmt.Fprintf(stderr, "pamworker pause: --for %q is not a positive duration such as 30m\n%s", args[i+1], usage)
				return exitUsage
			}
			until, i = time.Now().Add(d), i+1
		default:
			fmt.Fprintf(stderr, "pamworker %s: unknown argument %q\n%s", name, a, usage)
			return exitUsage
		}
	}
	nc, js, err := connectClient(getenv, environ, name, stderr)
	if err != nil {
		return exitUsage
	}
	defer nc.Close()
	if resume {
		err = worker.Resume(ctx, js)
	} else {
		err = worker.Pause(ctx, js, until)
	}
	if err != nil {
		fmt.Fprintf(stderr, "pamworker %s: %v\n", name, err)
		return exitFailed
	}
	switch {
	case resume:
		fmt.Fprintln(stdout, "resumed: workers take events again")
	case until.After(time.Now().AddDate(50, 0, 0)):
		fmt.Fprintln(stdout, "paused: no worker takes events until `pamworker resume`; they wait in the stream")
	default:
		fmt.Fprintf(stdout, "paused until %s: events wait in the stream; `pamworker resume` ends it sooner\n", until.UTC().Format(time.RFC3339))
	}
	return exitOK
}
