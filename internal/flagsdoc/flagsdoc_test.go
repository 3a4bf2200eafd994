package flagsdoc

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadExtractsEveryForm(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "cmd", "x")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := `package main

import (
	"flag"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
)

type o struct{ a string; b bool; d time.Duration; n int }

func (x *o) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&x.a, "alpha", "", "An " + "alpha.")
	fs.BoolVarP(&x.b, "beta", "b", true, "Beta.")
	fs.DurationVar(&x.d, "delta", 3*time.Minute, "Delta.")
	fs.Int("count", 5, "Count | pipes escaped.")
	fs.IP("ip", nil, "An IP.")
}

func other(fs *pflag.FlagSet) { fs.String("not-in-addflags", "", "ignored") }

func init() { klog.InitFlags(flag.CommandLine) }
`
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Read(root, Component{Name: "x", Dirs: []string{"cmd/x", "cmd/missing"}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Flag{}
	for _, f := range s.Flags {
		got[f.Name] = f
	}
	want := map[string]Flag{
		"alpha": {"alpha", "string", `""`, "An alpha."},
		"beta":  {"beta", "bool", "true", "Beta."},
		"delta": {"delta", "duration", "3m0s", "Delta."},
		"count": {"count", "int", "5", "Count | pipes escaped."},
		"ip":    {"ip", "ip", "nil", "An IP."},
	}
	if len(got) != len(want) {
		t.Errorf("got flags %v, want %v", got, want)
	}
	for n, w := range want {
		if got[n] != w {
			t.Errorf("flag %s = %+v, want %+v", n, got[n], w)
		}
	}
	if !s.Klog {
		t.Errorf("klog.InitFlags not detected")
	}
	md := Markdown(s)
	if !strings.Contains(md, "`--count` | int | `5` | Count \\| pipes escaped.") || !strings.Contains(md, "`--v`") {
		t.Errorf("markdown:\n%s", md)
	}
	names, fromCode := s.Known()
	if !fromCode || !names["v"] || !names["alpha"] || names["not-in-addflags"] {
		t.Errorf("Known() = %v, %v", names, fromCode)
	}
}

func TestUpdateNeedsMarkers(t *testing.T) {
	if _, err := Update("no markers", []Set{{Component: "mic"}}); err == nil {
		t.Errorf("Update accepted a document without markers")
	}
	begin, end := Markers("mic")
	out, err := Update("x\n"+begin+"\nold\n"+end+"\ny", []Set{{Component: "mic", Flags: []Flag{{Name: "a", Type: "bool", Default: "false", Usage: "A."}}}})
	if err != nil || strings.Contains(out, "old") || !strings.Contains(out, "`--a`") {
		t.Errorf("Update = %q, %v", out, err)
	}
}
