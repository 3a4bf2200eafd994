package version

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestUserAgent(t *testing.T) {
	old := Version
	t.Cleanup(func() { Version = old })
	Version = "v1.2.3"
	if got := UserAgent("nmi", ""); got != "podidentity/nmi/v1.2.3" {
		t.Errorf("UserAgent = %q", got)
	}
	if got := UserAgent("mic", "contoso"); got != "podidentity/mic/v1.2.3 contoso" {
		t.Errorf("UserAgent with custom part = %q", got)
	}
}

func TestVersionFlag(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	v := AddFlag(fs)
	if err := fs.Parse([]string{"--version"}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if !PrintIfRequested(*v, "mic", &out) || !strings.HasPrefix(out.String(), "mic dev (commit ") {
		t.Errorf("--version printed %q", out.String())
	}
	out.Reset()
	if PrintIfRequested(false, "mic", &out) || out.Len() != 0 {
		t.Errorf("printed without --version: %q", out.String())
	}
}

// The ldflags the Dockerfiles and the Makefile use must reach these variables: a renamed
// variable or package would otherwise silently leave "dev" in every release.
func TestLdflagsReachVariables(t *testing.T) {
	main := `package main

import (
	"fmt"

	"github.com/podidentity/podidentity/internal/version"
)

func main() { i := version.Get(); fmt.Print(i.Version, " ", i.Commit, " ", i.Date) }
`
	// Inside the module, so the internal package may be imported.
	pkgDir := filepath.Join("testdata", "ldflags")
	if err := os.MkdirAll(pkgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll("testdata") })
	if err := os.WriteFile(filepath.Join(pkgDir, "main.go"), []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "run", "-ldflags", LdFlags("v9.9.9", "abc123", "2030-01-01T00:00:00Z"), "./"+pkgDir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go run: %v\n%s", err, out)
	}
	if got := string(out); got != "v9.9.9 abc123 2030-01-01T00:00:00Z" {
		t.Errorf("got %q", got)
	}
}
