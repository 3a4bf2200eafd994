// Package chart_test renders and lints charts/podidentity with Helm's Go library, applies every
// rendered object to a real kube-apiserver (server-side apply), asks that apiserver what the MIC
// and NMI ServiceAccounts and namespace users are allowed to do with the RBAC the chart grants,
// and checks what the chart's admission policy lets through.
package chart_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/chartrender"
	"github.com/podidentity/podidentity/internal/flagsdoc"
	"github.com/podidentity/podidentity/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }

// scenario is one way users install the chart.
type scenario struct {
	name string
	file string // under testdata; empty means the chart defaults
}

var scenarios = []scenario{
	{"default", ""},
	{"upstream-values", "upstream-values.yaml"},
	{"upstream-secrets", "upstream-secrets.yaml"},
	{"managed", "managed.yaml"},
	{"namespaced", "namespaced.yaml"},
	{"everything", "everything.yaml"},
}

func readValues(t *testing.T, file string) map[string]any {
	t.Helper()
	if file == "" {
		return map[string]any{}
	}
	v, err := chartrender.ReadValuesFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

var loadOnce = sync.OnceValues(chartrender.Load)

func render(t *testing.T, release, namespace string, vals map[string]any) []chartrender.Object {
	t.Helper()
	ch, err := loadOnce()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := chartrender.Render(ch, chartrender.Options{ReleaseName: release, Namespace: namespace, Values: vals})
	if err != nil {
		t.Fatalf("rendering the chart: %v", err)
	}
	return objs
}

func find(objs []chartrender.Object, kind, nameSuffix string) *chartrender.Object {
	for i := range objs {
		if objs[i].Kind == kind && strings.HasSuffix(objs[i].Name, nameSuffix) {
			return &objs[i]
		}
	}
	return nil
}

func decode[T any](t *testing.T, o *chartrender.Object) *T {
	t.Helper()
	if o == nil {
		t.Fatalf("object not rendered")
	}
	var v T
	// Strict: a misspelt field in a template must fail here, not be dropped silently.
	if err := yaml.UnmarshalStrict([]byte(o.YAML), &v); err != nil {
		t.Fatalf("%s %s from %s: %v", o.Kind, o.Name, o.Source, err)
	}
	return &v
}

func TestLint(t *testing.T) {
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			msgs, err := chartrender.Lint(readValues(t, s.file), "podidentity")
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range msgs {
				t.Errorf("helm lint: %s", m)
			}
		})
	}
}

func TestSchemaRejectsTyposAndRemovedFeatures(t *testing.T) {
	ch, err := loadOnce()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		values string
		want   string
	}{
		{"top-level typo", "forceNamespace: true", "forceNamespace"},
		{"nested typo", "nmi:\n  metadataHeaderRequird: false", "metadataHeaderRequird"},
		{"wrong type", "mic:\n  replicas: two", "replicas"},
		{"bad boolean string", `forceNamespaced: "yes"`, "forceNamespaced"},
		{"bad mode", "operationMode: hybrid", "operationMode"},
		{"bad duration", "mic:\n  syncRetryDuration: 1 hour", "syncRetryDuration"},
		{"identity without client ID", "azureIdentities:\n  x:\n    type: 0", "clientID"},
		{"PodSecurityPolicy", "rbac:\n  pspEnabled: true", "PodSecurityPolicy was removed"},
		{"secret namespaces without secret access", "rbac:\n  allowAccessToSecrets: false\n  secretNamespaces: [a]", "allowAccessToSecrets"},
		{"every namespace and some", "rbac:\n  secretNamespaces: [\"*\", a]", `"*" (every namespace) cannot be combined`},
		{"plain-http Azure AD", "nmi:\n  allowedADEndpoints: [http://login.contoso.example/]", "must use https"},
		{"Azure AD with a path", "nmi:\n  allowedADEndpoints: [https://login.contoso.example/tenant]", "nmi.allowedADEndpoints entry"},
		{"Azure AD with a user", "nmi:\n  allowedADEndpoints: [https://u@login.contoso.example]", "is not an Azure AD host"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var vals map[string]any
			if err := yaml.Unmarshal([]byte(c.values), &vals); err != nil {
				t.Fatal(err)
			}
			_, err := chartrender.Render(ch, chartrender.Options{ReleaseName: "r", Namespace: "n", Values: vals})
			if err == nil {
				t.Fatalf("values %q were accepted; want an error naming %q", c.values, c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error does not name %q:\n%v", c.want, err)
			}
		})
	}
}

