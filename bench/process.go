package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTick is the unit of utime and stime in /proc/<pid>/stat: USER_HZ, 100 on Linux.
const clockTick = 10 * time.Millisecond

// worker is one worker under test, running as its own process so its CPU time and memory are
// its own.
type workerProc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	profile string // BENCH_SIGPROF_FILE of the process, or ""
	http    string // pamworker's metrics address, "" for the baseline
	exited  chan struct{}
	waitErr error
}

// childEnv is the bench's environment without PAMWORKER_ and BENCH_ variables (pamworker
// refuses unknown PAMWORKER_ settings), plus extra.
func childEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PAMWORKER_") && !strings.HasPrefix(kv, "BENCH_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

func startWorker(name string, cmd *exec.Cmd, logPath, profile string) (*workerProc, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logFile
	if profile != "" {
		cmd.Env = append(cmd.Env, "BENCH_SIGPROF_FILE="+profile)
	}
	w := &workerProc{name: name, cmd: cmd, logPath: logPath, profile: profile, exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		w.waitErr = cmd.Wait()
		logFile.Close()
		close(w.exited)
	}()
	return w, nil
}

// startPamworker runs the pamworker binary against the bench's broker and fake API, and waits
// until its /readyz answers 200.
func startPamworker(bin, natsURL, apiURL string, concurrency int, logPath, profile string, extra ...string) (*workerProc, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run")
	cmd.Env = childEnv(
		"PAMWORKER_NATS_URL="+natsURL,
		"PAMWORKER_HTTP_ADDR="+addr,
		"PAMWORKER_SEGURA_URL="+apiURL,
		"PAMWORKER_SEGURA_CLIENT_ID=bench",
		"PAMWORKER_SEGURA_CLIENT_SECRET=bench-secret",
		"PAMWORKER_CONCURRENCY="+strconv.Itoa(concurrency),
		"PAMWORKER_LOG_LEVEL=warn",
		// The per-target rate limit (50/s by default) protects real vendors; the bench measures
		// the worker's own capacity against an instant fake, so it lifts the limit.
		"PAMWORKER_TARGET_RATE=10000",
	)
	cmd.Env = append(cmd.Env, extra...)
	if g := os.Getenv("BENCH_PAMWORKER_GOGC"); g != "" {
		cmd.Env = append(cmd.Env, "GOGC="+g)
	}
	if g := os.Getenv("BENCH_PAMWORKER_GOMEMLIMIT"); g != "" {
		cmd.Env = append(cmd.Env, "GOMEMLIMIT="+g)
	}
	w, err := startWorker("pamworker", cmd, logPath, profile)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				w.http = addr
				return w, nil
			}
		}
		select {
		case <-w.exited:
			return nil, fmt.Errorf("pamworker exited before it was ready (%v)%s", w.waitErr, w.logTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
	w.stop()
	return nil, fmt.Errorf("pamworker not ready after 30s%s", w.logTail())
}

// startBaseline re-executes the bench binary as the baseline worker (with extra arguments for
// a variant) and waits until it writes "ready".
func startBaseline(self, name, natsURL, apiURL, stream, consumer string, concurrency int, logPath, profile string, extra ...string) (*workerProc, error) {
	args := append([]string{baselineMode, "-nats", natsURL, "-api", apiURL, "-stream", stream,
		"-consumer", consumer, "-concurrency", strconv.Itoa(concurrency)}, extra...)
	cmd := exec.Command(self, args...)
	cmd.Env = childEnv()
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	w, err := startWorker(name, cmd, logPath, profile)
	if err != nil {
		return nil, err
	}
	ready := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		ready <- strings.TrimSpace(line) == "ready"
	}()
	select {
	case ok := <-ready:
		if ok {
			return w, nil
		}
		<-w.exited
		return nil, fmt.Errorf("%s exited before it was ready (%v)%s", name, w.waitErr, w.logTail())
	case <-time.After(30 * time.Second):
		w.stop()
		return nil, fmt.Errorf("%s not ready after 30s%s", name, w.logTail())
	}
}

// stop sends SIGTERM and waits for the exit, killing the process after 30 s.
func (w *workerProc) stop() error {
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.exited:
	case <-time.After(30 * time.Second):
		_ = w.cmd.Process.Kill()
		<-w.exited
		return fmt.Errorf("%s did not stop within 30s of SIGTERM; killed", w.name)
	}
	if w.waitErr != nil {
		return fmt.Errorf("%s exited: %v%s", w.name, w.waitErr, w.logTail())
	}
	return nil
}

// toggleProfile starts (first call) or stops (second call) the worker's CPU profile; stopping
// waits until the profile is written.
func (w *workerProc) toggleProfile(stopping bool) error {
	if w.profile == "" {
		return nil
	}
	if err := w.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return err
	}
	for i := 0; stopping && i < 500; i++ {
		if _, err := os.Stat(w.profile + ".done"); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	if stopping {
		return fmt.Errorf("%s wrote no profile to %s", w.name, w.profile)
	}
	return nil
}

// logTail is the end of the worker's stderr, for error messages.
func (w *workerProc) logTail() string {
	b, _ := os.ReadFile(w.logPath)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	if len(b) == 0 {
		return ""
	}
	return "\n--- " + w.logPath + " ---\n" + string(b)
}

// usage is what /proc says about a process.
type usage struct {
	cpu     time.Duration // user + system time, all threads
	peakRSS int64         // VmHWM, bytes
	rss     int64         // VmRSS, bytes
	syscr   int64         // read syscalls, all threads (/proc/<pid>/io)
	syscw   int64         // write syscalls
}

// procUsage reads /proc/<pid>/stat and /proc/<pid>/status ("self" for the bench).
func procUsage(pid string) (usage, error) {
	var u usage
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return u, err
	}
	// The command name (field 2) may hold spaces; the fields after it are plain numbers.
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return u, fmt.Errorf("/proc/%s/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(fields[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return u, fmt.Errorf("/proc/%s/stat: %w", pid, err)
	}
	u.cpu = time.Duration(utime+stime) * clockTick
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return u, err
	}
	for line := range strings.Lines(string(status)) {
		name, value, _ := strings.Cut(line, ":")
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		switch name {
		case "VmHWM":
			u.peakRSS = kb << 10
		case "VmRSS":
			u.rss = kb << 10
		}
	}
	// /proc/<pid>/io may be unreadable (no CAP_SYS_PTRACE over the process); then the counts stay 0.
	if io, err := os.ReadFile("/proc/" + pid + "/io"); err == nil {
		for line := range strings.Lines(string(io)) {
			name, value, _ := strings.Cut(line, ":")
			n, _ := strconv.ParseInt(strings.TrimSpace(value), 10, 64)
			switch name {
			case "syscr":
				u.syscr = n
			case "syscw":
				u.syscw = n
			}
		}
	}
	return u, nil
}

func (w *workerProc) usage() (usage, error) { return procUsage(strconv.Itoa(w.cmd.Process.Pid)) }

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// machineCPU is the busy time of all CPUs together, from the first line of /proc/stat (user,
// nice, system, irq, softirq, steal; not idle and iowait).
func machineCPU() time.Duration {
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(stat), "\n")
	fields := strings.Fields(line)
	var ticks int64
	for i, f := range fields {
		if n, err := strconv.ParseInt(f, 10, 64); err == nil && i >= 1 && i <= 8 && i != 4 && i != 5 {
			ticks += n
		}
	}
	return time.Duration(ticks) * clockTick
}
