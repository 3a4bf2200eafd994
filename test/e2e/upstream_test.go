package e2e

// The end-to-end behaviours upstream's suite checked (test/e2e of aad-pod-identity v1.8), run
// here through real pods, NMI and MIC against the emulated Azure.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/probeclient"
	"github.com/podidentity/podidentity/internal/sandbox"
)

const holdToken = "az login --identity && sleep infinity"

// "should delete the AzureAssignedIdentity if the pod / AzureIdentity / AzureIdentityBinding is
// deleted": the assignment goes, and a new pod with the same label gets nothing.
func TestAssignmentRemovedWithPodIdentityOrBinding(t *testing.T) {
	t.Parallel()
	for _, what := range []string{"pod", "identity", "binding"} {
		t.Run(what+" deleted", func(t *testing.T) {
			t.Parallel()
			ns := namespace(t)
			info := azureIdentity(t, "removal")
			id := identity(t, ns, "removal-id", info, nil)
			b := binding(t, ns, "removal-binding", "removal-id", ns)
			pod(t, ns, "app", podOpts{Selector: ns}, "sh", "-c", holdToken)
			firstToken(t, ns, "app")
			waitAAIs(t, ns, 1, aadv1.AssignedIDAssigned)
			node := nodeOf(t, ns, "app")
			switch what {
			case "pod":
				deletePod(t, ns, "app")
			case "identity":
				if err := crc(t).Delete(ctxFor(t), id); err != nil {
					t.Fatal(err)
				}
			case "binding":
				if err := crc(t).Delete(ctxFor(t), b); err != nil {
					t.Fatal(err)
				}
			}
			waitAAIs(t, ns, 0, "")
			waitFor(t, "identity released from "+nodeResource(node), func(context.Context) (bool, error) {
				return !assigned(t, nodeResource(node), info.ID), nil
			})
			if what != "pod" {
				pod(t, ns, "again", podOpts{Selector: ns, Node: node.Name}, "az", "login", "--identity", "-u", info.ClientID)
				if r := result(t, ns, "again", "", isToken); r.OK {
					t.Errorf("after the %s was deleted a new pod still got a token: %s", what, r.Summary())
				}
			}
		})
	}
}

func isToken(r probeclient.Result) bool { return r.Kind == "token" }

// "should update AzureAssignedIdentity when AzureIdentity fields are updated": pointing the
// AzureIdentity at another Azure identity moves the assignment and the tokens.
func TestIdentityUpdateMovesAssignment(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	before, after := azureIdentity(t, "update-a"), azureIdentity(t, "update-b")
	id := identity(t, ns, "moving", before, nil)
	binding(t, ns, "moving-binding", "moving", ns)
	node := sb.Nodes[2].Name
	pod(t, ns, "first", podOpts{Selector: ns, Node: node}, "sh", "-c", holdToken)
	if r := firstToken(t, ns, "first"); !strings.EqualFold(r.ClientID, before.ClientID) {
		t.Fatalf("before the update: %s", r.Summary())
	}
	id.Spec.ResourceID, id.Spec.ClientID = after.ID, after.ClientID
	if err := crc(t).Update(ctxFor(t), id); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the assignment to follow the updated identity", func(ctx context.Context) (bool, error) {
		l := aais(ctx, t, ns)
		return len(l) == 1 && l[0].Status.Status == aadv1.AssignedIDAssigned && l[0].Spec.AzureIdentityRef != nil &&
			strings.EqualFold(l[0].Spec.AzureIdentityRef.Spec.ClientID, after.ClientID), nil
	})
	pod(t, ns, "second", podOpts{Selector: ns, Node: node}, "az", "login", "--identity")
	if r := firstToken(t, ns, "second"); !strings.EqualFold(r.ClientID, after.ClientID) {
		t.Errorf("after the update: %s, want %s", r.Summary(), after.ClientID)
	}
}

