// Package testenv runs a real kube-apiserver + etcd (envtest) with the podidentity CRDs installed,
// for tests in any package. One control plane is shared by all tests of a package (see Main); each
// test works in a fresh namespace (see Env.Namespace).
//
// The binaries come from hack/control-plane.sh, which builds them from the Go module proxy into a
// cache; `make test` runs it first. Without them, tests fail with a message saying so: never skip.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/podidentity/podidentity/internal/kubescheme"
)

// ErrNoBinaries means the control-plane binaries were not found.
var ErrNoBinaries = errors.New("control-plane binaries (etcd, kube-apiserver, kubectl) not found: " +
	"run `make test` (it builds them), or run `hack/control-plane.sh` and export KUBEBUILDER_ASSETS=<the directory it prints>")

// Env is a running control plane with the podidentity CRDs installed.
type Env struct {
	// Config reaches the apiserver as cluster admin.
	Config *rest.Config
	// Client is a controller-runtime client that knows core and podidentity kinds.
	Client client.Client
	// Scheme knows core and podidentity kinds.
	Scheme *k8sruntime.Scheme
	// AssetsDir holds the control-plane binaries (kubectl among them).
	AssetsDir string

	env *envtest.Environment
}

// RepoRoot is the directory of the project's go.mod.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// AssetsDir finds the control-plane binaries: $KUBEBUILDER_ASSETS, else the directory that
// hack/control-plane.sh would print when its build is complete.
func AssetsDir() (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		if err := hasBinaries(dir); err != nil {
			return "", fmt.Errorf("KUBEBUILDER_ASSETS=%s: %w", dir, err)
		}
		return dir, nil
	}
	// The script only prints a directory without building when the build is complete; building here
	// would hide a five-minute step inside a test, so ask it with a flag-free dry look instead.
	script := filepath.Join(RepoRoot(), "hack", "control-plane.sh")
	out, err := exec.Command(script, "--print-if-built").Output()
	if err != nil || len(out) == 0 {
		return "", ErrNoBinaries
	}
	dir := string(out[:len(out)-1])
	if err := hasBinaries(dir); err != nil {
		return "", err
	}
	return dir, nil
}

func hasBinaries(dir string) error {
	for _, b := range []string{"etcd", "kube-apiserver", "kubectl"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return fmt.Errorf("%s missing in %s: %w", b, dir, ErrNoBinaries)
		}
	}
	return nil
}

// NewScheme returns a scheme with the core Kubernetes kinds and the podidentity kinds.
func NewScheme() *k8sruntime.Scheme { return kubescheme.New() }

// Start starts etcd and kube-apiserver and installs the CRDs from config/crd.
func Start() (*Env, error) {
	assets, err := AssetsDir()
	if err != nil {
		return nil, err
	}
	e := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		CRDDirectoryPaths:        []string{filepath.Join(RepoRoot(), "config", "crd")},
		ErrorIfCRDPathMissing:    true,
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	if err := publishJWKSOnLoopback(e); err != nil {
		return nil, err
	}
	cfg, err := e.Start()
	if err != nil {
		// envtest leaves etcd and kube-apiserver running when a later step (CRD install) fails.
		_ = e.Stop()
		return nil, fmt.Errorf("starting kube-apiserver and etcd from %s: %w", assets, err)
	}
	// Tests create many objects quickly; the client-go default of 5 QPS would dominate run time.
	cfg.QPS, cfg.Burst = 1000, 2000
	scheme := NewScheme()
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		_ = e.Stop()
		return nil, fmt.Errorf("creating client: %w", err)
	}
	return &Env{Config: cfg, Client: c, Scheme: scheme, AssetsDir: assets, env: e}, nil
}

// Stop stops the control plane.
func (e *Env) Stop() error { return e.env.Stop() }

// Main is a TestMain body: it starts one control plane for the package, stores it in *env, runs
// the tests and stops it. Use as `func TestMain(m *testing.M) { os.Exit(testenv.Main(m, &env)) }`.
func Main(m *testing.M, env **Env) int {
	e, err := Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: cannot start the test control plane: %v\n", err)
		return 1
	}
	*env = e
	code := m.Run()
	if err := e.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stopping the test control plane: %v\n", err)
	}
	return code
}

// Context returns a context cancelled when the test ends.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Namespace creates a fresh namespace for one test. No kube-controller-manager runs, so a deleted
// namespace would stay Terminating; namespaces are left behind and die with the control plane.
func (e *Env) Namespace(t testing.TB) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "t-"}}
	if err := e.Client.Create(Context(t), ns); err != nil {
		t.Fatalf("creating test namespace: %v", err)
	}
	return ns.Name
}
