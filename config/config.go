// Package config loads pamworker's settings from the environment and an optional YAML file
// (PAMWORKER_CONFIG), resolves defaults in one place and validates everything before anything
// starts: a missing or malformed setting is one error naming it.
package config

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pamworker/pamworker/events"
	"github.com/pamworker/pamworker/guard"
	"github.com/pamworker/pamworker/handlers"
)

// Config is every setting of the worker, resolved.
type Config struct {
	NATSURL         handlers.Secret // empty: start the embedded server (a URL may hold a password)
	NATSAuth        NATSAuth        // how the worker proves who it is to NATS
	NATSListen      string          // embedded server's client address
	InboxPrefix     string          // prefix of this process's reply inboxes (_INBOX, or _INBOX.<name>)
	DataDir         string          // embedded server's file store
	HTTPAddr        string          // /metrics, /healthz, /readyz
	Concurrency     int
	HTTPTimeout     time.Duration // one API attempt
	MaxEventBytes   int
	MaxDeliveries   int
	RetryMaxElapsed time.Duration
	AckWait         time.Duration
	DedupTTL        time.Duration
	ShutdownTimeout time.Duration
	StallTimeout    time.Duration   // no decision for this long while events wait: not ready
	MaxEventAge     time.Duration   // 0: no limit
	TargetRate      float64         // API attempts per second per target
	StreamReplicas  int             // replicas of the streams and bucket the worker creates
	Partitions      int             // partition consumers the replicas share out
	SignedSubjects  []string        // subject patterns whose events must be signed
	SigningKeys     handlers.Secret // whsec_/whpk_ keys, separated by ";" or white space
	SignatureAge    time.Duration   // tolerance of a signature's timestamp
	Limits          guard.Limits    // blast-radius limits, from "ACTION=MAX/WINDOW[/PER_REQUESTER],..."
	LogLevel        slog.Level

	Segura  map[string]Segura  // by target name; "default" from the environment
	Element map[string]Element // by target name
	Ingress Ingress
}

// Ingress is the HTTP ingress for SOAR tools (off unless Addr is set).
type Ingress struct {
	Addr         string        // listen address
	CertFile     string        // TLS server certificate (with KeyFile); none: plain HTTP
	KeyFile      string        //
	ClientCAFile string        // verify client certificates against these CAs (for callers named by cert_cn)
	MaxWait      time.Duration // longest wait for a result before answering 202
	Rate         float64       // requests per second per caller
	Callers      []Caller
}

// Caller is one client of the ingress: a SOAR tool or one of its playbooks.
type Caller struct {
	Name        string   // becomes requested_by when an event names none
	TokenSHA256 string   // hex SHA-256 of its bearer token (the token itself is never stored)
	CertCN      string   // or the common name of its verified client certificate
	Subjects    []string // action subjects it may post, NATS patterns
}

// NATSAuth is the worker's NATS identity: at most one of a credentials file (JWT + nkey), an
// nkey seed file, a user and password, or a token; and TLS for the connection.
type NATSAuth struct {
	CredsFile    string
	NkeySeedFile string
	User         string
	Password     handlers.Secret
	Token        handlers.Secret
	TLS          handlers.TLSFiles
}

// Segura is one Segura instance.
type Segura struct {
	URL          string
	ClientID     string
	ClientSecret handlers.Secret
	TokenURL     string // default URL + /iso/oauth2/token
	APIPrefix    string // default /api
	TLS          handlers.TLSFiles
	Protected    []string // credential ids and username@hostname patterns never acted on
	// users whose remote sessions are never dropped; each drop then looks its session's owner up
	ProtectedOwners []string
}

// Element is one Element cluster.
type Element struct {
	URL       string
	Username  string
	Password  handlers.Secret
	TLS       handlers.TLSFiles
	Protected []string // users whose sessions are never deleted (the login itself is added)
}

// maxHeldAge bounds PAMWORKER_MAX_EVENT_AGE when limits hold events.
const maxHeldAge = 24 * time.Hour

// Defaults of the settings that have one.
const (
	DefaultNATSListen      = "127.0.0.1:4222"
	DefaultDataDir         = "pamworker-data"
	DefaultHTTPAddr        = "127.0.0.1:9464"
	DefaultConcurrency     = 32
	DefaultHTTPTimeout     = 10 * time.Second
	DefaultMaxEventBytes   = events.DefaultMaxEventBytes
	DefaultMaxDeliveries   = 5
	DefaultRetryMaxElapsed = 30 * time.Second
	DefaultAckWait         = 5 * time.Second
	DefaultPartitions      = 1
	DefaultDedupTTL        = 24 * time.Hour
	DefaultShutdownTimeout = 20 * time.Second
	DefaultStallTimeout    = 2 * time.Minute
	DefaultInboxPrefix     = "_INBOX"
	DefaultIngressMaxWait  = 8 * time.Second // below Cortex XSOAR's 10 s HTTP timeout
	DefaultIngressRate     = 20
	DefaultMaxEventAge     = time.Hour
	DefaultTargetRate      = 50
	DefaultStreamReplicas  = 1
)

