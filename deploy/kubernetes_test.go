package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

const (
	kubeDir           = "kubernetes"
	secretExampleFile = "secret.example.yaml"
	// secretMountPath is where deployment.yaml mounts the pamworker-secrets volume.
	secretMountPath = "/etc/pamworker/secrets"
)

// manifests is what `kubectl apply -k deploy/kubernetes` would apply, decoded
// into the API types, plus the example Secret that is applied by hand.
type manifests struct {
	deployment     *appsv1.Deployment
	configMap      *corev1.ConfigMap
	service        *corev1.Service
	serviceAccount *corev1.ServiceAccount
	pdb            *policyv1.PodDisruptionBudget
	networkPolicy  *networkingv1.NetworkPolicy
	secretExample  *corev1.Secret
	all            []runtime.Object
}

// strictDecoder is the API server's YAML decoding with unknown and duplicate
// fields turned into errors, for the API groups the manifests use.
func strictDecoder(t *testing.T) runtime.Decoder {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, networkingv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme, scheme,
		kjson.SerializerOptions{Yaml: true, Strict: true})
}

// decodeAll decodes every YAML document in data strictly.
func decodeAll(t *testing.T, name string, data []byte) []runtime.Object {
	t.Helper()
	dec := strictDecoder(t)
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []runtime.Object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		obj, gvk, err := dec.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: strict decode: %v", name, err)
		}
		if gvk.Group == "" && gvk.Version == "" {
			t.Fatalf("%s: document without apiVersion", name)
		}
		objs = append(objs, obj)
	}
	return objs
}

func stripComments(doc []byte) []byte {
	var out []byte
	for line := range bytes.Lines(doc) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(out, line...)
		}
	}
	return out
}

// kustomization is the part of kustomization.yaml the tests read; krusty
// validates the whole file.
type kustomization struct {
	Resources []string `json:"resources"`
	Images    []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
}

func readKustomization(t *testing.T) kustomization {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(kubeDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.Unmarshal(data, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	return k
}

// build runs kustomize (the version kubectl embeds is API-compatible) on
// deploy/kubernetes and decodes its output strictly.
func build(t *testing.T) manifests {
	t.Helper()
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), kubeDir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", kubeDir, err)
	}
	out, err := res.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	var m manifests
	m.all = decodeAll(t, "kustomize build output", out)
	for _, obj := range m.all {
		switch o := obj.(type) {
		case *appsv1.Deployment:
			setOnce(t, &m.deployment, o)
		case *corev1.ConfigMap:
			setOnce(t, &m.configMap, o)
		case *corev1.Service:
			setOnce(t, &m.service, o)
		case *corev1.ServiceAccount:
			setOnce(t, &m.serviceAccount, o)
		case *policyv1.PodDisruptionBudget:
			setOnce(t, &m.pdb, o)
		case *networkingv1.NetworkPolicy:
			setOnce(t, &m.networkPolicy, o)
		default:
			t.Fatalf("kustomization produces an unexpected %T", obj)
		}
	}
	if m.deployment == nil || m.configMap == nil || m.service == nil || m.serviceAccount == nil ||
		m.pdb == nil || m.networkPolicy == nil {
		t.Fatalf("kustomization lacks a resource: got %d objects", len(m.all))
	}

	data, err := os.ReadFile(filepath.Join(kubeDir, secretExampleFile))
	if err != nil {
		t.Fatal(err)
	}
	objs := decodeAll(t, secretExampleFile, data)
	if len(objs) != 1 {
		t.Fatalf("%s: want one Secret, got %d objects", secretExampleFile, len(objs))
	}
	secret, ok := objs[0].(*corev1.Secret)
	if !ok {
		t.Fatalf("%s: want a Secret, got %T", secretExampleFile, objs[0])
	}
	m.secretExample = secret
	return m
}

func setOnce[T any](t *testing.T, dst **T, v *T) {
	t.Helper()
	if *dst != nil {
		t.Fatalf("kustomization produces more than one %T", v)
	}
	*dst = v
}

func (m manifests) podLabels() labels.Set {
	return labels.Set(m.deployment.Spec.Template.Labels)
}

