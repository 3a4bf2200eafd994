package mic_test

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/mic"
	"github.com/podidentity/podidentity/internal/testenv"
)

// saPod creates a scheduled, running pod in ns that runs as sa ("" = none named), with the
// aadpodidbinding label when selector is not empty (taken as is, not made unique).
func (w *world) saPod(ns, name, node, selector, sa string) {
	w.t.Helper()
	ctx := testenv.Context(w.t)
	if sa != "" {
		acct := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}}
		if err := w.cl.Create(ctx, acct); err != nil && !apierrors.IsAlreadyExists(err) {
			w.t.Fatalf("creating ServiceAccount %s/%s: %v", ns, sa, err)
		}
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa, Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}}}
	if selector != "" {
		p.Labels = map[string]string{aadv1.PodLabelKey: selector}
	}
	if err := w.cl.Create(ctx, p); err != nil {
		w.t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
	p.Status.Phase = corev1.PodRunning
	if err := w.cl.Status().Update(ctx, p); err != nil {
		w.t.Fatalf("marking pod %s running: %v", name, err)
	}
}

func (w *world) saBinding(ns, name, identity, selector, sa string) *aadv1.AzureIdentityBinding {
	b := testenv.NewBinding(ns, name, identity, selector)
	b.Spec.ServiceAccountName = sa
	w.create(b)
	return b
}

// aaisIn lists the AzureAssignedIdentities of pods in podNamespace.
func (w *world) aaisIn(podNamespace string) []string {
	w.t.Helper()
	var l aadv1.AzureAssignedIdentityList
	if err := w.cl.List(testenv.Context(w.t), &l); err != nil {
		w.t.Fatal(err)
	}
	var out []string
	for _, a := range l.Items {
		if a.Spec.PodNamespace == podNamespace {
			out = append(out, a.Name)
		}
	}
	return out
}

// A ServiceAccount binding puts its identity on the VMSS of the pods that run as that
// ServiceAccount in the binding's namespace, with or without a label; a pod with the same label
// but another ServiceAccount, a pod of that ServiceAccount name in another namespace, and a
// binding in another namespace naming the same ServiceAccount name get nothing.
func TestServiceAccountBindingAssignsOnlyToPodsOfThatServiceAccount(t *testing.T) {
	w := newWorld(t, emulator.Config{
		VirtualMachineScaleSets: []emulator.VMSSConfig{{Name: "pool", Instances: 2}},
		UserAssignedIdentities:  []emulator.IdentityConfig{{Name: "web"}, {Name: "labelled"}, {Name: "foreign"}},
	})
	other := env.Namespace(t)
	w.startMIC(micOpts{})
	w.identity("web")
	w.identity("labelled")
	foreign := testenv.NewMSIIdentity(other, "foreign", w.sub, w.rg, "")
	info, err := w.e.Identity("foreign")
	if err != nil {
		t.Fatal(err)
	}
	foreign.Spec.ResourceID, foreign.Spec.ClientID = info.ID, info.ClientID
	w.create(foreign)

	sel := w.sel("web")
	w.saBinding(w.ns, "web-by-sa", "web", "", "web")
	w.saBinding(w.ns, "labelled-by-sa", "labelled", sel, "web")
	// In another namespace, naming the same ServiceAccount name: it must not reach w.ns's pods.
	w.saBinding(other, "foreign-by-sa", "foreign", "", "web")

	n0, n1 := w.vmssNode("pool", 0), w.vmssNode("pool", 1)
	w.saPod(w.ns, "web-nolabel", n0, "", "web")
	w.saPod(w.ns, "web-labelled", n0, sel, "web")
	w.saPod(w.ns, "intruder", n1, sel, "intruder")
	w.saPod(other, "web-elsewhere", n1, sel, "default")

	w.waitAAIs(map[string]aadv1.AssignedIdentityState{
		w.aaiName("web-nolabel", "web"):       assigned,
		w.aaiName("web-labelled", "web"):      assigned,
		w.aaiName("web-labelled", "labelled"): assigned,
	})
	w.waitAssigned("pool", "labelled", "web")
	// The pass that made those also saw the other pods; nothing more appears later.
	time.Sleep(500 * time.Millisecond)
	if got := w.aaisIn(other); len(got) != 0 {
		t.Fatalf("pods of namespace %s got assignments %v; a ServiceAccount binding matches only its own namespace", other, got)
	}
	if got := w.assigned("pool"); len(got) != 2 {
		t.Fatalf("pool identities = %v, want only labelled and web (not foreign)", got)
	}
}

// With RequireServiceAccountBindings, a label-only binding grants nothing and gets a Warning
// event that names it and the fix; a ServiceAccount binding still works.
func TestRequireServiceAccountBindingsIgnoresLabelOnlyBindings(t *testing.T) {
	w := newWorld(t, emulator.Config{
		VirtualMachines:        []emulator.VMConfig{{Name: "vm0"}},
		UserAssignedIdentities: []emulator.IdentityConfig{{Name: "by-label"}, {Name: "by-sa"}},
	})
	w.startMIC(micOpts{opts: func(o *mic.Options) { o.RequireServiceAccountBindings = true }})
	w.identity("by-label")
	w.identity("by-sa")
	w.binding("label-only", "by-label", "app")
	w.saBinding(w.ns, "sa", "by-sa", "", "app")
	node := w.vmNode("vm0")
	w.saPod(w.ns, "app-1", node, w.sel("app"), "app")

	w.waitAAIs(map[string]aadv1.AssignedIdentityState{w.aaiName("app-1", "by-sa"): assigned})
	w.waitAssigned("vm0", "by-sa")
	w.waitEvents(map[eventWant][]string{
		{"AzureIdentityBinding", "label-only", corev1.EventTypeWarning, "LabelOnlyBindingIgnored"}: {w.ns + "/label-only", "spec.serviceAccountName"},
	})
	time.Sleep(300 * time.Millisecond)
	if got := w.assigned("vm0"); len(got) != 1 {
		t.Fatalf("vm0 identities = %v, want only by-sa", got)
	}
}