// env lists every variable the worker reads. Secrets also have a _FILE form.
var env = map[string]bool{ // name → has a _FILE form
	"PAMWORKER_CONFIG": false, "PAMWORKER_NATS_URL": true, "PAMWORKER_NATS_LISTEN": false,
	"PAMWORKER_DATA_DIR": false, "PAMWORKER_HTTP_ADDR": false, "PAMWORKER_CONCURRENCY": false,
	"PAMWORKER_HTTP_TIMEOUT": false, "PAMWORKER_MAX_EVENT_BYTES": false,
	"PAMWORKER_MAX_DELIVERIES": false, "PAMWORKER_RETRY_MAX_ELAPSED": false,
	"PAMWORKER_ACK_WAIT": false, "PAMWORKER_DEDUP_TTL": false, "PAMWORKER_SHUTDOWN_TIMEOUT": false,
	"PAMWORKER_LOG_LEVEL": false, "PAMWORKER_MAX_EVENT_AGE": false, "PAMWORKER_TARGET_RATE": false,
	"PAMWORKER_STREAM_REPLICAS": false, "PAMWORKER_STALL_TIMEOUT": false, "PAMWORKER_PARTITIONS": false, "PAMWORKER_NATS_INBOX_PREFIX": false,
	"PAMWORKER_SEGURA_URL": false, "PAMWORKER_SEGURA_CLIENT_ID": true,
	"PAMWORKER_SEGURA_CLIENT_SECRET": true, "PAMWORKER_SEGURA_TOKEN_URL": false,
	"PAMWORKER_SEGURA_API_PREFIX": false, "PAMWORKER_ELEMENT_URL": false,
	"PAMWORKER_ELEMENT_USERNAME": true, "PAMWORKER_ELEMENT_PASSWORD": true,
	"PAMWORKER_SEGURA_CA_FILE": false, "PAMWORKER_SEGURA_CLIENT_CERT_FILE": false,
	"PAMWORKER_SEGURA_CLIENT_KEY_FILE": false, "PAMWORKER_SEGURA_INSECURE_SKIP_VERIFY": false,
	"PAMWORKER_ELEMENT_CA_FILE": false, "PAMWORKER_ELEMENT_CLIENT_CERT_FILE": false,
	"PAMWORKER_ELEMENT_CLIENT_KEY_FILE": false, "PAMWORKER_ELEMENT_INSECURE_SKIP_VERIFY": false,
	"PAMWORKER_SEGURA_PROTECTED_CREDENTIALS": false, "PAMWORKER_ELEMENT_PROTECTED_USERS": false,
	"PAMWORKER_SEGURA_PROTECTED_SESSION_OWNERS": false,
	"PAMWORKER_NATS_CREDS_FILE":                 false, "PAMWORKER_NATS_NKEY_SEED_FILE": false, "PAMWORKER_NATS_USER": false,
	"PAMWORKER_NATS_PASSWORD": true, "PAMWORKER_NATS_TOKEN": true, "PAMWORKER_NATS_CA_FILE": false,
	"PAMWORKER_NATS_CLIENT_CERT_FILE": false, "PAMWORKER_NATS_CLIENT_KEY_FILE": false,
	"PAMWORKER_NATS_INSECURE_SKIP_VERIFY": false,
	"PAMWORKER_SIGNED_SUBJECTS":           false, "PAMWORKER_LIMITS": false, "PAMWORKER_SIGNING_KEYS": true, "PAMWORKER_SIGNATURE_TOLERANCE": false,
	"PAMWORKER_INGRESS_ADDR": false, "PAMWORKER_INGRESS_TLS_CERT_FILE": false, "PAMWORKER_INGRESS_TLS_KEY_FILE": false,
	"PAMWORKER_INGRESS_CLIENT_CA_FILE": false, "PAMWORKER_INGRESS_MAX_WAIT": false, "PAMWORKER_INGRESS_RATE": false,
	"PAMWORKER_INGRESS_CALLERS": true,
}

// Variables returns the names of every environment variable the worker reads.
func Variables() []string {
	var out []string
	for name, file := range env {
		out = append(out, name)
		if file {
			out = append(out, name+"_FILE")
		}
	}
	sort.Strings(out)
	return out
}

// serviceLink matches the variables Kubernetes injects for a Service whose name starts with
// "pamworker" (PAMWORKER_METRICS_SERVICE_HOST, PAMWORKER_PORT_9464_TCP_ADDR ...). They are not
// settings, and refusing them would crash-loop a correctly configured pod.
var serviceLink = regexp.MustCompile(`^PAMWORKER(_[A-Z0-9_]+)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_(ADDR|PORT|PROTO))?)?)$`)

