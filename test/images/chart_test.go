package images

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/podidentity/podidentity/internal/chartrender"
)

// workload is one of the chart's containers as rendered, with its pod's settings.
type workload struct {
	image     string // our image name: mic or nmi
	container corev1.Container
	pod       corev1.PodSpec
	init      bool // an init container (nmi.prepareNode's)
}

// valueSets render the chart so that every flag its templates can pass appears at least once
// (TestChartFlagsCovered keeps this list complete).
var valueSets = map[string]map[string]any{
	"defaults": nil,
	"managed":  {"operationMode": "managed"},
	"adminsecret": {"adminsecret": map[string]any{"cloud": "AzurePublicCloud", "subscriptionID": "00000000-0000-0000-0000-000000000001",
		"resourceGroup": "mc_rg", "vmType": "vmss", "tenantID": "00000000-0000-0000-0000-000000000002", "clientID": "msi", "useMSI": "true"}},
	"every-option": {
		"requireServiceAccountBindings": true, "customUserAgent": "images-test", "forceNamespaced": true,
		"mic": map[string]any{
			"leaderElection":    map[string]any{"instance": "i", "name": "n", "duration": "20s"},
			"syncRetryDuration": "3600s", "immutableUserMSIs": []any{"00000000-0000-0000-0000-000000000003"},
			"createDeleteBatch": "20", "clientQps": "5", "updateUserMSIMaxRetry": "2", "updateUserMSIRetryInterval": "1s",
			"identityAssignmentReconcileInterval": "3m", "logVerbosity": 2, "loggingFormat": "json", "skipFederatedAssignments": true,
		},
		"nmi": map[string]any{
			"ipTableUpdateTimeIntervalInSeconds": "30", "retryAttemptsForCreated": "8", "retryAttemptsForAssigned": "2",
			"findIdentityRetryIntervalInSeconds": "2", "enableScaleFeatures": false, "blockInstanceMetadata": true,
			"metadataHeaderRequired": false, "allowNetworkPluginKubenet": true, "setRetryAfterHeader": true, "prepareNode": true,
			"enableConntrackDeletion": true, "allowCrossNamespaceSecrets": true, "serveDeletingPods": true,
			"allowedADEndpoints": []any{"https://login.example.com/"}, "logVerbosity": 2, "loggingFormat": "json",
			"federation": map[string]any{"propagationWindow": "30s", "honorWorkloadIdentityAnnotations": true,
				"defaultTenantID": "00000000-0000-0000-0000-000000000004"},
		},
	},
}

// renderWorkloads renders the chart with vals and returns its MIC and NMI containers.
func renderWorkloads(t *testing.T, vals map[string]any) []workload {
	t.Helper()
	ch, err := chartrender.Load()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := chartrender.Render(ch, chartrender.Options{ReleaseName: "podidentity", Namespace: "podidentity", Values: vals})
	if err != nil {
		t.Fatalf("rendering the chart with %v: %v", vals, err)
	}
	var out []workload
	for _, o := range objs {
		var pod corev1.PodSpec
		switch o.Kind {
		case "Deployment":
			var d appsv1.Deployment
			if err := yaml.Unmarshal([]byte(o.YAML), &d); err != nil {
				t.Fatalf("%s: %v", o.Source, err)
			}
			pod = d.Spec.Template.Spec
		case "DaemonSet":
			var d appsv1.DaemonSet
			if err := yaml.Unmarshal([]byte(o.YAML), &d); err != nil {
				t.Fatalf("%s: %v", o.Source, err)
			}
			pod = d.Spec.Template.Spec
		default:
			continue
		}
		for i, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
			// The chart's image is <registry>/<repo>/<name>:<tag>; the name must be one we build.
			ref := c.Image[strings.LastIndex(c.Image, "/")+1:]
			name, _, _ := strings.Cut(ref, ":")
			out = append(out, workload{image: name, container: c, pod: pod, init: i < len(pod.InitContainers)})
		}
	}
	for _, w := range out {
		if !slices.Contains(names, w.image) {
			t.Fatalf("the chart runs image %s (container %s), which hack/images.sh does not build", w.container.Image, w.container.Name)
		}
	}
	if len(out) == 0 {
		t.Fatal("the chart renders no containers")
	}
	return out
}

// flagName is the name of a --flag[=value] argument.
var flagName = regexp.MustCompile(`^--?([A-Za-z0-9][A-Za-z0-9_-]*)`)

