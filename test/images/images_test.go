package images

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/podidentity/podidentity/internal/chartrender"
)

// Every image prints the version, commit and date hack/images.sh stamped, and labels itself
// with them.
func TestVersionIsStamped(t *testing.T) {
	requireImages(t)
	for _, n := range names {
		t.Run(n, func(t *testing.T) {
			out, errOut, err := run(t, nil, built.tag(n), "--version")
			if err != nil {
				t.Fatalf("%s --version: %v\n%s%s", built.tag(n), err, out, errOut)
			}
			want := n + " " + built.Version + " (commit " + built.Commit + ", built " + built.Date + ", "
			if !strings.HasPrefix(out, want) {
				t.Errorf("%s --version printed %q, want it to start with %q", built.tag(n), out, want)
			}
			labels := inspect(t, built.tag(n)).Config.Labels
			if labels["org.opencontainers.image.version"] != built.Version || labels["org.opencontainers.image.revision"] != built.Commit {
				t.Errorf("labels %v do not carry version %s and revision %s", labels, built.Version, built.Commit)
			}
		})
	}
}

// --help of MIC's and NMI's images lists every flag the chart passes them.
func TestHelpListsEveryChartFlag(t *testing.T) {
	requireImages(t)
	for _, n := range []string{"mic", "nmi"} {
		t.Run(n, func(t *testing.T) {
			flags := chartFlags(t, n)
			if len(flags) < 10 {
				t.Fatalf("found only %v in the chart's %s args", flags, n)
			}
			out, errOut, err := run(t, nil, built.tag(n), "--help")
			if err != nil {
				t.Fatalf("%s --help: %v\n%s", n, err, errOut)
			}
			help := out + errOut
			for _, f := range flags {
				if !regexp.MustCompile(`(?m)^\s+(-\w, )?--` + regexp.QuoteMeta(f) + `[\s=\[]`).MatchString(help) {
					t.Errorf("the chart passes --%s, but `%s --help` does not list it", f, n)
				}
			}
		})
	}
	// The test-only images are started by the sandbox and tests with their own flags; they must
	// at least start and explain themselves.
	for _, n := range []string{"azure-emulator", "probe-client"} {
		out, errOut, _ := run(t, nil, built.tag(n), "--help")
		if !strings.Contains(out+errOut, "-version") {
			t.Errorf("%s --help does not print its usage: %s%s", n, out, errOut)
		}
	}
}

// The chart's securityContext (user, read-only root, no privilege escalation, capabilities)
// works with each image: the container starts with exactly those settings, and for NMI the
// kernel shows them from inside (NMI's real start under them is TestNMIRedirect).
func TestChartSecurityContext(t *testing.T) {
	requireImages(t)
	for set, vals := range map[string]map[string]any{"defaults": nil, "adminsecret": valueSets["adminsecret"]} {
		for _, w := range renderWorkloads(t, vals) {
			t.Run(set+"/"+w.image, func(t *testing.T) {
				sec := securityArgs(t, w)
				name := fmt.Sprintf("pi-img-sec-%s-%s-%d", set, w.image, os.Getpid())
				_, _, _ = podman(t, "rm", "-f", name)
				args := append([]string{"run", "--name", name}, runLimits()...)
				args = append(append(args, sec...), built.tag(w.image), "--version")
				out := mustPodman(t, args...)
				defer podman(t, "rm", "-f", name)
				if !strings.HasPrefix(out, w.image+" "+built.Version) {
					t.Errorf("under %v the image printed %q", sec, out)
				}
				var c []struct {
					EffectiveCaps []string
					HostConfig    struct{ ReadonlyRootfs bool }
					Config        struct{ User string }
				}
				if err := json.Unmarshal([]byte(mustPodman(t, "container", "inspect", name)), &c); err != nil || len(c) != 1 {
					t.Fatalf("podman container inspect %s: %v", name, err)
				}
				var wantCaps []string
				for _, a := range w.container.SecurityContext.Capabilities.Add {
					wantCaps = append(wantCaps, "CAP_"+string(a))
				}
				slices.Sort(wantCaps)
				gotCaps := slices.Sorted(slices.Values(c[0].EffectiveCaps))
				if !slices.Equal(gotCaps, wantCaps) || !c[0].HostConfig.ReadonlyRootfs {
					t.Errorf("container ran with capabilities %v (want %v), read-only root %v", gotCaps, wantCaps, c[0].HostConfig.ReadonlyRootfs)
				}
				if w.image == "nmi" {
					// From inside: uid, capabilities, no_new_privs and the read-only root.
					out, errOut, err := run(t, append(sec, "--entrypoint", "/bin/sh"), built.tag("nmi"), "-c",
						`grep -E '^(Uid|CapEff|NoNewPrivs):' /proc/self/status; if (echo x >/written) 2>/dev/null; then echo root-writable; fi`)
					if err != nil {
						t.Fatalf("sh in NMI's image: %v\n%s", err, errOut)
					}
					for _, want := range []string{"Uid:\t0\t0\t0\t0", "CapEff:\t0000000000003000", "NoNewPrivs:\t1"} {
						if !strings.Contains(out, want) {
							t.Errorf("inside NMI's container %q lacks %q (0x3000 = NET_ADMIN|NET_RAW)", out, want)
						}
					}
					if strings.Contains(out, "root-writable") {
						t.Errorf("NMI's root filesystem is writable under %v", sec)
					}
				}
			})
		}
	}
}