// file is the YAML shape. Strings are parsed here so errors can name the key.
type file struct {
	NATSURL         string                 `yaml:"nats_url"`
	NATSURLFile     string                 `yaml:"nats_url_file"`
	NATS            natsFile               `yaml:"nats"`
	NATSListen      string                 `yaml:"nats_listen"`
	DataDir         string                 `yaml:"data_dir"`
	HTTPAddr        string                 `yaml:"http_addr"`
	Concurrency     string                 `yaml:"concurrency"`
	HTTPTimeout     string                 `yaml:"http_timeout"`
	MaxEventBytes   string                 `yaml:"max_event_bytes"`
	MaxDeliveries   string                 `yaml:"max_deliveries"`
	RetryMaxElapsed string                 `yaml:"retry_max_elapsed"`
	AckWait         string                 `yaml:"ack_wait"`
	DedupTTL        string                 `yaml:"dedup_ttl"`
	ShutdownTimeout string                 `yaml:"shutdown_timeout"`
	StallTimeout    string                 `yaml:"stall_timeout"`
	MaxEventAge     string                 `yaml:"max_event_age"`
	TargetRate      string                 `yaml:"target_rate"`
	StreamReplicas  string                 `yaml:"stream_replicas"`
	Partitions      string                 `yaml:"partitions"`
	SignedSubjects  []string               `yaml:"signed_subjects"`
	SigningKeys     string                 `yaml:"signing_keys"`
	SigningKeysFile string                 `yaml:"signing_keys_file"`
	SignatureAge    string                 `yaml:"signature_tolerance"`
	Limits          string                 `yaml:"limits"`
	LogLevel        string                 `yaml:"log_level"`
	Segura          map[string]seguraFile  `yaml:"segura"`
	Element         map[string]elementFile `yaml:"element"`
	Ingress         ingressFile            `yaml:"ingress"`
}

type ingressFile struct {
	Addr         string       `yaml:"addr"`
	CertFile     string       `yaml:"tls_cert_file"`
	KeyFile      string       `yaml:"tls_key_file"`
	ClientCAFile string       `yaml:"client_ca_file"`
	MaxWait      string       `yaml:"max_wait"`
	Rate         string       `yaml:"rate"`
	Callers      []callerFile `yaml:"callers"`
}

type callerFile struct {
	Name        string   `yaml:"name"`
	TokenSHA256 string   `yaml:"token_sha256"`
	CertCN      string   `yaml:"cert_cn"`
	Subjects    []string `yaml:"subjects"`
}

type seguraFile struct {
	URL              string   `yaml:"url"`
	ClientID         string   `yaml:"client_id"`
	ClientIDFile     string   `yaml:"client_id_file"`
	ClientSecret     string   `yaml:"client_secret"`
	ClientSecretFile string   `yaml:"client_secret_file"`
	TokenURL         string   `yaml:"token_url"`
	APIPrefix        string   `yaml:"api_prefix"`
	Protected        []string `yaml:"protected_credentials"`
	ProtectedOwners  []string `yaml:"protected_session_owners"`
	tlsFile          `yaml:",inline"`
}

// natsFile is the NATS identity in the YAML file.
type natsFile struct {
	CredsFile    string `yaml:"creds_file"`
	NkeySeedFile string `yaml:"nkey_seed_file"`
	InboxPrefix  string `yaml:"inbox_prefix"`
	User         string `yaml:"user"`
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	Token        string `yaml:"token"`
	TokenFile    string `yaml:"token_file"`
	tlsFile      `yaml:",inline"`
}

// tlsFile is the TLS part of a target in the YAML file.
type tlsFile struct {
	CAFile             string `yaml:"ca_file"`
	ClientCertFile     string `yaml:"client_cert_file"`
	ClientKeyFile      string `yaml:"client_key_file"`
	InsecureSkipVerify string `yaml:"insecure_skip_verify"`
}

type elementFile struct {
	URL          string   `yaml:"url"`
	Username     string   `yaml:"username"`
	UsernameFile string   `yaml:"username_file"`
	Password     string   `yaml:"password"`
	PasswordFile string   `yaml:"password_file"`
	Protected    []string `yaml:"protected_users"`
	tlsFile      `yaml:",inline"`
}

