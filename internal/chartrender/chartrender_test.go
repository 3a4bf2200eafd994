package chartrender

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The chart's crds/ and deploy/ are generated; a change to the chart or the CRDs without
// `make manifests` must not reach a commit.
func TestGeneratedFilesAreFresh(t *testing.T) {
	stale, err := Stale()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range stale {
		t.Errorf("%s is stale or missing: run `make manifests` and commit the result", f)
	}
}

// leafPaths lists the dotted paths of values.yaml down to the first non-map value (maps that are
// empty by default, like podAnnotations, count as leaves).
func leafPaths(prefix string, v any, out *[]string) {
	m, ok := v.(map[string]any)
	if !ok || len(m) == 0 || prefix == "mic.resources" || prefix == "nmi.resources" ||
		prefix == "nmi.updateStrategy" || prefix == "mic.nodeSelector" || prefix == "nmi.nodeSelector" {
		*out = append(*out, prefix)
		return
	}
	for k, child := range m {
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		leafPaths(p, child, out)
	}
}

func TestReadmeDocumentsEveryValue(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(ChartDir(), "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var vals map[string]any
	if err := yaml.Unmarshal(b, &vals); err != nil {
		t.Fatal(err)
	}
	var paths []string
	leafPaths("", vals, &paths)
	sort.Strings(paths)
	readme, err := os.ReadFile(filepath.Join(ChartDir(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		if !strings.Contains(string(readme), "`"+p+"`") {
			t.Errorf("charts/podidentity/README.md does not document `%s`", p)
		}
	}
	if len(paths) < 50 {
		t.Errorf("only %d values found; the walk is broken", len(paths))
	}
}