func flagNames(args []string) []string {
	var out []string
	for _, a := range args {
		if m := flagName.FindStringSubmatch(a); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

// chartFlags is every flag name the rendered chart passes to image, over all valueSets.
func chartFlags(t *testing.T, image string) []string {
	t.Helper()
	seen := map[string]bool{}
	for _, vals := range valueSets {
		for _, w := range renderWorkloads(t, vals) {
			if w.image == image {
				for _, f := range flagNames(w.container.Args) {
					seen[f] = true
				}
			}
		}
	}
	var out []string
	for f := range seen {
		out = append(out, f)
	}
	sort.Strings(out)
	return out
}

// TestChartFlagsCovered fails when a template passes a flag that no value set renders, so that
// the --help check below cannot miss one.
func TestChartFlagsCovered(t *testing.T) {
	tmpl := map[string]string{"mic": "mic-deployment.yaml", "nmi": "nmi-daemonset.yaml"}
	for image, file := range tmpl {
		raw, err := os.ReadFile(filepath.Join(chartrender.ChartDir(), "templates", file))
		if err != nil {
			t.Fatal(err)
		}
		rendered := map[string]bool{}
		for _, f := range chartFlags(t, image) {
			rendered[f] = true
		}
		for _, m := range regexp.MustCompile(`(?m)^\s*- --([A-Za-z0-9_-]+)`).FindAllStringSubmatch(string(raw), -1) {
			if !rendered[m[1]] {
				t.Errorf("%s passes --%s, but no value set in test/images renders it: add values that do to valueSets", file, m[1])
			}
		}
	}
}

// expandEnv replaces $(VAR) as the kubelet does in args.
func expandEnv(args []string, env map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`).ReplaceAllStringFunc(a, func(m string) string {
			if v, ok := env[m[2:len(m)-1]]; ok {
				return v
			}
			return m
		})
	}
	return out
}

// securityArgs are the podman options that give a container exactly the chart's
// securityContext (container level over pod level, as the kubelet merges them).
func securityArgs(t *testing.T, w workload) []string {
	t.Helper()
	sc := w.container.SecurityContext
	if sc == nil {
		t.Fatalf("%s: the chart sets no container securityContext", w.image)
	}
	psc := w.pod.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	user, group := sc.RunAsUser, sc.RunAsGroup
	if user == nil {
		user = psc.RunAsUser
	}
	if group == nil {
		group = psc.RunAsGroup
	}
	nonRoot := sc.RunAsNonRoot
	if nonRoot == nil {
		nonRoot = psc.RunAsNonRoot
	}
	var args []string
	if sc.Privileged != nil && *sc.Privileged {
		// Only nmi.prepareNode's init container, and only ever in a test namespace.
		args = append(args, "--privileged")
	}
	if user != nil {
		u := strconv.FormatInt(*user, 10)
		if group != nil {
			u += ":" + strconv.FormatInt(*group, 10)
		}
		args = append(args, "--user", u)
		if nonRoot != nil && *nonRoot && *user == 0 {
			t.Fatalf("%s: the chart says runAsNonRoot with runAsUser 0", w.image)
		}
	}
	if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		// podman would add writable tmpfs on /run and /tmp; the kubelet does not.
		args = append(args, "--read-only", "--read-only-tmpfs=false")
	}
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		args = append(args, "--security-opt", "no-new-privileges")
	}
	if c := sc.Capabilities; c != nil {
		for _, d := range c.Drop {
			args = append(args, "--cap-drop", string(d))
		}
		for _, a := range c.Add {
			args = append(args, "--cap-add", string(a))
		}
	}
	return args
}

// hostPathMounts are podman -v options for the chart's hostPath mounts of w: a file with
// contents[mountPath] when given, else an empty stand-in (a file for File and FileOrCreate, a
// directory otherwise).
func hostPathMounts(t *testing.T, w workload, contents map[string][]byte) []string {
	t.Helper()
	vols := map[string]corev1.Volume{}
	for _, v := range w.pod.Volumes {
		vols[v.Name] = v
	}
	dir := t.TempDir()
	var opts []string
	for i, m := range w.container.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok || v.HostPath == nil {
			t.Fatalf("%s mount %s is not a hostPath volume; teach this test its stand-in", w.image, m.Name)
		}
		src := filepath.Join(dir, strconv.Itoa(i))
		file := v.HostPath.Type != nil && (*v.HostPath.Type == corev1.HostPathFileOrCreate || *v.HostPath.Type == corev1.HostPathFile)
		if b, ok := contents[m.MountPath]; ok || file {
			if err := os.WriteFile(src, b, 0o600); err != nil {
				t.Fatal(err)
			}
		} else if err := os.Mkdir(src, 0o755); err != nil {
			t.Fatal(err)
		}
		spec := src + ":" + m.MountPath
		if m.ReadOnly {
			spec += ":ro"
		}
		opts = append(opts, "-v", spec)
	}
	return opts
}

// downwardEnv is w's environment as the kubelet would set it for a pod named pod in namespace
// ns on node: literal values and the downward-API fields the chart uses.
func downwardEnv(t *testing.T, w workload, pod, ns, node string) []string {
	t.Helper()
	var opts []string
	for _, e := range w.container.Env {
		v := e.Value
		if e.ValueFrom != nil {
			if e.ValueFrom.FieldRef == nil {
				continue // Secret references: the chart marks them optional.
			}
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				v = pod
			case "metadata.namespace":
				v = ns
			case "spec.nodeName":
				v = node
			default:
				t.Fatalf("%s env %s comes from %s; teach this test its value", w.image, e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		}
		opts = append(opts, "--env", e.Name+"="+v)
	}
	return opts
}