// Load reads the configuration from the environment (getenv, and environ to find unknown
// PAMWORKER_ variables) and the YAML file it names. The environment wins over the file.
func Load(getenv func(string) string, environ []string) (Config, error) {
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "PAMWORKER_") || serviceLink.MatchString(name) {
			continue
		}
		if _, known := env[name]; known {
			continue
		}
		if base, isFile := strings.CutSuffix(name, "_FILE"); isFile && env[base] {
			continue
		}
		return Config{}, fmt.Errorf("%s: unknown setting (known: %s)", name, strings.Join(Variables(), ", "))
	}

	var f file
	if path := getenv("PAMWORKER_CONFIG"); path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return Config{}, fmt.Errorf("PAMWORKER_CONFIG: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) { // io.EOF: an empty file
			// yaml.v3 lists type errors one per line; start-up reports one line.
			return Config{}, fmt.Errorf("PAMWORKER_CONFIG %s: %s", path, strings.Join(strings.Fields(err.Error()), " "))
		}
	}
	l := loader{getenv: getenv}
	c := Config{
		NATSURL: handlers.NewSecret(l.secret("PAMWORKER_NATS_URL", f.NATSURL, f.NATSURLFile)),
		NATSAuth: NATSAuth{
			CredsFile:    cmp.Or(getenv("PAMWORKER_NATS_CREDS_FILE"), f.NATS.CredsFile),
			NkeySeedFile: cmp.Or(getenv("PAMWORKER_NATS_NKEY_SEED_FILE"), f.NATS.NkeySeedFile),
			User:         cmp.Or(getenv("PAMWORKER_NATS_USER"), f.NATS.User),
			Password:     handlers.NewSecret(l.secret("PAMWORKER_NATS_PASSWORD", f.NATS.Password, f.NATS.PasswordFile)),
			Token:        handlers.NewSecret(l.secret("PAMWORKER_NATS_TOKEN", f.NATS.Token, f.NATS.TokenFile)),
			TLS:          l.envTLS("PAMWORKER_NATS_", l.tls("nats", f.NATS.tlsFile)),
		},
		NATSListen:      cmp.Or(getenv("PAMWORKER_NATS_LISTEN"), f.NATSListen, DefaultNATSListen),
		InboxPrefix:     cmp.Or(getenv("PAMWORKER_NATS_INBOX_PREFIX"), f.NATS.InboxPrefix, DefaultInboxPrefix),
		DataDir:         cmp.Or(getenv("PAMWORKER_DATA_DIR"), f.DataDir, DefaultDataDir),
		HTTPAddr:        cmp.Or(getenv("PAMWORKER_HTTP_ADDR"), f.HTTPAddr, DefaultHTTPAddr),
		Concurrency:     l.integer("PAMWORKER_CONCURRENCY", f.Concurrency, DefaultConcurrency, 1, 1024),
		HTTPTimeout:     l.duration("PAMWORKER_HTTP_TIMEOUT", f.HTTPTimeout, DefaultHTTPTimeout, 100*time.Millisecond, 5*time.Minute),
		MaxEventBytes:   l.integer("PAMWORKER_MAX_EVENT_BYTES", f.MaxEventBytes, DefaultMaxEventBytes, 256, 1<<20),
		MaxDeliveries:   l.integer("PAMWORKER_MAX_DELIVERIES", f.MaxDeliveries, DefaultMaxDeliveries, 1, 1000),
		RetryMaxElapsed: l.duration("PAMWORKER_RETRY_MAX_ELAPSED", f.RetryMaxElapsed, DefaultRetryMaxElapsed, 0, time.Hour),
		AckWait:         l.duration("PAMWORKER_ACK_WAIT", f.AckWait, DefaultAckWait, time.Second, 10*time.Minute),
		DedupTTL:        l.duration("PAMWORKER_DEDUP_TTL", f.DedupTTL, DefaultDedupTTL, time.Minute, 90*24*time.Hour),
		ShutdownTimeout: l.duration("PAMWORKER_SHUTDOWN_TIMEOUT", f.ShutdownTimeout, DefaultShutdownTimeout, time.Second, 10*time.Minute),
		StallTimeout:    l.duration("PAMWORKER_STALL_TIMEOUT", f.StallTimeout, DefaultStallTimeout, time.Second, 24*time.Hour),
		MaxEventAge:     l.duration("PAMWORKER_MAX_EVENT_AGE", f.MaxEventAge, DefaultMaxEventAge, 0, 30*24*time.Hour),
		TargetRate:      float64(l.integer("PAMWORKER_TARGET_RATE", f.TargetRate, DefaultTargetRate, 1, 10000)),
		StreamReplicas:  l.integer("PAMWORKER_STREAM_REPLICAS", f.StreamReplicas, DefaultStreamReplicas, 1, 5),
		Partitions:      l.integer("PAMWORKER_PARTITIONS", f.Partitions, DefaultPartitions, 1, 64),
		SignedSubjects:  append(f.SignedSubjects, commaList(getenv("PAMWORKER_SIGNED_SUBJECTS"))...),
		SigningKeys:     handlers.NewSecret(l.secret("PAMWORKER_SIGNING_KEYS", f.SigningKeys, f.SigningKeysFile)),
		SignatureAge:    l.duration("PAMWORKER_SIGNATURE_TOLERANCE", f.SignatureAge, 5*time.Minute, time.Second, time.Hour),
		Limits:          l.limits(cmp.Or(getenv("PAMWORKER_LIMITS"), f.Limits)),
		LogLevel:        l.level("PAMWORKER_LOG_LEVEL", f.LogLevel),
		Segura:          map[string]Segura{},
		Element:         map[string]Element{},
		Ingress: Ingress{
			Addr:         cmp.Or(getenv("PAMWORKER_INGRESS_ADDR"), f.Ingress.Addr),
			CertFile:     cmp.Or(getenv("PAMWORKER_INGRESS_TLS_CERT_FILE"), f.Ingress.CertFile),
			KeyFile:      cmp.Or(getenv("PAMWORKER_INGRESS_TLS_KEY_FILE"), f.Ingress.KeyFile),
			ClientCAFile: cmp.Or(getenv("PAMWORKER_INGRESS_CLIENT_CA_FILE"), f.Ingress.ClientCAFile),
			MaxWait:      l.duration("PAMWORKER_INGRESS_MAX_WAIT", f.Ingress.MaxWait, DefaultIngressMaxWait, 0, 5*time.Minute),
			Rate:         float64(l.integer("PAMWORKER_INGRESS_RATE", f.Ingress.Rate, DefaultIngressRate, 1, 10000)),
		},
	}
	for _, cf := range f.Ingress.Callers {
		c.Ingress.Callers = append(c.Ingress.Callers, Caller(cf))
	}
	c.Ingress.Callers = append(c.Ingress.Callers, l.callers(l.secret("PAMWORKER_INGRESS_CALLERS", "", ""))...)
	for name, s := range f.Segura {
		p := "segura." + name
		c.Segura[name] = Segura{
			URL:             s.URL,
			ClientID:        l.fileOr(p+".client_id", s.ClientID, s.ClientIDFile),
			ClientSecret:    handlers.NewSecret(l.fileOr(p+".client_secret", s.ClientSecret, s.ClientSecretFile)),
			TokenURL:        s.TokenURL,
			APIPrefix:       s.APIPrefix,
			TLS:             l.tls(p, s.tlsFile),
			Protected:       s.Protected,
			ProtectedOwners: s.ProtectedOwners,
		}
	}
	for name, e := range f.Element {
		p := "element." + name
		c.Element[name] = Element{
			URL:       e.URL,
			Username:  l.fileOr(p+".username", e.Username, e.UsernameFile),
			Password:  handlers.NewSecret(l.fileOr(p+".password", e.Password, e.PasswordFile)),
			TLS:       l.tls(p, e.tlsFile),
			Protected: e.Protected,
		}
	}
	// The environment describes the default target and wins over the file's. Credentials for
	// a target that has no URL are a mistake worth stopping for.
	for _, vendor := range []string{"SEGURA", "ELEMENT"} {
		if getenv("PAMWORKER_"+vendor+"_URL") != "" {
			continue
		}
		for name := range env {
			if strings.HasPrefix(name, "PAMWORKER_"+vendor+"_") && (getenv(name) != "" || getenv(name+"_FILE") != "") {
				if (vendor == "SEGURA" && f.Segura["default"].URL == "") || (vendor == "ELEMENT" && f.Element["default"].URL == "") {
					return Config{}, fmt.Errorf("%s is set but PAMWORKER_%s_URL is not", name, vendor)
				}
			}
		}
	}
	if u := getenv("PAMWORKER_SEGURA_URL"); u != "" || f.Segura["default"].URL != "" {
		d := c.Segura["default"]
		d.URL = cmp.Or(u, d.URL)
		d.ClientID = cmp.Or(l.secret("PAMWORKER_SEGURA_CLIENT_ID", "", ""), d.ClientID)
		if s := l.secret("PAMWORKER_SEGURA_CLIENT_SECRET", "", ""); s != "" {
			d.ClientSecret = handlers.NewSecret(s)
		}
		d.TokenURL = cmp.Or(getenv("PAMWORKER_SEGURA_TOKEN_URL"), d.TokenURL)
		d.APIPrefix = cmp.Or(getenv("PAMWORKER_SEGURA_API_PREFIX"), d.APIPrefix)
		d.TLS = l.envTLS("PAMWORKER_SEGURA_", d.TLS)
		d.Protected = append(d.Protected, list(getenv("PAMWORKER_SEGURA_PROTECTED_CREDENTIALS"))...)
		d.ProtectedOwners = append(d.ProtectedOwners, list(getenv("PAMWORKER_SEGURA_PROTECTED_SESSION_OWNERS"))...)
		c.Segura["default"] = d
	}
	if u := getenv("PAMWORKER_ELEMENT_URL"); u != "" || f.Element["default"].URL != "" {
		d := c.Element["default"]
		d.URL = cmp.Or(u, d.URL)
		d.Username = cmp.Or(l.secret("PAMWORKER_ELEMENT_USERNAME", "", ""), d.Username)
		if s := l.secret("PAMWORKER_ELEMENT_PASSWORD", "", ""); s != "" {
			d.Password = handlers.NewSecret(s)
		}
		d.TLS = l.envTLS("PAMWORKER_ELEMENT_", d.TLS)
		d.Protected = append(d.Protected, list(getenv("PAMWORKER_ELEMENT_PROTECTED_USERS"))...)
		c.Element["default"] = d
	}
	if l.err != nil {
		return Config{}, l.err
	}
	return c, c.validate()
}

