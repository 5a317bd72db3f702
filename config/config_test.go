package config_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pamworker/pamworker/config"
)

// environment returns a getenv and an environ slice over vars, as os.Getenv and os.Environ
// would over a process environment, so tests stay parallel (no t.Setenv).
func environment(vars map[string]string) (func(string) string, []string) {
	environ := []string{"PATH=/usr/bin", "HOME=/home/worker", "PAMWORKERX=not ours", "pamworker_lower=not ours"}
	for k, v := range vars {
		environ = append(environ, k+"="+v)
	}
	slices.Sort(environ)
	return func(k string) string { return vars[k] }, environ
}

func load(vars map[string]string) (config.Config, error) {
	getenv, environ := environment(vars)
	return config.Load(getenv, environ)
}

func mustLoad(t *testing.T, vars map[string]string) config.Config {
	t.Helper()
	c, err := load(vars)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return c
}

// writeFile writes content to a new file in a per-test directory and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	c := mustLoad(t, nil)
	want := struct {
		NATSListen, DataDir, HTTPAddr string
		Concurrency, MaxEventBytes    int
		HTTPTimeout                   time.Duration
		LogLevel                      slog.Level
	}{"127.0.0.1:4222", "pamworker-data", "127.0.0.1:9464", config.DefaultConcurrency, 64 << 10, config.DefaultHTTPTimeout, slog.LevelInfo}
	got := want
	got.NATSListen, got.DataDir, got.HTTPAddr = c.NATSListen, c.DataDir, c.HTTPAddr
	got.Concurrency, got.MaxEventBytes, got.HTTPTimeout, got.LogLevel = c.Concurrency, c.MaxEventBytes, c.HTTPTimeout, c.LogLevel
	if got != want {
		t.Errorf("defaults %+v, want %+v", got, want)
	}
	if !c.NATSURL.IsZero() {
		t.Error("NATS URL set by default; the embedded server would not start")
	}
	if len(c.Segura) != 0 || len(c.Element) != 0 {
		t.Errorf("targets configured by default: %v %v", c.Segura, c.Element)
	}
	if c.Concurrency < 1 || c.HTTPTimeout <= 0 || c.MaxDeliveries < 1 || c.AckWait <= 0 || c.DedupTTL <= 0 || c.ShutdownTimeout <= 0 {
		t.Errorf("a default is unusable: %+v", c)
	}
}