func (m manifests) container(t *testing.T) corev1.Container {
	t.Helper()
	cs := m.deployment.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("want exactly one container, got %d", len(cs))
	}
	return cs[0]
}

// resolvePort returns the container port a probe or Service targets.
func resolvePort(t *testing.T, c corev1.Container, p intstr.IntOrString) int32 {
	t.Helper()
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	t.Fatalf("port %q is not a named port of container %s", p.StrVal, c.Name)
	return 0
}

func selects(t *testing.T, what string, sel *metav1.LabelSelector, set labels.Set) {
	t.Helper()
	if sel == nil || (len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0) {
		t.Fatalf("%s: empty selector would select every pod", what)
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !s.Matches(set) {
		t.Errorf("%s: selector %s does not match the Deployment's pod labels %s", what, s, set)
	}
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	t.Parallel()
	k := readKustomization(t)

	files, err := filepath.Glob(filepath.Join(kubeDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, f := range files {
		base := filepath.Base(f)
		if base != "kustomization.yaml" && base != secretExampleFile {
			want = append(want, base)
		}
	}
	got := slices.Clone(k.Resources)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("kustomization resources = %v, want every manifest in %s: %v", got, kubeDir, want)
	}
	if slices.Contains(k.Resources, secretExampleFile) {
		t.Errorf("%s must not be in kustomization resources: its values are placeholders", secretExampleFile)
	}

	// Every file decodes strictly on its own as well: kustomize's output is
	// re-serialized, which could hide a duplicate key in the source.
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if objs := decodeAll(t, f, data); len(objs) != 1 {
			t.Errorf("%s: want one object per file, got %d", f, len(objs))
		}
	}
}

func TestManifestsMetadata(t *testing.T) {
	t.Parallel()
	m := build(t)
	for _, obj := range append(slices.Clone(m.all), m.secretExample) {
		meta, ok := obj.(metav1.Object)
		if !ok {
			t.Fatalf("%T has no metadata", obj)
		}
		if meta.GetNamespace() != "" {
			t.Errorf("%T %s sets namespace %q; manifests must stay namespace-agnostic", obj, meta.GetName(), meta.GetNamespace())
		}
		if meta.GetLabels()["app.kubernetes.io/name"] != "pamworker" {
			t.Errorf("%T %s lacks label app.kubernetes.io/name=pamworker", obj, meta.GetName())
		}
	}

	k := readKustomization(t)
	c := m.container(t)
	if len(k.Images) != 1 || k.Images[0].Name != "pamworker" {
		t.Fatalf("kustomization images = %+v, want one entry for pamworker", k.Images)
	}
	img := k.Images[0].NewName + ":" + k.Images[0].NewTag
	if c.Image != img {
		t.Errorf("built image = %q, want %q from kustomization images", c.Image, img)
	}
	if tag := k.Images[0].NewTag; tag == "" || tag == "latest" {
		t.Errorf("image tag %q: pin a release tag", tag)
	}
}

func TestDeployment(t *testing.T) {
	t.Parallel()
	m := build(t)
	d := m.deployment
	spec := d.Spec.Template.Spec
	c := m.container(t)

	if d.Name != "pamworker" {
		t.Errorf("Deployment name = %q, want pamworker", d.Name)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas = %v, want 2 sharing the durable consumer", d.Spec.Replicas)
	}
	selects(t, "Deployment selector", d.Spec.Selector, m.podLabels())

	ru := d.Spec.Strategy.RollingUpdate
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || ru == nil ||
		ru.MaxUnavailable == nil || ru.MaxUnavailable.String() != "0" ||
		ru.MaxSurge == nil || ru.MaxSurge.String() == "0" {
		t.Errorf("strategy = %+v, want RollingUpdate with maxUnavailable 0 and a surge", d.Spec.Strategy)
	}

	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("pod must set automountServiceAccountToken: false")
	}
	if spec.ServiceAccountName != m.serviceAccount.Name {
		t.Errorf("serviceAccountName = %q, want %q", spec.ServiceAccountName, m.serviceAccount.Name)
	}
	if spec.EnableServiceLinks == nil || *spec.EnableServiceLinks {
		t.Error("pod must set enableServiceLinks: false: Service env vars would land in the PAMWORKER_ namespace")
	}

	// Spread across nodes, by topology constraint or anti-affinity.
	spread := false
	for _, tsc := range spec.TopologySpreadConstraints {
		if tsc.TopologyKey == "kubernetes.io/hostname" {
			selects(t, "topologySpreadConstraint", tsc.LabelSelector, m.podLabels())
			spread = true
		}
	}
	if a := spec.Affinity; a != nil && a.PodAntiAffinity != nil {
		for _, term := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			spread = spread || term.PodAffinityTerm.TopologyKey == "kubernetes.io/hostname"
		}
	}
	if !spread {
		t.Error("replicas are not spread across nodes (topologySpreadConstraints or podAntiAffinity on kubernetes.io/hostname)")
	}

	if len(c.Args) > 0 && c.Args[0] != "run" {
		t.Errorf("args = %v, want the run subcommand", c.Args)
	}
	if len(c.Command) > 0 {
		t.Errorf("command = %v overrides the image's entrypoint", c.Command)
	}

	// Probes reach the worker's HTTP listener.
	var metrics int32
	for _, p := range c.Ports {
		if p.Name == "metrics" {
			metrics = p.ContainerPort
		}
	}
	if metrics != metricsPort {
		t.Fatalf("container port named metrics = %d, want %d", metrics, metricsPort)
	}
	for _, pr := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{
		{"liveness", c.LivenessProbe, "/healthz"},
		{"readiness", c.ReadinessProbe, "/readyz"},
		{"startup", c.StartupProbe, "/healthz"},
	} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("%s probe: want an httpGet probe", pr.name)
			continue
		}
		if pr.probe.HTTPGet.Path != pr.path {
			t.Errorf("%s probe path = %q, want %q", pr.name, pr.probe.HTTPGet.Path, pr.path)
		}
		if port := resolvePort(t, c, pr.probe.HTTPGet.Port); port != metricsPort {
			t.Errorf("%s probe port = %d, want %d", pr.name, port, metricsPort)
		}
	}

	// The HTTP listener is configured where the probes look.
	addr := m.configMap.Data["PAMWORKER_HTTP_ADDR"]
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("PAMWORKER_HTTP_ADDR %q: %v", addr, err)
	}
	if host != "" && host != "0.0.0.0" && host != "::" {
		t.Errorf("PAMWORKER_HTTP_ADDR %q listens on %s only; probes come from the node", addr, host)
	}
	if port != strconv.Itoa(metricsPort) {
		t.Errorf("PAMWORKER_HTTP_ADDR port %s, want %d", port, metricsPort)
	}

	// Resources.
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, okReq := c.Resources.Requests[name]
		lim, okLim := c.Resources.Limits[name]
		if !okReq || !okLim {
			t.Errorf("%s: want both a request and a limit", name)
			continue
		}
		if req.Cmp(lim) > 0 {
			t.Errorf("%s request %s exceeds limit %s", name, req.String(), lim.String())
		}
	}

	// Shutdown: the drain must finish before the kubelet's SIGKILL.
	grace := time.Duration(*d.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second
	drain, err := time.ParseDuration(m.configMap.Data["PAMWORKER_SHUTDOWN_TIMEOUT"])
	if err != nil {
		t.Fatalf("PAMWORKER_SHUTDOWN_TIMEOUT: %v", err)
	}
	if grace != 30*time.Second || drain+5*time.Second > grace {
		t.Errorf("terminationGracePeriodSeconds %s, PAMWORKER_SHUTDOWN_TIMEOUT %s: want 30s and a drain at least 5s shorter", grace, drain)
	}
}

