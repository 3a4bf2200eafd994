package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"
	corev1 "k8s.io/api/core/v1"

	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/sandbox"
)

// defaultNodes are the nodes of the default world (the extra nodes are tainted, so DaemonSets
// and the scheduler leave them out).
func defaultNodes() []*sandbox.Node {
	var out []*sandbox.Node
	for _, n := range sb.Nodes {
		if !n.Extra {
			out = append(out, n)
		}
	}
	return out
}

// extraNode is the sandbox node called name (one of Options.ExtraNodes).
func extraNode(t *testing.T, name string) *sandbox.Node {
	t.Helper()
	for _, n := range sb.Nodes {
		if n.Name == name && n.Extra {
			return n
		}
	}
	t.Fatalf("the sandbox has no extra node %s: check options().ExtraNodes", name)
	return nil
}

// containerLog is the text a pod's container wrote so far (the node agent's log file).
func containerLog(ns string, p *corev1.Pod, container string) string {
	b, _ := os.ReadFile(filepath.Join(sb.Dir, "pods", ns+"_"+p.Name+"_"+string(p.UID), container+".log"))
	return string(b)
}

// Upstream "Retry-After header mode": with --set-retry-after-header NMI does not hold a request
// whose identity is not assigned yet; it answers 503 + Retry-After at once, and an Azure-SDK-like
// client that honours the header gets its token on a later attempt, after the assignment.
//
// The assignment is held back deterministically: ARM refuses every update of the modes node's VM
// (409 AnotherOperationInProgress, as while another operation runs) until the test has seen the
// client's first "not ready" answer. Only this test uses faults, and only on that VM.
func TestRetryAfterHeaderMode(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	node := extraNode(t, modesNode)
	c := sb.Emulator.Config()
	vmID := emulator.VMID(c.SubscriptionID, c.ResourceGroup, node.Name)
	sb.Emulator.AddFault(emulator.Fault{Service: emulator.ServiceARM, Operation: emulator.OpVMUpdate, Resource: vmID,
		Status: 409, Code: emulator.ConflictCode, Message: "e2e: the assignment is held back until the client saw NMI's Retry-After answer"})
	t.Cleanup(sb.Emulator.ClearFaults)

	info := azureIdentity(t, "retry-after")
	identity(t, ns, "ra-id", info, nil)
	binding(t, ns, "ra-binding", "ra-id", ns)
	p := pod(t, ns, "app", podOpts{Selector: ns, Node: node.Name}, "az", "login", "--identity")

	// The first "identity not ready" answer (earlier ones may be 404 pod_not_found, before NMI
	// saw the pod). Without the flag NMI would hold the request and then answer 404.
	var line string
	waitFor(t, "the client's first identity_not_ready answer", func(ctx context.Context) (bool, error) {
		for _, l := range strings.Split(containerLog(ns, p, "app"), "\n") {
			if strings.Contains(l, "identity_not_ready") {
				line = l
				return true, nil
			}
		}
		return false, nil
	})
	if !strings.Contains(line, "status 503 (Retry-After 20s)") {
		t.Fatalf("NMI with --set-retry-after-header answered %q, want 503 with Retry-After: 20", line)
	}
	if assigned(t, node.HostKey, info.ID) {
		t.Fatalf("identity %s is already on %s: the held-back assignment did not hold", info.ID, vmID)
	}
	sb.Emulator.ClearFaults()

	r := firstToken(t, ns, "app")
	if !strings.EqualFold(r.ClientID, info.ClientID) || !armToken(r) {
		t.Errorf("got %s, want an ARM token for %s", r.Summary(), info.ID)
	}
	saw503 := false
	for _, tr := range r.Tries {
		switch {
		case tr.Status == 503 && tr.RetryAfter == 20:
			saw503 = true
		case tr.Status == 404: // pod not seen by NMI yet
		default:
			t.Errorf("unexpected answer before the token: HTTP %d (Retry-After %ds); all: %+v", tr.Status, tr.RetryAfter, r.Tries)
		}
	}
	if !saw503 || r.Attempts > 5 {
		t.Errorf("want 503 + Retry-After answers and a token within the SDK's 5 retries; got %d attempts, tries %+v", r.Attempts, r.Tries)
	}
	if !assigned(t, node.HostKey, info.ID) {
		t.Errorf("identity %s is not on %s after the token", info.ID, vmID)
	}
	if p := finalPhase(t, ns, "app"); p.Status.Phase != corev1.PodSucceeded || p.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("pod ended %s after %d restarts, want Succeeded without restarts", p.Status.Phase, p.Status.ContainerStatuses[0].RestartCount)
	}
}

