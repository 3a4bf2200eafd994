package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/podidentity/podidentity/internal/nmi"
	"github.com/podidentity/podidentity/internal/testenv"
)

// Every upstream NMI flag name parses.
func TestUpstreamFlags(t *testing.T) {
	var o options
	fs := pflag.NewFlagSet("nmi", pflag.ContinueOnError)
	o.AddFlags(fs, noEnv)
	args := []string{"--version=false", "--nmi-listen-address=0.0.0.0", "--nmi-port=2579", "--metadata-ip=169.254.169.254",
		"--metadata-port=80", "--node=n1", "--ipt-update-interval-sec=60", "--forceNamespaced=true", "--MICNamespace=kube-system",
		"--http-probe-port=8085", "--retry-attempts-for-created=16", "--retry-attempts-for-assigned=4",
		"--find-identity-retry-interval=5", "--enableProfile=false", "--enableScaleFeatures=true",
		"--block-instance-metadata=true", "--metadata-header-required=true", "--prometheus-port=9090",
		"--operation-mode=Managed", "--allow-network-plugin-kubenet=false", "--kubelet-config=/etc/default/kubelet",
		"--set-retry-after-header=true", "--enable-conntrack-deletion=true", "--log-format=json"}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	c := o.config(noEnv)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.OperationMode != "managed" || !c.ForceNamespaced || c.FindIdentityRetryInterval.Seconds() != 5 || !c.BlockInstanceMetadata {
		t.Errorf("config not taken from flags: %+v", c)
	}
}

func TestManagedNeedsNamespaced(t *testing.T) {
	var o options
	fs := pflag.NewFlagSet("nmi", pflag.ContinueOnError)
	o.AddFlags(fs, noEnv)
	if err := fs.Parse([]string{"--node=n", "--operation-mode=managed"}); err != nil {
		t.Fatal(err)
	}
	c := o.config(noEnv)
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--forceNamespaced") {
		t.Fatalf("want an error naming --forceNamespaced, got %v", err)
	}
	c = o.config(envOf(map[string]string{"FORCENAMESPACED": "true"}))
	if err := c.Validate(); err != nil {
		t.Fatalf("FORCENAMESPACED=true should satisfy managed mode: %v", err)
	}
}

// The benchmark/test switches: the redirect is on unless turned off, and the auxiliary servers'
// address must be an IP when given.
func TestRedirectAndAuxListenFlags(t *testing.T) {
	var o options
	fs := pflag.NewFlagSet("nmi", pflag.ContinueOnError)
	o.AddFlags(fs, noEnv)
	if err := fs.Parse([]string{"--node=n"}); err != nil {
		t.Fatal(err)
	}
	if !o.redirect || o.auxListenAddress != "" {
		t.Fatalf("defaults: redirect=%v aux=%q, want true and all interfaces", o.redirect, o.auxListenAddress)
	}
	if err := fs.Parse([]string{"--redirect=false", "--aux-listen-address=localhost"}); err != nil {
		t.Fatal(err)
	}
	if err := o.validate(); err == nil || !strings.Contains(err.Error(), "--aux-listen-address") {
		t.Fatalf("want an error naming --aux-listen-address, got %v", err)
	}
	if err := fs.Parse([]string{"--aux-listen-address=127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if err := o.validate(); err != nil || o.redirect {
		t.Fatalf("redirect=%v err=%v, want false and no error", o.redirect, err)
	}
}

// /healthz is liveness: always 200 (upstream's body). /readyz is 503 until the watches synced and
// the redirect is installed, and 503 again once NMI is stopping.
func TestProbes(t *testing.T) {
	var r readiness
	h := r.handler()
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, strings.TrimSpace(rec.Body.String())
	}
	check := func(state string, wantHealth string, wantReady int) {
		t.Helper()
		if code, body := get("/healthz"); code != 200 || body != wantHealth {
			t.Errorf("%s: /healthz %d %q, want 200 %q", state, code, body, wantHealth)
		}
		if code, body := get("/readyz"); code != wantReady {
			t.Errorf("%s: /readyz %d %q, want %d", state, code, body, wantReady)
		}
	}
	check("starting", "Not Active", 503)
	r.synced.Store(true)
	check("watches synced, no redirect yet", "Not Active", 503)
	r.redirected.Store(true)
	check("serving", "Active", 200)
	r.stopping.Store(true)
	check("stopping", "Active", 503)
	if _, body := get("/readyz"); !strings.Contains(body, "shutting down") {
		t.Errorf("stopping: /readyz body %q does not say why", body)
	}
}