// What is in the images: the static ones hold the binary, CA bundle and user database only (no
// shell); NMI's adds iptables, dash and grep, but no package manager.
func TestImageContents(t *testing.T) {
	requireImages(t)
	for _, n := range names {
		t.Run(n, func(t *testing.T) {
			files := exportFiles(t, built.tag(n))
			for _, want := range []string{"/" + n, "/etc/ssl/certs/ca-certificates.crt", "/etc/passwd"} {
				if n == "nmi" && want == "/nmi" {
					want = "/nmi-entrypoint.sh"
				}
				if !slices.Contains(files, want) {
					t.Errorf("%s lacks %s", n, want)
				}
			}
			if n != "nmi" {
				for _, f := range files {
					// podman create adds /dev, /proc, /sys and the /etc and /run files it mounts.
					if f != "/"+n && !strings.HasPrefix(f, "/etc/") && !strings.HasPrefix(f, "/run/") && !slices.Contains([]string{"/etc", "/tmp", "/run", "/home", "/home/nonroot", "/bin", "/sbin", "/lib", "/lib64", "/usr", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib64", "/dev", "/proc", "/sys"}, f) {
						t.Errorf("%s holds %s; a static image holds only its binary, /etc and empty directories", n, f)
					}
				}
				if _, _, err := run(t, []string{"--entrypoint", "/bin/sh"}, built.tag(n), "-c", "true"); err == nil {
					t.Errorf("%s has a shell", n)
				}
				return
			}
			for _, want := range []string{"/usr/sbin/xtables-legacy-multi", "/usr/sbin/xtables-nft-multi", "/usr/bin/dash", "/usr/bin/grep"} {
				if !slices.Contains(files, want) {
					t.Errorf("nmi lacks %s", want)
				}
			}
			for _, f := range files {
				if strings.Contains(f, "/apt") || strings.Contains(f, "/dpkg") || strings.HasSuffix(f, "/bash") || strings.HasPrefix(f, "/usr/share/doc") {
					t.Errorf("nmi holds %s", f)
				}
			}
		})
	}
}

// The local build and build/<name>.Dockerfile (the source of truth for builds with a registry)
// agree on user, entrypoint, labels and the files they put in place.
func TestSameLayoutAsDockerfiles(t *testing.T) {
	requireImages(t)
	for _, n := range names {
		t.Run(n, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join(chartrender.RepoRoot(), "build", n+".Dockerfile"))
			if err != nil {
				t.Fatal(err)
			}
			df := string(raw)
			final := df[strings.LastIndex(df, "\nFROM "):]
			cfg := inspect(t, built.tag(n)).Config
			users := regexp.MustCompile(`(?m)^USER (\S+)`).FindAllStringSubmatch(final, -1)
			if len(users) == 0 || cfg.User != users[len(users)-1][1] {
				t.Errorf("image user %q, Dockerfile USER %v", cfg.User, users)
			}
			entry := regexp.MustCompile(`(?m)^ENTRYPOINT (\[.*\])`).FindStringSubmatch(final)
			var want []string
			if entry == nil || json.Unmarshal([]byte(entry[1]), &want) != nil || !slices.Equal(cfg.Entrypoint, want) {
				t.Errorf("image entrypoint %q, Dockerfile %v", cfg.Entrypoint, entry)
			}
			for _, m := range regexp.MustCompile(`(org\.opencontainers\.image\.\w+)="([^"$]*)"`).FindAllStringSubmatch(final, -1) {
				if cfg.Labels[m[1]] != m[2] {
					t.Errorf("label %s=%q, Dockerfile %q", m[1], cfg.Labels[m[1]], m[2])
				}
			}
			files := exportFiles(t, built.tag(n))
			for _, m := range regexp.MustCompile(`(?m)^COPY .* (/\S+)$`).FindAllStringSubmatch(final, -1) {
				if !slices.Contains(files, m[1]) {
					t.Errorf("the Dockerfile copies %s, the image lacks it", m[1])
				}
			}
			if n == "nmi" {
				tools := regexp.MustCompile(`for t in ([^;]+);`).FindStringSubmatch(final)
				modes := regexp.MustCompile(`for mode in ([^;]+);`).FindStringSubmatch(final)
				if tools == nil || modes == nil {
					t.Fatal("nmi.Dockerfile no longer links /opt/iptables/<mode>/<tool>: update this test and hack/images.sh together")
				}
				for _, m := range strings.Fields(modes[1]) {
					for _, tool := range strings.Fields(tools[1]) {
						if p := "/opt/iptables/" + m + "/" + tool; !slices.Contains(files, p) {
							t.Errorf("nmi lacks %s", p)
						}
					}
				}
			}
		})
	}
}

type imageConfig struct {
	Config struct {
		User       string
		Entrypoint []string
		Labels     map[string]string
	}
}

func inspect(t *testing.T, image string) imageConfig {
	t.Helper()
	var out []imageConfig
	if err := json.Unmarshal([]byte(mustPodman(t, "image", "inspect", image)), &out); err != nil || len(out) != 1 {
		t.Fatalf("podman image inspect %s: %v", image, err)
	}
	return out[0]
}

// exportFiles lists the paths in image's filesystem ("/etc/passwd", ...), from podman export.
func exportFiles(t *testing.T, image string) []string {
	t.Helper()
	id := strings.TrimSpace(mustPodman(t, "create", image))
	defer podman(t, "rm", "-f", id)
	cmd := exec.Command("podman", append(podmanBase(), "export", id)...)
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var files []string
	tr := tar.NewReader(pipe)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading podman export: %v", err)
		}
		if p := "/" + strings.Trim(strings.TrimPrefix(h.Name, "./"), "/"); p != "/" {
			files = append(files, p)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("podman export: %v", err)
	}
	return files
}