func args(t *testing.T, objs []chartrender.Object, kind string) []string {
	t.Helper()
	switch kind {
	case "Deployment":
		d := decode[appsv1.Deployment](t, find(objs, kind, "-mic"))
		return d.Spec.Template.Spec.Containers[0].Args
	default:
		d := decode[appsv1.DaemonSet](t, find(objs, kind, "-nmi"))
		return d.Spec.Template.Spec.Containers[0].Args
	}
}

func env0(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

func wantArgs(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("%s args lack %s; got %q", what, w, got)
		}
	}
}

func noArgPrefix(t *testing.T, what string, got []string, prefixes ...string) {
	t.Helper()
	for _, a := range got {
		for _, p := range prefixes {
			if strings.HasPrefix(a, p) {
				t.Errorf("%s args contain %s", what, a)
			}
		}
	}
}

func TestDefaults(t *testing.T) {
	objs := render(t, "podidentity", "podidentity", nil)
	mic := decode[appsv1.Deployment](t, find(objs, "Deployment", "-mic"))
	if *mic.Spec.Replicas != 2 || mic.Spec.Template.Spec.Affinity.PodAntiAffinity == nil {
		t.Errorf("MIC: want 2 replicas spread by anti-affinity, got %d, %+v", *mic.Spec.Replicas, mic.Spec.Template.Spec.Affinity)
	}
	mc := mic.Spec.Template.Spec.Containers[0]
	if mc.ReadinessProbe.HTTPGet.Path != "/readyz" || mc.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("MIC probes: readiness %s, liveness %s", mc.ReadinessProbe.HTTPGet.Path, mc.LivenessProbe.HTTPGet.Path)
	}
	wantArgs(t, "MIC", mc.Args, "--cloudconfig=/etc/kubernetes/azure.json", "--http-probe-port=8080",
		"--prometheus-port=8888", "--leader-election-namespace=podidentity")
	if _, ok := env0(mc, "FORCENAMESPACED"); ok {
		t.Errorf("MIC: FORCENAMESPACED set by default")
	}

	nmi := decode[appsv1.DaemonSet](t, find(objs, "DaemonSet", "-nmi"))
	ps := nmi.Spec.Template.Spec
	nc := ps.Containers[0]
	if !ps.HostNetwork || ps.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("NMI must use the host network with ClusterFirstWithHostNet DNS")
	}
	caps := nc.SecurityContext.Capabilities
	if !slices.Equal(caps.Drop, []corev1.Capability{"ALL"}) || !slices.Equal(caps.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) {
		t.Errorf("NMI capabilities: drop %v add %v; want drop ALL, add only NET_ADMIN and NET_RAW", caps.Drop, caps.Add)
	}
	var lock bool
	for _, v := range ps.Volumes {
		lock = lock || (v.HostPath != nil && v.HostPath.Path == "/run/xtables.lock")
	}
	if !lock {
		t.Errorf("NMI does not mount /run/xtables.lock")
	}
	if e := nc.Env[0]; e.Name != "NODE_NAME" || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NMI: NODE_NAME must come from spec.nodeName, got %+v", e)
	}
	wantArgs(t, "NMI", nc.Args, "--node=$(NODE_NAME)", "--http-probe-port=8085", "--prometheus-port=9090", "--MICNamespace=podidentity",
		"--mic-service-account="+mic.Spec.Template.Spec.ServiceAccountName)
	// Defaults equal the binaries' defaults, so the chart does not repeat them.
	noArgPrefix(t, "NMI", nc.Args, "--metadata-header-required", "--enableScaleFeatures", "--operation-mode", "--block-instance-metadata",
		"--allow-cross-namespace-secrets", "--allowed-ad-endpoints", "--serve-deleting-pods")
	if find(objs, "ValidatingAdmissionPolicy", "-azureidentity") == nil || find(objs, "ValidatingAdmissionPolicyBinding", "-azureidentity") == nil {
		t.Errorf("the AzureIdentity admission policy is not installed by default")
	}

	if ex := find(objs, "AzurePodIdentityException", "-mic"); ex == nil {
		t.Errorf("the MIC AzurePodIdentityException is missing")
	} else {
		e := decode[aadv1.AzurePodIdentityException](t, ex)
		for k, v := range e.Spec.PodLabels {
			if mic.Spec.Template.Labels[k] != v {
				t.Errorf("MIC exception label %s=%s is not on MIC's pods", k, v)
			}
			if nmi.Spec.Template.Labels[k] == v {
				t.Errorf("MIC exception label %s=%s also matches NMI's pods", k, v)
			}
		}
	}
	if ex := find(objs, "AzurePodIdentityException", "aks-addon-exception"); ex == nil || ex.Namespace != "kube-system" {
		t.Errorf("the AKS add-on exception is missing from kube-system")
	}
	for _, kind := range []string{"PodDisruptionBudget", "Secret", "ServiceMonitor", "AzureIdentity"} {
		if o := find(objs, kind, ""); o != nil {
			t.Errorf("default values render an optional %s %s", kind, o.Name)
		}
	}
}

