package e2e

import (
	"fmt"
	"net/url"
	"os/exec"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/probeclient"
	"github.com/podidentity/podidentity/internal/sandbox"
)

const imds = "http://169.254.169.254"

func tokenURL(extra string) string {
	return imds + "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=" + url.QueryEscape(probeclient.ARMResource) + extra
}

func httpResult(t *testing.T, ns, name string) probeclient.Result {
	t.Helper()
	return result(t, ns, name, "", func(r probeclient.Result) bool { return r.Kind == "http" })
}

// Security: a token request without the Metadata header is refused (SSRF protection), and the
// instance-metadata routes answer as upstream's e2e expects: unknown paths are proxied to IMDS
// (404 there), /metadata/instance is passed through.
func TestInstanceMetadataStatusCodes(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	node := sb.Nodes[0].Name
	pod(t, ns, "no-header", podOpts{Node: node}, "curl", "-s", tokenURL(""))
	pod(t, ns, "unknown-path", podOpts{Node: node}, "curl", "-s", "-H", "Metadata: true", imds+"/doesnotexist")
	pod(t, ns, "unknown-no-header", podOpts{Node: node}, "curl", "-s", imds+"/doesnotexist")
	pod(t, ns, "instance", podOpts{Node: node}, "curl", "-sf", "-H", "Metadata: true", imds+"/metadata/instance?api-version=2021-02-01")
	pod(t, ns, "obfuscated", podOpts{Node: node}, "curl", "-s", "-H", "Metadata: true", imds+"/metadata/identity\\oauth2\\token?resource=x")

	for name, want := range map[string]int{"no-header": 400, "unknown-path": 404, "unknown-no-header": 400, "instance": 200, "obfuscated": 400} {
		if r := httpResult(t, ns, name); r.Status != want {
			t.Errorf("%s: got %s, want HTTP %d", name, r.Summary(), want)
		}
	}
	if p := finalPhase(t, ns, "instance"); p.Status.Phase != corev1.PodSucceeded {
		t.Errorf("curl -f of /metadata/instance ended %s", p.Status.Phase)
	}
}

// Security: a new pod that gets a deleted (or finished) pod's IP address does not inherit its
// identity. NMI identifies callers by source address, so this is the pod-IP reuse attack.
func TestNewPodReusingAnIPDoesNotInheritIdentity(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	node := sb.Nodes[1]
	info := azureIdentity(t, "reuse")
	identity(t, ns, "reuse-id", info, nil)
	binding(t, ns, "reuse-binding", "reuse-id", ns)
	// Addresses high in the node's range, which the lowest-free IPAM gives no other pod here.
	ipFinished, ipDeleted := addrOffset(node, 200), addrOffset(node, 201)

	// Keeps the identity on the VMSS for the whole test, so only NMI can refuse.
	pod(t, ns, "keeper", podOpts{Selector: ns, Node: node.Name}, "sh", "-c", "az login --identity && sleep infinity")
	firstToken(t, ns, "keeper")

	// The finished pod's object stays with status.podIP; the deleted one is gone.
	pod(t, ns, "finished", podOpts{Selector: ns, Node: node.Name, IP: ipFinished}, "az", "login", "--identity")
	pod(t, ns, "deleted", podOpts{Selector: ns, Node: node.Name, IP: ipDeleted}, "sh", "-c", "az login --identity && sleep infinity")
	firstToken(t, ns, "finished")
	firstToken(t, ns, "deleted")
	if p := finalPhase(t, ns, "finished"); p.Status.PodIP != ipFinished {
		t.Fatalf("finished pod has IP %q, want %s", p.Status.PodIP, ipFinished)
	}
	deletePod(t, ns, "deleted")

	other := namespace(t)
	for name, ip := range map[string]string{"after-finished": ipFinished, "after-deleted": ipDeleted} {
		pod(t, other, name, podOpts{Node: node.Name, IP: ip}, "az", "login", "--identity", "-u", info.ClientID)
	}
	for name, ip := range map[string]string{"after-finished": ipFinished, "after-deleted": ipDeleted} {
		r := result(t, other, name, "", func(r probeclient.Result) bool { return r.Kind == "token" })
		p, err := sb.Client.CoreV1().Pods(other).Get(ctxFor(t), name, metav1.GetOptions{})
		if err != nil || p.Status.PodIP != ip {
			t.Fatalf("pod %s should have reused IP %s, has %q (%v)", name, ip, p.Status.PodIP, err)
		}
		if r.OK {
			t.Errorf("pod %s on the reused IP %s got the previous pod's identity: %s", name, ip, r.Summary())
		}
	}
}