func TestEveryVariableIsRead(t *testing.T) {
	t.Parallel()
	c := mustLoad(t, map[string]string{
		"PAMWORKER_NATS_URL":             "nats://worker:natspw@nats-1:4222,nats://nats-2:4222",
		"PAMWORKER_NATS_LISTEN":          "127.0.0.1:14222",
		"PAMWORKER_DATA_DIR":             "/var/lib/pamworker",
		"PAMWORKER_HTTP_ADDR":            "0.0.0.0:9999",
		"PAMWORKER_SEGURA_URL":           "https://segura.example.com",
		"PAMWORKER_SEGURA_CLIENT_ID":     "a2a-client",
		"PAMWORKER_SEGURA_CLIENT_SECRET": "a2a-secret",
		"PAMWORKER_SEGURA_TOKEN_URL":     "https://idp.example.com/oauth2/token",
		"PAMWORKER_SEGURA_API_PREFIX":    "/iso",
		"PAMWORKER_ELEMENT_URL":          "https://mvip.example.com/json-rpc/12.0",
		"PAMWORKER_ELEMENT_USERNAME":     "admin",
		"PAMWORKER_ELEMENT_PASSWORD":     "element-pw",
		"PAMWORKER_CONCURRENCY":          "8",
		"PAMWORKER_HTTP_TIMEOUT":         "5s",
		"PAMWORKER_MAX_EVENT_BYTES":      "1024",
		"PAMWORKER_MAX_DELIVERIES":       "9",
		"PAMWORKER_RETRY_MAX_ELAPSED":    "1m",
		"PAMWORKER_ACK_WAIT":             "45s",
		"PAMWORKER_DEDUP_TTL":            "2h",
		"PAMWORKER_SHUTDOWN_TIMEOUT":     "7s",
		"PAMWORKER_LOG_LEVEL":            "debug",
	})
	checks := []struct {
		name      string
		got, want any
	}{
		{"NATSURL", c.NATSURL.Reveal(), "nats://worker:natspw@nats-1:4222,nats://nats-2:4222"},
		{"NATSListen", c.NATSListen, "127.0.0.1:14222"},
		{"DataDir", c.DataDir, "/var/lib/pamworker"},
		{"HTTPAddr", c.HTTPAddr, "0.0.0.0:9999"},
		{"Segura URL", c.Segura["default"].URL, "https://segura.example.com"},
		{"Segura ClientID", c.Segura["default"].ClientID, "a2a-client"},
		{"Segura ClientSecret", c.Segura["default"].ClientSecret.Reveal(), "a2a-secret"},
		{"Segura TokenURL", c.Segura["default"].TokenURL, "https://idp.example.com/oauth2/token"},
		{"Segura APIPrefix", c.Segura["default"].APIPrefix, "/iso"},
		{"Element URL", c.Element["default"].URL, "https://mvip.example.com/json-rpc/12.0"},
		{"Element Username", c.Element["default"].Username, "admin"},
		{"Element Password", c.Element["default"].Password.Reveal(), "element-pw"},
		{"Concurrency", c.Concurrency, 8},
		{"HTTPTimeout", c.HTTPTimeout, 5 * time.Second},
		{"MaxEventBytes", c.MaxEventBytes, 1024},
		{"MaxDeliveries", c.MaxDeliveries, 9},
		{"RetryMaxElapsed", c.RetryMaxElapsed, time.Minute},
		{"AckWait", c.AckWait, 45 * time.Second},
		{"DedupTTL", c.DedupTTL, 2 * time.Hour},
		{"ShutdownTimeout", c.ShutdownTimeout, 7 * time.Second},
		{"LogLevel", c.LogLevel, slog.LevelDebug},
		{"Segura targets", len(c.Segura), 1},
		{"Element targets", len(c.Element), 1},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestVariables(t *testing.T) {
	t.Parallel()
	vars := config.Variables()
	if !slices.IsSorted(vars) {
		t.Error("Variables() is not sorted")
	}
	for _, name := range []string{
		"PAMWORKER_CONFIG", "PAMWORKER_NATS_URL", "PAMWORKER_HTTP_ADDR", "PAMWORKER_SEGURA_URL",
		"PAMWORKER_SEGURA_CLIENT_ID", "PAMWORKER_SEGURA_CLIENT_SECRET", "PAMWORKER_SEGURA_TOKEN_URL",
		"PAMWORKER_SEGURA_API_PREFIX", "PAMWORKER_ELEMENT_URL", "PAMWORKER_ELEMENT_USERNAME",
		"PAMWORKER_ELEMENT_PASSWORD", "PAMWORKER_CONCURRENCY", "PAMWORKER_HTTP_TIMEOUT", "PAMWORKER_MAX_EVENT_BYTES",
		// Every secret has a _FILE form.
		"PAMWORKER_NATS_URL_FILE", "PAMWORKER_SEGURA_CLIENT_SECRET_FILE", "PAMWORKER_ELEMENT_PASSWORD_FILE",
	} {
		if !slices.Contains(vars, name) {
			t.Errorf("Variables() lacks %s", name)
		}
	}
	for _, name := range []string{"PAMWORKER_CONFIG_FILE", "PAMWORKER_SEGURA_URL_FILE", "PAMWORKER_CONCURRENCY_FILE"} {
		if slices.Contains(vars, name) {
			t.Errorf("Variables() lists %s, which is no secret", name)
		}
	}
	// Every listed variable is accepted on its own terms (no "unknown setting").
	for _, name := range vars {
		_, err := load(map[string]string{name: ""})
		if err != nil && strings.Contains(err.Error(), "unknown setting") {
			t.Errorf("%s is listed but refused as unknown: %v", name, err)
		}
	}
}

const twoSeguraOneElement = `
http_addr: 127.0.0.1:19464
concurrency: 16
http_timeout: 3s
segura:
  primary:
    url: https://segura-a.example.com
    client_id: client-a
    client_secret: secret-a
  dr:
    url: https://segura-b.example.com/
    client_id: client-b
    client_secret: secret-b
    token_url: https://idp-b.example.com/token
    api_prefix: /iso
element:
  lab:
    url: https://mvip-lab.example.com/json-rpc/12.0
    username: lab-admin
    password: lab-pw
`

func TestYAMLTargets(t *testing.T) {
	t.Parallel()
	c := mustLoad(t, map[string]string{"PAMWORKER_CONFIG": writeFile(t, "pamworker.yaml", twoSeguraOneElement)})
	if c.HTTPAddr != "127.0.0.1:19464" || c.Concurrency != 16 || c.HTTPTimeout != 3*time.Second {
		t.Errorf("top-level settings: %s %d %v", c.HTTPAddr, c.Concurrency, c.HTTPTimeout)
	}
	if len(c.Segura) != 2 || len(c.Element) != 1 {
		t.Fatalf("targets: segura %v, element %v", c.Segura, c.Element)
	}
	a, b, lab := c.Segura["primary"], c.Segura["dr"], c.Element["lab"]
	if a.URL != "https://segura-a.example.com" || a.ClientID != "client-a" || a.ClientSecret.Reveal() != "secret-a" || a.APIPrefix != "" || a.TokenURL != "" {
		t.Errorf("segura.primary = %+v", a)
	}
	if b.URL != "https://segura-b.example.com/" || b.ClientID != "client-b" || b.ClientSecret.Reveal() != "secret-b" ||
		b.TokenURL != "https://idp-b.example.com/token" || b.APIPrefix != "/iso" {
		t.Errorf("segura.dr = %+v", b)
	}
	if lab.URL != "https://mvip-lab.example.com/json-rpc/12.0" || lab.Username != "lab-admin" || lab.Password.Reveal() != "lab-pw" {
		t.Errorf("element.lab = %+v", lab)
	}
	if _, ok := c.Segura["default"]; ok {
		t.Error("a default Segura target appeared from nowhere")
	}
}

func TestEnvironmentWinsOverFile(t *testing.T) {
	t.Parallel()
	file := writeFile(t, "pamworker.yaml", `
http_addr: 127.0.0.1:1111
concurrency: 16
http_timeout: 3s
max_event_bytes: 2048
segura:
  default:
    url: https://file-segura.example.com
    client_id: file-client
    client_secret: file-secret
    api_prefix: /iso
  dr:
    url: https://dr.example.com
    client_id: dr-client
    client_secret: dr-secret
element:
  default:
    url: https://file-mvip.example.com/json-rpc/12.0
    username: file-admin
    password: file-pw
`)
	c := mustLoad(t, map[string]string{
		"PAMWORKER_CONFIG":               file,
		"PAMWORKER_HTTP_ADDR":            "127.0.0.1:2222",
		"PAMWORKER_CONCURRENCY":          "4",
		"PAMWORKER_HTTP_TIMEOUT":         "9s",
		"PAMWORKER_SEGURA_URL":           "https://env-segura.example.com",
		"PAMWORKER_SEGURA_CLIENT_SECRET": "env-secret",
		"PAMWORKER_ELEMENT_PASSWORD":     "env-pw",
		"PAMWORKER_ELEMENT_URL":          "https://env-mvip.example.com/json-rpc/12.0",
	})
	if c.HTTPAddr != "127.0.0.1:2222" || c.Concurrency != 4 || c.HTTPTimeout != 9*time.Second {
		t.Errorf("env did not win: %s %d %v", c.HTTPAddr, c.Concurrency, c.HTTPTimeout)
	}
	if c.MaxEventBytes != 2048 {
		t.Errorf("MaxEventBytes = %d, want the file's 2048", c.MaxEventBytes)
	}
	d := c.Segura["default"]
	if d.URL != "https://env-segura.example.com" || d.ClientSecret.Reveal() != "env-secret" {
		t.Errorf("segura default = %+v: env did not win", d)
	}
	if d.ClientID != "file-client" || d.APIPrefix != "/iso" {
		t.Errorf("segura default = %+v: the file's other settings were lost", d)
	}
	if dr := c.Segura["dr"]; dr.URL != "https://dr.example.com" || dr.ClientSecret.Reveal() != "dr-secret" {
		t.Errorf("segura dr = %+v: touched by the environment", dr)
	}
	e := c.Element["default"]
	if e.URL != "https://env-mvip.example.com/json-rpc/12.0" || e.Password.Reveal() != "env-pw" || e.Username != "file-admin" {
		t.Errorf("element default = %+v", e)
	}
}

func TestFileVariants(t *testing.T) {
	t.Parallel()
	secret := writeFile(t, "secret", "from-file\n")
	crlf := writeFile(t, "crlf", "crlf-secret\r\n")
	natsURL := writeFile(t, "nats", "nats://u:p@nats:4222\n")
	inner := writeFile(t, "inner", "  spaced secret  \n")
	c := mustLoad(t, map[string]string{
		"PAMWORKER_NATS_URL_FILE":             natsURL,
		"PAMWORKER_SEGURA_URL":                "https://segura.example.com",
		"PAMWORKER_SEGURA_CLIENT_ID_FILE":     crlf,
		"PAMWORKER_SEGURA_CLIENT_SECRET_FILE": secret,
		"PAMWORKER_ELEMENT_URL":               "https://mvip/json-rpc/12.0",
		"PAMWORKER_ELEMENT_USERNAME":          "admin",
		"PAMWORKER_ELEMENT_PASSWORD_FILE":     inner,
	})
	if got := c.NATSURL.Reveal(); got != "nats://u:p@nats:4222" {
		t.Errorf("NATS URL = %q", got)
	}
	if got := c.Segura["default"].ClientSecret.Reveal(); got != "from-file" {
		t.Errorf("client secret = %q, want the file's value without its newline", got)
	}
	if got := c.Segura["default"].ClientID; got != "crlf-secret" {
		t.Errorf("client id = %q, want the file's value without CRLF", got)
	}
	if got := c.Element["default"].Password.Reveal(); got != "  spaced secret  " {
		t.Errorf("password = %q, want only the trailing newline trimmed", got)
	}

	yamlFile := writeFile(t, "pamworker.yaml", fmt.Sprintf(`
segura:
  primary:
    url: https://segura.example.com
    client_id: id
    client_secret_file: %s
element:
  lab:
    url: https://mvip/json-rpc/12.0
    username_file: %s
    password_file: %s
`, secret, crlf, inner))
	c = mustLoad(t, map[string]string{"PAMWORKER_CONFIG": yamlFile})
	if got := c.Segura["primary"].ClientSecret.Reveal(); got != "from-file" {
		t.Errorf("YAML client_secret_file = %q", got)
	}
	if got := c.Element["lab"]; got.Username != "crlf-secret" || got.Password.Reveal() != "  spaced secret  " {
		t.Errorf("YAML element files = %+v", got)
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	secret := writeFile(t, "secret", "s\n")
	empty := writeFile(t, "empty", "\n")
	missing := filepath.Join(t.TempDir(), "does-not-exist")
	// with returns base with extra applied; "-" removes a variable.
	with := func(base, extra map[string]string) map[string]string {
		m := maps.Clone(base)
		for k, v := range extra {
			if v == "-" {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return m
	}
	segura := func(extra map[string]string) map[string]string {
		return with(map[string]string{
			"PAMWORKER_SEGURA_URL": "https://segura.example.com", "PAMWORKER_SEGURA_CLIENT_ID": "id",
			"PAMWORKER_SEGURA_CLIENT_SECRET": "s",
		}, extra)
	}
	element := func(extra map[string]string) map[string]string {
		return with(map[string]string{
			"PAMWORKER_ELEMENT_URL": "https://mvip/json-rpc/12.0", "PAMWORKER_ELEMENT_USERNAME": "admin",
			"PAMWORKER_ELEMENT_PASSWORD": "pw",
		}, extra)
	}
	yaml := func(content string) map[string]string {
		return map[string]string{"PAMWORKER_CONFIG": writeFile(t, "pamworker.yaml", content)}
	}
	tests := []struct {
		name  string
		vars  map[string]string
		words []string // the error must hold each
		avoid []string // and none of these (secrets)
	}{
		{"unknown variable", map[string]string{"PAMWORKER_CONCURENCY": "8"}, []string{"PAMWORKER_CONCURENCY", "unknown"}, nil},
		{"limits with events never stale", map[string]string{"PAMWORKER_LIMITS": "pam.session.drop=5/1m", "PAMWORKER_MAX_EVENT_AGE": "0"},
			[]string{"PAMWORKER_LIMITS", "PAMWORKER_MAX_EVENT_AGE"}, nil},
		{"limits with a ledger shorter than the stale limit", map[string]string{"PAMWORKER_LIMITS": "pam.session.drop=5/1m",
			"PAMWORKER_DEDUP_TTL": "30m"}, []string{"PAMWORKER_LIMITS", "PAMWORKER_DEDUP_TTL"}, nil},
		{"limits with a stale limit of two days", map[string]string{"PAMWORKER_LIMITS": "pam.session.drop=5/1m",
			"PAMWORKER_MAX_EVENT_AGE": "48h", "PAMWORKER_DEDUP_TTL": "72h"}, []string{"PAMWORKER_LIMITS", "24h"}, nil},
		{"unknown _FILE variable", map[string]string{"PAMWORKER_CONCURRENCY_FILE": secret}, []string{"PAMWORKER_CONCURRENCY_FILE"}, nil},
		{"unknown set to empty", map[string]string{"PAMWORKER_DEBUG": ""}, []string{"PAMWORKER_DEBUG"}, nil},
		{"concurrency abc", map[string]string{"PAMWORKER_CONCURRENCY": "abc"}, []string{"PAMWORKER_CONCURRENCY", "abc"}, nil},
		{"concurrency 0", map[string]string{"PAMWORKER_CONCURRENCY": "0"}, []string{"PAMWORKER_CONCURRENCY"}, nil},
		{"concurrency -4", map[string]string{"PAMWORKER_CONCURRENCY": "-4"}, []string{"PAMWORKER_CONCURRENCY"}, nil},
		{"concurrency 1e3", map[string]string{"PAMWORKER_CONCURRENCY": "1e3"}, []string{"PAMWORKER_CONCURRENCY"}, nil},
		{"http timeout without unit", map[string]string{"PAMWORKER_HTTP_TIMEOUT": "5"}, []string{"PAMWORKER_HTTP_TIMEOUT", "duration"}, nil},
		{"http timeout zero", map[string]string{"PAMWORKER_HTTP_TIMEOUT": "0s"}, []string{"PAMWORKER_HTTP_TIMEOUT"}, nil},
		{"http timeout negative", map[string]string{"PAMWORKER_HTTP_TIMEOUT": "-5s"}, []string{"PAMWORKER_HTTP_TIMEOUT"}, nil},
		{"max event bytes", map[string]string{"PAMWORKER_MAX_EVENT_BYTES": "64KiB"}, []string{"PAMWORKER_MAX_EVENT_BYTES"}, nil},
		{"ack wait", map[string]string{"PAMWORKER_ACK_WAIT": "forever"}, []string{"PAMWORKER_ACK_WAIT"}, nil},
		{"log level", map[string]string{"PAMWORKER_LOG_LEVEL": "loud"}, []string{"PAMWORKER_LOG_LEVEL"}, nil},
		{"http addr", map[string]string{"PAMWORKER_HTTP_ADDR": "9464"}, []string{"PAMWORKER_HTTP_ADDR"}, nil},
		{"nats listen", map[string]string{"PAMWORKER_NATS_LISTEN": "localhost"}, []string{"PAMWORKER_NATS_LISTEN"}, nil},

		{"segura URL not a URL", segura(map[string]string{"PAMWORKER_SEGURA_URL": "segura.example.com"}), []string{"PAMWORKER_SEGURA_URL"}, nil},
		{"segura URL ftp", segura(map[string]string{"PAMWORKER_SEGURA_URL": "ftp://segura.example.com"}), []string{"PAMWORKER_SEGURA_URL"}, nil},
		{"segura URL with a query", segura(map[string]string{"PAMWORKER_SEGURA_URL": "https://segura.example.com/?x=1"}), []string{"PAMWORKER_SEGURA_URL"}, nil},
		{"segura URL with user:pass@", segura(map[string]string{"PAMWORKER_SEGURA_URL": "https://admin:hunter2@segura.example.com"}),
			[]string{"PAMWORKER_SEGURA_URL", "credentials"}, []string{"hunter2"}},
		{"segura URL with user:pass@ and a bad port", segura(map[string]string{"PAMWORKER_SEGURA_URL": "https://admin:hunter2@segura.example.com:port"}),
			[]string{"PAMWORKER_SEGURA_URL"}, []string{"hunter2"}},
		{"segura ftp URL with user:pass@", segura(map[string]string{"PAMWORKER_SEGURA_URL": "ftp://admin:hunter2@segura.example.com"}),
			[]string{"PAMWORKER_SEGURA_URL"}, []string{"hunter2"}},
		{"segura token URL", segura(map[string]string{"PAMWORKER_SEGURA_TOKEN_URL": "idp/token"}), []string{"PAMWORKER_SEGURA_TOKEN_URL"}, nil},
		{"segura API prefix", segura(map[string]string{"PAMWORKER_SEGURA_API_PREFIX": "api"}), []string{"PAMWORKER_SEGURA_API_PREFIX"}, nil},
		{"segura without client secret", segura(map[string]string{"PAMWORKER_SEGURA_CLIENT_SECRET": "-"}), []string{"PAMWORKER_SEGURA_CLIENT_SECRET"}, nil},
		{"segura without client id", segura(map[string]string{"PAMWORKER_SEGURA_CLIENT_ID": "-"}), []string{"PAMWORKER_SEGURA_CLIENT_ID"}, nil},
		{"segura secret and secret file", segura(map[string]string{"PAMWORKER_SEGURA_CLIENT_SECRET_FILE": secret}),
			[]string{"PAMWORKER_SEGURA_CLIENT_SECRET", "PAMWORKER_SEGURA_CLIENT_SECRET_FILE"}, nil},
		{"segura secret file missing", segura(map[string]string{"PAMWORKER_SEGURA_CLIENT_SECRET": "-", "PAMWORKER_SEGURA_CLIENT_SECRET_FILE": missing}),
			[]string{"PAMWORKER_SEGURA_CLIENT_SECRET_FILE", "does-not-exist"}, nil},
		{"segura secret file empty", segura(map[string]string{"PAMWORKER_SEGURA_CLIENT_SECRET": "-", "PAMWORKER_SEGURA_CLIENT_SECRET_FILE": empty}),
			[]string{"PAMWORKER_SEGURA_CLIENT_SECRET_FILE", "empty"}, nil},
		{"segura credentials without URL", map[string]string{"PAMWORKER_SEGURA_CLIENT_ID": "id", "PAMWORKER_SEGURA_CLIENT_SECRET": "s"},
			[]string{"PAMWORKER_SEGURA_URL"}, []string{"=s"}},
		{"segura secret file without URL", map[string]string{"PAMWORKER_SEGURA_CLIENT_SECRET_FILE": secret},
			[]string{"PAMWORKER_SEGURA_CLIENT_SECRET", "PAMWORKER_SEGURA_URL"}, nil},
		{"segura token URL without URL", map[string]string{"PAMWORKER_SEGURA_TOKEN_URL": "https://idp/token"},
			[]string{"PAMWORKER_SEGURA_TOKEN_URL", "PAMWORKER_SEGURA_URL"}, nil},

		{"element URL with user:pass@", element(map[string]string{"PAMWORKER_ELEMENT_URL": "https://admin:hunter2@mvip/json-rpc/12.0"}),
			[]string{"PAMWORKER_ELEMENT_URL"}, []string{"hunter2"}},
		{"element without password", element(map[string]string{"PAMWORKER_ELEMENT_PASSWORD": "-"}), []string{"PAMWORKER_ELEMENT_PASSWORD"}, nil},
		{"element without username", element(map[string]string{"PAMWORKER_ELEMENT_USERNAME": "-"}), []string{"PAMWORKER_ELEMENT_USERNAME"}, nil},
		{"element password and password file", element(map[string]string{"PAMWORKER_ELEMENT_PASSWORD_FILE": secret}),
			[]string{"PAMWORKER_ELEMENT_PASSWORD", "PAMWORKER_ELEMENT_PASSWORD_FILE"}, nil},
		{"element credentials without URL", map[string]string{"PAMWORKER_ELEMENT_USERNAME": "admin", "PAMWORKER_ELEMENT_PASSWORD": "pw"},
			[]string{"PAMWORKER_ELEMENT_URL"}, nil},
		{"nats URL and nats URL file", map[string]string{"PAMWORKER_NATS_URL": "nats://x", "PAMWORKER_NATS_URL_FILE": secret},
			[]string{"PAMWORKER_NATS_URL", "PAMWORKER_NATS_URL_FILE"}, nil},

		{"config file missing", map[string]string{"PAMWORKER_CONFIG": missing}, []string{"PAMWORKER_CONFIG", "does-not-exist"}, nil},
		{"YAML unknown key", yaml("concurency: 8\n"), []string{"concurency"}, nil},
		{"YAML unknown target key", yaml("segura:\n  primary:\n    url: https://s\n    client_id: i\n    client_secret: s\n    secret: x\n"), []string{"secret"}, nil},
		{"YAML not a mapping", yaml("- a\n- b\n"), []string{"PAMWORKER_CONFIG"}, nil},
		{"YAML malformed", yaml("segura: [\n"), []string{"PAMWORKER_CONFIG"}, nil},
		{"YAML bad value", yaml("concurrency: lots\n"), []string{"concurrency", "lots"}, []string{"PAMWORKER_CONCURRENCY"}},
		{"YAML bad target name", yaml("segura:\n  bad.name:\n    url: https://s\n    client_id: i\n    client_secret: s\n"), []string{"bad.name"}, nil},
		{"YAML target without secret", yaml("segura:\n  primary:\n    url: https://s.example.com\n    client_id: i\n"), []string{"segura.primary.client_secret"}, nil},
		{"YAML target with a bad URL", yaml("segura:\n  primary:\n    url: s.example.com\n    client_id: i\n    client_secret: s\n"), []string{"segura.primary.url"}, nil},
		{"YAML element target without password", yaml("element:\n  lab:\n    url: https://mvip/json-rpc/12.0\n    username: u\n"), []string{"element.lab.password"}, nil},
		{"YAML secret and secret file", yaml("segura:\n  primary:\n    url: https://s\n    client_id: i\n    client_secret: s\n    client_secret_file: " + secret + "\n"),
			[]string{"segura.primary.client_secret", "segura.primary.client_secret_file"}, nil},
		{"YAML secret file missing", yaml("element:\n  lab:\n    url: https://mvip/json-rpc/12.0\n    username: u\n    password_file: " + missing + "\n"),
			[]string{"element.lab.password_file", "does-not-exist"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := load(tc.vars)
			if err == nil {
				t.Fatalf("Load succeeded: %+v", c)
			}
			msg := err.Error()
			for _, w := range tc.words {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not name %q", msg, w)
				}
			}
			for _, a := range tc.avoid {
				if strings.Contains(msg, a) {
					t.Errorf("error %q shows %q", msg, a)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error %q is more than one line", msg)
			}
		})
	}
}

func TestEmptyConfigFile(t *testing.T) {
	t.Parallel()
	c := mustLoad(t, map[string]string{"PAMWORKER_CONFIG": writeFile(t, "empty.yaml", "")})
	if c.Concurrency != config.DefaultConcurrency || len(c.Segura) != 0 {
		t.Errorf("empty file gave %+v", c)
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	t.Parallel()
	secrets := []string{"natspassword", "envclientsecret", "envelementpw", "filesecretb", "filelabpw"}
	file := writeFile(t, "pamworker.yaml", `
segura:
  dr:
    url: https://dr.example.com
    client_id: dr
    client_secret: filesecretb
element:
  lab:
    url: https://mvip-lab/json-rpc/12.0
    username: u
    password: filelabpw
`)
	c := mustLoad(t, map[string]string{
		"PAMWORKER_CONFIG":               file,
		"PAMWORKER_NATS_URL":             "nats://worker:natspassword@nats:4222",
		"PAMWORKER_SEGURA_URL":           "https://segura.example.com",
		"PAMWORKER_SEGURA_CLIENT_ID":     "id",
		"PAMWORKER_SEGURA_CLIENT_SECRET": "envclientsecret",
		"PAMWORKER_ELEMENT_URL":          "https://mvip/json-rpc/12.0",
		"PAMWORKER_ELEMENT_USERNAME":     "admin",
		"PAMWORKER_ELEMENT_PASSWORD":     "envelementpw",
	})
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, out := range []string{fmt.Sprintf("%+v", c), fmt.Sprintf("%v", c), fmt.Sprintf("%#v", c), fmt.Sprintf("%+v", &c), string(js)} {
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("secret %q printed: %s", s, out)
			}
		}
	}
	// They are all there to be used.
	if c.NATSURL.Reveal() == "" || c.Segura["dr"].ClientSecret.Reveal() != "filesecretb" || c.Element["lab"].Password.Reveal() != "filelabpw" {
		t.Error("a secret was lost")
	}
}

func TestInsecure(t *testing.T) {
	t.Parallel()
	file := writeFile(t, "pamworker.yaml", `
segura:
  plain:
    url: http://segura.example.com
    client_id: i
    client_secret: s
  local:
    url: http://127.0.0.1:8080
    client_id: i
    client_secret: s
  tls:
    url: https://segura.example.com
    client_id: i
    client_secret: s
element:
  lab:
    url: http://mvip-lab/json-rpc/12.0
    username: u
    password: p
  dev:
    url: http://localhost:8443/json-rpc/12.0
    username: u
    password: p
`)
	c := mustLoad(t, map[string]string{"PAMWORKER_CONFIG": file})
	if got, want := c.Insecure(), []string{"element/lab", "segura/plain"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Insecure() = %v, want %v", got, want)
	}
}

func TestEventAgeAndTargetRate(t *testing.T) {
	t.Parallel()
	c := mustLoad(t, nil)
	if c.MaxEventAge != config.DefaultMaxEventAge || c.TargetRate != config.DefaultTargetRate {
		t.Errorf("defaults: age %v rate %v", c.MaxEventAge, c.TargetRate)
	}
	c = mustLoad(t, map[string]string{"PAMWORKER_MAX_EVENT_AGE": "0", "PAMWORKER_TARGET_RATE": "5"})
	if c.MaxEventAge != 0 || c.TargetRate != 5 {
		t.Errorf("set: age %v rate %v", c.MaxEventAge, c.TargetRate)
	}
	for name, value := range map[string]string{"PAMWORKER_MAX_EVENT_AGE": "an hour", "PAMWORKER_TARGET_RATE": "0"} {
		if _, err := load(map[string]string{name: value}); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%s: error %v, want one naming it", name, value, err)
		}
	}
}

func TestTLSSettings(t *testing.T) {
	t.Parallel()
	c := mustLoad(t, map[string]string{
		"PAMWORKER_SEGURA_URL": "https://segura.example.com", "PAMWORKER_SEGURA_CLIENT_ID": "id",
		"PAMWORKER_SEGURA_CLIENT_SECRET": "s", "PAMWORKER_SEGURA_CA_FILE": "/ca.pem",
		"PAMWORKER_SEGURA_CLIENT_CERT_FILE": "/c.pem", "PAMWORKER_SEGURA_CLIENT_KEY_FILE": "/k.pem",
		"PAMWORKER_SEGURA_INSECURE_SKIP_VERIFY": "false",
	})
	if got := c.Segura["default"].TLS; got.CAFile != "/ca.pem" || got.CertFile != "/c.pem" || got.KeyFile != "/k.pem" || got.InsecureSkipVerify {
		t.Errorf("TLS = %+v", got)
	}
	_, err := load(map[string]string{
		"PAMWORKER_ELEMENT_URL": "https://mvip/json-rpc/12.0", "PAMWORKER_ELEMENT_USERNAME": "u",
		"PAMWORKER_ELEMENT_PASSWORD": "p", "PAMWORKER_ELEMENT_INSECURE_SKIP_VERIFY": "maybe",
	})
	if err == nil || !strings.Contains(err.Error(), "PAMWORKER_ELEMENT_INSECURE_SKIP_VERIFY") {
		t.Errorf("bad boolean: %v", err)
	}
	path := writeFile(t, "tls.yaml", "element:\n  default:\n    url: https://mvip/json-rpc/12.0\n    username: u\n    password: p\n    ca_file: /e.pem\n    insecure_skip_verify: \"true\"\n")
	c = mustLoad(t, map[string]string{"PAMWORKER_CONFIG": path})
	if got := c.Element["default"].TLS; got.CAFile != "/e.pem" || !got.InsecureSkipVerify {
		t.Errorf("YAML TLS = %+v", got)
	}
}

func TestNATSIdentity(t *testing.T) {
	t.Parallel()
	url := map[string]string{"PAMWORKER_NATS_URL": "nats://nats:4222"}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range url {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	c := mustLoad(t, with(map[string]string{"PAMWORKER_NATS_NKEY_SEED_FILE": "/s.nk", "PAMWORKER_NATS_CA_FILE": "/ca.pem"}))
	if c.NATSAuth.NkeySeedFile != "/s.nk" || c.NATSAuth.TLS.CAFile != "/ca.pem" {
		t.Errorf("NATSAuth = %+v", c.NATSAuth)
	}
	c = mustLoad(t, with(map[string]string{"PAMWORKER_NATS_USER": "w", "PAMWORKER_NATS_PASSWORD": "canary-nats-pw"}))
	if c.NATSAuth.User != "w" || c.NATSAuth.Password.Reveal() != "canary-nats-pw" {
		t.Errorf("user/password = %+v", c.NATSAuth)
	}
	for name, vars := range map[string]map[string]string{
		"two identities":        with(map[string]string{"PAMWORKER_NATS_CREDS_FILE": "/c.creds", "PAMWORKER_NATS_TOKEN": "t"}),
		"user without password": with(map[string]string{"PAMWORKER_NATS_USER": "w"}),
		"identity without URL":  {"PAMWORKER_NATS_TOKEN": "t"},
	} {
		if _, err := load(vars); err == nil || !strings.Contains(err.Error(), "PAMWORKER_NATS") {
			t.Errorf("%s: %v, want an error naming the NATS settings", name, err)
		}
	}
}

// TestProtectedLists: the file's lists and the environment's are both kept (the environment
// adds to the default target's), entries are split on ';' (LDAP DNs hold commas) and trimmed.
func TestProtectedLists(t *testing.T) {
	t.Parallel()
	file := writeFile(t, "pamworker.yaml", `
segura:
  default:
    url: https://segura.example.com
    client_id: c
    client_secret: s
    protected_credentials: ["94"]
    protected_session_owners: [breakglass]
  dr:
    url: https://dr.example.com
    client_id: c
    client_secret: s
    protected_session_owners: [dr-admin]
element:
  default:
    url: https://mvip.example.com/json-rpc/12.0
    username: admin
    password: pw
    protected_users: [ops]
`)
	c := mustLoad(t, map[string]string{
		"PAMWORKER_CONFIG":                          file,
		"PAMWORKER_SEGURA_PROTECTED_CREDENTIALS":    "root@db01; breakglass-*@*",
		"PAMWORKER_SEGURA_PROTECTED_SESSION_OWNERS": " svc-a2a ;auditor",
		"PAMWORKER_ELEMENT_PROTECTED_USERS":         "CN=Jane Doe,OU=Ops,DC=example,DC=com",
	})
	for _, ch := range []struct {
		name      string
		got, want []string
	}{
		{"segura credentials", c.Segura["default"].Protected, []string{"94", "root@db01", "breakglass-*@*"}},
		{"segura session owners", c.Segura["default"].ProtectedOwners, []string{"breakglass", "svc-a2a", "auditor"}},
		{"dr session owners", c.Segura["dr"].ProtectedOwners, []string{"dr-admin"}},
		{"element users", c.Element["default"].Protected, []string{"ops", "CN=Jane Doe,OU=Ops,DC=example,DC=com"}},
	} {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s = %q, want %q", ch.name, ch.got, ch.want)
		}
	}
}