// "remove correct identities when adding in order and removing in random order".
func TestFiveIdentitiesRemovedInRandomOrder(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	node := sb.Nodes[2] // the standalone VM
	var ids []*aadv1.AzureIdentity
	var infos []emulator.IdentityInfo
	for i := 0; i < 5; i++ {
		info := azureIdentity(t, fmt.Sprintf("five-%d", i))
		sel := fmt.Sprintf("%s-%d", ns, i)
		ids = append(ids, identity(t, ns, fmt.Sprintf("five-%d", i), info, nil))
		infos = append(infos, info)
		binding(t, ns, fmt.Sprintf("five-%d-binding", i), fmt.Sprintf("five-%d", i), sel)
		pod(t, ns, fmt.Sprintf("app-%d", i), podOpts{Selector: sel, Node: node.Name}, "sh", "-c", holdToken)
	}
	for i := range ids {
		if r := firstToken(t, ns, fmt.Sprintf("app-%d", i)); !strings.EqualFold(r.ClientID, infos[i].ClientID) {
			t.Errorf("app-%d: %s", i, r.Summary())
		}
	}
	waitAAIs(t, ns, 5, aadv1.AssignedIDAssigned)
	order := rand.Perm(5)
	t.Logf("removal order %v", order)
	for k, i := range order {
		if err := crc(t).Delete(ctxFor(t), ids[i]); err != nil {
			t.Fatal(err)
		}
		waitAAIs(t, ns, 4-k, "")
		waitFor(t, fmt.Sprintf("identity five-%d released", i), func(context.Context) (bool, error) {
			return !assigned(t, nodeResource(node), infos[i].ID), nil
		})
		for _, j := range order[k+1:] {
			if !assigned(t, nodeResource(node), infos[j].ID) {
				t.Errorf("removing five-%d also removed five-%d", i, j)
			}
		}
	}
}

// "should create AzureAssignedIdentities for 40 pods within 150 seconds": 40 pods over five
// identities, all Assigned and holding tokens. The figure is reported, not asserted.
func TestFortyPodsGetTheirIdentities(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	var infos []emulator.IdentityInfo
	for i := 0; i < 5; i++ {
		info := azureIdentity(t, fmt.Sprintf("forty-%d", i))
		infos = append(infos, info)
		identity(t, ns, fmt.Sprintf("forty-%d", i), info, nil)
		binding(t, ns, fmt.Sprintf("forty-%d-binding", i), fmt.Sprintf("forty-%d", i), fmt.Sprintf("%s-%d", ns, i))
	}
	start := time.Now()
	for p := 0; p < 40; p++ {
		pod(t, ns, fmt.Sprintf("p%02d", p), podOpts{Selector: fmt.Sprintf("%s-%d", ns, p%5)}, "sh", "-c", holdToken)
	}
	waitAAIs(t, ns, 40, aadv1.AssignedIDAssigned)
	assignedAfter := time.Since(start)
	for p := 0; p < 40; p++ {
		if r := firstToken(t, ns, fmt.Sprintf("p%02d", p)); !strings.EqualFold(r.ClientID, infos[p%5].ClientID) {
			t.Errorf("p%02d: %s", p, r.Summary())
		}
	}
	t.Logf("40 pods: all AzureAssignedIdentities Assigned %s and all tokens held %s after the first pod was created (upstream's gate: 150s)",
		assignedAfter.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))
}

// "should create a new AzureAssignedIdentity when the pod label is changed".
func TestPodLabelChangeMovesAssignment(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	a, b := azureIdentity(t, "label-a"), azureIdentity(t, "label-b")
	identity(t, ns, "label-a", a, nil)
	identity(t, ns, "label-b", b, nil)
	binding(t, ns, "label-a-binding", "label-a", ns+"-a")
	binding(t, ns, "label-b-binding", "label-b", ns+"-b")
	pod(t, ns, "app", podOpts{Selector: ns + "-a", Node: sb.Nodes[1].Name}, "sh", "-c", holdToken)
	if r := firstToken(t, ns, "app"); !strings.EqualFold(r.ClientID, a.ClientID) {
		t.Fatalf("before relabel: %s", r.Summary())
	}
	p, err := sb.Client.CoreV1().Pods(ns).Get(ctxFor(t), "app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Labels[aadv1.PodLabelKey] = ns + "-b"
	if _, err := sb.Client.CoreV1().Pods(ns).Update(ctxFor(t), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the assignment to follow the new label", func(ctx context.Context) (bool, error) {
		l := aais(ctx, t, ns)
		return len(l) == 1 && l[0].Status.Status == aadv1.AssignedIDAssigned && l[0].Spec.AzureIdentityRef != nil &&
			l[0].Spec.AzureIdentityRef.Name == "label-b", nil
	})
}

