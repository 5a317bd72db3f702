package main

// This file is compiled into the bench (for the baseline worker) and, only with -profile, into
// a separately built pamworker binary through `go build -overlay`, which adds it to
// cmd/pamworker without touching the source tree. It depends on nothing but the standard
// library and declares nothing but init, so it fits either package main.

import (
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

// With BENCH_SIGPROF_FILE set, the first SIGUSR1 starts a CPU profile into that file and the
// second stops it, writes an allocation profile next to it (.allocs) and then a .done marker
// that the bench waits for. The bench sends them around the timed part of a run.
func init() {
	path := os.Getenv("BENCH_SIGPROF_FILE")
	if path == "" {
		return
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGUSR1)
	go func() {
		<-sig
		f, err := os.Create(path)
		if err != nil {
			return
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return
		}
		<-sig
		pprof.StopCPUProfile()
		_ = f.Close()
		if a, err := os.Create(path + ".allocs"); err == nil {
			_ = pprof.Lookup("allocs").WriteTo(a, 0)
			_ = a.Close()
		}
		_ = os.WriteFile(path+".done", nil, 0o644)
	}()
}
