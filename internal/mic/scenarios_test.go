package mic_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/mic"
	"github.com/podidentity/podidentity/internal/testenv"
)

const (
	created  = aadv1.AssignedIDCreated
	assigned = aadv1.AssignedIDAssigned
)

func TestIdentityIsAssignedToTheVMSSWhenAPodIsLabelled(t *testing.T) {
	w := newWorld(t, emulator.Config{
		VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 2}},
		UserAssignedIdentities:  []emulator.IdentityConfig{{Name: "web"}},
	})
	w.startMIC(micOpts{})
	w.identity("web")
	w.binding("web-binding", "web", "web-sel")
	n := w.vmssNode("pool", 0)
	w.pod("web-1", n, "web-sel")

	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("web-1", "web"): assigned})
	w.waitAssigned("pool", "web")

	// Removing the pod releases the identity and deletes the AAI.
	w.deletePod("web-1")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{})
	w.waitAssigned("pool")
}

func TestSeveralIdentitiesAddedInOrderAndRemovedInRandomOrder(t *testing.T) {
	names := []string{"id-a", "id-b", "id-c", "id-d", "id-e"}
	cfg := emulator.Config{VirtualMachines: []emulator.VMConfig{{Name: "vm0", SystemAssigned: true, UserAssignedIdentities: []string{"manual"}}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "manual"}}}
	for _, n := range names {
		cfg.UserAssignedIdentities = append(cfg.UserAssignedIdentities, emulator.IdentityConfig{Name: n})
	}
	w := newWorld(t, cfg)
	w.startMIC(micOpts{})
	node := w.vmNode("vm0")
	w.pod("app", node, "sel")
	want := map[string]aadv1.AssignedIdentityState{}
	bindings := map[string]*aadv1.AzureIdentityBinding{}
	onVM := []string{"manual"}
	for _, n := range names {
		w.identity(n)
		bindings[n] = w.binding("b-"+n, n, "sel")
		want[w.aaiName("app", n)] = assigned
		onVM = append(onVM, n)
		w.waitAAIs(want)
		w.waitAssigned("vm0", onVM...)
	}
	for _, n := range []string{"id-c", "id-a", "id-e", "id-b", "id-d"} {
		w.delete(bindings[n])
		delete(want, w.aaiName("app", n))
		onVM = slices.DeleteFunc(onVM, func(s string) bool { return s == n })
		w.waitAAIs(want)
		w.waitAssigned("vm0", onVM...)
	}
	// The identity someone put on the VM by hand and the system-assigned identity stay.
	if got := w.assigned("vm0"); fmt.Sprint(got) != "[manual]" {
		t.Fatalf("vm0 identities = %v, want only the manually assigned one", got)
	}
}

func TestIdentitySharedByPodsOnTwoNodesOfOneVMSSIsKeptWhenOnePodGoes(t *testing.T) {
	w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 2}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "shared"}}})
	w.startMIC(micOpts{})
	w.identity("shared")
	w.binding("b", "shared", "sel")
	n0, n1 := w.vmssNode("pool", 0), w.vmssNode("pool", 1)
	w.pod("p0", n0, "sel")
	w.pod("p1", n1, "sel")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p0", "shared"): assigned, w.aaiName("p1", "shared"): assigned})
	w.waitAssigned("pool", "shared")
	w.deletePod("p0")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p1", "shared"): assigned})
	if got := w.assigned("pool"); fmt.Sprint(got) != "[shared]" {
		t.Fatalf("pool identities = %v after one of two pods went, want [shared]", got)
	}
	w.deletePod("p1")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{})
	w.waitAssigned("pool")
}

