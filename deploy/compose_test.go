package deploy

import (
	"context"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// loadCompose loads docker-compose.yml as `docker compose` does: JSON-schema
// validation, interpolation, normalization and consistency checks (unknown
// depends_on services, undeclared volumes ...). The host environment is left
// out so the result does not depend on the machine.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root := repoRoot(t)
	opts, err := cli.NewProjectOptions(
		[]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root),
	)
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, err := p.GetService(name)
	if err != nil {
		t.Fatalf("compose service %s: %v", name, err)
	}
	return s
}

// env returns a service's environment; a name without a value is "".
func env(s types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for k, v := range s.Environment {
		out[k] = ""
		if v != nil {
			out[k] = *v
		}
	}
	return out
}

var pinnedImage = regexp.MustCompile(`^[a-z0-9./-]+:v?\d+\.\d+(\.\d+)?[a-z0-9.-]*(@sha256:[0-9a-f]{64})?$`)

func TestComposeProject(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)

	names := p.ServiceNames()
	slices.Sort(names)
	if want := []string{"nats", "pamworker", "prometheus"}; !slices.Equal(names, want) {
		t.Errorf("services = %v, want %v", names, want)
	}
	for _, name := range []string{"nats", "prometheus"} {
		if img := service(t, p, name).Image; !pinnedImage.MatchString(img) {
			t.Errorf("%s image %q: pin a version tag", name, img)
		}
	}
	// Published ports stay on loopback: nothing here is authenticated.
	for _, s := range p.Services {
		for _, port := range s.Ports {
			if port.Published != "" && port.HostIP != "127.0.0.1" {
				t.Errorf("%s publishes %s on %q; bind it to 127.0.0.1", s.Name, port.Published, port.HostIP)
			}
		}
	}
}

func TestComposeNATS(t *testing.T) {
	t.Parallel()
	s := service(t, loadCompose(t), "nats")
	cmd := strings.Join(s.Command, " ")
	for _, want := range []string{"-js", "-sd /data", "-m 8222"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("nats command %q lacks %q", cmd, want)
		}
	}
	persisted := false
	for _, v := range s.Volumes {
		persisted = persisted || (v.Target == "/data" && v.Type == types.VolumeTypeVolume)
	}
	if !persisted {
		t.Error("nats /data (the JetStream store) is not on a named volume")
	}
	if s.HealthCheck == nil || len(s.HealthCheck.Test) == 0 || s.HealthCheck.Disable {
		t.Fatal("nats has no health check; pamworker could start before JetStream is up")
	}
	if test := strings.Join(s.HealthCheck.Test, " "); !strings.Contains(test, ":8222/healthz") {
		t.Errorf("nats health check %q does not query the monitoring port's /healthz", test)
	}
}

func TestComposePamworker(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	s := service(t, p, "pamworker")

	if s.Build == nil {
		t.Fatal("pamworker is not built from the repository")
	}
	root := repoRoot(t)
	if s.Build.Context != root {
		t.Errorf("build context = %q, want the repository root %q", s.Build.Context, root)
	}
	if s.Build.Dockerfile != "deploy/Dockerfile" {
		t.Errorf("build dockerfile = %q, want deploy/Dockerfile", s.Build.Dockerfile)
	}
	if _, err := os.Stat(filepath.Join(s.Build.Context, s.Build.Dockerfile)); err != nil {
		t.Errorf("dockerfile: %v", err)
	}
	if !slices.Equal(s.Command, []string{"run", "--sandbox"}) {
		t.Errorf("command = %v, want [run --sandbox] (the demo has no vendor targets)", s.Command)
	}
	if len(s.Entrypoint) > 0 {
		t.Errorf("entrypoint %v overrides the image's", s.Entrypoint)
	}

	e := env(s)
	for k := range e {
		if !knownEnv[k] {
			t.Errorf("environment %s is not a pamworker setting", k)
		}
		if slices.Contains(secretEnv, k) {
			t.Errorf("environment %s carries a credential; use %s_FILE with a compose secret", k, k)
		}
	}

	// PAMWORKER_NATS_URL points at the nats service's client port.
	u, err := url.Parse(e["PAMWORKER_NATS_URL"])
	if err != nil || u.Scheme != "nats" {
		t.Fatalf("PAMWORKER_NATS_URL = %q, want nats://nats:4222", e["PAMWORKER_NATS_URL"])
	}
	if _, err := p.GetService(u.Hostname()); err != nil || u.Hostname() != "nats" || u.Port() != "4222" {
		t.Errorf("PAMWORKER_NATS_URL = %q, want the nats service at port 4222", u)
	}
	dep, ok := s.DependsOn["nats"]
	if !ok || dep.Condition != types.ServiceConditionHealthy {
		t.Errorf("depends_on nats = %+v, want condition service_healthy", dep)
	}

	host, port, err := net.SplitHostPort(e["PAMWORKER_HTTP_ADDR"])
	if err != nil || host != "0.0.0.0" || port != strconv.Itoa(metricsPort) {
		t.Errorf("PAMWORKER_HTTP_ADDR = %q, want 0.0.0.0:%d", e["PAMWORKER_HTTP_ADDR"], metricsPort)
	}
	published := false
	for _, pc := range s.Ports {
		published = published || (pc.Target == metricsPort && pc.Published == strconv.Itoa(metricsPort))
	}
	if !published {
		t.Errorf("pamworker does not publish port %d", metricsPort)
	}

	// Drain before SIGKILL.
	if s.StopGracePeriod == nil || time.Duration(*s.StopGracePeriod) < 25*time.Second {
		t.Errorf("stop_grace_period = %v, want >= 25s for the 20s drain", s.StopGracePeriod)
	}
	if !s.ReadOnly || !slices.Contains(s.CapDrop, "ALL") {
		t.Error("pamworker should run read_only with cap_drop ALL, like the Kubernetes Deployment")
	}
}

