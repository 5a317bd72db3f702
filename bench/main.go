// Command bench measures pamworker end to end against a minimal hand-written worker in the same
// run, on the same broker, fake API, publisher and result subscriber, so that what it reports
// are comparable ratios even on a noisy machine. See bench/README.md.
//
//	go run ./bench -n 20000 -rounds 3
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pamworker/pamworker/broker"
	"github.com/pamworker/pamworker/worker"
)

type options struct {
	n, concurrency, rounds, warmup int
	timeout                        time.Duration
	root, profileDir               string
	workers                        []string
	soak                           time.Duration // > 0: run the soak mode instead of rounds
	rate                           int           // soak: events per second
	scenarios                      []string      // scenarios to run, or "rounds" for alternating burst rounds
	partitions                     int           // PAMWORKER_PARTITIONS of the replicas scenarios (0: do not set it)
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == baselineMode {
		if err := runBaseline(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "baseline:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	flag.IntVar(&o.n, "n", 20000, "events per timed run")
	flag.IntVar(&o.concurrency, "concurrency", 32, "events each worker processes at once")
	flag.IntVar(&o.rounds, "rounds", 2, "rounds; each runs every worker of -workers once, in turn")
	flag.IntVar(&o.warmup, "warmup", 2000, "events published and awaited before the timed part of each run")
	flag.DurationVar(&o.timeout, "timeout", 2*time.Minute, "longest wait for the results of one run")
	flag.StringVar(&o.root, "root", "", "pamworker module root (default: from go env GOMOD)")
	flag.StringVar(&o.profileDir, "profile", "", "write CPU and allocation profiles of the timed parts to this directory")
	flag.DurationVar(&o.soak, "soak", 0, "run pamworker alone at a steady -rate for this long, printing its memory and goroutines (e.g. 10m)")
	flag.IntVar(&o.rate, "rate", 200, "soak: events per second")
	workers := flag.String("workers", kindBaseline+","+kindPam, "rounds: workers run in turn in every round, the first is the reference: "+strings.Join(workerKinds, ", "))
	scenarios := flag.String("scenarios", "all", "scenarios to run (burst, hangs, slow, replicas, one-replica, kill, outage, resume, ingress, all), or rounds: alternating burst rounds of -workers")
	flag.IntVar(&o.partitions, "partitions", 2, "PAMWORKER_PARTITIONS for the replica scenarios; 0 for a build that does not know it")
	flag.Parse()
	o.workers = strings.Split(*workers, ",")
	o.scenarios = strings.Split(*scenarios, ",")
	for _, w := range o.workers {
		if !slices.Contains(workerKinds, w) {
			fmt.Fprintf(os.Stderr, "bench: -workers: unknown worker %q (known: %s)\n", w, strings.Join(workerKinds, ", "))
			os.Exit(2)
		}
	}
	if o.n < 1 || o.concurrency < 1 || o.rounds < 1 || o.warmup < 0 {
		fmt.Fprintln(os.Stderr, "bench: -n, -concurrency and -rounds must be at least 1, -warmup at least 0")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	ctx := context.Background()
	tmp, err := os.MkdirTemp("", "pamworker-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if o.profileDir != "" {
		if o.profileDir, err = filepath.Abs(o.profileDir); err != nil {
			return err
		}
		if err := os.MkdirAll(o.profileDir, 0o755); err != nil {
			return err
		}
	}
	b := &bench{opts: o, tmp: tmp, topology: worker.DefaultTopology()}
	if b.self, err = os.Executable(); err != nil {
		return err
	}
	logf("building pamworker")
	if b.pamBin, err = buildPamworker(o.root, tmp, o.profileDir != ""); err != nil {
		return err
	}

	ns, err := broker.Start(broker.Embedded{Listen: "127.0.0.1:-1", DataDir: filepath.Join(tmp, "nats")})
	if err != nil {
		return err
	}
	defer ns.Shutdown()
	b.natsURL = ns.ClientURL()
	if b.api, err = startFakeSegura(); err != nil {
		return err
	}
	defer b.api.srv.Close()
	if b.pub, err = nats.Connect(b.natsURL, nats.Name("bench-publisher")); err != nil {
		return err
	}
	defer b.pub.Close()
	b.js, err = jetstream.New(b.pub,
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { b.pubErrs.Add(1) }))
	if err != nil {
		return err
	}
	if b.sub, err = nats.Connect(b.natsURL, nats.Name("bench-results")); err != nil {
		return err
	}
	defer b.sub.Close()

	if o.soak > 0 {
		printMachine(o)
		return b.soakRun(ctx)
	}
	printMachine(o)
	if !slices.Contains(o.scenarios, "rounds") {
		return b.runScenarios(ctx)
	}
	fmt.Println("| run | worker | events/s | p50 ms | p99 ms | max ms | worker CPU ms/10k | broker+bench CPU ms/10k | peak RSS MiB | RSS at end MiB | API conns (run / timed) | API calls | other load |")
	fmt.Println("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	var results []runResult
	for round := range o.rounds {
		for _, kind := range o.workers {
			run := len(results) + 1
			logf("run %d: %s, %d warm-up + %d timed events", run, kind, o.warmup, o.n)
			r, err := b.runOnce(ctx, kind, run)
			if err != nil {
				return fmt.Errorf("run %d (%s, round %d): %w", run, kind, round+1, err)
			}
			logf("run %d: %s done: published in %v, all results in %v; worker and bench busy %.0f%% of %d CPUs (worker %.0f%%); worker syscalls/event %.1f; %d token requests; %d duplicate results",
				run, kind, r.publish.Round(time.Millisecond), r.elapsed.Round(time.Millisecond), 100*r.busy(r.cpu+r.benchCPU),
				runtime.NumCPU(), 100*r.busy(r.cpu), float64(r.syscalls)/float64(r.n), r.api.tokens, r.dups)
			printRow(r)
			results = append(results, r)
		}
	}
	printSummary(o, results)
	return b.reset(ctx)
}

// buildPamworker builds ./cmd/pamworker into dir. With profiling, sigprofile.go is added to it
// through -overlay: the source tree is not touched.
func buildPamworker(root, dir string, profile bool) (string, error) {
	if root == "" {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
			return "", errors.New("cannot find the module root; run from the repository or pass -root")
		}
		root = filepath.Dir(strings.TrimSpace(string(out)))
	}
	bin := filepath.Join(dir, "pamworker")
	args := []string{"build", "-o", bin}
	if profile {
		src, err := sigprofileSource(root)
		if err != nil {
			return "", err
		}
		overlay := map[string]map[string]string{"Replace": {
			filepath.Join(root, "cmd", "pamworker", "zz_bench_sigprofile.go"): src,
		}}
		data, _ := json.Marshal(overlay)
		path := filepath.Join(dir, "overlay.json")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return "", err
		}
		args = append(args, "-overlay", path)
	}
	cmd := exec.Command("go", append(args, "./cmd/pamworker")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/pamworker: %v\n%s", err, out)
	}
	return bin, nil
}

func sigprofileSource(root string) (string, error) {
	src := filepath.Join(root, "bench", "sigprofile.go")
	if _, err := os.Stat(src); err != nil {
		return "", fmt.Errorf("-profile needs %s: %w", src, err)
	}
	return src, nil
}

func printMachine(o options) {
	model := "unknown"
	if info, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(info)) {
			if name, value, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(name) == "model name" {
				model = strings.TrimSpace(value)
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Printf("machine: %d CPUs (%s), GOMAXPROCS %d, %s, Linux %s\n", runtime.NumCPU(), model,
		runtime.GOMAXPROCS(0), runtime.Version(), strings.TrimSpace(string(kernel)))
	fmt.Printf("date: %s; %d events per run after %d warm-up, concurrency %d, %d rounds\n\n",
		time.Now().UTC().Format(time.RFC3339), o.n, o.warmup, o.concurrency, o.rounds)
}

func printRow(r runResult) {
	fmt.Printf("| %d | %s | %.0f | %.1f | %.1f | %.1f | %.0f | %.0f | %.1f | %.1f | %d / %d | %d | %.0f%% |\n",
		r.run, r.worker, r.rate(), ms(r.p50), ms(r.p99), ms(r.max), r.cpuPer10k(), r.benchCPUPer10k(),
		mb(r.peakRSS), mb(r.rss), r.connsRun, r.api.conns, r.api.calls, 100*r.busy(r.otherCPU))
}

// printSummary prints the medians of each worker over the rounds and the ratios to the first.
func printSummary(o options, results []runResult) {
	type summary struct{ rate, p50, p99, cpu, benchCPU, peak, conns float64 }
	sum := map[string]summary{}
	for _, kind := range o.workers {
		var rate, p50, p99, cpu, benchCPU, peak, conns []float64
		for _, r := range results {
			if r.worker != kind {
				continue
			}
			rate, p50, p99 = append(rate, r.rate()), append(p50, ms(r.p50)), append(p99, ms(r.p99))
			cpu, benchCPU = append(cpu, r.cpuPer10k()), append(benchCPU, r.benchCPUPer10k())
			peak, conns = append(peak, mb(r.peakRSS)), append(conns, float64(r.connsRun))
		}
		sum[kind] = summary{median(rate), median(p50), median(p99), median(cpu), median(benchCPU), median(peak), median(conns)}
	}
	ref := o.workers[0]
	fmt.Printf("\nmedians over %d rounds; \"vs %s\" is the ratio of the medians:\n\n", o.rounds, ref)
	fmt.Printf("| worker | events/s | vs %s | p50 ms | p99 ms | worker CPU ms/10k | broker+bench CPU ms/10k | total CPU vs %s | peak RSS MiB | API conns |\n", ref, ref)
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	base := sum[ref]
	for _, kind := range o.workers {
		s := sum[kind]
		fmt.Printf("| %s | %.0f | %.0f%% | %.1f | %.1f | %.0f | %.0f | %.2fx | %.1f | %.0f |\n", kind, s.rate, 100*s.rate/base.rate,
			s.p50, s.p99, s.cpu, s.benchCPU, (s.cpu+s.benchCPU)/(base.cpu+base.benchCPU), s.peak, s.conns)
	}
	if pam, ok := sum[kindPam]; ok && ref == kindBaseline {
		fmt.Printf("\npamworker: throughput %.0f%% of the baseline (target: at least 85%%); peak RSS %.1f MiB = %.1f MB (target: under 30 MB); %.0f API connections for the %d events of a run (target: a handful)\n",
			100*pam.rate/base.rate, pam.peak, pam.peak*(1<<20)/1e6, pam.conns, o.n+o.warmup)
	}
}

func mb(bytes int64) float64 { return float64(bytes) / (1 << 20) }

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}
