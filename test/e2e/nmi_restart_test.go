package e2e

import (
	"context"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podidentity/podidentity/internal/probeclient"
	"github.com/podidentity/podidentity/internal/sandbox"
)

// Security (issue 11, item 3): restarting NMI, as every rolling update does (SIGTERM, a new
// process a moment later), must not open the node's IMDS to pods. A pod bound only to identity A
// asks for identity B, which is on the same VMSS (bound to another pod there, so MIC keeps it
// assigned), in a loop while NMI restarts: it must never get a token for B. NMI used to remove its
// DNAT rule on SIGTERM, and every request in the gap reached IMDS directly.
//
// Not parallel: the parallel tests of the suite wait until this one is done, so none of them sees
// the node's NMI go away.
func TestNMIRestartKeepsIMDSClosed(t *testing.T) {
	ns := namespace(t)
	node := sb.Nodes[0]
	a, b := azureIdentity(t, "restart-a"), azureIdentity(t, "restart-b")
	identity(t, ns, "id-a", a, nil)
	binding(t, ns, "binding-a", "id-a", "restart-a")
	identity(t, ns, "id-b", b, nil)
	binding(t, ns, "binding-b", "id-b", "restart-b")

	pod(t, ns, "holder-b", podOpts{Selector: "restart-b", Node: node.Name}, "sh", "-c", "az login --identity && sleep infinity")
	firstToken(t, ns, "holder-b")
	waitIMDSServes(t, node, b.ClientID)
	if !assigned(t, nodeResource(node), b.ID) {
		t.Fatalf("identity B is not on %s: the test would prove nothing", nodeResource(node))
	}

	// The init container's token for A makes sure the attacker's own assignment is done, so every
	// later refusal is "not bound" at once rather than a wait.
	ask := "az login --identity -u " + b.ClientID
	loop := strings.Repeat(ask+" ; sleep 0.2 ; ", 400) + "sleep infinity"
	pod(t, ns, "attacker", podOpts{Selector: "restart-a", Node: node.Name, Init: []string{"az", "login", "--identity"}}, "sh", "-c", loop)
	forB := func(r probeclient.Result) bool { return r.Kind == "token" && strings.Contains(r.Command, b.ClientID) }
	attempts := func() []probeclient.Result {
		var out []probeclient.Result
		all, _ := sb.Results()
		for _, r := range all {
			if r.Namespace == ns && r.Pod == "attacker" && r.Container == "app" && forB(r.Result) {
				out = append(out, r.Result)
			}
		}
		return out
	}
	waitFor(t, "the attacker's first refused requests", func(context.Context) (bool, error) { return len(attempts()) >= 3, nil })
	if got := attempts(); got[0].OK {
		t.Fatalf("NMI gave a pod bound to A a token for B while running: %s", got[0].Summary())
	}

	// The rolling update: SIGTERM, the process exits, its controller starts a new one.
	c := node.NMI
	before, restarts := len(attempts()), c.Restarts()
	old := c.Process()
	old.Signal(syscall.SIGTERM)
	select {
	case <-old.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("NMI did not exit within 30s of SIGTERM")
	}
	// While no NMI runs, the redirect is still there, so pods cannot reach IMDS.
	if _, err := sandboxIptables(node.Net.NS, "-t", "nat", "-C", "PREROUTING", "-j", "aad-metadata"); err != nil {
		t.Errorf("NMI's redirect is gone while NMI is away: %v", err)
	}
	waitFor(t, "the new NMI to be ready", func(ctx context.Context) (bool, error) {
		if c.Restarts() <= restarts {
			return false, nil
		}
		code, _, err := c.Get(ctx, sandbox.NMIProbePort, "/readyz")
		return code == http.StatusOK, err
	})
	during := len(attempts()) - before
	// Let the loop run on against the new NMI (and let requests that were retrying finish).
	time.Sleep(8 * time.Second)

	got := attempts()
	tokens, unanswered := 0, 0
	for _, r := range got {
		if r.OK {
			tokens++
			if tokens <= 3 {
				t.Errorf("the pod bound to A got a token for B: %s", r.Summary())
			}
		}
		for _, try := range r.Tries {
			if try.Status == 0 {
				unanswered++
			}
		}
	}
	if tokens > 0 {
		t.Errorf("%d of %d requests for an unbound identity got a token around an NMI restart, want 0", tokens, len(got))
	}
	// Proof that requests were made while NMI was away: they got tokens (the bug), or
	// connections that nothing answered (the redirect kept, failing closed).
	if tokens == 0 && unanswered == 0 {
		t.Errorf("no request for B was made while NMI was away: the test did not probe the gap")
	}
	t.Logf("%d requests for B in all, %d finished while NMI restarted, %d tokens, %d unanswered tries", len(got), during, tokens, unanswered)
}
