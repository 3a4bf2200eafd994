// Package docs holds the user documentation; these tests keep it honest: YAML examples parse and
// match the applied examples, flags and metrics named exist in the code, links resolve, and the
// generated flag reference is fresh.
package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/podidentity/podidentity/internal/chartrender"
	"github.com/podidentity/podidentity/internal/flagsdoc"
)

// userPages are the pages this test owns. Component pages (mic.md, nmi.md, sandbox.md,
// emulator.md) are checked for YAML and links only, since their flags are their authors'.
var userPages = []string{"README.md", "getting-started.md", "concepts.md", "best-practices.md",
	"configuration.md", "metrics.md", "troubleshooting.md", "security.md", "migrating-from-aad-pod-identity.md",
	"../charts/podidentity/README.md", "../build/README.md"}

func allPages(t *testing.T) []string {
	pages, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range userPages {
		if strings.HasPrefix(p, "../") {
			pages = append(pages, p)
		}
	}
	return pages
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type block struct {
	lang, body, example string
	line                int
}

// blocks returns the fenced code blocks of a Markdown page and the prose between them.
func blocks(doc string) (bs []block, prose string) {
	lines := strings.Split(doc, "\n")
	var cur *block
	var body, text []string
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			if cur == nil {
				cur = &block{lang: strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "```")), line: i + 1}
				for j := i - 1; j >= 0 && j >= i-2; j-- {
					if m := regexp.MustCompile(`<!-- example: (\S+) -->`).FindStringSubmatch(lines[j]); m != nil {
						cur.example = m[1]
					}
				}
				body = nil
				continue
			}
			cur.body = strings.Join(body, "\n") + "\n"
			bs = append(bs, *cur)
			cur = nil
			continue
		}
		if cur != nil {
			body = append(body, l)
		} else {
			text = append(text, l)
		}
	}
	return bs, strings.Join(text, "\n")
}

func TestYAMLBlocksParse(t *testing.T) {
	n := 0
	for _, p := range allPages(t) {
		bs, _ := blocks(read(t, p))
		for _, b := range bs {
			if b.lang != "yaml" {
				continue
			}
			n++
			// Strip the common indentation of snippets such as an initContainers list.
			for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(b.body, -1) {
				if strings.TrimSpace(doc) == "" {
					continue
				}
				var v any
				if err := yaml.UnmarshalStrict([]byte(doc), &v); err != nil {
					t.Errorf("%s:%d: YAML document %d does not parse: %v", p, b.line, i+1, err)
				}
			}
			if b.example != "" {
				want := read(t, filepath.Join("..", b.example))
				if b.body != want {
					t.Errorf("%s:%d: the block differs from %s; copy the file into the page", p, b.line, b.example)
				}
			}
		}
	}
	if n < 6 {
		t.Errorf("found only %d YAML blocks; the parser is broken", n)
	}
}

// Every flag named in running text (an inline code span starting with --) must exist.
func TestFlagsMentionedExist(t *testing.T) {
	known := map[string]bool{}
	for _, c := range flagsdoc.Components {
		s, err := flagsdoc.Read(chartrender.RepoRoot(), c)
		if err != nil {
			t.Fatal(err)
		}
		names, fromCode := s.Known()
		if !fromCode {
			t.Logf("%s registers no flags in the code yet: checked against aad-pod-identity's %s flags", c.Name, c.Name)
		}
		for n := range names {
			known[n] = true
		}
	}
	span := regexp.MustCompile("`(--?[A-Za-z][A-Za-z0-9_-]*)(?:[= ][^`]*)?`")
	checked := 0
	for _, p := range userPages {
		_, prose := blocks(read(t, p))
		for _, m := range span.FindAllStringSubmatch(prose, -1) {
			name := strings.TrimLeft(m[1], "-")
			if !strings.HasPrefix(m[1], "--") {
				continue
			}
			checked++
			if !known[name] {
				t.Errorf("%s mentions --%s, which neither MIC nor NMI has", p, name)
			}
		}
	}
	if checked < 30 {
		t.Errorf("only %d flag mentions found; the scanner is broken", checked)
	}
}

func TestGeneratedFlagReferenceIsFresh(t *testing.T) {
	var sets []flagsdoc.Set
	for _, c := range flagsdoc.Components {
		s, err := flagsdoc.Read(chartrender.RepoRoot(), c)
		if err != nil {
			t.Fatal(err)
		}
		sets = append(sets, s)
	}
	doc := read(t, "configuration.md")
	fresh, err := flagsdoc.Update(doc, sets)
	if err != nil {
		t.Fatal(err)
	}
	if fresh != doc {
		t.Errorf("docs/configuration.md's flag tables are stale: run `make docs-flags`")
	}
	if mic := sets[0]; len(mic.Flags) < 20 || !mic.Has("cloudconfig") {
		t.Errorf("read only %d MIC flags (cloudconfig: %v); the extractor is broken", len(mic.Flags), mic.Has("cloudconfig"))
	}
}

// metricNames finds the metric names registered in a component's source.
func metricNames(t *testing.T, file string) []string {
	src := read(t, filepath.Join(chartrender.RepoRoot(), file))
	var out []string
	for _, m := range regexp.MustCompile(`Name:\s*"(aadpodidentity_[a-z0-9_]+)"`).FindAllStringSubmatch(src, -1) {
		out = append(out, m[1])
	}
	// Names registered with Namespace: ns (= "aadpodidentity").
	for _, m := range regexp.MustCompile(`Namespace:\s*ns,\s*Name:\s*"([a-z0-9_]+)"`).FindAllStringSubmatch(src, -1) {
		out = append(out, "aadpodidentity_"+m[1])
	}
	return out
}

func TestMetricsDocumented(t *testing.T) {
	doc := read(t, "metrics.md")
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("`(aadpodidentity_[a-z0-9_]+)`").FindAllStringSubmatch(doc, -1) {
		documented[m[1]] = true
	}
	inCode := map[string]bool{}
	for _, f := range []string{"internal/mic/metrics.go", "internal/nmi/metrics.go"} {
		names := metricNames(t, f)
		if len(names) < 5 {
			t.Errorf("found only %d metrics in %s; the scanner is broken", len(names), f)
		}
		for _, n := range names {
			inCode[n] = true
			if !documented[n] {
				t.Errorf("metric %s (%s) is not in docs/metrics.md", n, f)
			}
		}
	}
	var extra []string
	for n := range documented {
		if !inCode[n] {
			extra = append(extra, n)
		}
	}
	sort.Strings(extra)
	for _, n := range extra {
		t.Errorf("docs/metrics.md lists %s, which the code does not register", n)
	}
}

// pendingPages are component pages other engineers are writing at the same time as these docs;
// a link to them is accepted while they are missing. Remove entries once the pages exist.
var pendingPages = map[string]bool{"nmi.md": true, "sandbox.md": true}

func TestRelativeLinksResolve(t *testing.T) {
	link := regexp.MustCompile(`\]\(([^)#\s]+)(#[^)]*)?\)`)
	for _, p := range allPages(t) {
		for _, m := range link.FindAllStringSubmatch(read(t, p), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(p), target)); err != nil {
				if filepath.Dir(p) == "." && pendingPages[target] {
					t.Logf("%s links to %s, which is not written yet", p, target)
					continue
				}
				t.Errorf("%s links to %s, which does not exist", p, target)
			}
		}
	}
}
