package deploy

import (
	"bufio"
	"bytes"
	"go/version"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// instruction is one parsed Dockerfile line.
type instruction struct {
	cmd   string   // lower case: from, run, user ...
	args  []string // words after the instruction
	flags []string // --platform=..., --from=...
	json  bool     // exec (JSON array) form
	line  int
}

// stage is the instructions from one FROM to the next.
type stage struct {
	from  instruction
	instr []instruction
}

func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.instr {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

func (s stage) last(cmd string) (instruction, bool) {
	all := s.all(cmd)
	if len(all) == 0 {
		return instruction{}, false
	}
	return all[len(all)-1], true
}

// parseDockerfile parses with BuildKit's own parser, as `docker build` does.
func parseDockerfile(t *testing.T) []stage {
	t.Helper()
	data, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	res, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile warning: %s", w.Short)
	}
	var stages []stage
	for _, n := range res.AST.Children {
		in := instruction{cmd: strings.ToLower(n.Value), flags: n.Flags, json: n.Attributes["json"], line: n.StartLine}
		for a := n.Next; a != nil; a = a.Next {
			in.args = append(in.args, a.Value)
		}
		if in.cmd == "from" {
			stages = append(stages, stage{from: in})
			continue
		}
		if len(stages) == 0 {
			if in.cmd != "arg" {
				t.Fatalf("line %d: %s before the first FROM", in.line, in.cmd)
			}
			continue
		}
		stages[len(stages)-1].instr = append(stages[len(stages)-1].instr, in)
	}
	if len(stages) < 2 {
		t.Fatalf("want a multi-stage build, got %d stage(s)", len(stages))
	}
	return stages
}

// mainGoVersion is the `go` line of pamworker's go.mod.
func mainGoVersion(t *testing.T) string {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot(t), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "go "); ok {
			return "go" + strings.TrimSpace(v)
		}
	}
	t.Fatal("go.mod has no go line")
	return ""
}

var golangTag = regexp.MustCompile(`^golang:(1\.\d+(?:\.\d+)?)(?:-[a-z0-9.]+)?(?:@sha256:[0-9a-f]{64})?$`)

func TestDockerfileBuildStage(t *testing.T) {
	t.Parallel()
	stages := parseDockerfile(t)
	build := stages[0]
	if len(build.from.args) != 3 || !strings.EqualFold(build.from.args[1], "AS") {
		t.Fatalf("first FROM %v: want `FROM image AS name`", build.from.args)
	}
	m := golangTag.FindStringSubmatch(build.from.args[0])
	if m == nil {
		t.Fatalf("build image %q: want a pinned golang:1.N.P tag", build.from.args[0])
	}
	// The golang image sets GOTOOLCHAIN=local: an image older than go.mod's go
	// line fails to build rather than fetching a newer toolchain.
	if want := mainGoVersion(t); version.Compare("go"+m[1], want) < 0 {
		t.Errorf("build image Go %s is older than go.mod's %s", m[1], want)
	}

	var goBuild string
	for _, run := range build.all("run") {
		if cmd := strings.Join(run.args, " "); strings.Contains(cmd, "go build") {
			goBuild = cmd
		}
	}
	if goBuild == "" {
		t.Fatal("build stage has no RUN with go build")
	}
	// main.version is what `pamworker version` prints (cmd/pamworker/main.go).
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags="-s -w `, "-X main.version=", "-o /pamworker", "./cmd/pamworker"} {
		if !strings.Contains(goBuild, want) {
			t.Errorf("go build command %q lacks %q", goBuild, want)
		}
	}
	// The package exists where the build expects it (context = repository root).
	if fi, err := os.Stat(filepath.Join(repoRoot(t), "cmd", "pamworker")); err != nil || !fi.IsDir() {
		t.Errorf("./cmd/pamworker is not a directory of the repository: %v", err)
	}
}

func TestDockerfileFinalStage(t *testing.T) {
	t.Parallel()
	stages := parseDockerfile(t)
	buildName := stages[0].from.args[2]
	final := stages[len(stages)-1]

	base := final.from.args[0]
	distroless := strings.HasPrefix(base, "gcr.io/distroless/static") && strings.Contains(base, ":nonroot")
	if !distroless && base != "scratch" {
		t.Errorf("final image %q: want gcr.io/distroless/static...:nonroot or scratch", base)
	}

	user, ok := final.last("user")
	if !ok {
		t.Fatal("final stage has no USER: the container would run as root")
	}
	// Numeric, so Kubernetes can check runAsNonRoot; and the uid the manifests run as.
	uid, _, _ := strings.Cut(user.args[0], ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 || n != nonrootUID {
		t.Errorf("USER %s: want the numeric non-root %d:%d", user.args[0], nonrootUID, nonrootUID)
	}

	copied := false
	for _, c := range final.all("copy") {
		if slices.Contains(c.flags, "--from="+buildName) && slices.Contains(c.args, "/pamworker") {
			copied = true
		}
	}
	if !copied {
		t.Errorf("final stage does not COPY --from=%s /pamworker", buildName)
	}

	exposed := false
	for _, e := range final.all("expose") {
		exposed = exposed || slices.Contains(e.args, strconv.Itoa(metricsPort)) || slices.Contains(e.args, strconv.Itoa(metricsPort)+"/tcp")
	}
	if !exposed {
		t.Errorf("final stage does not EXPOSE %d", metricsPort)
	}

	// ENV nodes alternate name, value.
	env := map[string]string{}
	for _, e := range final.all("env") {
		for i := 0; i+1 < len(e.args); i += 2 {
			env[e.args[i]] = e.args[i+1]
		}
	}
	if got := env["PAMWORKER_HTTP_ADDR"]; got != "0.0.0.0:"+strconv.Itoa(metricsPort) {
		t.Errorf("ENV PAMWORKER_HTTP_ADDR = %q, want 0.0.0.0:%d (the default listens on loopback only)", got, metricsPort)
	}
	for name := range env {
		if !knownEnv[name] || slices.Contains(secretEnv, name) {
			t.Errorf("ENV %s: not a non-secret pamworker setting", name)
		}
	}

	// Exec form: distroless has no /bin/sh, and the worker must receive SIGTERM itself.
	ep, ok := final.last("entrypoint")
	if !ok || !ep.json || len(ep.args) != 1 || filepath.Base(ep.args[0]) != "pamworker" {
		t.Errorf("ENTRYPOINT %v: want the exec form [\".../pamworker\"]", ep.args)
	}
	cmd, ok := final.last("cmd")
	if !ok || !cmd.json || !slices.Equal(cmd.args, []string{"run"}) {
		t.Errorf(`CMD %v: want ["run"]`, cmd.args)
	}
	if len(final.all("run")) > 0 && distroless {
		t.Error("final stage RUNs a command, but distroless has no shell")
	}
}