func TestDeploymentSecurity(t *testing.T) {
	t.Parallel()
	m := build(t)
	pod := m.deployment.Spec.Template.Spec.SecurityContext
	c := m.container(t)
	sc := c.SecurityContext
	if pod == nil || sc == nil {
		t.Fatal("want both a pod and a container securityContext")
	}

	if pod.RunAsNonRoot == nil || !*pod.RunAsNonRoot || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Error("runAsNonRoot must be true")
	}
	for _, uid := range []*int64{pod.RunAsUser, sc.RunAsUser} {
		if uid != nil && *uid != nonrootUID {
			t.Errorf("runAsUser = %d, want the image's user %d", *uid, nonrootUID)
		}
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem must be true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation must be false")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("container must not be privileged")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
		t.Errorf("capabilities = %+v, want drop [ALL] and nothing added", sc.Capabilities)
	}
	for _, sp := range []*corev1.SeccompProfile{pod.SeccompProfile, sc.SeccompProfile} {
		if sp == nil || sp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("seccompProfile = %+v, want RuntimeDefault", sp)
		}
	}
	if m.serviceAccount.AutomountServiceAccountToken == nil || *m.serviceAccount.AutomountServiceAccountToken {
		t.Error("ServiceAccount must set automountServiceAccountToken: false")
	}
}

