package mic_test

import (
	"fmt"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/mic"
	"github.com/podidentity/podidentity/internal/testenv"
)

// A federated identity's tokens come from workload identity federation in NMI: MIC writes its
// AAIs Assigned at once and never touches ARM for it.

func (w *world) federatedIdentity(name string) *aadv1.AzureIdentity {
	w.t.Helper()
	info, err := w.e.Identity(name)
	if err != nil {
		w.t.Fatal(err)
	}
	id := testenv.NewMSIIdentity(w.ns, name, w.sub, w.rg, info.ClientID)
	id.Spec.ResourceID = info.ID
	id.Spec.TenantID = w.e.Config().TenantID
	id.Spec.Federation = &aadv1.Federation{}
	w.create(id)
	return id
}

func (w *world) armWrites() int64 {
	return w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM, Kind: "write"})
}

func TestFederatedIdentityIsAssignedWithoutAnyARMWrite(t *testing.T) {
	w := newWorld(t, emulator.Config{
		VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities:  []emulator.IdentityConfig{{Name: "fed"}},
	})
	w.startMIC(micOpts{})
	w.federatedIdentity("fed")
	w.binding("fed-binding", "fed", "fed-sel")
	n := w.vmssNode("pool", 0)
	w.pod("app", n, "fed-sel")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("app", "fed"): assigned})
	if got := w.assigned("pool"); len(got) != 0 {
		t.Errorf("pool has %v, want no identity", got)
	}
	w.deletePod("app")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{})
	if n := w.armWrites(); n != 0 {
		t.Errorf("%d ARM writes for a federated identity, want 0", n)
	}
}

func TestFederatedAndStandardPodsOnOneVMSSOnlyTheStandardIdentityIsPatched(t *testing.T) {
	w := newWorld(t, emulator.Config{
		VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 2}},
		UserAssignedIdentities:  []emulator.IdentityConfig{{Name: "fed"}, {Name: "std"}},
	})
	w.startMIC(micOpts{})
	w.federatedIdentity("fed")
	w.identity("std")
	w.binding("fed-binding", "fed", "fed-sel")
	w.binding("std-binding", "std", "std-sel")
	w.pod("a", w.vmssNode("pool", 0), "fed-sel")
	w.pod("b", w.vmssNode("pool", 1), "std-sel")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("a", "fed"): assigned, w.aaiName("b", "std"): assigned})
	w.waitAssigned("pool", "std")
	if n := w.armWrites(); n != 1 {
		t.Errorf("%d ARM writes, want 1 (the standard identity's PATCH)", n)
	}
}

func TestSkipFederatedAssignmentsWritesNoAAIForThem(t *testing.T) {
	w := newWorld(t, emulator.Config{
		VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities:  []emulator.IdentityConfig{{Name: "fed"}, {Name: "std"}},
	})
	w.startMIC(micOpts{opts: func(o *mic.Options) { o.SkipFederatedAssignments = true }})
	w.federatedIdentity("fed")
	w.identity("std")
	w.binding("fed-binding", "fed", "fed-sel")
	w.binding("std-binding", "std", "std-sel")
	n := w.vmssNode("pool", 0)
	w.pod("a", n, "fed-sel")
	w.pod("b", n, "std-sel")
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("b", "std"): assigned})
	w.waitAssigned("pool", "std")
}

// Switching an identity's type converges: to federated, its AAI stays Assigned and the identity
// MIC had put on the VMSS is removed (no longer needed there); back to standard, MIC assigns it
// again. An identity someone else assigned would stay (MIC removes only what it owns).
func TestSwitchingAnIdentityBetweenStandardAndFederatedConverges(t *testing.T) {
	w := newWorld(t, emulator.Config{
		VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1}},
		UserAssignedIdentities:  []emulator.IdentityConfig{{Name: "web"}},
	})
	w.startMIC(micOpts{})
	id := w.identity("web")
	w.binding("web-binding", "web", "web-sel")
	w.pod("app", w.vmssNode("pool", 0), "web-sel")
	aai := map[string]aadv1.AssignedIdentityState{w.aaiName("app", "web"): assigned}
	w.waitAAIs(aai)
	w.waitAssigned("pool", "web")

	ctx := testenv.Context(t)
	set := func(fed bool) {
		t.Helper()
		if err := w.cl.Get(ctx, clientKey(id), id); err != nil {
			t.Fatal(err)
		}
		if fed {
			id.Spec.Federation, id.Spec.TenantID = &aadv1.Federation{}, w.e.Config().TenantID
		} else {
			id.Spec.Federation = nil
		}
		if err := w.cl.Update(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	set(true)
	w.waitAssigned("pool")
	w.waitAAIFederated("app", "web", true)
	w.waitAAIs(aai)

	set(false)
	w.waitAssigned("pool", "web")
	w.waitAAIFederated("app", "web", false)
	w.waitAAIs(aai)
}

func clientKey(id *aadv1.AzureIdentity) types.NamespacedName {
	return types.NamespacedName{Namespace: id.Namespace, Name: id.Name}
}

// waitAAIFederated waits until the AAI's copy of the identity is (or is not) federated.
func (w *world) waitAAIFederated(pod, identity string, fed bool) {
	w.t.Helper()
	eventually(w.t, fmt.Sprintf("AAI of %s/%s with federated=%v", pod, identity, fed), func() (bool, string) {
		var l aadv1.AzureAssignedIdentityList
		if err := w.cl.List(testenv.Context(w.t), &l); err != nil {
			return false, err.Error()
		}
		i := slices.IndexFunc(l.Items, func(a aadv1.AzureAssignedIdentity) bool { return a.Name == w.aaiName(pod, identity) })
		if i < 0 {
			return false, "no AAI"
		}
		a := l.Items[i]
		got := a.Spec.AzureIdentityRef != nil && a.Spec.AzureIdentityRef.Spec.IsFederated()
		return got == fed, fmt.Sprintf("federated=%v status=%s", got, a.Status.Status)
	})
}
