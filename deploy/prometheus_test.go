package deploy

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

const (
	promDir      = "prometheus"
	promJobName  = "pamworker"
	promTarget   = "pamworker:9464"
	alertsFile   = "alerts.yml"
	promConfFile = "prometheus.yml"
)

// promConfig is the part of prometheus.yml this repository uses. Prometheus's
// own config package cannot be a dependency here (its service-discovery
// modules do not all resolve from the module proxy), so the file is decoded
// strictly into this subset: a field outside it fails the test and must be
// added here deliberately.
type promConfig struct {
	Global struct {
		ScrapeInterval     model.Duration `yaml:"scrape_interval"`
		EvaluationInterval model.Duration `yaml:"evaluation_interval"`
	} `yaml:"global"`
	RuleFiles     []string `yaml:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		MetricsPath   string `yaml:"metrics_path"`
		StaticConfigs []struct {
			Targets []string          `yaml:"targets"`
			Labels  map[string]string `yaml:"labels"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

func readPromConfig(t *testing.T) promConfig {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(promDir, promConfFile))
	if err != nil {
		t.Fatal(err)
	}
	var c promConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("%s: %v", promConfFile, err)
	}
	return c
}

func TestPrometheusConfig(t *testing.T) {
	t.Parallel()
	c := readPromConfig(t)

	if c.Global.ScrapeInterval <= 0 || c.Global.EvaluationInterval <= 0 {
		t.Error("set global scrape_interval and evaluation_interval")
	}
	// The alerts' `for: 2m` needs several evaluations to mean anything.
	if time.Duration(c.Global.EvaluationInterval) > 30*time.Second {
		t.Errorf("evaluation_interval %s is too coarse for 2m alerts", c.Global.EvaluationInterval)
	}

	// rule_files are relative to the config file, as Prometheus resolves them.
	if !slices.Contains(c.RuleFiles, alertsFile) {
		t.Errorf("rule_files = %v, want %s", c.RuleFiles, alertsFile)
	}
	for _, rf := range c.RuleFiles {
		matches, err := filepath.Glob(filepath.Join(promDir, rf))
		if err != nil || len(matches) == 0 {
			t.Errorf("rule_files entry %q matches no file next to %s", rf, promConfFile)
		}
	}

	var found bool
	for _, sc := range c.ScrapeConfigs {
		if sc.JobName != promJobName {
			continue
		}
		found = true
		if sc.MetricsPath != "" && sc.MetricsPath != "/metrics" {
			t.Errorf("metrics_path = %q, the worker serves /metrics", sc.MetricsPath)
		}
		var targets []string
		for _, st := range sc.StaticConfigs {
			targets = append(targets, st.Targets...)
		}
		if !slices.Equal(targets, []string{promTarget}) {
			t.Errorf("job %s targets = %v, want [%s]", promJobName, targets, promTarget)
		}
	}
	if !found {
		t.Errorf("no scrape job %q", promJobName)
	}
}

func parseAlerts(t *testing.T) *rulefmt.RuleGroups {
	t.Helper()
	p := parser.NewParser(parser.Options{})
	groups, errs := rulefmt.ParseFile(filepath.Join(promDir, alertsFile), false, model.UTF8Validation, p,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	return groups
}

// TestAlertRules parses alerts.yml as Prometheus does (unknown fields, PromQL
// syntax and templates are checked) and then checks that every selector names
// a metric and labels the worker actually exports.
func TestAlertRules(t *testing.T) {
	t.Parallel()
	groups := parseAlerts(t)
	p := parser.NewParser(parser.Options{})

	// What the brief and the README promise operators.
	want := map[string]bool{
		"PamworkerDown":          false,
		"PamworkerTargetDown":    false,
		"PamworkerEventsFailing": false,
		"PamworkerHighRetryRate": false,
		"PamworkerSlowEvents":    false,
	}
	usesMetric := map[string]map[string]bool{}  // alert -> metric names
	usesMatcher := map[string]map[string]bool{} // alert -> label matchers, e.g. status="failed"
	jobMatchers := 0

	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			name := r.Alert
			if name == "" {
				t.Errorf("group %s: recording rule %s; only alerts are expected here", g.Name, r.Record)
				continue
			}
			if _, ok := want[name]; ok {
				want[name] = true
			}
			if sev := r.Labels["severity"]; sev != "critical" && sev != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", name, sev)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: want summary and description annotations", name)
			}

			expr, err := p.ParseExpr(r.Expr)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			usesMetric[name] = map[string]bool{}
			usesMatcher[name] = map[string]bool{}
			for _, sel := range parser.ExtractSelectors(expr) {
				metric := ""
				for _, m := range sel {
					if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
						metric = m.Value
					}
				}
				allowed, ok := metricLabels[metric]
				if !ok {
					t.Errorf("%s: selects %q, not a metric the worker exports", name, metric)
					continue
				}
				usesMetric[name][metric] = true
				for _, m := range sel {
					usesMatcher[name][m.String()] = true
					switch {
					case m.Name == labels.MetricName:
					case metric == "up" && m.Name == "job":
						jobMatchers++
						if !m.Matches(promJobName) || !m.Matches("pamworker-metrics") {
							t.Errorf("%s: %s does not match job %q (compose) and %q (ServiceMonitor)", name, m, promJobName, "pamworker-metrics")
						}
					case !slices.Contains(allowed, m.Name):
						t.Errorf("%s: %s has no label %q", name, metric, m.Name)
					case m.Name == "status" && m.Type == labels.MatchEqual && !resultStatuses[m.Value]:
						t.Errorf("%s: status %q is not a result status", name, m.Value)
					}
				}
			}
		}
	}
	for name, ok := range want {
		if !ok {
			t.Errorf("alert %s is missing", name)
		}
	}
	if jobMatchers == 0 {
		t.Error("no alert selects up{job=...}: an unscraped worker would go unnoticed")
	}

	// Each alert watches the metric it is about.
	for alert, metric := range map[string]string{
		"PamworkerDown":          "up",
		"PamworkerTargetDown":    "pamworker_target_up",
		"PamworkerEventsFailing": "pamworker_events_processed_total",
		"PamworkerHighRetryRate": "pamworker_retries_total",
		"PamworkerSlowEvents":    "pamworker_event_duration_seconds_bucket",
	} {
		if !usesMetric[alert][metric] {
			t.Errorf("%s does not use %s", alert, metric)
		}
	}
	if !usesMatcher["PamworkerEventsFailing"][`status="failed"`] {
		t.Error(`PamworkerEventsFailing does not select status="failed"`)
	}
}