func TestIdentityRemovedOutOfBandIsReAddedByTheReconcile(t *testing.T) {
	w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "web"}}})
	w.startMIC(micOpts{opts: func(o *mic.Options) { o.ReconcileInterval = 300 * time.Millisecond }})
	w.identity("web")
	w.binding("b", "web", "sel")
	w.pod("p", w.vmssNode("pool", 0), "sel")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p", "web"): assigned})
	w.waitAssigned("pool", "web")
	if err := w.e.RemoveIdentity("pool", "web"); err != nil {
		t.Fatal(err)
	}
	w.waitAssigned("pool", "web")
}

func TestIdentitiesMICDidNotAddAreNeverRemoved(t *testing.T) {
	// "kubelet" is the cluster identity (azure.json userAssignedIdentityID), "pinned" is in
	// --immutable-user-msis, "manual" was put there by a person: pods use all three through MIC.
	w := newWorld(t, emulator.Config{
		VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1, SystemAssigned: true, UserAssignedIdentities: []string{"kubelet", "manual"}}},
		UserAssignedIdentities:  []emulator.IdentityConfig{{Name: "kubelet"}, {Name: "manual"}, {Name: "pinned"}, {Name: "mine"}}})
	kubelet, _ := w.e.Identity("kubelet")
	pinned, _ := w.e.Identity("pinned")
	w.startMIC(micOpts{azure: map[string]string{"userAssignedIdentityID": kubelet.ClientID},
		opts: func(o *mic.Options) { o.ImmutableClientIDs = append(o.ImmutableClientIDs, pinned.ClientID) }})
	node := w.vmssNode("pool", 0)
	for _, n := range []string{"kubelet", "manual", "pinned", "mine"} {
		w.identity(n)
		w.binding("b-"+n, n, "sel")
	}
	w.pod("p", node, "sel")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p", "kubelet"): assigned, w.aaiName("p", "manual"): assigned,
		w.aaiName("p", "pinned"): assigned, w.aaiName("p", "mine"): assigned})
	w.waitAssigned("pool", "kubelet", "manual", "pinned", "mine")
	w.deletePod("p")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{})
	// Only the identity MIC added and nobody protects is removed.
	w.waitAssigned("pool", "kubelet", "manual", "pinned")
}

func TestOneValidAndTwoInvalidIdentitiesInOneBatch(t *testing.T) {
	w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1, UserAssignedIdentities: []string{"existing"}}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "good"}, {Name: "existing"}, {Name: denied + "x"}}})
	w.startMIC(micOpts{})
	w.identity("good")
	w.identity(denied + "x")                                                                            // MIC's principal lacks permission: LinkedAuthorizationFailed
	ghost := testenv.NewMSIIdentity(w.ns, "ghost", w.sub, w.rg, "99999999-9999-9999-9999-999999999999") // does not exist: FailedIdentityOperation
	env.Create(t, ghost)
	for _, n := range []string{"good", denied + "x", "ghost"} {
		w.binding("b-"+n, n, "sel")
	}
	node := w.vmssNode("pool", 0)
	w.pod("p", node, "sel")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p", "good"): assigned, w.aaiName("p", denied+"x"): created,
		w.aaiName("p", "ghost"): created})
	w.waitAssigned("pool", "existing", "good")
	// The refused identities are quarantined, not retried on every event: further pods do not
	// cause more failing PATCHes.
	writes := w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM, Operation: emulator.OpVMSSUpdate})
	w.pod("p2", node, "sel")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p", "good"): assigned, w.aaiName("p", denied+"x"): created,
		w.aaiName("p", "ghost"): created, w.aaiName("p2", "good"): assigned, w.aaiName("p2", denied+"x"): created, w.aaiName("p2", "ghost"): created})
	if after := w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM, Operation: emulator.OpVMSSUpdate}); after != writes {
		t.Fatalf("VMSS PATCHes went from %d to %d for a pod whose valid identity is already assigned", writes, after)
	}
}