func TestUpstreamValuesBecomeFlags(t *testing.T) {
	objs := render(t, "aad-pod-identity", "kube-system", readValues(t, "upstream-values.yaml"))
	wantArgs(t, "MIC", args(t, objs, "Deployment"),
		"--syncRetryDuration=3600s", "--immutable-user-msis=00000000-0000-0000-0000-000000000001,00000000-0000-0000-0000-000000000002",
		"--createDeleteBatch=20", "--clientQps=5", "--update-user-msi-max-retry=2", "--update-user-msi-retry-interval=1s",
		"--identity-assignment-reconcile-interval=3m", "--leader-election-name=aad-pod-identity-mic",
		"--leader-election-duration=15s", "--custom-user-agent=contoso-prod", "--v=2", "--log-format=json",
		"--leader-election-namespace=kube-system")
	wantArgs(t, "NMI", args(t, objs, "DaemonSet"),
		"--ipt-update-interval-sec=60", "--retry-attempts-for-created=16", "--retry-attempts-for-assigned=4",
		"--find-identity-retry-interval=5", "--block-instance-metadata=true", "--enable-conntrack-deletion=true",
		"--MICNamespace=kube-system", "--kubelet-config=/etc/default/kubelet", "--v=1")
	mic := decode[appsv1.Deployment](t, find(objs, "Deployment", "-mic"))
	if got := mic.Spec.Template.Spec.Containers[0].Image; got != "contoso.azurecr.io/podidentity/mic:v0.1.0" {
		t.Errorf("MIC image %s", got)
	}
	if pdb := find(objs, "PodDisruptionBudget", "-mic"); pdb == nil {
		t.Errorf("mic.podDisruptionBudget did not render a PodDisruptionBudget")
	}
	id := decode[aadv1.AzureIdentity](t, find(objs, "AzureIdentity", "demo-identity"))
	b := decode[aadv1.AzureIdentityBinding](t, find(objs, "AzureIdentityBinding", "demo-identity-binding"))
	if id.Namespace != "kube-system" || id.Spec.ClientID != "6c3c3f6e-7e0a-4f5b-9d3a-0a1b2c3d4e5f" ||
		b.Spec.AzureIdentity != "demo-identity" || b.Spec.Selector != "demo" {
		t.Errorf("azureIdentities rendered %+v / %+v", id, b)
	}
	for _, suffix := range []string{"-view", "-edit"} {
		if find(objs, "ClusterRole", suffix) == nil {
			t.Errorf("rbac.createUserFacingClusterRoles did not render the %s ClusterRole", suffix)
		}
	}
}

func TestManagedMode(t *testing.T) {
	objs := render(t, "podidentity", "podidentity", readValues(t, "managed.yaml"))
	for _, o := range objs {
		if strings.HasSuffix(o.Name, "-mic") || o.Kind == "Deployment" {
			t.Errorf("managed mode renders MIC's %s %s", o.Kind, o.Name)
		}
	}
	wantArgs(t, "NMI", args(t, objs, "DaemonSet"), "--operation-mode=managed", "--forceNamespaced=true")
	noArgPrefix(t, "NMI", args(t, objs, "DaemonSet"), "--MICNamespace", "--mic-service-account")
}

func TestNamespacedMode(t *testing.T) {
	vals := readValues(t, "namespaced.yaml")
	vals["rbac"].(map[string]any)["secretNamespaces"] = []any{"team-a", "team-b"}
	objs := render(t, "podidentity", "podidentity", vals)
	mic := decode[appsv1.Deployment](t, find(objs, "Deployment", "-mic"))
	nmi := decode[appsv1.DaemonSet](t, find(objs, "DaemonSet", "-nmi"))
	for what, c := range map[string]corev1.Container{"MIC": mic.Spec.Template.Spec.Containers[0], "NMI": nmi.Spec.Template.Spec.Containers[0]} {
		if v, _ := env0(c, "FORCENAMESPACED"); v != "true" {
			t.Errorf("%s: FORCENAMESPACED=%q, want true", what, v)
		}
	}
	var roles []string
	for _, o := range objs {
		if o.Kind == "Role" && strings.HasSuffix(o.Name, "-nmi-secrets") {
			roles = append(roles, o.Namespace)
		}
	}
	if !slices.Equal(roles, []string{"team-a", "team-b"}) {
		t.Errorf("NMI secret Roles in %v, want team-a and team-b", roles)
	}
	cr := decode[rbacv1.ClusterRole](t, find(objs, "ClusterRole", "-nmi"))
	for _, r := range cr.Rules {
		if slices.Contains(r.Resources, "secrets") {
			t.Errorf("NMI's ClusterRole grants Secret access although secretNamespaces limits it")
		}
	}
}

