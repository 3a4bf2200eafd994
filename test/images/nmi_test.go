package images

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/podidentity/podidentity/internal/iptables"
	"github.com/podidentity/podidentity/internal/sandbox/netns"
	"github.com/podidentity/podidentity/internal/sandbox/relay"
	"github.com/podidentity/podidentity/internal/testenv"
)

// Everything here happens inside network namespaces this test creates and deletes: NMI's
// container joins one with --network ns:, and the machine's own iptables, routes and sysctls are
// never touched.

// NMI's image, started as the chart starts it (its args, env, mounts and securityContext) in a
// node-like network namespace against a real kube-apiserver, installs its aad-metadata chain
// with the image's own iptables, in the backend nmi-entrypoint.sh picks: nft or legacy when
// told, and legacy by itself on a node whose rules are in legacy. The rules outlive NMI's stop,
// and `--cleanup-iptables` through the same entrypoint removes them from both backends. On a
// node with route_localnet 0 NMI exits naming nmi.prepareNode; after that init container ran
// (privileged, in the test's namespace only) the unprivileged NMI works there.
func TestNMIRedirect(t *testing.T) {
	requireImages(t)
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	kubeconfig, apiPort := writeKubeconfig(t, env)
	var nmi, prepare *workload
	for _, w := range renderWorkloads(t, map[string]any{"nmi": map[string]any{"prepareNode": true}}) {
		switch {
		case w.image == "nmi" && w.init:
			prepare = &w
		case w.image == "nmi":
			nmi = &w
		}
	}
	if nmi == nil || prepare == nil {
		t.Fatal("the chart with nmi.prepareNode renders no NMI container or no prepare-node init container")
	}
	for _, tc := range []struct {
		name, mode, want string
		seedLegacy       bool
		// localnetUnset: the node has not turned on route_localnet, which NMI cannot do itself
		// under the chart's securityContext (/proc/sys is read-only in the container): NMI
		// fails naming nmi.prepareNode, and works once its init container has run.
		localnetUnset bool
	}{
		{name: "nft", mode: "nft", want: "nft"},
		{name: "legacy", mode: "legacy", want: "legacy"},
		{name: "detects-legacy", seedLegacy: true, want: "legacy"},
		{name: "detects-empty-node", want: "nft"},
		{name: "route-localnet-unset", mode: "nft", want: "nft", localnetUnset: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := fmt.Sprintf("pi-img-%s-%d", tc.name, os.Getpid())
			ctx := context.Background()
			if err := netns.Add(ctx, ns); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = netns.Delete(ctx, ns) })
			r, err := relay.Start(testr.New(t), ns, apiPort)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(r.Close)
			if tc.seedLegacy {
				// A node whose kube-proxy writes legacy rules.
				ipt(t, ns, "legacy", "-t", "filter", "-A", "FORWARD", "-s", "192.0.2.1/32", "-j", "ACCEPT")
			}
			// /proc/sys is read-only in an unprivileged container, under the kubelet and podman
			// alike, so route_localnet is the node's to set, or nmi.prepareNode's privileged init
			// container's (docs/images.md).
			if !tc.localnetUnset {
				if err := netns.Sysctl(ns, "net.ipv4.conf.all.route_localnet", "1"); err != nil {
					t.Fatal(err)
				}
			}

			opts := append(nmiRunOptions(t, *nmi, ns, kubeconfig), "--env", "PODIDENTITY_IPTABLES_MODE="+tc.mode)
			args := expandEnv(nmi.container.Args, map[string]string{"NODE_NAME": "node-1"})
			name := ns + "-nmi"
			startNMI := func() {
				_, _, _ = podman(t, "rm", "-f", name)
				runArgs := append(append([]string{"run", "-d", "--name", name}, runLimits()...), opts...)
				mustPodman(t, append(append(runArgs, built.tag("nmi")), args...)...)
			}
			startNMI()
			t.Cleanup(func() { _, _, _ = podman(t, "rm", "-f", name) })

			if tc.localnetUnset {
				// NMI must refuse to serve, saying what is wrong and what to do.
				code, logs := waitExit(t, name)
				if code == 0 || !strings.Contains(logs, "route_localnet") || !strings.Contains(logs, "nmi.prepareNode=true") ||
					!strings.Contains(logs, "net.ipv4.conf.all.route_localnet=1 on the node") {
					t.Fatalf("NMI without route_localnet exited %d; want a failure that names route_localnet and both fixes:\n%s", code, logs)
				}
				prepareNode(t, *prepare, ns, tc.mode)
				startNMI()
			}
			waitReady(t, ns, name, probePort(t, args))
			logs := containerLogs(t, name)
			if !strings.Contains(logs, "using the iptables "+tc.want+" backend") {
				t.Errorf("nmi-entrypoint did not pick %s:\n%s", tc.want, logs)
			}
			rules := iptables.Rules{MetadataIP: "169.254.169.254", MetadataPort: 80, TargetIP: "127.0.0.1", TargetPort: 2579}
			other := map[string]string{"nft": "legacy", "legacy": "nft"}[tc.want]
			nat := ipt(t, ns, tc.want, "-t", "nat", "-S")
			for _, want := range append(rules.Expected(), "-A PREROUTING -j "+iptables.Chain) {
				if !slices.Contains(nat, want) {
					t.Errorf("the %s backend lacks %q after NMI started:\n%s", tc.want, want, strings.Join(nat, "\n"))
				}
			}
			if got := ipt(t, ns, tc.want, "-t", "filter", "-S", iptables.GuardChain); !slices.Equal(got, iptables.ExpectedGuard()) {
				t.Errorf("guard chain in %s: %q, want %q", tc.want, got, iptables.ExpectedGuard())
			}
			if hasChain(ipt(t, ns, other, "-t", "nat", "-S")) {
				t.Errorf("NMI also wrote its chain to the %s backend", other)
			}
			// A pod's IMDS request reaches NMI in its container through those rules. No Pod
			// object has the pod's IP, so NMI answers pod_not_found.
			pod := addPod(t, ns)
			code, body, err := imdsFromPod(pod)
			if err != nil || code != http.StatusNotFound || !strings.Contains(body, "pod_not_found") {
				t.Errorf("IMDS from a pod: %d %q %v; want NMI's 404 pod_not_found", code, body, err)
			}

			// Stopping NMI keeps the redirect (pods must not reach IMDS while it is away).
			mustPodman(t, "stop", "-t", "10", name)
			if !hasChain(ipt(t, ns, tc.want, "-t", "nat", "-S")) {
				t.Errorf("the chain went away when NMI stopped:\n%s", containerLogs(t, name))
			}
			if code, body, err := imdsFromPod(pod); err == nil {
				t.Errorf("with NMI stopped a pod's IMDS request was answered: %d %q", code, body)
			}

			// --cleanup-iptables, as after an uninstall, with the chart's settings.
			cleanup := append(append([]string{"--network", "ns:" + filepath.Join(netns.Dir, ns)}, securityArgs(t, *nmi)...), nmiMounts(t, *nmi, kubeconfig)...)
			if out, errOut, err := run(t, cleanup, built.tag("nmi"), "--cleanup-iptables"); err != nil {
				t.Fatalf("nmi --cleanup-iptables: %v\n%s%s", err, out, errOut)
			}
			for _, m := range []string{"nft", "legacy"} {
				if hasChain(ipt(t, ns, m, "-t", "nat", "-S")) || hasChain(ipt(t, ns, m, "-t", "filter", "-S")) {
					t.Errorf("--cleanup-iptables left NMI's chains in the %s backend", m)
				}
			}
			if tc.seedLegacy && !slices.Contains(ipt(t, ns, "legacy", "-t", "filter", "-S"), "-A FORWARD -s 192.0.2.1/32 -j ACCEPT") {
				t.Errorf("--cleanup-iptables removed a rule that is not NMI's")
			}
		})
	}
}