func TestCompletedJobPodReleasesItsIdentity(t *testing.T) {
	w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "job"}}})
	w.startMIC(micOpts{})
	w.identity("job")
	w.binding("b", "job", "sel")
	pod := w.pod("job-1", w.vmssNode("pool", 0), "sel")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("job-1", "job"): assigned})
	env.SetPodStatus(t, pod, corev1.PodSucceeded, "")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{})
	w.waitAssigned("pool")
}

func TestCompletedJobPodKeepsItsIdentityWithTheUpstreamFlag(t *testing.T) {
	w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "job"}}})
	w.startMIC(micOpts{opts: func(o *mic.Options) { o.KeepFinishedPods = true }})
	w.identity("job")
	w.binding("b", "job", "sel")
	node := w.vmssNode("pool", 0)
	w.pod("job-1", node, "sel")
	w.pod("job-2", node, "sel")
	pod := &corev1.Pod{}
	if err := env.Client.Get(testenv.Context(t), client.ObjectKey{Namespace: w.ns, Name: "job-1"}, pod); err != nil {
		t.Fatal(err)
	}
	env.SetPodStatus(t, pod, corev1.PodFailed, "")
	// job-2 is deleted afterwards: once its AAI is gone, job-1's state has been seen too.
	w.deletePod("job-2")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("job-1", "job"): assigned})
	w.waitAssigned("pool", "job")
}

func TestThrottlingStormIsHonoured(t *testing.T) {
	w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "web"}}})
	w.e.AddFault(emulator.Fault{Service: emulator.ServiceARM, Operation: emulator.OpVMSSUpdate, Count: 3, Status: 429,
		Code: "SubscriptionRequestsThrottled", Message: "too many requests", RetryAfter: emulator.D(time.Second)})
	w.startMIC(micOpts{})
	w.identity("web")
	w.binding("b", "web", "sel")
	w.pod("p", w.vmssNode("pool", 0), "sel")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p", "web"): assigned})
	w.waitAssigned("pool", "web")
	// Every 429 was followed by a wait, not a retry storm: 3 throttled + 1 successful PATCH.
	if n := w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM, Operation: emulator.OpVMSSUpdate}); n != 4 {
		t.Fatalf("VMSS PATCHes = %d, want 4 (3 throttled, 1 accepted)", n)
	}
}

func TestIdentityUpdatedUpdatesTheAssignedIdentity(t *testing.T) {
	w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "one"}, {Name: "two"}}})
	w.startMIC(micOpts{})
	id := w.identity("one")
	w.binding("b", "one", "sel")
	w.pod("p", w.vmssNode("pool", 0), "sel")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p", "one"): assigned})
	w.waitAssigned("pool", "one")
	// Point the AzureIdentity at another Azure identity: the AAI follows, the old one is released.
	two, _ := w.e.Identity("two")
	cur := &aadv1.AzureIdentity{}
	if err := env.Client.Get(testenv.Context(t), client.ObjectKeyFromObject(id), cur); err != nil {
		t.Fatal(err)
	}
	cur.Spec.ResourceID, cur.Spec.ClientID = two.ID, two.ClientID
	if err := env.Client.Update(testenv.Context(t), cur); err != nil {
		t.Fatal(err)
	}
	w.waitAssigned("pool", "two")
	eventually(t, "AAI carrying the new client ID", func() (bool, string) {
		a := &aadv1.AzureAssignedIdentity{}
		if err := env.Client.Get(testenv.Context(t), client.ObjectKey{Namespace: "default", Name: w.aaiName("p", "one")}, a); err != nil {
			return false, err.Error()
		}
		return a.Spec.AzureIdentityRef.Spec.ClientID == two.ClientID && a.Status.Status == assigned, a.Spec.AzureIdentityRef.Spec.ClientID + " " + string(a.Status.Status)
	})
}