// Every flag the chart passes must be one the binary registers: a chart flag the binary lacks
// makes the pod crash-loop at start.
func TestChartFlagsExistInBinaries(t *testing.T) {
	known := map[string]map[string]bool{}
	for _, c := range flagsdoc.Components {
		s, err := flagsdoc.Read(chartrender.RepoRoot(), c)
		if err != nil {
			t.Fatal(err)
		}
		names, fromCode := s.Known()
		if !fromCode {
			t.Logf("%s registers no flags in the code yet: checked against aad-pod-identity's %s flags", c.Name, c.Name)
		}
		known[c.Name] = names
	}
	for _, s := range scenarios {
		vals := readValues(t, s.file)
		vals["customUserAgent"] = "ua"
		for _, c := range []string{"mic", "nmi"} {
			vals[c] = merge(vals[c], map[string]any{"logVerbosity": 3, "loggingFormat": "json"})
		}
		objs := render(t, "r", "n", vals)
		for kind, component := range map[string]string{"Deployment": "mic", "DaemonSet": "nmi"} {
			if find(objs, kind, "-"+component) == nil {
				continue
			}
			for _, a := range args(t, objs, kind) {
				name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
				if !known[component][name] {
					t.Errorf("%s: the chart passes %s to %s, which has no such flag", s.name, a, component)
				}
			}
		}
	}
}

func merge(base any, extra map[string]any) map[string]any {
	out := map[string]any{}
	if m, ok := base.(map[string]any); ok {
		for k, v := range m {
			out[k] = v
		}
	}
	for k, v := range extra {
		out[k] = v
	}
	return out
}

// A custom cloud reaches both components: MIC for ARM, NMI for service principals' Azure AD.
func TestCustomCloudFileReachesMICAndNMI(t *testing.T) {
	objs := render(t, "podidentity", "podidentity", readValues(t, "everything.yaml"))
	mic := decode[appsv1.Deployment](t, find(objs, "Deployment", "-mic"))
	nmi := decode[appsv1.DaemonSet](t, find(objs, "DaemonSet", "-nmi"))
	for what, spec := range map[string]corev1.PodSpec{"MIC": mic.Spec.Template.Spec, "NMI": nmi.Spec.Template.Spec} {
		c := spec.Containers[0]
		path, ok := env0(c, "AZURE_ENVIRONMENT_FILEPATH")
		if !ok || path == "" {
			t.Errorf("%s: AZURE_ENVIRONMENT_FILEPATH not set", what)
			continue
		}
		mounted := false
		for _, m := range c.VolumeMounts {
			mounted = mounted || m.MountPath == path
		}
		if !mounted {
			t.Errorf("%s: %s is not mounted", what, path)
		}
	}
}

// adminsecret.cloud reaches NMI too: service principals use that cloud's Azure AD, which is also
// the authority NMI (and the admission policy) let an identity's adEndpoint name.
func TestAdminSecretCloudReachesNMI(t *testing.T) {
	objs := render(t, "podidentity", "podidentity", map[string]any{"adminsecret": map[string]any{"cloud": "AzureChinaCloud"}})
	nmi := decode[appsv1.DaemonSet](t, find(objs, "DaemonSet", "-nmi"))
	if v, _ := env0(nmi.Spec.Template.Spec.Containers[0], "CLOUD"); v != "AzureChinaCloud" {
		t.Errorf("NMI: CLOUD=%q, want AzureChinaCloud", v)
	}
	nmi = decode[appsv1.DaemonSet](t, find(render(t, "podidentity", "podidentity", nil), "DaemonSet", "-nmi"))
	if v, ok := env0(nmi.Spec.Template.Spec.Containers[0], "CLOUD"); ok {
		t.Errorf("NMI: CLOUD=%q set without adminsecret.cloud", v)
	}
}

// NMI's opt-ins of issue 11 reach its arguments when set.
func TestNMIOptInsReachItsArguments(t *testing.T) {
	objs := render(t, "podidentity", "podidentity", readValues(t, "everything.yaml"))
	nmi := decode[appsv1.DaemonSet](t, find(objs, "DaemonSet", "-nmi"))
	wantArgs(t, "NMI", nmi.Spec.Template.Spec.Containers[0].Args, "--allow-cross-namespace-secrets=true", "--serve-deleting-pods=true",
		"--allowed-ad-endpoints=login.contoso.example")
}
