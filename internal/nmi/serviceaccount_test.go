package nmi

import (
	"net/http"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/testenv"
)

// Issue 14: bindings that name a ServiceAccount serve only pods of the binding's namespace that
// run as it, whatever their labels.

// saPod creates a running pod on this node in ns, running as sa, with the (test-unique)
// aadpodidbinding label when selector is set.
func (h *harness) saPod(ns, name, selector, sa string) *corev1.Pod {
	h.t.Helper()
	ctx := testenv.Context(h.t)
	if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}}); err != nil && !apierrors.IsAlreadyExists(err) {
		h.t.Fatalf("creating ServiceAccount %s/%s: %v", ns, sa, err)
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{NodeName: h.node, ServiceAccountName: sa, Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}}}
	if selector != "" {
		p.Labels = map[string]string{aadv1.PodLabelKey: h.sel(selector)}
	}
	env.Create(h.t, p)
	env.SetPodStatus(h.t, p, corev1.PodRunning, nextPodIP())
	return p
}

func (h *harness) saBinding(ns, name, identity, selector, sa string, weight int) *aadv1.AzureIdentityBinding {
	h.t.Helper()
	b := testenv.NewBinding(ns, name, identity, h.sel(selector))
	b.Spec.ServiceAccountName, b.Spec.Weight = sa, weight
	env.Create(h.t, b)
	return b
}

// wantNotBound checks for a 403 identity_not_bound answer.
func wantNotBound(t *testing.T, a answer, what string) {
	t.Helper()
	if a.status != http.StatusForbidden || !strings.Contains(string(a.body), "identity_not_bound") {
		t.Fatalf("%s: got %d %s, want 403 identity_not_bound", what, a.status, a.body)
	}
}

func TestServiceAccountBindingServesOnlyThatServiceAccount(t *testing.T) {
	h := newHarness(t, harnessOpts{identities: []string{"web", "foreign"}})
	other := env.Namespace(t)
	web := h.identity("web")
	info, _ := h.emu.Identity("foreign")
	foreign := &aadv1.AzureIdentity{ObjectMeta: metav1.ObjectMeta{Namespace: other, Name: "foreign"},
		Spec: aadv1.AzureIdentitySpec{Type: aadv1.UserAssignedMSI, ResourceID: info.ID, ClientID: info.ClientID}}
	env.Create(t, foreign)

	h.saBinding(h.ns, "web", "web", "web", "app", 0)
	// Another namespace's binding naming the same ServiceAccount name.
	h.saBinding(other, "foreign", "foreign", "", "app", 0)

	app := h.saPod(h.ns, "app", "web", "app")
	intruder := h.saPod(h.ns, "intruder", "web", "intruder")
	elsewhere := h.saPod(other, "elsewhere", "web", "app")
	// Even with an Assigned assignment for each (a stale or forged MIC record), NMI decides
	// from the pod's ServiceAccount.
	h.assign(app, web, aadv1.AssignedIDAssigned)
	h.assign(intruder, web, aadv1.AssignedIDAssigned)
	h.assign(elsewhere, web, aadv1.AssignedIDAssigned)

	a := h.token(app)
	wantStatus(t, a, http.StatusOK)
	if got := a.json(t)["client_id"]; got != web.Spec.ClientID {
		t.Fatalf("app got client_id %v, want web's %s", got, web.Spec.ClientID)
	}
	wantNotBound(t, h.token(app, "client_id", foreign.Spec.ClientID), "the binding of another namespace naming the same ServiceAccount")
	wantNotBound(t, h.token(intruder), "same label, other ServiceAccount")
	wantNotBound(t, h.token(elsewhere, "client_id", web.Spec.ClientID), "same label and ServiceAccount name, other namespace")
	if n := h.imdsTokenCalls(foreign.Spec.ClientID); n != 0 {
		t.Errorf("IMDS issued %d tokens of the foreign identity", n)
	}
	// The other namespace's binding serves its own namespace's pod of that ServiceAccount.
	h.assign(elsewhere, foreign, aadv1.AssignedIDAssigned)
	a = h.token(elsewhere)
	wantStatus(t, a, http.StatusOK)
	if got := a.json(t)["client_id"]; got != foreign.Spec.ClientID {
		t.Fatalf("elsewhere got client_id %v, want its namespace's foreign %s", got, foreign.Spec.ClientID)
	}
}

