package deploy

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// knownEnv is the worker's configuration surface (CONTRACT.md and the README's
// configuration table). A name outside it in a manifest is a typo the worker
// would silently ignore.
var knownEnv = map[string]bool{
	"PAMWORKER_NATS_URL":                  true,
	"PAMWORKER_HTTP_ADDR":                 true,
	"PAMWORKER_SEGURA_URL":                true,
	"PAMWORKER_SEGURA_TOKEN_URL":          true,
	"PAMWORKER_SEGURA_API_PREFIX":         true,
	"PAMWORKER_ELEMENT_URL":               true,
	"PAMWORKER_CONCURRENCY":               true,
	"PAMWORKER_HTTP_TIMEOUT":              true,
	"PAMWORKER_MAX_EVENT_BYTES":           true,
	"PAMWORKER_CONFIG":                    true,
	"PAMWORKER_LOG_LEVEL":                 true,
	"PAMWORKER_DATA_DIR":                  true,
	"PAMWORKER_SHUTDOWN_TIMEOUT":          true,
	"PAMWORKER_NATS_INBOX_PREFIX":         true,
	"PAMWORKER_SEGURA_CLIENT_ID":          true,
	"PAMWORKER_SEGURA_CLIENT_SECRET":      true,
	"PAMWORKER_ELEMENT_USERNAME":          true,
	"PAMWORKER_ELEMENT_PASSWORD":          true,
	"PAMWORKER_SEGURA_CLIENT_ID_FILE":     true,
	"PAMWORKER_SEGURA_CLIENT_SECRET_FILE": true,
	"PAMWORKER_ELEMENT_USERNAME_FILE":     true,
	"PAMWORKER_ELEMENT_PASSWORD_FILE":     true,
}

// secretEnv are the settings that carry credentials. Deployments set them
// only through their _FILE form.
var secretEnv = []string{
	"PAMWORKER_SEGURA_CLIENT_ID",
	"PAMWORKER_SEGURA_CLIENT_SECRET",
	"PAMWORKER_ELEMENT_USERNAME",
	"PAMWORKER_ELEMENT_PASSWORD",
}

const (
	metricsPort = 9464
	// nonrootUID is distroless's "nonroot" user, the image's USER.
	nonrootUID = 65532
)

// metricLabels lists the contract's metrics with the labels each may carry
// (histogram series included), plus Prometheus's own `up`.
var metricLabels = map[string][]string{
	"pamworker_events_processed_total":        {"action", "status"},
	"pamworker_api_requests_total":            {"target", "action", "code"},
	"pamworker_event_duration_seconds_bucket": {"action", "le"},
	"pamworker_event_duration_seconds_sum":    {"action"},
	"pamworker_event_duration_seconds_count":  {"action"},
	"pamworker_retries_total":                 {"action", "reason"},
	"pamworker_in_flight":                     {},
	"pamworker_target_up":                     {"target"},
	"up":                                      {},
}

// resultStatuses are the values of pamworker_events_processed_total's status label.
var resultStatuses = map[string]bool{"succeeded": true, "failed": true, "rejected": true}

// repoRoot is the pamworker repository, one level above this module.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root %s has no go.mod: %v", root, err)
	}
	return root
}

var envLiteral = regexp.MustCompile(`"(PAMWORKER_[A-Z0-9_]+)"`)

// TestKnownEnvIsReadByWorker guards against drift between knownEnv and the
// worker: it refuses to start on a PAMWORKER_ variable it does not know, so a
// name the manifests may use must appear in the worker's source. _FILE forms
// are derived in code, so their base name is what is looked for.
func TestKnownEnvIsReadByWorker(t *testing.T) {
	t.Parallel()
	root := repoRoot(t)
	inSource := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != root && (d.Name() == "deploy" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range envLiteral.FindAllSubmatch(data, -1) {
			inSource[string(m[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(inSource) == 0 {
		t.Skip("the worker's source names no PAMWORKER_ variable yet")
	}
	for name := range knownEnv {
		if !inSource[name] && !inSource[strings.TrimSuffix(name, "_FILE")] {
			t.Errorf("%s is not read by the worker (no %q literal in its non-test Go source); the worker would refuse to start with it set", name, name)
		}
	}
}
