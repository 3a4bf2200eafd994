// Package flagsdoc reads the command-line flags of MIC and NMI from their source (the AddFlags
// methods that register them on a pflag.FlagSet) and renders the configuration reference in
// docs/configuration.md. Reading the source rather than running the binaries keeps the check fast
// and needs no build, while still following the code: a flag renamed there makes the docs test
// fail until `make docs-flags` is run.
package flagsdoc

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/printer"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Flag is one registered flag.
type Flag struct {
	Name, Type, Default, Usage string
}

// Component is a binary and the directories whose AddFlags methods register its flags.
type Component struct {
	Name string
	Dirs []string // relative to the repository root
}

// Components are the binaries documented in docs/configuration.md.
var Components = []Component{
	{Name: "mic", Dirs: []string{"cmd/mic", "internal/mic"}},
	{Name: "nmi", Dirs: []string{"cmd/nmi", "internal/nmi"}},
}

// Set is the flags of one component.
type Set struct {
	Component string
	Flags     []Flag
	// Klog is true when the component also registers klog's flags (--v, --vmodule, ...).
	Klog bool
}

// Has reports whether the set has a flag of that name.
func (s Set) Has(name string) bool {
	for _, f := range s.Flags {
		if f.Name == name {
			return true
		}
	}
	return false
}

// KlogFlags are the flags klog.InitFlags registers (klog/v2).
var KlogFlags = []string{"v", "vmodule", "log_dir", "log_file", "log_file_max_size", "logtostderr",
	"alsologtostderr", "one_output", "skip_headers", "skip_log_headers", "stderrthreshold", "add_dir_header"}

// Read extracts the flags of c from the Go sources under root. Directories that do not exist yet
// contribute nothing.
func Read(root string, c Component) (Set, error) {
	s := Set{Component: c.Name}
	fset := token.NewFileSet()
	for _, dir := range c.Dirs {
		entries, err := os.ReadDir(filepath.Join(root, dir))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return s, err
		}
		for _, e := range entries {
			n := e.Name()
			if e.IsDir() || !strings.HasSuffix(n, ".go") || strings.HasSuffix(n, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(fset, filepath.Join(root, dir, n), nil, parser.SkipObjectResolution)
			if err != nil {
				return s, err
			}
			ast.Inspect(f, func(node ast.Node) bool {
				if sel, ok := node.(*ast.SelectorExpr); ok {
					if id, ok := sel.X.(*ast.Ident); ok && id.Name == "klog" && sel.Sel.Name == "InitFlags" {
						s.Klog = true
					}
				}
				fd, ok := node.(*ast.FuncDecl)
				if !ok || fd.Name.Name != "AddFlags" || fd.Body == nil {
					return true
				}
				ast.Inspect(fd.Body, func(n ast.Node) bool {
					if call, ok := n.(*ast.CallExpr); ok {
						if fl, ok := flagFromCall(fset, call); ok {
							s.Flags = append(s.Flags, fl)
						}
					}
					return true
				})
				return false
			})
		}
	}
	sort.Slice(s.Flags, func(i, j int) bool { return strings.ToLower(s.Flags[i].Name) < strings.ToLower(s.Flags[j].Name) })
	return s, nil
}

// flagFromCall recognises fs.<Type>Var(&x, "name", def, "usage"), fs.<Type>("name", def, "usage")
// and their P (shorthand) forms.
func flagFromCall(fset *token.FileSet, call *ast.CallExpr) (Flag, bool) {
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok {
		return Flag{}, false
	}
	method := sel.Sel.Name
	args := call.Args
	if strings.HasSuffix(method, "VarP") || (strings.HasSuffix(method, "P") && method != "VarP" && method != "IP") {
		// Drop the shorthand argument.
		if len(args) < 4 {
			return Flag{}, false
		}
		idx := 1
		if strings.HasSuffix(method, "VarP") {
			idx = 2
		}
		args = append(append([]ast.Expr{}, args[:idx]...), args[idx+1:]...)
		method = strings.TrimSuffix(method, "P")
	}
	typ := strings.TrimSuffix(method, "Var")
	if method == "Var" {
		// fs.Var(value, "name", "usage"): a custom type without a literal default.
		if len(args) != 3 {
			return Flag{}, false
		}
		name, ok1 := stringLit(args[1])
		usage, ok2 := stringLit(args[2])
		if !ok1 || !ok2 {
			return Flag{}, false
		}
		return Flag{Name: name, Type: "value", Usage: usage}, true
	}
	if !knownTypes[typ] {
		return Flag{}, false
	}
	if strings.HasSuffix(method, "Var") {
		if len(args) != 4 {
			return Flag{}, false
		}
		args = args[1:]
	} else if len(args) != 3 {
		return Flag{}, false
	}
	name, ok1 := stringLit(args[0])
	usage, ok2 := stringLit(args[2])
	if !ok1 || !ok2 {
		return Flag{}, false
	}
	return Flag{Name: name, Type: strings.ToLower(typ), Default: defaultText(fset, typ, args[1]), Usage: usage}, true
}

var knownTypes = map[string]bool{"String": true, "Bool": true, "Int": true, "Int32": true, "Int64": true,
	"Uint": true, "Uint32": true, "Uint64": true, "Float32": true, "Float64": true, "Duration": true,
	"StringSlice": true, "StringArray": true, "IntSlice": true, "StringToString": true, "IP": true}