// validate checks what Load could not check one value at a time.
func (c Config) validate() error {
	limits := c.Limits
	// A held event waits until its window opens or it turns stale. It must turn stale while
	// its result could still be answered from the ledger, and within a day: a hold longer than
	// that is a limit that does not fit its playbooks.
	if len(limits) > 0 && (c.MaxEventAge <= 0 || c.MaxEventAge >= c.DedupTTL || c.MaxEventAge >= maxHeldAge) {
		return fmt.Errorf("PAMWORKER_LIMITS needs PAMWORKER_MAX_EVENT_AGE set and below PAMWORKER_DEDUP_TTL (%s) and %s: a held event may wait until it is that old",
			c.DedupTTL, maxHeldAge)
	}
	a := c.NATSAuth
	ways := 0
	for _, set := range []bool{a.CredsFile != "", a.NkeySeedFile != "", a.User != "" || !a.Password.IsZero(), !a.Token.IsZero()} {
		if set {
			ways++
		}
	}
	switch {
	case ways > 1:
		return errors.New("PAMWORKER_NATS_*: give one NATS identity: a credentials file, an nkey seed, a user and password, or a token")
	case (a.User == "") != a.Password.IsZero():
		return errors.New("PAMWORKER_NATS_USER and PAMWORKER_NATS_PASSWORD go together")
	case ways > 0 && c.NATSURL.IsZero():
		return errors.New("PAMWORKER_NATS_*: an identity needs PAMWORKER_NATS_URL (the embedded server has no users)")
	}
	if c.NATSURL.IsZero() {
		if _, _, err := net.SplitHostPort(c.NATSListen); err != nil {
			return fmt.Errorf("PAMWORKER_NATS_LISTEN: %q is not host:port", c.NATSListen)
		}
	}
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		return fmt.Errorf("PAMWORKER_HTTP_ADDR: %q is not host:port", c.HTTPAddr)
	}
	if err := validInboxPrefix(c.InboxPrefix); err != nil {
		return fmt.Errorf("PAMWORKER_NATS_INBOX_PREFIX: %w", err)
	}
	if err := c.Ingress.validate(); err != nil {
		return err
	}
	for _, name := range sortedKeys(c.Segura) {
		s := c.Segura[name]
		key := settingName("segura", name)
		if err := validTargetName(name); err != nil {
			return fmt.Errorf("segura target %q: %w", name, err)
		}
		if err := validURL(s.URL); err != nil {
			return fmt.Errorf("%s: %w", key("url"), err)
		}
		if s.TokenURL != "" {
			if err := validURL(s.TokenURL); err != nil {
				return fmt.Errorf("%s: %w", key("token_url"), err)
			}
		}
		if s.APIPrefix != "" && (!strings.HasPrefix(s.APIPrefix, "/") || strings.ContainsAny(s.APIPrefix, "?#% ")) {
			return fmt.Errorf("%s: %q must be a path such as /api or /iso", key("api_prefix"), s.APIPrefix)
		}
		if s.ClientID == "" {
			return fmt.Errorf("%s: required when a Segura URL is set", key("client_id"))
		}
		if s.ClientSecret.IsZero() {
			return fmt.Errorf("%s: required when a Segura URL is set", key("client_secret"))
		}
	}
	for _, name := range sortedKeys(c.Element) {
		e := c.Element[name]
		key := settingName("element", name)
		if err := validTargetName(name); err != nil {
			return fmt.Errorf("element target %q: %w", name, err)
		}
		if err := validURL(e.URL); err != nil {
			return fmt.Errorf("%s: %w", key("url"), err)
		}
		if e.Username == "" {
			return fmt.Errorf("%s: required when an Element URL is set", key("username"))
		}
		if e.Password.IsZero() {
			return fmt.Errorf("%s: required when an Element URL is set", key("password"))
		}
	}
	return nil
}