// prepareNode runs nmi.prepareNode's init container as the chart renders it (privileged, which
// podman applies to the container in node namespace ns only) and checks that it installed the
// guard in backend mode and turned on route_localnet there, and left the nat table as it was
// (the DNAT is NMI's).
func prepareNode(t *testing.T, w workload, ns, mode string) {
	t.Helper()
	if v, err := sysctlIn(ns, "net/ipv4/conf/all/route_localnet"); err != nil || v != "0" {
		t.Fatalf("setup: route_localnet in %s is %q (%v), want 0", ns, v, err)
	}
	opts := append([]string{"--network", "ns:" + filepath.Join(netns.Dir, ns), "--env", "PODIDENTITY_IPTABLES_MODE=" + mode}, securityArgs(t, w)...)
	if !slices.Contains(opts, "--privileged") {
		t.Fatalf("the chart's prepare-node init container is not privileged: %q", opts)
	}
	opts = append(opts, hostPathMounts(t, w, nil)...)
	natBefore := ipt(t, ns, mode, "-t", "nat", "-S")
	out, errOut, err := run(t, opts, built.tag("nmi"), w.container.Args...)
	if err != nil {
		t.Fatalf("nmi %s: %v\n%s%s", strings.Join(w.container.Args, " "), err, out, errOut)
	}
	if !strings.Contains(out+errOut, "turned on net.ipv4.conf.all.route_localnet") {
		t.Errorf("--prepare-node does not log that it turned route_localnet on:\n%s%s", out, errOut)
	}
	if v, err := sysctlIn(ns, "net/ipv4/conf/all/route_localnet"); err != nil || v != "1" {
		t.Errorf("route_localnet in %s after --prepare-node: %q (%v), want 1", ns, v, err)
	}
	if got := ipt(t, ns, mode, "-t", "filter", "-S", iptables.GuardChain); !slices.Equal(got, iptables.ExpectedGuard()) {
		t.Errorf("guard chain in %s after --prepare-node: %q, want %q", mode, got, iptables.ExpectedGuard())
	}
	if nat := ipt(t, ns, mode, "-t", "nat", "-S"); !slices.Equal(nat, natBefore) {
		t.Errorf("--prepare-node changed the nat table, which is NMI's to manage:\n%s\nbefore:\n%s", strings.Join(nat, "\n"), strings.Join(natBefore, "\n"))
	}
}