// TestDeploymentSecretsComeFromFiles: every credential reaches the worker as a
// file of the mounted Secret, through its _FILE variable.
func TestDeploymentSecretsComeFromFiles(t *testing.T) {
	t.Parallel()
	m := build(t)
	spec := m.deployment.Spec.Template.Spec
	c := m.container(t)

	// The Secret volume and where it is mounted.
	var secretVol *corev1.Volume
	for i, v := range spec.Volumes {
		if v.Secret != nil {
			if secretVol != nil {
				t.Fatal("want one Secret volume")
			}
			secretVol = &spec.Volumes[i]
		}
	}
	if secretVol == nil {
		t.Fatal("no Secret volume")
	}
	if secretVol.Secret.SecretName != m.secretExample.Name {
		t.Errorf("Secret volume uses %q, %s creates %q", secretVol.Secret.SecretName, secretExampleFile, m.secretExample.Name)
	}
	if secretVol.Secret.Optional != nil && *secretVol.Secret.Optional {
		t.Error("Secret volume must not be optional: a missing Secret should stop the pod, not start it half-configured")
	}
	// Secret files are root-owned: the non-root worker reads them through fsGroup.
	if mode := secretVol.Secret.DefaultMode; mode == nil || *mode&0o004 != 0 || *mode&0o040 == 0 {
		t.Errorf("Secret defaultMode = %v, want group-readable and not world-readable (0440)", mode)
	}
	if spec.SecurityContext.FSGroup == nil || *spec.SecurityContext.FSGroup != nonrootUID {
		t.Errorf("fsGroup = %v, want %d so the worker can read the Secret files", spec.SecurityContext.FSGroup, nonrootUID)
	}
	mountPath := ""
	for _, vm := range c.VolumeMounts {
		if vm.Name == secretVol.Name {
			mountPath = vm.MountPath
			if !vm.ReadOnly {
				t.Error("Secret volume mount must be readOnly")
			}
		}
	}
	if mountPath != secretMountPath {
		t.Fatalf("Secret volume mounted at %q, want %q", mountPath, secretMountPath)
	}

	// Env: known names only; credentials only through _FILE.
	fileVars := map[string]string{}
	for _, e := range c.Env {
		if !knownEnv[e.Name] {
			t.Errorf("env %s is not a pamworker setting", e.Name)
		}
		if slices.Contains(secretEnv, e.Name) {
			t.Errorf("env %s carries a credential as a value; use %s_FILE", e.Name, e.Name)
		}
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			t.Errorf("env %s reads a Secret key into the environment; mount it and use the _FILE variable", e.Name)
		}
		if strings.HasSuffix(e.Name, "_FILE") {
			fileVars[e.Name] = e.Value
		}
	}
	for _, ef := range c.EnvFrom {
		if ef.SecretRef != nil {
			t.Errorf("envFrom Secret %s puts credentials in the environment", ef.SecretRef.Name)
		}
		if ef.ConfigMapRef == nil || ef.ConfigMapRef.Name != m.configMap.Name || ef.Prefix != "" {
			t.Errorf("envFrom %+v, want the %s ConfigMap without prefix", ef, m.configMap.Name)
		}
	}
	if len(c.EnvFrom) != 1 {
		t.Errorf("envFrom has %d entries, want the ConfigMap only", len(c.EnvFrom))
	}

	// Each secret setting points at a key of the Secret, and each key is used.
	keys := map[string]bool{}
	for k := range m.secretExample.StringData {
		keys[k] = false
	}
	for _, name := range secretEnv {
		p, ok := fileVars[name+"_FILE"]
		if !ok {
			t.Errorf("%s_FILE is not set", name)
			continue
		}
		dir, key := path.Split(p)
		if path.Clean(dir) != secretMountPath {
			t.Errorf("%s_FILE = %q is outside the Secret mount %s", name, p, secretMountPath)
		}
		if _, ok := keys[key]; !ok {
			t.Errorf("%s_FILE = %q: %s has no key %q", name, p, secretExampleFile, key)
		}
		keys[key] = true
	}
	for k, used := range keys {
		if !used {
			t.Errorf("Secret key %q is mounted but no _FILE variable reads it", k)
		}
	}

	// The worker refuses to start with credentials for a vendor that has no URL.
	for name := range fileVars {
		for _, vendor := range []string{"SEGURA", "ELEMENT"} {
			if strings.HasPrefix(name, "PAMWORKER_"+vendor+"_") && m.configMap.Data["PAMWORKER_"+vendor+"_URL"] == "" {
				t.Errorf("%s is set but the ConfigMap has no PAMWORKER_%s_URL", name, vendor)
			}
		}
	}
}