// "should not delete a user-assigned identity used by a different pod": two pods on two
// instances of the scale set share an identity; one goes, the identity stays for the other.
func TestVMSSSharedIdentityKept(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	info := azureIdentity(t, "shared")
	identity(t, ns, "shared", info, nil)
	binding(t, ns, "shared-binding", "shared", ns)
	pod(t, ns, "on-0", podOpts{Selector: ns, Node: sb.Nodes[0].Name}, "sh", "-c", holdToken)
	pod(t, ns, "on-1", podOpts{Selector: ns, Node: sb.Nodes[1].Name}, "sh", "-c", holdToken)
	firstToken(t, ns, "on-0")
	firstToken(t, ns, "on-1")
	waitAAIs(t, ns, 2, aadv1.AssignedIDAssigned)
	deletePod(t, ns, "on-0")
	waitAAIs(t, ns, 1, aadv1.AssignedIDAssigned)
	if !assigned(t, sandbox.ScaleSet, info.ID) {
		t.Fatalf("identity %s was removed from the scale set while a pod on it still uses it", info.ID)
	}
	pod(t, ns, "again-on-1", podOpts{Selector: ns, Node: sb.Nodes[1].Name}, "az", "login", "--identity")
	if r := firstToken(t, ns, "again-on-1"); !strings.EqualFold(r.ClientID, info.ClientID) {
		t.Errorf("%s", r.Summary())
	}
}

// "should reconcile identity assignment on Azure if manually unassigned": removed in the portal,
// re-added by MIC's periodic Azure reconcile; pods keep getting tokens.
func TestOutOfBandUnassignmentHealed(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	info := azureIdentity(t, "heal")
	identity(t, ns, "heal", info, nil)
	binding(t, ns, "heal-binding", "heal", ns)
	node := sb.Nodes[2]
	pod(t, ns, "app", podOpts{Selector: ns, Node: node.Name}, "sh", "-c", holdToken)
	firstToken(t, ns, "app")
	waitAAIs(t, ns, 1, aadv1.AssignedIDAssigned)
	if err := sb.Emulator.RemoveIdentity(nodeResource(node), info.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "MIC to re-add the identity removed out of band", func(context.Context) (bool, error) {
		return assigned(t, nodeResource(node), info.ID), nil
	})
	pod(t, ns, "after", podOpts{Selector: ns, Node: node.Name}, "az", "login", "--identity")
	if r := firstToken(t, ns, "after"); !strings.EqualFold(r.ClientID, info.ClientID) {
		t.Errorf("%s", r.Summary())
	}
}

// "should not alter the user-assigned identity on VM" and "should be able to delete AAI when the
// identity is un-assigned from the node out of band": an identity someone else put on the VM
// survives MIC's release, and an assignment whose identity vanished out of band is still
// cleaned up.
func TestForeignIdentityUntouchedAndOutOfBandRemovalCleanedUp(t *testing.T) {
	// Not parallel: it assigns an identity to a shared node by hand, beside MIC's own.
	ns := namespace(t)
	node := sb.Nodes[2]
	foreign := azureIdentity(t, "foreign")
	if err := sb.Emulator.AssignIdentity(nodeResource(node), foreign.ID); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Emulator.RemoveIdentity(nodeResource(node), foreign.ID) })
	mine := azureIdentity(t, "mine")
	identity(t, ns, "mine", mine, nil)
	binding(t, ns, "mine-binding", "mine", ns)
	pod(t, ns, "app", podOpts{Selector: ns, Node: node.Name}, "sh", "-c", holdToken)
	firstToken(t, ns, "app")
	waitAAIs(t, ns, 1, aadv1.AssignedIDAssigned)
	// Out of band: the identity disappears from the VM; then the pod goes.
	if err := sb.Emulator.RemoveIdentity(nodeResource(node), mine.ID); err != nil {
		t.Fatal(err)
	}
	deletePod(t, ns, "app")
	waitAAIs(t, ns, 0, "")
	if !assigned(t, nodeResource(node), foreign.ID) {
		t.Errorf("MIC removed identity %s that it did not assign", foreign.ID)
	}
}

// "should not delete the Immutable Identity": an identity in --immutable-user-msis stays on the
// VM after its last pod is gone.
func TestImmutableIdentityKept(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	info, err := sb.Emulator.Identity(immutableName)
	if err != nil {
		t.Fatal(err)
	}
	identity(t, ns, "immutable", info, nil)
	binding(t, ns, "immutable-binding", "immutable", ns)
	node := sb.Nodes[2]
	pod(t, ns, "app", podOpts{Selector: ns, Node: node.Name}, "az", "login", "--identity")
	firstToken(t, ns, "app")
	waitAAIs(t, ns, 0, "") // the pod finished: its assignment is released
	// MIC released the pod's assignment without touching the VM: the identity is still there.
	if !assigned(t, nodeResource(node), info.ID) {
		t.Errorf("immutable identity %s was removed from %s", info.ID, nodeResource(node))
	}
}

