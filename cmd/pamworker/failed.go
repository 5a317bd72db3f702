package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/worker"
)

// failedArgs are the parsed arguments of `pamworker failed list|replay`. Flags may stand before
// or after the positional arguments, as in send.
type failedArgs struct {
	sub    string   // "list" or "replay"
	ids    []string // replay: the event ids to send again
	all    bool     // replay: every record that matches action and code
	action string   // only records of this action subject
	code   string   // only records whose result has this error code
	limit  int      // list: at most this many records; 0 for all
	json   bool     // list: one JSON array instead of a table
	help   bool
}

const defaultFailedLimit = 50

func parseFailedArgs(args []string) (failedArgs, error) {
	a := failedArgs{limit: defaultFailedLimit}
	if len(args) == 0 {
		return a, errors.New("failed needs list or replay")
	}
	a.sub, args = args[0], args[1:]
	switch a.sub {
	case "list", "replay":
	case "-h", "--help", "help":
		a.help = true
		return a, nil
	default:
		return a, fmt.Errorf("unknown failed sub-command %q (want list or replay)", a.sub)
	}
	seen := map[string]bool{}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if !strings.HasPrefix(arg, "-") || arg == "-" {
			a.ids = append(a.ids, arg)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		switch name {
		case "h", "help":
			a.help = true
			continue
		case "json", "all":
			if hasVal {
				return a, fmt.Errorf("--%s takes no value", name)
			}
			a.json = a.json || name == "json"
			a.all = a.all || name == "all"
			continue
		case "action", "code", "limit":
		default:
			return a, fmt.Errorf("unknown flag %s", arg)
		}
		if !hasVal {
			if i+1 >= len(args) {
				return a, fmt.Errorf("--%s needs a value", name)
			}
			i++
			val = args[i]
		}
		if seen[name] {
			return a, fmt.Errorf("--%s given twice", name)
		}
		seen[name] = true
		switch name {
		case "action":
			if !events.IsAction(val) {
				return a, fmt.Errorf("--action %q is not an action subject (one of %s)", val, strings.Join(events.Actions(), ", "))
			}
			a.action = val
		case "code":
			if val == "" {
				return a, errors.New("--code needs an error code, e.g. --code 1007")
			}
			a.code = val
		case "limit":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return a, fmt.Errorf("--limit %q is not a number of events (0 for all)", val)
			}
			a.limit = n
		}
	}
	if a.help {
		return a, nil
	}
	switch a.sub {
	case "list":
		if len(a.ids) > 0 {
			return a, fmt.Errorf("failed list takes no arguments, got %q", a.ids[0])
		}
		if a.all {
			return a, errors.New("--all belongs to failed replay")
		}
	case "replay":
		switch {
		case a.json || seen["limit"]:
			return a, errors.New("--json and --limit belong to failed list")
		case a.all && len(a.ids) > 0:
			return a, errors.New("failed replay takes event ids or --all, not both")
		case !a.all && len(a.ids) == 0:
			return a, errors.New("failed replay needs event ids or --all")
		case !a.all && (a.action != "" || a.code != ""):
			return a, errors.New("--action and --code select the events of --all; with event ids they mean nothing")
		}
	}
	return a, nil
}

// runFailed lists the events kept in the failed-events stream, or sends them again.
func runFailed(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout, stderr io.Writer) int {
	a, err := parseFailedArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "pamworker failed: %v\n%s", err, usage)
		return exitUsage
	}
	if a.help {
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	nc, js, err := connectClient(getenv, environ, "failed", stderr)
	if err != nil {
		return exitUsage
	}
	defer nc.Close()
	store, err := worker.OpenFailed(ctx, js)
	if err != nil {
		fmt.Fprintln(stderr, "pamworker failed:", err)
		return exitUsage
	}
	if a.sub == "list" {
		return listFailed(ctx, store, a, stdout, stderr)
	}
	return replayFailed(ctx, store, a, stdout, stderr)
}

// skipping reports a record that cannot be read.
func skipping(stderr io.Writer) func(error) {
	return func(err error) { fmt.Fprintln(stderr, "pamworker failed: skipping:", err) }
}

