// Command pamworker runs the worker (`pamworker` or `pamworker run [--sandbox]`), its HTTP
// ingress alone (`pamworker ingress`), and publishes single events for playbooks and people
// (`pamworker send SUBJECT 'JSON' [--wait 10s]`).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// Set by the release build with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if os.Getenv("GOGC") == "" {
		// The live heap is small (a few MiB) and every event allocates a little: at the default
		// 100 the collector runs every few hundred events. 150 measured 8-10% more burst
		// throughput for ~4 MiB more resident memory (bench/README.md).
		debug.SetGCPercent(150)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, restore the default handling: a second one ends the process at
	// once. Nothing is lost by that: unacknowledged events are redelivered by JetStream.
	context.AfterFunc(ctx, stop)
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Environ(), os.Stdout, os.Stderr))
}

// Exit statuses of the contract.
const (
	exitOK     = 0 // succeeded
	exitFailed = 1 // failed or rejected (send), or the worker could not run
	exitUsage  = 2 // usage error, or no result in time (send)
)

const usage = `usage:
  pamworker [run] [--sandbox]                      run the worker
  pamworker send SUBJECT 'JSON' [--wait DURATION] [--sign-key-file PATH]
                                                   publish one event (signed with the key in PATH);
                                                   with --wait print its result
  pamworker failed list [--action SUBJECT] [--code CODE] [--limit N] [--json]
                                                   list failed events kept for replay, newest first
                                                   (--limit default 50, 0 for all)
  pamworker failed replay EVENT_ID... | --all [--action SUBJECT] [--code CODE]
                                                   send failed events again, each under a new event id
  pamworker pause [--for DURATION]                 stop every replica taking events (they wait in the stream)
  pamworker resume                                 take events again
  pamworker hold release|cancel                    run (or reject) events held by a blast-radius limit
  pamworker ingress                                run the HTTP ingress alone (PAMWORKER_INGRESS_*)
  pamworker ingress hash-token [TOKEN | --generate]
                                                   print the token_sha256 of a caller's bearer token
                                                   (read from stdin if not given)
  pamworker version                                print the version

Configuration is read from PAMWORKER_* environment variables and the YAML file named by
PAMWORKER_CONFIG; see README.md.
`

// run is the whole program behind main, so tests can start it in-process.
func run(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && (args[0] == "run" || args[0] == "send" || args[0] == "failed" || args[0] == "pause" || args[0] == "resume" || args[0] == "hold" || args[0] == "ingress" || args[0] == "version" || args[0] == "help") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "send":
		return runSend(ctx, args, getenv, environ, stdout, stderr)
	case "failed":
		return runFailed(ctx, args, getenv, environ, stdout, stderr)
	case "hold":
		return runHold(ctx, args, getenv, environ, stdout, stderr)
	case "pause", "resume":
		return runPause(ctx, cmd == "resume", args, getenv, environ, stdout, stderr)
	case "ingress":
		return runIngressCommand(ctx, args, getenv, environ, stdout, stderr, os.Stdin)
	case "version":
		fmt.Fprintln(stdout, "pamworker", version)
		return exitOK
	case "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	sandbox := false
	for _, a := range args {
		switch a {
		case "--sandbox", "-sandbox":
			sandbox = true
		case "-h", "--help":
			fmt.Fprint(stdout, usage)
			return exitOK
		default:
			fmt.Fprintf(stderr, "pamworker: unknown argument %q\n%s", a, usage)
			return exitUsage
		}
	}
	return runWorker(ctx, sandbox, getenv, environ, stderr)
}