func TestConfigMap(t *testing.T) {
	t.Parallel()
	m := build(t)
	cm := m.configMap
	if cm.Name != "pamworker-config" {
		t.Errorf("ConfigMap name = %q, want pamworker-config", cm.Name)
	}
	if len(cm.BinaryData) > 0 {
		t.Error("ConfigMap has binaryData; only env settings belong here")
	}
	for k, v := range cm.Data {
		if !knownEnv[k] {
			t.Errorf("key %s is not a pamworker setting", k)
		}
		if slices.Contains(secretEnv, k) || strings.HasSuffix(k, "_FILE") {
			t.Errorf("key %s is a credential setting; it belongs in the Secret", k)
		}
		for _, sv := range m.secretExample.StringData {
			if strings.Contains(v, sv) {
				t.Errorf("key %s contains a Secret value", k)
			}
		}
		if u, err := url.Parse(v); err == nil && u.User != nil {
			t.Errorf("key %s embeds credentials in its URL", k)
		}
	}

	nats := cm.Data["PAMWORKER_NATS_URL"]
	if nats == "" {
		t.Error("PAMWORKER_NATS_URL must be set: without it every replica starts its own embedded server")
	}
	for u := range strings.SplitSeq(nats, ",") {
		pu, err := url.Parse(strings.TrimSpace(u))
		if err != nil || (pu.Scheme != "nats" && pu.Scheme != "tls") || pu.Host == "" {
			t.Errorf("PAMWORKER_NATS_URL entry %q is not a nats:// or tls:// URL", u)
			continue
		}
		if pu.User != nil {
			t.Errorf("PAMWORKER_NATS_URL entry %q embeds credentials", u)
		}
	}
	for _, k := range []string{"PAMWORKER_SEGURA_URL", "PAMWORKER_ELEMENT_URL", "PAMWORKER_SEGURA_TOKEN_URL"} {
		if v, ok := cm.Data[k]; ok {
			if u, err := url.Parse(v); err != nil || u.Scheme != "https" || u.Host == "" {
				t.Errorf("%s = %q, want an https URL", k, v)
			}
		}
	}
	for _, k := range []string{"PAMWORKER_HTTP_TIMEOUT", "PAMWORKER_SHUTDOWN_TIMEOUT"} {
		if v, ok := cm.Data[k]; ok {
			if d, err := time.ParseDuration(v); err != nil || d <= 0 {
				t.Errorf("%s = %q, want a positive Go duration", k, v)
			}
		}
	}
	for _, k := range []string{"PAMWORKER_CONCURRENCY", "PAMWORKER_MAX_EVENT_BYTES"} {
		if v, ok := cm.Data[k]; ok {
			if n, err := strconv.Atoi(v); err != nil || n <= 0 {
				t.Errorf("%s = %q, want a positive integer", k, v)
			}
		}
	}
	if v, ok := cm.Data["PAMWORKER_LOG_LEVEL"]; ok && !slices.Contains([]string{"debug", "info", "warn", "error"}, v) {
		t.Errorf("PAMWORKER_LOG_LEVEL = %q, want debug, info, warn or error", v)
	}
	if _, ok := cm.Data["PAMWORKER_DATA_DIR"]; ok {
		t.Error("PAMWORKER_DATA_DIR only applies to the embedded server, which must not run in Kubernetes")
	}
}

