// Package images proves that the release images built by hack/images.sh (`make images`) start
// and work under podman: stamped versions, the chart's flags and securityContext, and NMI's
// iptables rules in a network namespace the test creates. `make images-test` runs it; see
// docs/images.md.
package images

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/podidentity/podidentity/internal/chartrender"
)

// names are the images hack/images.sh builds, each from build/<name>.Dockerfile and cmd/<name>.
var names = []string{"mic", "nmi", "azure-emulator", "probe-client"}

// build is what hack/images.sh stamped (its build.env), read once by TestMain.
type build struct {
	Version, Commit, Date, Repo string
}

func (b build) tag(name string) string { return b.Repo + "/" + name + ":" + b.Version }

var (
	built    build
	buildErr error
	// noPodman is set when podman is not installed: the only reason these tests skip.
	noPodman bool
)

func TestMain(m *testing.M) {
	// envtest logs through controller-runtime; without a logger it prints a stack trace instead.
	ctrllog.SetLogger(logr.Discard())
	if _, err := exec.LookPath("podman"); err != nil {
		noPodman = true
	} else {
		built, buildErr = buildImages()
	}
	os.Exit(m.Run())
}

// requireImages skips without podman and fails when the build failed.
func requireImages(t *testing.T) {
	t.Helper()
	if noPodman {
		const why = "podman is not installed, so the images cannot be run: apt-get install -y podman buildah runc, then `make images-test` (docs/images.md)"
		// make images-test (and CI) set this, so that a missing podman fails instead of passing
		// as a skip nobody sees.
		if os.Getenv("PODIDENTITY_IMAGES_TEST") == "require" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	if buildErr != nil {
		t.Fatalf("building the images with hack/images.sh: %v", buildErr)
	}
}

// buildImages runs hack/images.sh (it rebuilds only what changed), so that the tests never run
// images older than the code.
func buildImages() (build, error) {
	root := chartrender.RepoRoot()
	cmd := exec.Command(filepath.Join(root, "hack", "images.sh"), "build")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "IMAGE_ENGINE=buildah")
	if out, err := cmd.CombinedOutput(); err != nil {
		return build{}, fmt.Errorf("%w\n%s", err, out)
	}
	outDir := os.Getenv("IMAGES_OUT")
	if outDir == "" {
		outDir = filepath.Join(root, "_output", "images")
	}
	f, err := os.Open(filepath.Join(outDir, "build.env"))
	if err != nil {
		return build{}, err
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			vars[k] = v
		}
	}
	b := build{Version: vars["VERSION"], Commit: vars["COMMIT"], Date: vars["DATE"], Repo: vars["IMAGE_REPO"]}
	if b.Version == "" || b.Commit == "" || b.Date == "" || b.Repo == "" {
		return b, fmt.Errorf("%s lacks VERSION, COMMIT, DATE or IMAGE_REPO: %v", f.Name(), vars)
	}
	return b, sc.Err()
}

// podmanBase are the global options of every podman call. On a host with hybrid cgroups (v1
// controllers plus a v2 mount that has controllers) crun refuses to start containers and runc
// works, so runc is used there; PODIDENTITY_OCI_RUNTIME overrides.
func podmanBase() []string {
	if rt := os.Getenv("PODIDENTITY_OCI_RUNTIME"); rt != "" {
		return []string{"--runtime", rt}
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/unified/cgroup.controllers"); err == nil && len(bytes.TrimSpace(b)) > 0 {
		return []string{"--runtime", "runc"}
	}
	return nil
}

// runLimits keep the container's rlimits within what podman may set: its defaults are higher
// than a host without CAP_SYS_RESOURCE for the container allows, and podman itself (and conmon)
// run with RLIMIT_NPROC at most 32768. Kubernetes runtimes pass their own limits on too.
func runLimits() []string {
	var args []string
	for _, l := range []struct {
		name string
		res  int
		max  uint64
	}{{"nofile", unix.RLIMIT_NOFILE, 1 << 20}, {"nproc", unix.RLIMIT_NPROC, 32768}} {
		var r unix.Rlimit
		if err := unix.Getrlimit(l.res, &r); err == nil {
			v := strconv.FormatUint(min(r.Cur, l.max), 10)
			args = append(args, "--ulimit", l.name+"="+v+":"+v)
		}
	}
	return args
}

// podman runs podman with args and returns stdout, stderr and the error (an *exec.ExitError
// for a non-zero exit).
func podman(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var o, e bytes.Buffer
	cmd := exec.CommandContext(ctx, "podman", append(podmanBase(), args...)...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// mustPodman fails the test when podman fails.
func mustPodman(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := podman(t, args...)
	if err != nil {
		t.Fatalf("podman %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// run is `podman run --rm` with the host's limits; extra are options before the image.
func run(t *testing.T, extra []string, image string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	all := append([]string{"run", "--rm"}, runLimits()...)
	all = append(all, extra...)
	all = append(all, image)
	return podman(t, append(all, args...)...)
}
