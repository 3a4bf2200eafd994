package desired

import (
	"reflect"
	"strings"
	"testing"

	aadv1 "github.com/podidentity/podidentity/api/v1"
)

func saBnd(ns, name, identity, selector, sa string) *aadv1.AzureIdentityBinding {
	b := bnd(ns, name, identity, selector)
	b.Spec.ServiceAccountName = sa
	return b
}

// MIC assigns identities of ServiceAccount bindings to the nodes of the pods that run as that
// ServiceAccount in the binding's namespace, and only those.
func TestComputeServiceAccountBindings(t *testing.T) {
	pod := func(ns, name, sel, sa, node string) Pod {
		return Pod{Namespace: ns, Name: name, Selector: sel, ServiceAccount: sa, NodeName: node}
	}
	cases := []struct {
		name     string
		pods     []Pod
		bindings []*aadv1.AzureIdentityBinding
		opts     Options
		aais     []string
		problems []string
	}{
		{name: "SA binding: a pod without label running as the SA gets the identity",
			pods: []Pod{pod("a", "p", "", "app", "n1")}, bindings: []*aadv1.AzureIdentityBinding{saBnd("a", "b", "id", "", "app")},
			aais: []string{"pool: default/p-a-id"}},
		{name: "SA binding: same label, another SA gets nothing",
			pods: []Pod{pod("a", "p", "sel", "app", "n1"), pod("a", "q", "sel", "other", "n3")}, bindings: []*aadv1.AzureIdentityBinding{saBnd("a", "b", "id", "sel", "app")},
			aais: []string{"pool: default/p-a-id"}},
		{name: "SA binding: same SA name in another namespace gets nothing",
			pods: []Pod{pod("z", "p", "sel", "app", "n1")}, bindings: []*aadv1.AzureIdentityBinding{saBnd("a", "b", "id", "sel", "app")}},
		{name: "SA binding for default matches pods that name no SA",
			pods: []Pod{pod("a", "p", "", "", "n3")}, bindings: []*aadv1.AzureIdentityBinding{saBnd("a", "b", "id", "", "default")},
			aais: []string{"n3: default/p-a-id"}},
		{name: "require: label-only binding ignored with a problem on it, SA binding kept", opts: Options{RequireServiceAccount: true},
			pods:     []Pod{pod("a", "p", "sel", "app", "n1")},
			bindings: []*aadv1.AzureIdentityBinding{bnd("a", "label", "id", "sel"), saBnd("a", "sa", "id2", "", "app")},
			aais:     []string{"pool: default/p-a-id2"}, problems: []string{"LabelOnlyBindingIgnored a/label"}},
		{name: "require: reported even when no pod uses the binding", opts: Options{RequireServiceAccount: true},
			bindings: []*aadv1.AzureIdentityBinding{bnd("a", "label", "id", "sel")}, problems: []string{"LabelOnlyBindingIgnored a/label"}},
		{name: "label binding and its ServiceAccount successor for one identity: one AAI, no collision warning",
			pods:     []Pod{pod("a", "p", "sel", "app", "n1")},
			bindings: []*aadv1.AzureIdentityBinding{bnd("a", "old", "id", "sel"), saBnd("a", "new", "id", "sel", "app")},
			aais:     []string{"pool: default/p-a-id"}},
		{name: "require off: label-only bindings work as before",
			pods: []Pod{pod("a", "p", "sel", "app", "n1")}, bindings: []*aadv1.AzureIdentityBinding{bnd("a", "label", "id", "sel")},
			aais: []string{"pool: default/p-a-id"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := Compute(Input{Pods: tc.pods, Bindings: tc.bindings, Identities: []*aadv1.AzureIdentity{msi("a", "id"), msi("a", "id2")},
				Nodes: nodes(), Options: tc.opts})
			aais, problems := summary(st)
			if tc.aais == nil {
				tc.aais = []string{}
			}
			if tc.problems == nil {
				tc.problems = []string{}
			}
			if !reflect.DeepEqual(aais, tc.aais) {
				t.Errorf("AAIs = %v, want %v", aais, tc.aais)
			}
			if !reflect.DeepEqual(problems, tc.problems) {
				t.Errorf("problems = %v, want %v", problems, tc.problems)
			}
			for _, p := range st.Problems {
				if p.Kind == ProblemLabelOnlyIgnored && !strings.Contains(p.Message, "spec.serviceAccountName") {
					t.Errorf("problem message %q does not say to set spec.serviceAccountName", p.Message)
				}
			}
		})
	}
}