// settingName names a target's setting as the operator sets it: the environment variable for
// the default target (PAMWORKER_SEGURA_CLIENT_SECRET), the YAML key for a named one
// (segura.dr.client_secret).
func settingName(vendor, target string) func(key string) string {
	return func(key string) string {
		if target == "default" {
			return "PAMWORKER_" + strings.ToUpper(vendor+"_"+key)
		}
		return vendor + "." + target + "." + key
	}
}

// Insecure lists targets reached over plain HTTP on a non-loopback host, for a start-up warning.
func (c Config) Insecure() []string {
	var out []string
	check := func(kind, name, raw string) {
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "http" {
			return
		}
		if ip := net.ParseIP(u.Hostname()); (ip != nil && ip.IsLoopback()) || u.Hostname() == "localhost" {
			return
		}
		out = append(out, kind+"/"+name)
	}
	for n, s := range c.Segura {
		check("segura", n, s.URL)
	}
	for n, e := range c.Element {
		check("element", n, e.URL)
	}
	sort.Strings(out)
	return out
}

func validURL(raw string) error {
	if raw == "" {
		return errors.New("required")
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil && strings.Contains(raw, "@"):
		return errors.New("is not a URL (not shown: it may hold a password)")
	case err != nil:
		return fmt.Errorf("%q is not a URL", raw)
	case u.Scheme != "https" && u.Scheme != "http":
		return fmt.Errorf("%q must be an https:// URL", u.Redacted())
	case u.Host == "":
		return fmt.Errorf("%q has no host", u.Redacted())
	case u.User != nil:
		return errors.New("must not carry credentials; use the username/password or client id/secret settings")
	case u.RawQuery != "" || u.Fragment != "":
		return fmt.Errorf("%q must not have a query or fragment", u.Redacted())
	}
	return nil
}