// The whole NMI against a real apiserver (--redirect=false, so nothing on this machine changes):
// /readyz becomes 200 once the watches synced, and on SIGTERM (ctx ends) answers 503 while NMI
// keeps serving for --shutdown-grace, instead of vanishing with the process.
func TestReadyzDuringShutdown(t *testing.T) {
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	getenv := envOf(map[string]string{"KUBECONFIG": writeKubeconfig(t, env.Config), "NODE_NAME": "n1"})
	dir := t.TempDir()
	probe, metrics, port := freePort(t), freePort(t), freePort(t)
	args := []string{"--redirect=false", "--aux-listen-address=127.0.0.1",
		"--http-probe-port=" + strconv.Itoa(probe), "--prometheus-port=" + strconv.Itoa(metrics), "--nmi-port=" + strconv.Itoa(port),
		"--kubelet-config=" + filepath.Join(dir, "kubelet"), "--cni-conf-dir=" + dir, "--shutdown-grace=3s"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, getenv, io.Discard) }()
	readyz := func() (int, error) {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(probe) + "/readyz")
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	waitCode := func(want int, within time.Duration) {
		t.Helper()
		var code int
		var err error
		for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if code, err = readyz(); code == want {
				return
			}
			select {
			case err := <-done:
				t.Fatalf("nmi returned early: %v", err)
			default:
			}
		}
		t.Fatalf("/readyz never answered %d within %s (last %d, %v)", want, within, code, err)
	}
	waitCode(200, time.Minute)
	cancel()
	waitCode(503, time.Second)
	select {
	case err := <-done:
		t.Fatalf("nmi stopped before its shutdown grace: %v", err)
	case <-time.After(time.Second):
	}
	if code, err := readyz(); code != 503 {
		t.Errorf("during the grace /readyz is %d (%v), want 503", code, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("nmi: %v", err)
	}
}