// sysctlIn reads /proc/sys/<key> inside namespace ns.
func sysctlIn(ns, key string) (string, error) {
	out, err := exec.Command("ip", "netns", "exec", ns, "cat", filepath.Join("/proc/sys", key)).Output()
	return strings.TrimSpace(string(out)), err
}

// addPod makes a pod namespace joined to node namespace ns by a veth (pod 10.250.0.2, node
// 10.250.0.1, the pod's default route through the node), removed when the test ends.
func addPod(t *testing.T, ns string) string {
	t.Helper()
	ctx := context.Background()
	pod := ns + "-pod"
	if err := netns.Add(ctx, pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Delete(ctx, pod) })
	for _, step := range [][]string{
		{"-n", ns, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", pod},
		{"-n", ns, "addr", "add", "10.250.0.1/30", "dev", "vpod"},
		{"-n", ns, "link", "set", "vpod", "up"},
		{"-n", pod, "addr", "add", "10.250.0.2/30", "dev", "eth0"},
		{"-n", pod, "link", "set", "eth0", "up"},
		{"-n", pod, "route", "add", "default", "via", "10.250.0.1"},
	} {
		if _, err := netns.IP(ctx, step...); err != nil {
			t.Fatal(err)
		}
	}
	return pod
}

// imdsFromPod asks IMDS for a token from inside pod namespace pod (never from the machine's).
func imdsFromPod(pod string) (int, string, error) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: netns.Dialer(pod)}}
	req, err := http.NewRequest(http.MethodGet, "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F", nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Metadata", "true")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// nmiRunOptions are podman options for NMI as the chart runs it: its securityContext, env (the
// downward-API values left out: POD_NAME unset means NMI cannot recognise an uninstall and keeps
// its rules on stop), mounts, and the node's network namespace.
func nmiRunOptions(t *testing.T, w workload, ns, kubeconfig string) []string {
	t.Helper()
	opts := []string{"--network", "ns:" + filepath.Join(netns.Dir, ns), "--env", "NODE_NAME=node-1"}
	opts = append(opts, securityArgs(t, w)...)
	for _, e := range w.container.Env {
		if e.ValueFrom == nil {
			opts = append(opts, "--env", e.Name+"="+e.Value)
		}
	}
	return append(opts, nmiMounts(t, w, kubeconfig)...)
}

// nmiMounts gives each of the chart's hostPath mounts an empty stand-in and adds the kubeconfig
// that replaces in-cluster config.
func nmiMounts(t *testing.T, w workload, kubeconfig string) []string {
	t.Helper()
	opts := []string{"--env", "KUBECONFIG=/var/run/podidentity-test/kubeconfig", "-v", kubeconfig + ":/var/run/podidentity-test/kubeconfig:ro"}
	return append(opts, hostPathMounts(t, w, nil)...)
}

// writeKubeconfig writes the test apiserver's admin credentials for NMI; the relay makes
// 127.0.0.1:<port> inside each namespace reach it.
func writeKubeconfig(t *testing.T, env *testenv.Env) (string, int) {
	t.Helper()
	u, err := url.Parse(env.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil || u.Hostname() != "127.0.0.1" {
		t.Fatalf("apiserver at %s: want https://127.0.0.1:<port>", env.Config.Host)
	}
	c := clientcmdapi.NewConfig()
	c.Clusters["test"] = &clientcmdapi.Cluster{Server: env.Config.Host, CertificateAuthorityData: env.Config.CAData}
	c.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: env.Config.CertData, ClientKeyData: env.Config.KeyData, Token: env.Config.BearerToken}
	c.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin"}
	c.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*c, path); err != nil {
		t.Fatal(err)
	}
	// NMI runs as root in the container; the file stays unreadable to others on the host.
	return path, port
}

