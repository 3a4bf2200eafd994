package mic_test

import (
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/mic"
	"github.com/podidentity/podidentity/internal/testenv"
)

// Issue #11 item 1: in another namespace, a namespaced AzureIdentity pairs an identity MIC can
// assign ("carrier") with the client ID of the identity bound only in the victim's namespace.
// MIC must not mark its AAI Assigned (ARM reports another client ID for that resourceID) and must
// say why, while the victim's correct identity on the same VMSS is Assigned; once the clientID is
// corrected the AAI is Assigned. Both ways ARM tells MIC the client IDs are covered: the PATCH
// response (MIC adds carrier) and a GET (carrier was on the scale set already).
func TestIdentityWhoseClientIDBelongsToAnotherIdentityIsNotAssigned(t *testing.T) {
	for _, tc := range []struct {
		name   string
		onVMSS bool
	}{{"identity MIC assigns", false}, {"identity already on the scale set", true}} {
		t.Run(tc.name, func(t *testing.T) {
			vmss := emulator.VMSSConfig{Name: "pool", Instances: 1}
			if tc.onVMSS {
				vmss.UserAssignedIdentities = []string{"carrier"}
			}
			w := newWorld(t, emulator.Config{VirtualMachineScaleSets: []emulator.VMSSConfig{vmss},
				UserAssignedIdentities: []emulator.IdentityConfig{{Name: "victim"}, {Name: "carrier"}}})
			// Frequent passes without events: a refused AAI must cost no ARM call in them.
			w.startMIC(micOpts{opts: func(o *mic.Options) { o.ResyncInterval = 100 * time.Millisecond }})
			node := w.vmssNode("pool", 0)
			w.identity("victim")
			w.binding("victim-binding", "victim", "victim-sel")
			w.pod("app", node, "victim-sel")
			w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("app", "victim"): assigned})
			if !tc.onVMSS {
				// The client ID of the identity MIC just added came with the PATCH's answer: MIC
				// read the scale set once, before the PATCH, and not again after it (each PATCH
				// has one GET of its own, the SDK's final read of the operation).
				settle(t, w)
				gets, patches := armCount(w, emulator.OpVMSSGet), armCount(w, emulator.OpVMSSUpdate)
				if gets-patches != 1 {
					t.Fatalf("VMSS GETs = %d for %d PATCH(es): MIC read the scale set %d times, want once (client IDs come from the PATCH's answer)",
						gets, patches, gets-patches)
				}
			}

			victim, _ := w.e.Identity("victim")
			carrier, _ := w.e.Identity("carrier")
			evil := env.Namespace(t)
			stolen := &aadv1.AzureIdentity{
				ObjectMeta: metav1.ObjectMeta{Namespace: evil, Name: "stolen", Annotations: map[string]string{aadv1.BehaviorKey: aadv1.BehaviorNamespaced}},
				Spec:       aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: carrier.ID, ClientID: victim.ClientID},
			}
			env.Create(t, stolen)
			env.Create(t, testenv.NewBinding(evil, "stolen-binding", "stolen", w.sel("evil-sel")))
			env.CreatePod(t, testenv.PodSpec{Namespace: evil, Name: "attacker", Node: node, Binding: w.sel("evil-sel")})

			ew := *w
			ew.ns = evil
			bad := ew.aaiName("attacker", "stolen")
			ew.waitEvents(map[eventWant][]string{
				{"AzureIdentityBinding", "stolen-binding", "Warning", "AssignmentFailed"}: {
					"AzureIdentity " + evil + "/stolen has clientID " + victim.ClientID,
					"ARM reports client ID " + carrier.ClientID + " for resourceID " + carrier.ID,
					"set spec.clientID to " + carrier.ClientID},
			})
			w.waitAssigned("pool", "carrier", "victim")
			ew.waitAAIs(map[string]aadv1.AssignedIdentityState{bad: created})
			w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("app", "victim"): assigned})

			// Steady state: the refused AAI stays Created through many passes, with no ARM call.
			settle(t, w)
			before := w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM})
			time.Sleep(time.Second)
			if got := ew.aais(); got[bad] != created {
				t.Fatalf("AAI %s is %q after further passes, want it still Created", bad, got[bad])
			}
			if after := w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM}); after != before {
				t.Fatalf("ARM calls went from %d to %d in passes with nothing to change", before, after)
			}

			// Doing what the warning says makes the identity usable.
			cur := &aadv1.AzureIdentity{}
			if err := env.Client.Get(testenv.Context(t), client.ObjectKeyFromObject(stolen), cur); err != nil {
				t.Fatal(err)
			}
			cur.Spec.ClientID = carrier.ClientID
			if err := env.Client.Update(testenv.Context(t), cur); err != nil {
				t.Fatal(err)
			}
			ew.waitAAIs(map[string]aadv1.AssignedIdentityState{bad: assigned})
		})
	}
}