// --cleanup-iptables removes NMI's chains and jumps and exits. It runs this test binary as `nmi
// --cleanup-iptables` inside a network namespace the test creates: the machine's own rules are
// never touched.
func TestCleanupIPTablesMode(t *testing.T) {
	if os.Getenv("NMI_TEST_CLEANUP_CHILD") == "1" {
		os.Args = []string{"nmi", "--cleanup-iptables"}
		main()
		os.Exit(0)
	}
	for _, bin := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found: this test needs iproute2 and iptables (apt-get install iproute2 iptables)", bin)
		}
	}
	ns := fmt.Sprintf("nmit-cleanup-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	ipt := func(args ...string) (string, error) {
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "iptables"}, args...)...).CombinedOutput()
		return string(out), err
	}
	for _, c := range [][]string{
		{"-t", "nat", "-N", "aad-metadata"},
		{"-t", "nat", "-A", "aad-metadata", "-j", "RETURN"},
		{"-t", "nat", "-I", "PREROUTING", "1", "-j", "aad-metadata"},
		{"-t", "nat", "-A", "PREROUTING", "-j", "aad-metadata"},
		{"-N", "aad-metadata-localnet"},
		{"-I", "INPUT", "1", "-j", "aad-metadata-localnet"},
		{"-A", "INPUT", "-p", "udp", "-j", "ACCEPT"},
	} {
		if out, err := ipt(c...); err != nil {
			t.Fatalf("iptables %v: %v: %s", c, err, out)
		}
	}
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestCleanupIPTablesMode$")
	cmd.Env = append(os.Environ(), "NMI_TEST_CLEANUP_CHILD=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nmi --cleanup-iptables: %v: %s", err, out)
	}
	nat, _ := ipt("-t", "nat", "-S")
	filter, _ := ipt("-S")
	if strings.Contains(nat+filter, "aad-metadata") {
		t.Errorf("rules left after --cleanup-iptables:\n%s%s", nat, filter)
	}
	if !strings.Contains(filter, "-A INPUT -p udp -j ACCEPT") {
		t.Errorf("--cleanup-iptables removed a rule that is not NMI's:\n%s", filter)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// writeKubeconfig writes cfg (the test control plane's admin) as a kubeconfig file.
func writeKubeconfig(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// Issue 15: the federation flags reach the config; a negative window is refused by name.
func TestFederationFlags(t *testing.T) {
	var o options
	fs := pflag.NewFlagSet("nmi", pflag.ContinueOnError)
	o.AddFlags(fs, noEnv)
	if o.federationPropagationWindow != 5*time.Minute || o.honorWorkloadIdentityAnnotations {
		t.Errorf("defaults: window %s, honor %v; want 5m, false", o.federationPropagationWindow, o.honorWorkloadIdentityAnnotations)
	}
	if err := fs.Parse([]string{"--node=n", "--federation-propagation-window=90s", "--honor-workload-identity-annotations",
		"--federation-default-tenant-id=t1", "--service-account-name=nmi"}); err != nil {
		t.Fatal(err)
	}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	c := o.config(noEnv)
	if c.FederationPropagationWindow != 90*time.Second || !c.HonorWorkloadIdentityAnnotations || c.FederationDefaultTenantID != "t1" {
		t.Errorf("config not taken from flags: %+v", c)
	}
	env := map[string]string{"POD_NAME": "nmi-x", "POD_NAMESPACE": "kube-system", "POD_UID": "u1"}
	if b := nmi.BrokerFromEnv(func(k string) string { return env[k] }, o.serviceAccountName); b.PodName != "nmi-x" || b.Namespace != "kube-system" || b.PodUID != "u1" || b.ServiceAccount != "nmi" {
		t.Errorf("broker %+v", b)
	}
	if err := fs.Parse([]string{"--federation-propagation-window=-1s"}); err != nil {
		t.Fatal(err)
	}
	if err := o.validate(); err == nil || !strings.Contains(err.Error(), "--federation-propagation-window") {
		t.Errorf("negative window: %v", err)
	}
}

// noEnv is an empty environment.
func noEnv(string) string { return "" }

// envOf is getenv over m.
func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// run takes its environment from getenv only: --node defaults to NODE_NAME from it, and without
// one the error names --node. --version and --help write to stdout; a bad flag is exit code 2.
func TestRunCommandLine(t *testing.T) {
	var out strings.Builder
	if err := run(context.Background(), []string{"--version"}, noEnv, &out); err != nil || !strings.Contains(out.String(), "nmi") {
		t.Errorf("--version: %v, printed %q", err, out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"--help"}, noEnv, &out); err != nil || !strings.Contains(out.String(), "--nmi-port") {
		t.Errorf("--help: %v, printed %q", err, out.String())
	}
	err := run(context.Background(), []string{"--no-such-flag"}, noEnv, io.Discard)
	var ce cmdError
	if !errors.As(err, &ce) || ce.code != 2 || !strings.Contains(err.Error(), "--no-such-flag") || !strings.Contains(err.Error(), "--help") {
		t.Errorf("unknown flag: %v (%+v), want exit code 2 naming the flag and --help", err, ce)
	}
	err = run(context.Background(), []string{"--allow-network-plugin-kubenet"}, noEnv, io.Discard)
	if !errors.As(err, &ce) || ce.code != 1 || !strings.Contains(err.Error(), "--node is required") {
		t.Errorf("no node: %v, want exit code 1 naming --node", err)
	}
	var o options
	o.AddFlags(pflag.NewFlagSet("nmi", pflag.ContinueOnError), envOf(map[string]string{"NODE_NAME": "n7", "SERVICE_ACCOUNT_NAME": "sa"}))
	if o.node != "n7" || o.serviceAccountName != "sa" {
		t.Errorf("defaults from getenv: node %q, service account %q", o.node, o.serviceAccountName)
	}
}