// "assign valid identity when batch contains invalid ones" and "should not unassign existing
// identity when assigning invalid ones".
func TestInvalidIdentitiesDoNotBlockValidOnes(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	valid := azureIdentity(t, "valid")
	identity(t, ns, "valid", valid, nil)
	for i := 0; i < 2; i++ {
		ghost := emulator.IdentityInfo{
			ID:       emulator.IdentityID(emulator.DefaultSubscriptionID, sandbox.ResourceGroup, fmt.Sprintf("does-not-exist-%d-%s", i, suffix())),
			ClientID: fmt.Sprintf("00000000-0000-4000-8000-%012d", i+1),
		}
		identity(t, ns, fmt.Sprintf("ghost-%d", i), ghost, nil)
		binding(t, ns, fmt.Sprintf("ghost-%d-binding", i), fmt.Sprintf("ghost-%d", i), ns)
	}
	binding(t, ns, "valid-binding", "valid", ns)
	node := sb.Nodes[1]
	pod(t, ns, "app", podOpts{Selector: ns, Node: node.Name}, "az", "login", "--identity", "-u", valid.ClientID)
	if r := firstToken(t, ns, "app"); !strings.EqualFold(r.ClientID, valid.ClientID) {
		t.Errorf("%s", r.Summary())
	}
	waitFor(t, "valid Assigned, invalid ones still Created", func(ctx context.Context) (bool, error) {
		states := map[string]aadv1.AssignedIdentityState{}
		for _, a := range aais(ctx, t, ns) {
			if a.Spec.AzureIdentityRef != nil {
				states[a.Spec.AzureIdentityRef.Name] = a.Status.Status
			}
		}
		return states["valid"] == aadv1.AssignedIDAssigned && states["ghost-0"] == aadv1.AssignedIDCreated &&
			states["ghost-1"] == aadv1.AssignedIDCreated, fmt.Errorf("states %v", states)
	})
	if !assigned(t, sandbox.ScaleSet, valid.ID) {
		t.Errorf("the valid identity is not on the scale set")
	}
}

// "pass validation even when MIC leader is changed": the leader dies as the objects are
// created; the standby takes over and the pod gets its token.
func TestMICLeaderChange(t *testing.T) {
	// Not parallel: it kills the MIC leader, which would slow other tests' assignments.
	ns := namespace(t)
	leader := micLeader(t)
	info := azureIdentity(t, "leader")
	leader.Kill()
	identity(t, ns, "leader", info, nil)
	binding(t, ns, "leader-binding", "leader", ns)
	pod(t, ns, "app", podOpts{Selector: ns}, "az", "login", "--identity")
	if r := result(t, ns, "app", "", tokenOK); !strings.EqualFold(r.ClientID, info.ClientID) {
		t.Errorf("%s", r.Summary())
	}
	waitFor(t, "a leader again", func(ctx context.Context) (bool, error) {
		for _, c := range sb.MIC {
			if isLeader(ctx, c) {
				return true, nil
			}
		}
		return false, nil
	})
}

func micLeader(t *testing.T) *sandbox.Component {
	t.Helper()
	var leader *sandbox.Component
	waitFor(t, "a MIC leader", func(ctx context.Context) (bool, error) {
		for _, c := range sb.MIC {
			if isLeader(ctx, c) {
				leader = c
				return true, nil
			}
		}
		return false, nil
	})
	return leader
}

// isLeader reads controller-runtime's leader metric from a MIC replica.
func isLeader(ctx context.Context, c *sandbox.Component) bool {
	code, body, err := c.Get(ctx, sandbox.MICMetricsPort, "/metrics")
	if err != nil || code != 200 {
		return false
	}
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "leader_election_master_status") && strings.HasSuffix(strings.TrimSpace(line), " 1") {
			return true
		}
	}
	return false
}

// Liveness and readiness: every MIC replica and every NMI answers /healthz, and becomes ready
// (a MIC replica restarted by another test may still be syncing its caches, hence the wait).
func TestProbesAnswer(t *testing.T) {
	t.Parallel()
	type target struct {
		c    *sandbox.Component
		port int
	}
	var all []target
	for _, c := range sb.MIC {
		all = append(all, target{c, sandbox.MICProbePort})
	}
	for _, n := range sb.Nodes {
		all = append(all, target{n.NMI, sandbox.NMIProbePort})
	}
	for _, tg := range all {
		waitFor(t, tg.c.Name+" to answer /healthz and /readyz with 200", func(ctx context.Context) (bool, error) {
			for _, path := range []string{"/healthz", "/readyz"} {
				code, body, err := tg.c.Get(ctx, tg.port, path)
				if err != nil || code != 200 {
					return false, fmt.Errorf("%s: %d %s %v", path, code, body, err)
				}
			}
			return true, nil
		})
	}
}