// An AAI some earlier MIC wrote Assigned for a clientID that ARM contradicts (written before the
// check existed) is taken back to Created.
func TestAssignedIdentityWithAContradictedClientIDIsTakenBack(t *testing.T) {
	w := newWorld(t, emulator.Config{
		VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1, UserAssignedIdentities: []string{"victim", "carrier"}}},
		UserAssignedIdentities:  []emulator.IdentityConfig{{Name: "victim"}, {Name: "carrier"}}})
	victim, _ := w.e.Identity("victim")
	carrier, _ := w.e.Identity("carrier")
	node := w.vmssNode("pool", 0)
	id := testenv.NewMSIIdentity(w.ns, "stolen", w.sub, w.rg, victim.ClientID)
	id.Spec.ResourceID = carrier.ID
	w.create(id)
	b := w.binding("b", "stolen", "sel")
	w.pod("p", node, "sel")
	id.APIVersion, id.Kind = aadv1.SchemeGroupVersion.String(), "AzureIdentity"
	b.APIVersion, b.Kind = aadv1.SchemeGroupVersion.String(), "AzureIdentityBinding"
	name := w.aaiName("p", "stolen")
	w.create(&aadv1.AzureAssignedIdentity{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Finalizers: []string{aadv1.AssignedIdentityFinalizer},
			Labels: map[string]string{aadv1.AssignedIdentityNodeLabel: node}},
		Spec:   aadv1.AzureAssignedIdentitySpec{AzureIdentityRef: id, AzureBindingRef: b, Pod: "p", PodNamespace: w.ns, NodeName: node},
		Status: aadv1.AzureAssignedIdentityStatus{Status: assigned, AvailableReplicas: 1},
	})

	w.startMIC(micOpts{})
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{name: created})
	w.waitEvents(map[eventWant][]string{
		{"AzureIdentityBinding", "b", "Warning", "AssignmentFailed"}: {"set spec.clientID to " + carrier.ClientID},
	})
}

// An identity deleted and re-created after it was put on the scale set: ARM reports no client ID
// for the stale entry, so nothing ties spec.clientID to it and the AAI stays Created with a
// warning saying what to do. Once the stale entry is removed, MIC assigns the new identity and
// the PATCH's answer confirms its client ID.
func TestIdentityARMReportsNoClientIDForIsNotAssignedUntilItIsReassigned(t *testing.T) {
	w := newWorld(t, emulator.Config{
		VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 1, UserAssignedIdentities: []string{"web"}}},
		UserAssignedIdentities:  []emulator.IdentityConfig{{Name: "web"}}})
	if err := w.e.DeleteIdentity("web"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.e.CreateIdentity(emulator.IdentityConfig{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	w.startMIC(micOpts{opts: func(o *mic.Options) { o.ReconcileInterval = 300 * time.Millisecond }})
	w.identity("web") // the re-created identity's client ID
	w.binding("b", "web", "sel")
	w.pod("p", w.vmssNode("pool", 0), "sel")
	w.waitEvents(map[eventWant][]string{
		{"AzureIdentityBinding", "b", "Warning", "AssignmentFailed"}: {"ARM reports no client ID for resourceID", "remove it from the VM/VMSS"},
	})
	if got := w.aais()[w.aaiName("p", "web")]; got != created {
		t.Fatalf("AAI is %q while ARM reports no client ID for its identity, want Created", got)
	}
	if err := w.e.RemoveIdentity("pool", "web"); err != nil {
		t.Fatal(err)
	}
	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("p", "web"): assigned})
	w.waitAssigned("pool", "web")
}

func armCount(w *world, op string) int64 {
	return w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM, Operation: op})
}

// settle waits until MIC made no ARM call for half a second.
func settle(t *testing.T, w *world) {
	t.Helper()
	last := int64(-1)
	eventually(t, "MIC's ARM calls to settle", func() (bool, string) {
		n := w.e.Count(emulator.CounterKey{Service: emulator.ServiceARM})
		if n == last {
			return true, ""
		}
		last = n
		time.Sleep(500 * time.Millisecond)
		return false, fmt.Sprint(n)
	})
}