// stringLit evaluates a string literal or a + concatenation of them.
func stringLit(e ast.Expr) (string, bool) {
	switch v := e.(type) {
	case *ast.BasicLit:
		if v.Kind != token.STRING {
			return "", false
		}
		s, err := strconv.Unquote(v.Value)
		return s, err == nil
	case *ast.BinaryExpr:
		if v.Op != token.ADD {
			return "", false
		}
		a, ok1 := stringLit(v.X)
		b, ok2 := stringLit(v.Y)
		return a + b, ok1 && ok2
	case *ast.ParenExpr:
		return stringLit(v.X)
	}
	return "", false
}

func defaultText(fset *token.FileSet, typ string, e ast.Expr) string {
	if typ == "Duration" {
		if d, ok := evalDuration(e); ok {
			return d.String()
		}
	}
	if s, ok := stringLit(e); ok {
		return strconv.Quote(s)
	}
	var b bytes.Buffer
	_ = printer.Fprint(&b, fset, e)
	return b.String()
}

var timeUnits = map[string]time.Duration{"Nanosecond": time.Nanosecond, "Microsecond": time.Microsecond,
	"Millisecond": time.Millisecond, "Second": time.Second, "Minute": time.Minute, "Hour": time.Hour}

func evalDuration(e ast.Expr) (time.Duration, bool) {
	switch v := e.(type) {
	case *ast.BasicLit:
		if v.Kind == token.INT {
			n, err := strconv.ParseInt(v.Value, 0, 64)
			return time.Duration(n), err == nil
		}
	case *ast.SelectorExpr:
		if id, ok := v.X.(*ast.Ident); ok && id.Name == "time" {
			d, ok := timeUnits[v.Sel.Name]
			return d, ok
		}
	case *ast.BinaryExpr:
		a, ok1 := evalDuration(v.X)
		b, ok2 := evalDuration(v.Y)
		if ok1 && ok2 && v.Op == token.MUL {
			return a * b, true
		}
	case *ast.ParenExpr:
		return evalDuration(v.X)
	}
	return 0, false
}

// Markdown renders the reference table of s.
func Markdown(s Set) string {
	var b strings.Builder
	if len(s.Flags) == 0 {
		fmt.Fprintf(&b, "_The %s binary does not register its flags through an `AddFlags` method yet; until it does, "+
			"the flags are those of aad-pod-identity v1.8 listed at the end of this page._\n", strings.ToUpper(s.Component))
		return b.String()
	}
	b.WriteString("| flag | type | default | meaning |\n|---|---|---|---|\n")
	for _, f := range s.Flags {
		def := f.Default
		if def == "" || def == `""` {
			def = "–"
		}
		fmt.Fprintf(&b, "| `--%s` | %s | `%s` | %s |\n", f.Name, f.Type, strings.ReplaceAll(def, "|", `\|`), strings.ReplaceAll(f.Usage, "|", `\|`))
	}
	if s.Klog {
		b.WriteString("\nAlso the klog flags: " + klogList() + ".\n")
	}
	return b.String()
}

func klogList() string {
	out := make([]string, len(KlogFlags))
	for i, f := range KlogFlags {
		out[i] = "`--" + f + "`"
	}
	return strings.Join(out, ", ")
}

// Markers delimit a generated section in a Markdown file.
func Markers(component string) (begin, end string) {
	return "<!-- BEGIN GENERATED FLAGS " + component + " (make docs-flags) -->",
		"<!-- END GENERATED FLAGS " + component + " -->"
}

// Update returns doc with every component's generated section replaced by fresh output.
func Update(doc string, sets []Set) (string, error) {
	for _, s := range sets {
		begin, end := Markers(s.Component)
		i, j := strings.Index(doc, begin), strings.Index(doc, end)
		if i < 0 || j < i {
			return "", fmt.Errorf("markers %q ... %q not found: restore them in docs/configuration.md", begin, end)
		}
		doc = doc[:i+len(begin)] + "\n\n" + Markdown(s) + "\n" + doc[j:]
	}
	return doc, nil
}

// UpstreamNMIFlags are aad-pod-identity v1.8's NMI flags, the contract podidentity's NMI
// implements. Checks use them only while the NMI binary registers no flags of its own yet.
var UpstreamNMIFlags = []string{"version", "nmi-listen-address", "nmi-port", "metadata-ip", "metadata-port", "node",
	"ipt-update-interval-sec", "forceNamespaced", "MICNamespace", "http-probe-port", "retry-attempts-for-created",
	"retry-attempts-for-assigned", "find-identity-retry-interval", "enableProfile", "enableScaleFeatures",
	"block-instance-metadata", "metadata-header-required", "prometheus-port", "operation-mode",
	"allow-network-plugin-kubenet", "kubelet-config", "set-retry-after-header", "enable-conntrack-deletion",
	"log-format", "custom-user-agent"}

// Known returns the flag names of s, with klog's when registered. For a component that has no
// flags in the code yet (NMI while it is being written) it returns the upstream contract and
// fromCode=false, so callers can say which one they checked against.
func (s Set) Known() (names map[string]bool, fromCode bool) {
	names = map[string]bool{}
	if len(s.Flags) == 0 && s.Component == "nmi" {
		// Upstream NMI also took klog's flags.
		for _, n := range append(append([]string{}, UpstreamNMIFlags...), KlogFlags...) {
			names[n] = true
		}
		return names, false
	}
	for _, f := range s.Flags {
		names[f.Name] = true
	}
	if s.Klog {
		for _, n := range KlogFlags {
			names[n] = true
		}
	}
	return names, true
}