// Without client_id, the identity of the binding with the highest weight is served.
func TestWeightChoosesTheDefaultIdentity(t *testing.T) {
	// By name alone (the order without weights) "a-light" would come first.
	h := newHarness(t, harnessOpts{identities: []string{"a-light", "z-heavy"}})
	light, heavy := h.identity("a-light"), h.identity("z-heavy")
	h.saBinding(h.ns, "light", "a-light", "", "app", 1)
	h.saBinding(h.ns, "heavy", "z-heavy", "", "app", 5)
	pod := h.saPod(h.ns, "app", "", "app")
	h.assign(pod, light, aadv1.AssignedIDAssigned)
	h.assign(pod, heavy, aadv1.AssignedIDAssigned)
	a := h.token(pod)
	wantStatus(t, a, http.StatusOK)
	if got := a.json(t)["client_id"]; got != heavy.Spec.ClientID {
		t.Fatalf("default identity %v, want heavy (weight 5) %s", got, heavy.Spec.ClientID)
	}
	a = h.token(pod, "client_id", light.Spec.ClientID)
	wantStatus(t, a, http.StatusOK)
}

// With RequireServiceAccountBindings a label-only binding grants nothing; the refusal names it
// and the fix, and is reported on it as a Warning event.
func TestRequireServiceAccountBindingsIgnoresLabelOnlyBindings(t *testing.T) {
	for _, mode := range []string{ModeStandard, ModeManaged} {
		t.Run(mode, func(t *testing.T) {
			ev := &events{}
			h := newHarness(t, harnessOpts{identities: []string{"by-label", "by-sa"}, cfg: func(c *Config) {
				c.Events, c.RequireServiceAccountBindings = ev, true
				if mode == ModeManaged {
					c.OperationMode, c.ForceNamespaced = ModeManaged, true
				}
			}})
			byLabel, bySA := h.identity("by-label"), h.identity("by-sa")
			b := h.binding("by-label", "lbl")
			h.saBinding(h.ns, "by-sa", "by-sa", "", "app", 0)
			labelled := h.saPod(h.ns, "labelled", "lbl", "default")
			app := h.saPod(h.ns, "app", "lbl", "app")
			if mode == ModeStandard {
				h.assign(labelled, byLabel, aadv1.AssignedIDAssigned)
				h.assign(app, bySA, aadv1.AssignedIDAssigned)
			} else {
				for _, id := range []*aadv1.AzureIdentity{byLabel, bySA} {
					if err := h.emu.AssignIdentity(h.vm, id.Spec.ResourceID); err != nil {
						t.Fatal(err)
					}
				}
				h.waitStore("bindings", func(s *Store) bool { return len(s.bindings) >= 2 && s.podsByKey[h.ns+"/app"] != nil })
			}
			a := h.token(labelled)
			wantNotBound(t, a, "label-only binding under RequireServiceAccountBindings")
			for _, want := range []string{h.ns + "/" + b.Name, "spec.serviceAccountName"} {
				if !strings.Contains(string(a.body), want) {
					t.Errorf("refusal should name %s: %s", want, a.body)
				}
			}
			if e := ev.find("IdentityRefused", h.ns+"/"+b.Name); e == "" || !strings.Contains(e, "spec.serviceAccountName") {
				t.Errorf("no Warning on binding %s naming the fix; events: %v", b.Name, ev.list)
			}
			a = h.token(app)
			wantStatus(t, a, http.StatusOK)
			if got := a.json(t)["client_id"]; got != bySA.Spec.ClientID {
				t.Fatalf("app got %v, want by-sa's %s (the label-only binding must not count)", got, bySA.Spec.ClientID)
			}
		})
	}
}