// "bypass NMI using AzurePodIdentityException": a pod matching an exception gets IMDS's own
// answer for an identity on its node, without any binding; a pod without the labels does not.
func TestExceptionPodGetsPassthrough(t *testing.T) {
	// Not parallel: it assigns an identity to a shared node by hand, beside MIC's own.
	ns := namespace(t)
	node := sb.Nodes[2]
	info := azureIdentity(t, "exception")
	if err := sb.Emulator.AssignIdentity(nodeResource(node), info.ID); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Emulator.RemoveIdentity(nodeResource(node), info.ID) })
	waitIMDSServes(t, node, info.ClientID)
	ex := &aadv1.AzurePodIdentityException{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "exempt"},
		Spec:       aadv1.AzurePodIdentityExceptionSpec{PodLabels: map[string]string{"app": "exempt"}},
	}
	if err := crc(t).Create(ctxFor(t), ex); err != nil {
		t.Fatal(err)
	}
	pod(t, ns, "exempt", podOpts{Node: node.Name, Labels: map[string]string{"app": "exempt"}}, "az", "login", "--identity", "-u", info.ClientID)
	pod(t, ns, "plain", podOpts{Node: node.Name, Labels: map[string]string{"app": "plain"}}, "az", "login", "--identity", "-u", info.ClientID)
	if r := result(t, ns, "exempt", "", tokenOK); !strings.EqualFold(r.ClientID, info.ClientID) {
		t.Errorf("exempt pod: %s", r.Summary())
	}
	if r := result(t, ns, "plain", "", isToken); r.OK {
		t.Errorf("a pod without the exception's labels got a token: %s", r.Summary())
	}
}

// Best Practices "using aad-pod-identity in different workloads": the label on the pod template
// of a Deployment, a DaemonSet, a Job and a CronJob (examples/crds/workloads.yaml, applied with
// kubectl as a user would). Their pods match the sandbox demo's binding (selector "demo").
func TestWorkloadsFromBestPractices(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	demo, err := sb.Emulator.Identity(sandbox.Identities[0])
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sb.Kubectl(), "--kubeconfig", sb.Kubeconfig, "apply", "-n", ns,
		"-f", filepath.Join(repoRoot(), "examples", "crds", "workloads.yaml")).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	owned := func(kind, name string) func(corev1.Pod) bool {
		return func(p corev1.Pod) bool {
			for _, o := range p.OwnerReferences {
				if o.Kind == kind && strings.HasPrefix(o.Name, name) {
					return true
				}
			}
			return false
		}
	}
	for _, w := range []struct {
		what  string
		match func(corev1.Pod) bool
		pods  int
	}{
		{"Deployment demo", owned("ReplicaSet", "demo-"), 1},
		{"DaemonSet demo-daemonset", owned("DaemonSet", "demo-daemonset"), len(defaultNodes())},
		{"Job demo-job", owned("Job", "demo-job"), 1},
		{"CronJob demo-cronjob", owned("Job", "demo-cronjob-"), 1},
	} {
		var names []string
		waitFor(t, w.what+"'s pods to get tokens", func(ctx context.Context) (bool, error) {
			var l corev1.PodList
			if err := crc(t).List(ctx, &l, client.InNamespace(ns)); err != nil {
				return false, err
			}
			names = names[:0]
			for _, p := range l.Items {
				if w.match(p) && hasToken(ns, p.Name) {
					names = append(names, p.Name)
				}
			}
			return len(names) >= w.pods, fmt.Errorf("%d of %d pods hold tokens", len(names), w.pods)
		})
		for _, name := range names {
			if r := result(t, ns, name, "", tokenOK); !strings.EqualFold(r.ClientID, demo.ClientID) {
				t.Errorf("%s pod %s: %s", w.what, name, r.Summary())
			}
		}
	}
	waitFor(t, "Job demo-job to complete", func(ctx context.Context) (bool, error) {
		j, err := sb.Client.BatchV1().Jobs(ns).Get(ctx, "demo-job", metav1.GetOptions{})
		return err == nil && j.Status.Succeeded == 1, err
	})
}

func hasToken(ns, podName string) bool {
	all, _ := sb.Results()
	for _, r := range all {
		if r.Namespace == ns && r.Pod == podName && tokenOK(r.Result) {
			return true
		}
	}
	return false
}