// Upstream "block instance metadata": with --block-instance-metadata NMI answers 403 on
// /metadata/instance for pods of its node; a node without the flag proxies it to IMDS (200).
// Token requests on the blocking node are unaffected.
func TestInstanceMetadataBlocked(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	blocking, plain := extraNode(t, modesNode), sb.Nodes[0]
	instance := imds + "/metadata/instance?api-version=2021-02-01"
	pod(t, ns, "blocked", podOpts{Node: blocking.Name}, "curl", "-s", "-H", "Metadata: true", instance)
	pod(t, ns, "blocked-sub", podOpts{Node: blocking.Name}, "curl", "-s", "-H", "Metadata: true", imds+"/metadata/instance/compute?api-version=2021-02-01")
	pod(t, ns, "proxied", podOpts{Node: plain.Name}, "curl", "-s", "-H", "Metadata: true", instance)
	for name, want := range map[string]int{"blocked": 403, "blocked-sub": 403, "proxied": 200} {
		if r := httpResult(t, ns, name); r.Status != want {
			t.Errorf("%s: got %s, want HTTP %d", name, r.Summary(), want)
		}
	}
	// Still NMI, not a dead end: an unknown path is proxied to IMDS there (404 from IMDS).
	pod(t, ns, "other-path", podOpts{Node: blocking.Name}, "curl", "-s", "-H", "Metadata: true", imds+"/doesnotexist")
	if r := httpResult(t, ns, "other-path"); r.Status != 404 {
		t.Errorf("other-path on the blocking node: got %s, want HTTP 404 from IMDS", r.Summary())
	}
}

// vmIdentity reads a VM's identity block from the emulated ARM, as MIC reads it.
func vmIdentity(t *testing.T, vm string) *armcompute.VirtualMachineIdentity {
	t.Helper()
	cred, err := sb.Emulator.PrincipalCredential(sandbox.MICAppID)
	if err != nil {
		t.Fatal(err)
	}
	c := sb.Emulator.Config()
	cl, err := armcompute.NewVirtualMachinesClient(c.SubscriptionID, cred, sb.Emulator.ARMClientOptions())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cl.Get(ctxFor(t), c.ResourceGroup, vm, nil)
	if err != nil {
		t.Fatalf("reading VM %s from ARM: %v", vm, err)
	}
	if resp.Identity == nil {
		return &armcompute.VirtualMachineIdentity{}
	}
	return resp.Identity
}

func identityType(id *armcompute.VirtualMachineIdentity) string {
	if id.Type == nil {
		return ""
	}
	return string(*id.Type)
}

func principalOf(id *armcompute.VirtualMachineIdentity) string {
	if id.PrincipalID == nil {
		return ""
	}
	return *id.PrincipalID
}

// Upstream "system-assigned identity untouched": the standalone VM has a system-assigned
// identity; MIC adds and removes user-assigned identities for pods that come and go there
// without losing it (same principal ID), and a pod that names no identity gets its bound user
// identity, never the VM's system-assigned one.
func TestSystemAssignedIdentityUntouched(t *testing.T) {
	t.Parallel()
	node := sb.Nodes[2] // the standalone VM
	before := vmIdentity(t, node.Name)
	principal := principalOf(before)
	if principal == "" || !strings.Contains(identityType(before), "SystemAssigned") {
		t.Fatalf("VM %s has no system-assigned identity (type %q, principal %q): the sandbox world gives it one", node.Name, identityType(before), principal)
	}
	c := sb.Emulator.Config()
	vmID := emulator.VMID(c.SubscriptionID, c.ResourceGroup, node.Name)

	ns := namespace(t)
	info := azureIdentity(t, "beside-system")
	identity(t, ns, "user-id", info, nil)
	binding(t, ns, "user-binding", "user-id", ns)
	for round, name := range []string{"first", "second"} {
		pod(t, ns, name, podOpts{Selector: ns, Node: node.Name}, "sh", "-c", "az login --identity && sleep infinity")
		r := firstToken(t, ns, name)
		if !strings.EqualFold(r.ClientID, info.ClientID) || !strings.EqualFold(r.MIRID, info.ID) {
			t.Errorf("round %d: a pod naming no identity got %s, want its bound user identity %s", round, r.Summary(), info.ID)
		}
		if strings.EqualFold(r.MIRID, vmID) {
			t.Errorf("round %d: the pod got the VM's system-assigned identity", round)
		}
		during := vmIdentity(t, node.Name)
		if principalOf(during) != principal || !strings.Contains(identityType(during), "SystemAssigned") {
			t.Errorf("round %d, pod running: VM identity type %q principal %q, want SystemAssigned with principal %s",
				round, identityType(during), principalOf(during), principal)
		}
		deletePod(t, ns, name)
		waitAAIs(t, ns, 0, "")
		waitFor(t, "identity "+info.ID+" to leave "+node.Name, func(ctx context.Context) (bool, error) {
			return !assigned(t, node.HostKey, info.ID), nil
		})
		after := vmIdentity(t, node.Name)
		if principalOf(after) != principal || !strings.Contains(identityType(after), "SystemAssigned") {
			t.Errorf("round %d, pod gone: VM identity type %q principal %q, want SystemAssigned with principal %s",
				round, identityType(after), principalOf(after), principal)
		}
	}
}