func TestPodLabelChangedMovesItToTheNewIdentity(t *testing.T) {
	w := newWorld(t, emulator.Config{VirtualMachines: []emulator.VMConfig{{Name: "vm1"}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "one"}, {Name: "two"}}})
	w.startMIC(micOpts{})
	w.identity("one")
	w.identity("two")
	w.binding("b1", "one", "s1")
	w.binding("b2", "two", "s2")
	pod := w.pod("p", w.vmNode("vm1"), "s1")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p", "one"): assigned})
	pod.Labels[aadv1.PodLabelKey] = w.sel("s2")
	if err := env.Client.Update(testenv.Context(t), pod); err != nil {
		t.Fatal(err)
	}
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p", "two"): assigned})
	w.waitAssigned("vm1", "two")
}

func TestAssignedIdentityDeletedWhenIdentityOrBindingIsDeleted(t *testing.T) {
	w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "one"}, {Name: "two"}}})
	w.startMIC(micOpts{})
	id1 := w.identity("one")
	w.identity("two")
	w.binding("b1", "one", "sel")
	b2 := w.binding("b2", "two", "sel")
	w.pod("p", w.vmssNode("pool", 0), "sel")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p", "one"): assigned, w.aaiName("p", "two"): assigned})
	w.delete(id1)
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p", "two"): assigned})
	w.waitAssigned("pool", "two")
	w.delete(b2)
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{})
	w.waitAssigned("pool")
}

func TestAssignedIdentityCleanedUpWhenTheIdentityWasRemovedOutOfBand(t *testing.T) {
	w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "one"}}})
	w.startMIC(micOpts{})
	w.identity("one")
	w.binding("b", "one", "sel")
	w.pod("p", w.vmssNode("pool", 0), "sel")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p", "one"): assigned})
	if err := w.e.RemoveIdentity("pool", "one"); err != nil {
		t.Fatal(err)
	}
	w.deletePod("p")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{})
	w.waitAssigned("pool")
}

func TestLeaderStoppedMidAssignmentTheOtherReplicaFinishes(t *testing.T) {
	w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "one"}},
		Timing:                 emulator.Timing{VMSSOperation: emulator.D(2 * time.Second)}})
	first := w.startMIC(micOpts{})
	w.identity("one")
	w.binding("b", "one", "sel")
	w.pod("p", w.vmssNode("pool", 0), "sel")
	// Wait until the leader sent its PATCH, then stop it while the operation runs.
	eventually(t, "the first replica's PATCH", func() (bool, string) {
		n := w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM, Operation: emulator.OpVMSSUpdate})
		return n >= 1, fmt.Sprint(n)
	})
	second := w.startMIC(micOpts{})
	first.stop()
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p", "one"): assigned})
	w.waitAssigned("pool", "one")
	_ = second
	// Nothing assigned twice or leaked: one identity, and at most one more PATCH than needed
	// (the second replica may retry while the first operation still runs).
	if n := w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM, Operation: emulator.OpVMSSUpdate, Status: 200}); n < 1 || n > 2 {
		t.Fatalf("accepted VMSS PATCHes = %d, want 1 or 2", n)
	}
}

func TestAssignedIdentityDeletedByAUserIsFinalizedAndRecreated(t *testing.T) {
	w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "one"}}})
	w.startMIC(micOpts{})
	w.identity("one")
	w.binding("b", "one", "sel")
	w.pod("p", w.vmssNode("pool", 0), "sel")
	name := w.aaiName("p", "one")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{name: assigned})
	a := &aadv1.AzureAssignedIdentity{}
	if err := env.Client.Get(testenv.Context(t), client.ObjectKey{Namespace: "default", Name: name}, a); err != nil {
		t.Fatal(err)
	}
	uid := a.UID
	w.delete(a)
	eventually(t, "a new AAI replacing the deleted one", func() (bool, string) {
		n := &aadv1.AzureAssignedIdentity{}
		if err := env.Client.Get(testenv.Context(t), client.ObjectKey{Namespace: "default", Name: name}, n); err != nil {
			return false, err.Error()
		}
		return n.UID != uid && n.Status.Status == assigned && n.DeletionTimestamp == nil, string(n.Status.Status)
	})
	w.waitAssigned("pool", "one")
}