func TestComposePrometheus(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	s := service(t, p, "prometheus")
	root := repoRoot(t)

	// The config directory is mounted where the image reads prometheus.yml.
	mounted := false
	for _, v := range s.Volumes {
		if v.Type != types.VolumeTypeBind {
			continue
		}
		var conf string
		switch v.Target {
		case "/etc/prometheus":
			conf = filepath.Join(v.Source, promConfFile)
		case "/etc/prometheus/" + promConfFile:
			conf = v.Source
		default:
			continue
		}
		if conf != filepath.Join(root, "deploy", promDir, promConfFile) {
			t.Errorf("prometheus mounts %s, want deploy/prometheus", v.Source)
		}
		if !v.ReadOnly {
			t.Error("mount the Prometheus config read-only")
		}
		mounted = true
	}
	if !mounted {
		t.Fatal("prometheus does not mount deploy/prometheus/prometheus.yml")
	}
	published := false
	for _, pc := range s.Ports {
		published = published || pc.Target == 9090
	}
	if !published {
		t.Error("prometheus does not publish port 9090")
	}

	// The scrape target is the pamworker service's metrics port.
	for _, sc := range readPromConfig(t).ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				host, port, err := net.SplitHostPort(target)
				if err != nil {
					t.Fatalf("scrape target %q: %v", target, err)
				}
				if _, err := p.GetService(host); err != nil {
					t.Errorf("scrape target %q: no compose service %s", target, host)
				}
				if host == "pamworker" && port != strconv.Itoa(metricsPort) {
					t.Errorf("scrape target %q, want port %d", target, metricsPort)
				}
			}
		}
	}

	// The image runs the Prometheus release whose rule parser validated alerts.yml
	// (module v0.3MM.x is Prometheus v3.MM.x).
	mod := promModuleVersion(t)
	if want := promImageVersion(mod); !strings.HasPrefix(s.Image, "prom/prometheus:"+want+".") {
		t.Errorf("prometheus image %q; the rules were validated with %s, want prom/prometheus:%s.x", s.Image, mod, want)
	}
}

// promModuleVersion is the github.com/prometheus/prometheus version in this
// module's go.mod (test binaries carry no dependency build info).
func promModuleVersion(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "github.com/prometheus/prometheus" {
			return f[1]
		}
	}
	t.Fatal("github.com/prometheus/prometheus is not required in go.mod")
	return ""
}

// promImageVersion maps module v0.316.0 to release "v3.16".
func promImageVersion(mod string) string {
	parts := strings.Split(strings.TrimPrefix(mod, "v"), ".")
	if len(parts) < 2 || len(parts[1]) != 3 {
		return mod
	}
	minor, err := strconv.Atoi(parts[1][1:])
	if err != nil {
		return mod
	}
	return "v" + parts[1][:1] + "." + strconv.Itoa(minor)
}