func listFailed(ctx context.Context, store *worker.FailedStore, a failedArgs, stdout, stderr io.Writer) int {
	entries, more, err := store.List(ctx, a.action, a.code, a.limit, skipping(stderr))
	if err != nil {
		fmt.Fprintln(stderr, "pamworker failed list:", err)
		return exitUsage
	}
	if a.json {
		records := make([]worker.FailedRecord, 0, len(entries))
		for _, e := range entries {
			records = append(records, e.Record)
		}
		out, err := json.MarshalIndent(records, "", "  ")
		if err != nil {
			fmt.Fprintln(stderr, "pamworker failed list:", err)
			return exitUsage
		}
		fmt.Fprintln(stdout, string(out))
	} else if len(entries) > 0 {
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "FAILED AT\tEVENT ID\tACTION\tCODE\tMESSAGE")
		for _, e := range entries {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", cell(e.FinishedAt, 40), cell(e.Record.EventID, 80),
				cell(e.Record.Subject, 40), cell(e.Code, 40), cell(e.Message, 60))
		}
		_ = tw.Flush()
	}
	switch {
	case len(entries) == 0:
		fmt.Fprintln(stderr, "no failed events")
	case more:
		fmt.Fprintf(stderr, "%s shown, newest first; there are more (raise --limit, or --limit 0 for all)\n", plural(len(entries), "failed event"))
	default:
		fmt.Fprintln(stderr, plural(len(entries), "failed event"))
	}
	return exitOK
}

// replayFailed sends failed events again, each under a new event id that names the old one in
// the Pamworker-Replay-Of header, and removes each replayed record from the failed stream.
func replayFailed(ctx context.Context, store *worker.FailedStore, a failedArgs, stdout, stderr io.Writer) int {
	type job struct {
		entry  worker.FailedEntry
		others []uint64 // older records of the same event id, removed with it
	}
	var jobs []job
	status := exitOK
	if a.all {
		entries, _, err := store.List(ctx, a.action, a.code, 0, skipping(stderr))
		if err != nil {
			fmt.Fprintln(stderr, "pamworker failed replay:", err)
			return exitUsage
		}
		// An event id recorded twice (it failed again after the stream's duplicate window) is
		// replayed once, from its newest record; oldest events go first, as they happened.
		at := map[string]int{}
		for _, e := range entries {
			if i, ok := at[e.Record.EventID]; ok {
				jobs[i].others = append(jobs[i].others, e.Seq)
				continue
			}
			at[e.Record.EventID] = len(jobs)
			jobs = append(jobs, job{entry: e})
		}
		slices.Reverse(jobs)
		if len(jobs) == 0 {
			fmt.Fprintln(stderr, "no failed events")
			return exitOK
		}
	} else {
		asked := map[string]bool{}
		for _, id := range a.ids {
			if asked[id] { // named twice, replayed once
				continue
			}
			asked[id] = true
			e, err := store.ByID(ctx, id)
			switch {
			case err != nil:
				fmt.Fprintln(stderr, "pamworker failed replay:", err)
				status = exitFailed
			case e == nil:
				fmt.Fprintf(stderr, "pamworker failed replay: no failed event %q is kept (it never failed, was replayed already, or expired)\n", id)
				status = exitFailed
			default:
				jobs = append(jobs, job{entry: *e})
			}
		}
	}
	replayed := 0
	for _, j := range jobs {
		newID := newEventID()
		if err := store.Replay(ctx, j.entry.Record, newID); err != nil {
			fmt.Fprintf(stderr, "pamworker failed replay: %s: %v\n", j.entry.Record.EventID, err)
			status = exitFailed
			continue
		}
		fmt.Fprintf(stdout, "%s -> %s\n", j.entry.Record.EventID, newID)
		replayed++
		// The record goes once its event is safely back in the events stream, so the list shows
		// only what is still to be dealt with. Should the replay fail too, the worker keeps a new
		// record under the new id.
		for _, seq := range append([]uint64{j.entry.Seq}, j.others...) {
			if err := store.Remove(ctx, seq); err != nil {
				fmt.Fprintf(stderr, "pamworker failed replay: %s was replayed as %s, but its record (sequence %d) could not be removed and is still listed: %v\n",
					j.entry.Record.EventID, newID, seq, err)
				status = exitFailed
			}
		}
	}
	if replayed > 0 {
		fmt.Fprintf(stderr, "replayed %s\n", plural(replayed, "failed event"))
	}
	return status
}

// cell makes s fit one table cell: no control characters (a tab or newline would break the
// alignment, an escape sequence would reach the terminal), at most n runes.
func cell(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if s == "" {
		return "-"
	}
	if r := []rune(s); len(r) > n {
		return string(r[:n-3]) + "..."
	}
	return s
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}
