package version

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Every binary under cmd/ must report what an -ldflags -X build stamps (the form of
// build/*.Dockerfile; build/build_test.go checks they name Package): a binary that keeps its own
// version string says "dev" in every release image, as MIC once did.
func TestEveryBinaryReportsTheStampedVersion(t *testing.T) {
	root := filepath.Join("..", "..")
	entries, err := os.ReadDir(filepath.Join(root, "cmd"))
	if err != nil {
		t.Fatal(err)
	}
	var binaries []string
	for _, e := range entries {
		if e.IsDir() {
			binaries = append(binaries, e.Name())
		}
	}
	if len(binaries) < 5 {
		t.Fatalf("found only %v under cmd/", binaries)
	}
	const v, commit, date = "v9.9.9-test", "abc123", "2030-01-01T00:00:00Z"
	ldflags := "-X " + Package + ".Version=" + v + " -X " + Package + ".Commit=" + commit + " -X " + Package + ".Date=" + date
	out := t.TempDir()
	// One go build for all of them, with the test's own build settings (not the images'
	// CGO_ENABLED=0 -trimpath) so that it reuses the build cache: -X acts at link time only.
	build := exec.Command("go", "build", "-ldflags", ldflags, "-o", out+string(filepath.Separator), "./cmd/...")
	build.Dir = root
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/...: %v\n%s", err, b)
	}
	for _, name := range binaries {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			got, err := exec.CommandContext(ctx, filepath.Join(out, name), "--version").Output()
			if err != nil {
				t.Fatalf("%s --version: %v (stdout %q)", name, err, got)
			}
			want := name + " " + v + " (commit " + commit + ", built " + date + ", "
			if !strings.HasPrefix(string(got), want) {
				t.Errorf("%s --version printed %q, want it to start with %q", name, got, want)
			}
		})
	}
}