func addrOffset(n *sandbox.Node, last int) string {
	b := n.Net.PodCIDR.Addr().As4()
	b[3] = byte(last)
	return fmt.Sprintf("%d.%d.%d.%d", b[0], b[1], b[2], b[3])
}

// Documented behaviour of hostNetwork pods: their traffic to 169.254.169.254 starts in the node's
// namespace and does not pass PREROUTING, so NMI's DNAT does not apply and they reach the node's
// IMDS directly: they can get a token for any identity on the node's VM/VMSS by naming it (as
// upstream; keep hostNetwork away from untrusted workloads). NMI itself, on 127.0.0.1:2579, is
// also reachable to them, and it still refuses unbound callers.
func TestHostNetworkPodReachesIMDSDirectly(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	node := sb.Nodes[0]
	info := azureIdentity(t, "hostnet")
	identity(t, ns, "hostnet-id", info, nil)
	binding(t, ns, "hostnet-binding", "hostnet-id", ns)
	pod(t, ns, "holder", podOpts{Selector: ns, Node: node.Name}, "sh", "-c", "az login --identity && sleep infinity")
	firstToken(t, ns, "holder")

	before := sb.Emulator.Count(emulator.CounterKey{Service: emulator.ServiceIMDS, Operation: emulator.OpIMDSToken, Identity: info.ClientID})
	pod(t, ns, "hostnet", podOpts{Node: node.Name, Host: true}, "az", "login", "--identity", "-u", info.ClientID)
	r := firstToken(t, ns, "hostnet")
	if !strings.EqualFold(r.ClientID, info.ClientID) {
		t.Errorf("hostNetwork pod: %s", r.Summary())
	}
	if after := sb.Emulator.Count(emulator.CounterKey{Service: emulator.ServiceIMDS, Operation: emulator.OpIMDSToken, Identity: info.ClientID}); after <= before {
		t.Errorf("the hostNetwork pod's token did not come from IMDS directly (IMDS token calls %d -> %d)", before, after)
	}
	p, err := sb.Client.CoreV1().Pods(ns).Get(ctxFor(t), "hostnet", metav1.GetOptions{})
	if err != nil || p.Status.PodIP != node.Net.IP.String() {
		t.Errorf("hostNetwork pod IP %q, want the node's %s (%v)", p.Status.PodIP, node.Net.IP, err)
	}

	// Through NMI's own listener the hostNetwork pod is an unknown caller.
	pod(t, ns, "hostnet-nmi", podOpts{Node: node.Name, Host: true}, "curl", "-s", "-H", "Metadata: true",
		fmt.Sprintf("http://127.0.0.1:%d/metadata/identity/oauth2/token?api-version=2018-02-01&resource=%s&client_id=%s",
			sandbox.NMIPort, url.QueryEscape(probeclient.ARMResource), info.ClientID))
	if r := httpResult(t, ns, "hostnet-nmi"); r.Status == 200 {
		t.Errorf("NMI gave an unbound hostNetwork caller a token: %s", r.Summary())
	}
}

// The iptables rules NMI installs exist inside every node namespace, and nowhere else.
func TestNMIRulesLiveInNodeNamespaces(t *testing.T) {
	t.Parallel()
	for _, n := range sb.Nodes {
		out, err := sandboxIptables(n.Net.NS, "-t", "nat", "-S", "aad-metadata")
		if err != nil {
			t.Errorf("node %s: %v", n.Name, err)
			continue
		}
		want := fmt.Sprintf("-A aad-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:%d", sandbox.NMIPort)
		if !strings.Contains(out, want) {
			t.Errorf("node %s: aad-metadata chain is\n%s\nwant the rule %q", n.Name, out, want)
		}
		if _, err := sandboxIptables(n.Net.NS, "-t", "nat", "-C", "PREROUTING", "-j", "aad-metadata"); err != nil {
			t.Errorf("node %s: no PREROUTING jump to aad-metadata: %v", n.Name, err)
		}
	}
}

// sandboxIptables runs iptables inside a sandbox node namespace (read-only use).
func sandboxIptables(ns string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "iptables"}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("iptables %s in %s: %w: %s", strings.Join(args, " "), ns, err, out)
	}
	return string(out), nil
}