func TestSecretExample(t *testing.T) {
	t.Parallel()
	m := build(t)
	s := m.secretExample
	if s.Type != corev1.SecretTypeOpaque {
		t.Errorf("type = %q, want Opaque", s.Type)
	}
	if len(s.Data) > 0 {
		t.Error("use stringData, so the placeholders are visibly fake")
	}
	if len(s.StringData) == 0 {
		t.Error("example Secret has no keys")
	}
	for k, v := range s.StringData {
		if !strings.HasPrefix(v, "REPLACE-ME") {
			t.Errorf("key %s = %q, want an obvious REPLACE-ME placeholder", k, v)
		}
	}
	data, err := os.ReadFile(filepath.Join(kubeDir, secretExampleFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte("kubectl create secret generic "+s.Name)) {
		t.Errorf("%s should tell how to create %s with kubectl", secretExampleFile, s.Name)
	}
}

func TestService(t *testing.T) {
	t.Parallel()
	m := build(t)
	s := m.service
	if s.Name != "pamworker-metrics" {
		t.Errorf("Service name = %q, want pamworker-metrics", s.Name)
	}
	if s.Spec.Type != "" && s.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("Service type = %q, want ClusterIP", s.Spec.Type)
	}
	selects(t, "Service", &metav1.LabelSelector{MatchLabels: s.Spec.Selector}, m.podLabels())
	if len(s.Spec.Ports) != 1 {
		t.Fatalf("Service ports = %+v, want the metrics port only", s.Spec.Ports)
	}
	p := s.Spec.Ports[0]
	if p.Name != "metrics" || p.Port != metricsPort {
		t.Errorf("Service port = %s/%d, want metrics/%d", p.Name, p.Port, metricsPort)
	}
	if got := resolvePort(t, m.container(t), p.TargetPort); got != metricsPort {
		t.Errorf("Service targetPort reaches container port %d, want %d", got, metricsPort)
	}
}

func TestPodDisruptionBudget(t *testing.T) {
	t.Parallel()
	m := build(t)
	pdb := m.pdb
	selects(t, "PodDisruptionBudget", pdb.Spec.Selector, m.podLabels())
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.String() != "1" {
		t.Errorf("minAvailable = %v, want 1", pdb.Spec.MinAvailable)
	}
	if pdb.Spec.MaxUnavailable != nil {
		t.Error("set minAvailable or maxUnavailable, not both")
	}
	if int32(pdb.Spec.MinAvailable.IntValue()) >= *m.deployment.Spec.Replicas {
		t.Error("minAvailable >= replicas would block every voluntary eviction")
	}
}

func TestNetworkPolicy(t *testing.T) {
	t.Parallel()
	m := build(t)
	np := m.networkPolicy
	selects(t, "NetworkPolicy", &np.Spec.PodSelector, m.podLabels())
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
		t.Error("policyTypes must include Ingress")
	}
	if len(np.Spec.Ingress) == 0 {
		t.Fatal("no ingress rule: the metrics port would be unreachable")
	}
	c := m.container(t)
	for i, rule := range np.Spec.Ingress {
		if len(rule.Ports) == 0 {
			t.Errorf("ingress rule %d has no ports, which allows every port", i)
		}
		for _, p := range rule.Ports {
			if p.Port == nil || resolvePort(t, c, *p.Port) != metricsPort || p.EndPort != nil {
				t.Errorf("ingress rule %d allows port %v, want %d only", i, p.Port, metricsPort)
			}
			if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
				t.Errorf("ingress rule %d protocol %s, want TCP", i, *p.Protocol)
			}
		}
	}
}
