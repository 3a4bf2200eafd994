// Package chartrender renders and lints the podidentity Helm chart with Helm's own Go library, so
// that tests, `make manifests` and users running `helm template` all see the same objects. It also
// produces the plain manifests under deploy/ and the chart's copy of the CRDs, which are therefore
// generated files: a test compares them with what this package would write.
package chartrender

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"helm.sh/helm/v3/pkg/releaseutil"
	"sigs.k8s.io/yaml"
)

// KubeVersion is the Kubernetes version the chart is rendered and linted for: the version the
// tests' control plane runs.
const KubeVersion = "v1.37.2"

// RepoRoot is the directory of the project's go.mod.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// ChartDir is the chart's source directory.
func ChartDir() string { return filepath.Join(RepoRoot(), "charts", "podidentity") }

// CRDSourceDir holds the generated CRDs the chart ships (config/crd, owned by `make generate`).
func CRDSourceDir() string { return filepath.Join(RepoRoot(), "config", "crd") }

// Options select what to render.
type Options struct {
	ReleaseName string
	Namespace   string
	// Values are user values, merged over values.yaml exactly as `helm install -f` would.
	Values map[string]any
	// IncludeCRDs prepends the chart's crds/ (Helm installs them but never renders them).
	IncludeCRDs bool
	// ManagedBy replaces "Helm" in the app.kubernetes.io/managed-by label (plain manifests are not
	// managed by Helm, and must not look like it).
	ManagedBy string
}

// Object is one rendered Kubernetes object.
type Object struct {
	// Source is the chart file it came from (e.g. podidentity/templates/nmi-daemonset.yaml).
	Source                            string
	APIVersion, Kind, Namespace, Name string
	// YAML is the object's manifest as rendered.
	YAML string
}

// Load loads the chart from ChartDir.
func Load() (*chart.Chart, error) {
	ch, err := loader.LoadDir(ChartDir())
	if err != nil {
		return nil, fmt.Errorf("loading chart %s: %w", ChartDir(), err)
	}
	return ch, nil
}

// Capabilities are those of the tests' Kubernetes version.
func Capabilities() *chartutil.Capabilities {
	caps := chartutil.DefaultCapabilities.Copy()
	kv, err := chartutil.ParseKubeVersion(KubeVersion)
	if err != nil {
		panic(err)
	}
	caps.KubeVersion = *kv
	return caps
}

// Render renders ch as `helm template` would (schema validation included) and returns the
// objects in Helm's install order.
func Render(ch *chart.Chart, o Options) ([]Object, error) {
	if o.ReleaseName == "" || o.Namespace == "" {
		return nil, fmt.Errorf("render: release name and namespace are required")
	}
	vals, err := chartutil.ToRenderValues(ch, o.Values,
		chartutil.ReleaseOptions{Name: o.ReleaseName, Namespace: o.Namespace, IsInstall: true, Revision: 1}, Capabilities())
	if err != nil {
		return nil, err
	}
	if o.ManagedBy != "" {
		vals["Release"].(map[string]any)["Service"] = o.ManagedBy
	}
	files, err := engine.Render(ch, vals)
	if err != nil {
		return nil, err
	}
	for name := range files {
		// NOTES.txt is shown to the user, not applied.
		if strings.HasSuffix(name, "NOTES.txt") {
			delete(files, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, nil, releaseutil.InstallOrder)
	if err != nil {
		return nil, err
	}
	if len(hooks) > 0 {
		return nil, fmt.Errorf("the chart renders %d hooks; plain manifests cannot express them, so the chart must not use any", len(hooks))
	}
	var out []Object
	if o.IncludeCRDs {
		for _, crd := range ch.CRDObjects() {
			objs, err := split(crd.Filename, string(crd.File.Data))
			if err != nil {
				return nil, err
			}
			out = append(out, objs...)
		}
	}
	for _, m := range manifests {
		objs, err := split(m.Name, m.Content)
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
	}
	return out, nil
}

func split(source, content string) ([]Object, error) {
	var out []Object
	docs := releaseutil.SplitManifests(content)
	keys := make([]string, 0, len(docs))
	for k := range docs {
		keys = append(keys, k)
	}
	sort.Sort(releaseutil.BySplitManifestsOrder(keys))
	for _, k := range keys {
		doc := strings.TrimSpace(docs[k])
		if doc == "" || onlyComments(doc) {
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return nil, fmt.Errorf("%s renders invalid YAML: %w\n%s", source, err, doc)
		}
		if head.APIVersion == "" || head.Kind == "" || head.Metadata.Name == "" {
			return nil, fmt.Errorf("%s renders an object without apiVersion, kind or metadata.name:\n%s", source, doc)
		}
		out = append(out, Object{Source: source, APIVersion: head.APIVersion, Kind: head.Kind,
			Namespace: head.Metadata.Namespace, Name: head.Metadata.Name, YAML: doc + "\n"})
	}
	return out, nil
}

func onlyComments(doc string) bool {
	for _, l := range strings.Split(doc, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

// Join writes objects as one multi-document YAML stream, each preceded by its source.
func Join(objs []Object) string {
	var b bytes.Buffer
	for i, o := range objs {
		if i > 0 {
			b.WriteString("---\n")
		}
		fmt.Fprintf(&b, "# Source: %s\n%s", o.Source, o.YAML)
	}
	return b.String()
}

// Lint runs `helm lint --strict`'s checks for the given values and returns the messages of
// severity warning or worse (an empty result means the chart passes).
func Lint(values map[string]any, namespace string) ([]string, error) {
	kv, err := chartutil.ParseKubeVersion(KubeVersion)
	if err != nil {
		return nil, err
	}
	l := lint.AllWithKubeVersionAndSchemaValidation(ChartDir(), values, namespace, kv, false)
	var out []string
	for _, m := range l.Messages {
		if m.Severity >= support.WarningSev {
			out = append(out, m.Error())
		}
	}
	return out, nil
}

// ReadValuesFile reads a values file (e.g. testdata/*.yaml) into the map Render takes.
func ReadValuesFile(path string) (map[string]any, error) {
	v, err := chartutil.ReadValuesFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading values file %s: %w", path, err)
	}
	return v.AsMap(), nil
}

// readFile is os.ReadFile with the path in the error.
func readFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return b, nil
}