// validate checks the ingress settings when it is on.
func (in Ingress) validate() error {
	if in.Addr == "" {
		return nil
	}
	if _, _, err := net.SplitHostPort(in.Addr); err != nil {
		return fmt.Errorf("PAMWORKER_INGRESS_ADDR: %q is not host:port", in.Addr)
	}
	if (in.CertFile == "") != (in.KeyFile == "") {
		return errors.New("PAMWORKER_INGRESS_TLS_CERT_FILE and PAMWORKER_INGRESS_TLS_KEY_FILE go together")
	}
	if in.ClientCAFile != "" && in.CertFile == "" {
		return errors.New("PAMWORKER_INGRESS_CLIENT_CA_FILE needs TLS (PAMWORKER_INGRESS_TLS_CERT_FILE and _KEY_FILE)")
	}
	if len(in.Callers) == 0 {
		return errors.New("PAMWORKER_INGRESS_ADDR is set but no caller may use it: set PAMWORKER_INGRESS_CALLERS (or ingress.callers in the file)")
	}
	seen := map[string]bool{}
	for _, c := range in.Callers {
		name := "ingress caller " + strconv.Quote(c.Name)
		switch {
		case c.Name == "" || len(c.Name) > 64 || strings.Trim(c.Name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != "":
			return fmt.Errorf("%s: a name is 1 to 64 letters, digits, '.', '-' or '_'", name)
		case seen[c.Name]:
			return fmt.Errorf("%s: named twice", name)
		case (c.TokenSHA256 == "") == (c.CertCN == ""):
			return fmt.Errorf("%s: give a token_sha256 or a cert_cn, one of them", name)
		case c.TokenSHA256 != "" && (len(c.TokenSHA256) != 64 || strings.Trim(c.TokenSHA256, "0123456789abcdef") != ""):
			return fmt.Errorf("%s: token_sha256 must be the 64 hex digits of the token's SHA-256 (pamworker ingress hash-token prints it), not the token", name)
		case c.CertCN != "" && in.ClientCAFile == "":
			return fmt.Errorf("%s: cert_cn needs PAMWORKER_INGRESS_CLIENT_CA_FILE, the CAs its certificate is verified against", name)
		case len(c.Subjects) == 0:
			return fmt.Errorf("%s: list the action subjects it may post", name)
		}
		seen[c.Name] = true
		for _, p := range c.Subjects {
			if !matchesAnAction(p) {
				return fmt.Errorf("%s: subject %q matches no action subject", name, p)
			}
		}
	}
	return nil
}

// matchesAnAction reports whether pattern matches at least one action subject.
func matchesAnAction(pattern string) bool {
	for _, a := range events.Actions() {
		if guard.SubjectMatch(pattern, a) {
			return true
		}
	}
	return false
}

// validInboxPrefix accepts _INBOX and _INBOX.<token>...: results are only ever sent to
// reply_to inboxes under _INBOX., and each identity's permissions name its own prefix.
func validInboxPrefix(p string) error {
	if p == "_INBOX" {
		return nil
	}
	rest, ok := strings.CutPrefix(p, "_INBOX.")
	if !ok || rest == "" {
		return fmt.Errorf("%q must be _INBOX or begin with _INBOX. (reply_to inboxes must)", p)
	}
	for _, tok := range strings.Split(rest, ".") {
		if tok == "" || strings.Trim(tok, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
			return fmt.Errorf("%q: each token after _INBOX. is letters, digits, - or _", p)
		}
	}
	return nil
}

func validTargetName(s string) error {
	if s == "" || len(s) > 64 || strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
		return errors.New("a target name is 1 to 64 letters, digits, - or _")
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// loader parses values and keeps the first error, so Load reads as a list of settings.
type loader struct {
	getenv func(string) string
	err    error
}

func (l *loader) fail(format string, args ...any) {
	if l.err == nil {
		l.err = fmt.Errorf(format, args...)
	}
}

// secret reads NAME or NAME_FILE from the environment, falling back to the file's value or
// the file's _file path.
func (l *loader) secret(name, fromFile, fromFilePath string) string {
	v, path := l.getenv(name), l.getenv(name+"_FILE")
	switch {
	case v != "" && path != "":
		l.fail("%s and %s_FILE are both set; set one", name, name)
		return ""
	case v != "":
		return v
	case path != "":
		return l.readFile(name+"_FILE", path)
	}
	return l.fileOr(strings.ToLower(strings.TrimPrefix(name, "PAMWORKER_")), fromFile, fromFilePath)
}

func (l *loader) fileOr(key, value, path string) string {
	switch {
	case value != "" && path != "":
		l.fail("%s and %s_file are both set; set one", key, key)
		return ""
	case path != "":
		return l.readFile(key+"_file", path)
	}
	return value
}

func (l *loader) readFile(key, path string) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		l.fail("%s: %v", key, err)
		return ""
	}
	v := strings.TrimRight(string(raw), "\r\n")
	if v == "" {
		l.fail("%s: %s is empty", key, path)
	}
	return v
}

