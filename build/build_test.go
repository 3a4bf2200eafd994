// Package build holds the image definitions; this test checks them against the code, since no
// container engine is available to build them here.
package build

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/internal/version"
)

// Binaries that ship as images. A new binary under cmd/ that users run needs a Dockerfile here.
var images = []string{"mic", "nmi", "azure-emulator", "probe-client"}

func TestDockerfiles(t *testing.T) {
	for _, b := range images {
		t.Run(b, func(t *testing.T) {
			raw, err := os.ReadFile(b + ".Dockerfile")
			if err != nil {
				t.Fatal(err)
			}
			df := string(raw)
			if n := strings.Count(df, "\nFROM "); n < 2 {
				t.Errorf("want a multi-stage build (build stage + runtime stage), found %d FROM", n)
			}
			for _, want := range []string{
				"CGO_ENABLED=0", "./cmd/" + b,
				version.Package + ".Version=$VERSION", version.Package + ".Commit=$COMMIT", version.Package + ".Date=$DATE",
				`org.opencontainers.image.title="podidentity-` + b + `"`,
				"org.opencontainers.image.revision=", "org.opencontainers.image.version=",
			} {
				if !strings.Contains(df, want) {
					t.Errorf("%s.Dockerfile lacks %q", b, want)
				}
			}
			user := regexp.MustCompile(`(?m)^USER (\S+)`).FindAllStringSubmatch(df, -1)
			if len(user) == 0 || strings.HasPrefix(user[len(user)-1][1], "0") || strings.HasPrefix(user[len(user)-1][1], "root") {
				t.Errorf("the runtime stage must end with a non-root USER, got %v", user)
			}
			entry := regexp.MustCompile(`(?m)^ENTRYPOINT \["([^"]+)"\]`).FindStringSubmatch(df)
			wantEntry := "/" + b
			if b == "nmi" {
				wantEntry = "/nmi-entrypoint.sh"
			}
			if entry == nil || entry[1] != wantEntry {
				t.Errorf("ENTRYPOINT %v, want %s", entry, wantEntry)
			}
			if _, err := os.Stat(filepath.Join("..", "cmd", b)); err != nil {
				t.Errorf("cmd/%s does not exist: %v", b, err)
			}
		})
	}
}

func TestNMIEntrypoint(t *testing.T) {
	b, err := os.ReadFile("nmi-entrypoint.sh")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	if !strings.HasPrefix(s, "#!/bin/sh\n") || !strings.Contains(s, `exec /nmi "$@"`) {
		t.Errorf("nmi-entrypoint.sh must be a POSIX sh script that execs /nmi with its arguments")
	}
	fi, err := os.Stat("nmi-entrypoint.sh")
	if err != nil || fi.Mode()&0o111 == 0 {
		t.Errorf("nmi-entrypoint.sh must be executable")
	}
}

// The Dockerfile build and the local one (hack/images.sh) install the same pinned versions.
func TestNMIDockerfilePinsFromBasePackages(t *testing.T) {
	df, err := os.ReadFile("nmi.Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	pkgs, err := os.ReadFile("base.packages")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(df), "source=build/base.packages") {
		t.Error("nmi.Dockerfile must take its package versions from build/base.packages")
	}
	for _, name := range []string{"iptables", "ca-certificates", "dash", "grep"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `=\S+$`).Match(pkgs) {
			t.Errorf("base.packages pins no version of %s", name)
		}
	}
}