func TestCleanupReleasesStrandedFinalizers(t *testing.T) {
	w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "one"}}})
	p := w.startMIC(micOpts{})
	w.identity("one")
	w.binding("b", "one", "sel")
	w.pod("p", w.vmssNode("pool", 0), "sel")
	name := w.aaiName("p", "one")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{name: assigned})
	// MIC is uninstalled, then someone deletes the AAI: it hangs on the finalizer.
	p.stop()
	a := &aadv1.AzureAssignedIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}}
	w.delete(a)
	if err := env.Client.Get(testenv.Context(t), client.ObjectKeyFromObject(a), a); err != nil || a.DeletionTimestamp == nil {
		t.Fatalf("AAI should hang in deletion without MIC: %v", err)
	}
	if _, err := mic.Cleanup(testenv.Context(t), env.Client, testr.New(t)); err != nil {
		t.Fatal(err)
	}
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{})
}

func TestIdentitiesAssignedByAnEarlierMICAreAdoptedAndReleasedWithTheirPods(t *testing.T) {
	// Migration from aad-pod-identity: its MIC put "old" on the VMSS for pod p and wrote the AAI
	// (without podidentity's marker); a person put "manual" there and no AAI names it.
	w := newWorld(t, emulator.Config{
		VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1, UserAssignedIdentities: []string{"old", "manual"}}},
		UserAssignedIdentities:  []emulator.IdentityConfig{{Name: "old"}, {Name: "manual"}}})
	node := w.vmssNode("pool", 0)
	id := w.identity("old")
	b := w.binding("b", "old", "sel")
	w.pod("p", node, "sel")
	id.APIVersion, id.Kind = aadv1.SchemeGroupVersion.String(), "AzureIdentity"
	b.APIVersion, b.Kind = aadv1.SchemeGroupVersion.String(), "AzureIdentityBinding"
	name := w.aaiName("p", "old")
	w.create(&aadv1.AzureAssignedIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Finalizers: []string{aadv1.AssignedIdentityFinalizer},
			Labels: map[string]string{aadv1.AssignedIdentityNodeLabel: node}},
		Spec:   aadv1.AzureAssignedIdentitySpec{AzureIdentityRef: id, AzureBindingRef: b, Pod: "p", PodNamespace: w.ns, NodeName: node},
		Status: aadv1.AzureAssignedIdentityStatus{Status: assigned, AvailableReplicas: 1},
	})

	w.startMIC(micOpts{})
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{name: assigned})
	w.waitAssigned("pool", "manual", "old")
	w.deletePod("p")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{})
	w.waitAssigned("pool", "manual")
}

func TestBadInputIsReportedAndHoldsNobodyElseBack(t *testing.T) {
	// A binding naming an identity that does not exist, and a pod on a node of a VMSS that no
	// longer exists in Azure: each is reported where its owner looks, and the valid pod on a
	// healthy VMSS is assigned regardless.
	w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "good"}}})
	w.startMIC(micOpts{})
	w.identity("good")
	w.binding("b-good", "good", "sel")
	w.binding("b-missing", "nothere", "sel")
	w.binding("b-gone", "good", "gone-sel")
	gone := w.ns + "-gone-0"
	w.node(gone, testenv.VMSSProviderID(w.sub, w.rg, "gone", 0))
	w.pod("p", w.vmssNode("pool", 0), "sel")
	w.pod("q", gone, "gone-sel")

	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p", "good"): assigned})
	w.waitAssigned("pool", "good")
	w.waitEvents(map[eventWant][]string{
		{"AzureIdentityBinding", "b-missing", "Warning", "MissingIdentity"}: {"nothere"},
		{"AzureIdentityBinding", "b-gone", "Warning", "AssignmentFailed"}:   {"virtualMachineScaleSets/gone", "exists"},
	})
}