// raw returns the value of setting name, from the environment or else from the file, and the
// name to report a bad value under: the variable, or the file's key.
func (l *loader) raw(name, fromFile string) (string, string) {
	if v := l.getenv(name); v != "" {
		return v, name
	}
	return fromFile, "PAMWORKER_CONFIG " + strings.ToLower(strings.TrimPrefix(name, "PAMWORKER_"))
}

func (l *loader) integer(name, fromFile string, def, lo, hi int) int {
	s, name := l.raw(name, fromFile)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < lo || n > hi {
		l.fail("%s: %q must be a whole number from %d to %d", name, s, lo, hi)
		return def
	}
	return n
}

func (l *loader) duration(name, fromFile string, def, lo, hi time.Duration) time.Duration {
	s, name := l.raw(name, fromFile)
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d < lo || d > hi {
		l.fail("%s: %q must be a Go duration (such as 10s or 2m) from %v to %v", name, s, lo, hi)
		return def
	}
	return d
}

// callers reads PAMWORKER_INGRESS_CALLERS: "name:token-sha256:subject,subject;name:cn=CN:subject".
func (l *loader) callers(spec string) []Caller {
	var out []Caller
	for _, item := range list(spec) {
		parts := strings.SplitN(item, ":", 3)
		if len(parts) != 3 {
			l.fail("PAMWORKER_INGRESS_CALLERS: %q is not NAME:TOKEN_SHA256:SUBJECTS or NAME:cn=COMMON_NAME:SUBJECTS", truncated(item))
			return nil
		}
		c := Caller{Name: strings.TrimSpace(parts[0]), Subjects: commaList(parts[2])}
		if cn, ok := strings.CutPrefix(strings.TrimSpace(parts[1]), "cn="); ok {
			c.CertCN = cn
		} else {
			c.TokenSHA256 = strings.ToLower(strings.TrimSpace(parts[1]))
		}
		out = append(out, c)
	}
	return out
}

// truncated shortens a setting's value for an error message.
func truncated(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// limits parses the blast-radius limits, once.
func (l *loader) limits(spec string) guard.Limits {
	lim, err := guard.ParseLimits(spec)
	if err != nil {
		l.fail("PAMWORKER_LIMITS: %v", err)
	}
	return lim
}

// commaList splits a comma-separated environment list.
func commaList(v string) []string {
	var out []string
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// list splits an environment list on ";" (Element users can be LDAP DNs, full of commas).
func list(v string) []string {
	var out []string
	for _, item := range strings.Split(v, ";") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// tls reads a target's TLS settings from the YAML file.
func (l *loader) tls(key string, f tlsFile) handlers.TLSFiles {
	return handlers.TLSFiles{
		CAFile: f.CAFile, CertFile: f.ClientCertFile, KeyFile: f.ClientKeyFile,
		InsecureSkipVerify: l.boolean(key+".insecure_skip_verify", f.InsecureSkipVerify),
	}
}

// envTLS overlays the environment's TLS settings (prefix PAMWORKER_SEGURA_ ...) on t.
func (l *loader) envTLS(prefix string, t handlers.TLSFiles) handlers.TLSFiles {
	t.CAFile = cmp.Or(l.getenv(prefix+"CA_FILE"), t.CAFile)
	t.CertFile = cmp.Or(l.getenv(prefix+"CLIENT_CERT_FILE"), t.CertFile)
	t.KeyFile = cmp.Or(l.getenv(prefix+"CLIENT_KEY_FILE"), t.KeyFile)
	if v := l.getenv(prefix + "INSECURE_SKIP_VERIFY"); v != "" {
		t.InsecureSkipVerify = l.boolean(prefix+"INSECURE_SKIP_VERIFY", v)
	}
	return t
}

func (l *loader) boolean(name, v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "", "false", "0", "no":
		return false
	case "true", "1", "yes":
		return true
	}
	l.fail("%s: %q must be true or false", name, v)
	return false
}

func (l *loader) level(name, fromFile string) slog.Level {
	s, name := l.raw(name, fromFile)
	if s == "" {
		return slog.LevelInfo
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(s)); err != nil {
		l.fail("%s: %q must be debug, info, warn or error", name, s)
	}
	return lv
}