func probePort(t *testing.T, args []string) int {
	t.Helper()
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--http-probe-port="); ok {
			p, err := strconv.Atoi(v)
			if err == nil {
				return p
			}
		}
	}
	t.Fatalf("the chart passes no --http-probe-port: %v", args)
	return 0
}

// waitReady polls /readyz of container name inside ns (NMI: watches synced and redirect
// installed; MIC: caches synced) and
// fails with NMI's logs when the container exits or a minute passes.
func waitReady(t *testing.T, ns, name string, port int) {
	t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: netns.Dialer(ns)}}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if resp, err := hc.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if state, _, _ := podman(t, "inspect", "--format", "{{.State.Running}}", name); strings.TrimSpace(state) == "false" {
			t.Fatalf("container %s exited before it was ready:\n%s", name, containerLogs(t, name))
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("container %s not ready within a minute:\n%s", name, containerLogs(t, name))
}

// waitExit waits (at most two minutes, podman's timeout here) for container name to exit and returns its code and logs.
func waitExit(t *testing.T, name string) (int, string) {
	t.Helper()
	out := mustPodman(t, "wait", "--interval", "250ms", name)
	code, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("podman wait %s: %q", name, out)
	}
	return code, containerLogs(t, name)
}

func containerLogs(t *testing.T, name string) string {
	out, errOut, _ := podman(t, "logs", name)
	return out + errOut
}

// ipt runs the image's own iptables of backend mode inside ns and returns its output lines.
func ipt(t *testing.T, ns, mode string, args ...string) []string {
	t.Helper()
	opts := []string{"--network", "ns:" + filepath.Join(netns.Dir, ns), "--user", "0", "--cap-drop", "ALL",
		"--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", "--entrypoint", "/opt/iptables/" + mode + "/iptables"}
	out, errOut, err := run(t, opts, built.tag("nmi"), args...)
	if err != nil {
		t.Fatalf("iptables (%s) %s in %s: %v\n%s", mode, strings.Join(args, " "), ns, err, errOut)
	}
	return strings.Split(strings.TrimSpace(out), "\n")
}

func hasChain(lines []string) bool {
	for _, l := range lines {
		if l == "-N "+iptables.Chain || l == "-N "+iptables.GuardChain {
			return true
		}
	}
	return false
}
